"""GPT-2-XL shapes (1.5B: d 1600, 48 layers, 25 heads) for every role, on a GPU cluster.

Topology: 4 nodes x 8 H100 80 GiB (32 GPUs), mesh data=4 x fsdp=8, bf16 compute, remat.
    girl plan --config configs/gpt2_xl_ppo.py --topology v5p:4x4x2     # TPU stand-in on CPU
    sbatch --nodes=4 launch/slurm.sbatch configs/gpt2_xl_ppo.py       # the cluster run
Start from a local HF GPT-2-XL directory with --config.sft.init_from=/path/gpt2-xl.
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
    c.name = "gpt2_xl_ppo"
    c.tokenizer.vocab_size = 50257
    c.model = _default.model_config(d_model=1600, num_layers=48, num_heads=25, max_len=1024)
    c.model.update(vocab_size=50257, dtype="bfloat16", remat=True, scan_layers=True)
    c.mesh.update(data=4, fsdp=-1, tensor=1)
    c.sft.update(batch_size=64, max_prompt_len=256, max_response_len=256)
    # a pretrained LLM's RM reads its last layer (feature_layer / match flags: market-tuned)
    c.reward.update(batch_size=64, feature_layer=0, match_features=False)
    c.ppo.update(batch_size=64, minibatches=2, max_new_tokens=256)
    if arg not in (None, "", "default"):
        raise ValueError(f"unknown variant {arg!r}")
    return c
