"""GPT-2-XL shapes (1.5B: d 1600, 48 layers, 25 heads) for every role, on a GPU cluster.

Topology: 4 nodes x 8 H100 80 GiB (32 GPUs), mesh data=4 x fsdp=8, bf16 compute, remat.
    girl plan --config configs/gpt2_xl_ppo.py --topology v5p:4x4x2     # TPU stand-in on CPU
    CONFIG=configs/gpt2_xl_ppo.py sbatch --nodes=4 launch/slurm.sbatch  # the cluster run
    girl run --config configs/gpt2_xl_ppo.py:smoke --workdir /tmp/smoke  # tiny shapes, on a CPU
Start from a local HF GPT-2-XL directory with --config.sft.init_from=/path/gpt2-xl
(through the launcher: GIRL_ARGS=--config.sft.init_from=/path/gpt2-xl).
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
        "gpt2_xl_ppo",
        model=dict(d_model=1600, num_layers=48, num_heads=25, max_len=1024, vocab_size=50257),
        mesh=dict(data=4, fsdp=-1, tensor=1),
        sft=dict(batch_size=64, max_prompt_len=256, max_response_len=256),
        reward=dict(batch_size=64),
        ppo=dict(batch_size=64, minibatches=2, max_new_tokens=256),
    )
    return _base.variant(c, arg)
