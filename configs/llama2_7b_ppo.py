"""Llama-2-7B shapes for every role (actor, critic, reference, reward), FSDP over a TPU pod.

Topology: TPU v5e-256 (`v5e:16x16`, 16 GiB HBM per chip), mesh data=1 x fsdp=256 x tensor=1,
bf16 compute, f32 params, remat per block, scanned layers.

Plan it on any CPU host (no TPU needed; `pip install -e '.[tpu]'` for libtpu):
    girl plan --config configs/llama2_7b_ppo.py --topology v5e:16x16
Expected: SFT, reward and PPO steps compile and fit in 16 GiB per chip (table in docs/scale.md).
Run it on the pod (weights from a local HF directory):
    TPU_NAME=girl-v5e ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-256 WORKDIR=gs://bucket/girl \\
    CONFIG=configs/llama2_7b_ppo.py launch/tpu_pod.sh --config.sft.init_from=/path/llama-2-7b
The same code path with tiny shapes, on a CPU:
    girl run --config configs/llama2_7b_ppo.py:smoke --workdir /tmp/smoke
Variants: `default`, `smoke` (configs/_base.py).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_girl_config_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(arg=None):
    c = _base.scale_config(
        "llama2_7b_ppo",
        model=dict(
            family="llama",
            d_model=4096,
            num_layers=32,
            num_heads=32,
            max_len=4096,
            vocab_size=32000,
            mlp_dim=11008,
        ),
        mesh=dict(data=1, fsdp=-1, tensor=1),
        sft=dict(
            batch_size=256,
            max_prompt_len=512,
            max_response_len=512,
            grad_accum=1,
            learning_rate=2e-5,
        ),
        reward=dict(batch_size=256, learning_rate=1e-5),
        ppo=dict(
            batch_size=256,
            minibatches=4,
            epochs=2,
            max_new_tokens=256,
            learning_rate=1e-6,
            critic_learning_rate=5e-6,
        ),
    )
    return _base.variant(c, arg)
