"""Llama-2-70B shapes for every PPO role (actor, critic, reference, reward model).

Shapes: d_model 8192, 80 layers, 64 heads, 8 KV heads (grouped-query), MLP 28672, vocab 32000;
bf16 compute, f32 params, remat per block, scanned layers. Mesh data=1 x fsdp=-1 x tensor=8:
tensor parallelism over 8 chips / the 8 GPUs of a host (heads, KV heads, MLP and vocab split 8
ways), FSDP over the rest, so a gathered layer is 1/8 of the layer on each device.

Variants:
  :full  (default) full fine-tuning of actor and critic (AdamW, f32 moments); reference and
         reward model are separate frozen copies.
  :lora  LoRA adapters (rank 16 on every projection) on the actor's decoder, trained alone on
         a frozen base the actor shares with the reference (ppo.shared_base, on by default
         with adapters): AdamW moments for the adapters only, and the reference is the actor
         with its adapters off, not a copy. 8.63 GiB per v5e-256 chip against 13.73 for :full,
         and it fits v5e:8x16 (14.99 GiB); 26.86 GiB per H100 of 8 x 8 (docs/scale.md).
         --config.ppo.shared_base=False: every Param trains against a separate reference.

  :smoke the same code path with tiny shapes on a CPU (configs/_base.py):
         girl run --config configs/llama2_70b_ppo.py:smoke --workdir /tmp/smoke-70b

Plan on any CPU host (`pip install -e '.[tpu,gpu-plan]'`, JAX_PLATFORMS=cpu):
    girl plan --config configs/llama2_70b_ppo.py --topology v5e:16x16 --steps ppo
    girl plan --config configs/llama2_70b_ppo.py --topology h100:1x8x8 --steps ppo
    girl plan --config configs/llama2_70b_ppo.py:lora --topology auto:v5e --steps ppo
Figures: docs/scale.md.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_girl_config_base", os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)

VARIANTS = ("full", "lora", "smoke")


def get_config(arg=None):
    variant = "full" if arg in (None, "", "default") else arg
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; choose from {VARIANTS}")
    c = _base.scale_config(
        "llama2_70b_ppo_full",
        model=dict(
            family="llama",
            d_model=8192,
            num_layers=80,
            num_heads=64,
            max_len=4096,
            vocab_size=32000,
            num_kv_heads=8,
            mlp_dim=28672,
        ),
        mesh=dict(data=1, fsdp=-1, tensor=8),
        sft=dict(
            batch_size=64,
            max_prompt_len=512,
            max_response_len=512,
            grad_accum=4,
            learning_rate=1e-5,
        ),
        reward=dict(batch_size=64, learning_rate=5e-6),
        # 256 prompts, 2 epochs x 8 minibatches of 32 (one sequence per FSDP shard on a
        # v5e-256): 13.73 GiB per v5e chip (docs/scale.md)
        ppo=dict(
            batch_size=256,
            minibatches=8,
            epochs=2,
            max_new_tokens=256,
            learning_rate=5e-7,
            critic_learning_rate=2e-6,
        ),
    )
    if variant == "lora":
        c.name = "llama2_70b_ppo_lora"
        c.model.update(lora_rank=16, lora_alpha=32.0)
    if variant == "smoke":
        c.name = "llama2_70b_ppo"
        return _base.variant(c, "smoke")
    return c
