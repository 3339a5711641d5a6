"""Llama-2-7B shapes for every role (actor, critic, reference, reward), FSDP over a TPU pod.

Topology: TPU v5e-256 (`v5e:16x16`, 16 GiB HBM per chip), mesh data=1 x fsdp=256 x tensor=1,
bf16 compute, f32 params, remat per block, scanned layers.

Plan it on any CPU host (no TPU needed; `pip install -e '.[tpu]'` for libtpu):
    girl plan --config configs/llama2_7b_ppo.py --topology v5e:16x16
Expected: SFT, reward and PPO steps compile and fit in 16 GiB per chip (table in docs/scale.md).
Run it on the pod (weights from a local HF directory):
    CONFIG=configs/llama2_7b_ppo.py launch/tpu_pod.sh --config.sft.init_from=/path/llama-2-7b
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_girl_default", os.path.join(os.path.dirname(__file__), "default.py")
)
_default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_default)


def get_config(arg=None):
    c = _default.get_config(None)
    c.name = "llama2_7b_ppo"
    c.tokenizer.vocab_size = 32000
    c.model = _default.model_config(
        d_model=4096, num_layers=32, num_heads=32, max_len=4096, family="llama"
    )
    c.model.update(vocab_size=32000, mlp_dim=11008, dtype="bfloat16", remat=True, scan_layers=True)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.sft.update(
        batch_size=256, max_prompt_len=512, max_response_len=512, grad_accum=1, learning_rate=2e-5
    )
    # a pretrained LLM's RM reads its last layer (feature_layer / match flags: market-tuned)
    c.reward.update(batch_size=256, learning_rate=1e-5, feature_layer=0, match_features=False)
    c.ppo.update(
        batch_size=256,
        minibatches=4,
        epochs=2,
        max_new_tokens=256,
        learning_rate=1e-6,
        critic_learning_rate=5e-6,
    )
    c.sft.max_prompt_len = 512
    if arg not in (None, "", "default"):
        raise ValueError(f"unknown variant {arg!r}")
    return c
