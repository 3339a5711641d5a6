"""The scale configs' shared preamble: `scale_config` and the `:smoke` variant.

A scale config (configs/gpt2_xl_ppo.py, configs/llama2_7b_ppo.py) is the default pipeline
(configs/default.py: market data, every stage's section) with a pretrained-LLM-sized model for
every role, bf16 compute, remat per block, scanned layers, its own mesh and batch sizes:

    _base = <configs/_base.py loaded by file path, as those configs do>
    def get_config(arg=None):
        c = _base.scale_config("name", model=dict(...), mesh=dict(...), sft=dict(...), ...)
        return _base.variant(c, arg)

Variants: `default` (as written) and `smoke` (`smoke()`): the same code path (model family,
bf16, remat, scanned layers, grouped-query attention, FSDP over the local devices, tensor
parallelism when the config has it, the pretrained-LLM reward head) with tiny shapes and a few
steps on a small market, so that `girl run` finishes on a CPU in a few minutes:
    girl run --config configs/llama2_7b_ppo.py:smoke --workdir /tmp/smoke-7b
"""

import importlib.util
import os


def _load(name: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_girl_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


default = _load("default")

# Shape arguments of `default.model_config`; every other `model` key is a field override.
_SHAPE_KEYS = ("d_model", "num_layers", "num_heads", "max_len", "family")

# What every scale model shares: bf16 compute (f32 params), remat per block, scanned layers.
SCALE_MODEL = dict(dtype="bfloat16", remat=True, scan_layers=True)

# A pretrained LLM's RM reads its last layer (feature_layer / match flags: market-tuned).
PRETRAINED_REWARD = dict(feature_layer=0, match_features=False)


def scale_config(name: str, *, model: dict, mesh: dict, sft=(), reward=(), ppo=()):
    """The default pipeline with a scale model for every role.

    model: `default.model_config`'s shape arguments plus field overrides; `vocab_size` (the
    pretrained tokenizer's) is required and also sets `tokenizer.vocab_size`.
    mesh / sft / reward / ppo: updates of those sections.
    """
    model = dict(model)
    shape = {k: model.pop(k) for k in _SHAPE_KEYS if k in model}
    c = default.get_config(None)
    c.name = name
    c.tokenizer.vocab_size = model["vocab_size"]
    c.model = default.model_config(**shape)
    c.model.update(vocab_size=model.pop("vocab_size"), **model)
    c.model.update(SCALE_MODEL)
    c.mesh.update(mesh)
    c.sft.update(dict(sft))
    c.reward.update(dict(reward))
    c.reward.update(PRETRAINED_REWARD)
    # accelerators: every rollout row in one pass and big generation batches (the default's 32
    # suit a CPU's caches, configs/default.py)
    c.ppo.update(rollout_rows_per_pass=0)
    c.generate.batch_size = 128
    c.ppo.update(dict(ppo))
    return c


# The smoke shapes: ~100k-parameter decoders, 64-token prompts, 16-token responses.
SMOKE_VOCAB = 1024


def smoke(c):
    """`c` with tiny shapes and few steps; keeps its model family, dtype, remat, scan and head."""
    c.name = f"{c.name}:smoke"
    c.data.update(num_seekers=120, num_jobs=40, applications_per_seeker=6)
    c.tokenizer.vocab_size = SMOKE_VOCAB
    m = c.model
    # Tensor parallelism stays on (2 ways, so it needs >= 2 devices) when the config has it.
    tensor = min(c.mesh.tensor, 2)
    heads = 4
    # keeps grouped-query attention (num_kv_heads < num_heads) and an explicit MLP width
    kv_heads = max(heads * m.num_kv_heads // m.num_heads, tensor) if m.num_kv_heads else 0
    c.model.update(
        vocab_size=SMOKE_VOCAB,
        max_len=128,
        d_model=64,
        num_layers=2,
        num_heads=heads,
        num_kv_heads=kv_heads,
        mlp_dim=128 if m.mlp_dim else 0,
    )
    # FSDP over the other local devices (all of them on a laptop, 8 simulated in the tests).
    c.mesh.update(data=1, fsdp=-1, tensor=tensor)
    c.sft.update(
        batch_size=16,
        grad_accum=1,
        steps=4,
        max_prompt_len=64,
        max_response_len=32,
        eval_every=4,
        eval_batches=1,
        num_eval_samples=8,
        checkpoint_every=4,
        log_every=2,
    )
    # reward.steps stays the scale config's (0: the probe only, as in the full run)
    c.reward.update(batch_size=16, probe_epochs=2, eval_every=4, checkpoint_every=4, log_every=2)
    c.ppo.update(
        iterations=1,
        batch_size=16,
        group_size=2,
        epochs=1,
        minibatches=1,
        max_new_tokens=16,
        eval_every=1,
        num_eval_prompts=8,
        checkpoint_every=1,
    )
    c.generate.batch_size = 128
    c.recommend.encoder.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=64)
    c.recommend.update(
        predictors=["mlp"],
        epochs=1,
        batch_size=64,
        mlp_hidden=32,
        dot_dim=32,
        head_epochs=2,
        seeds=[0],
    )
    return c


VARIANTS = ("default", "smoke")


def variant(c, arg):
    """Apply the variant named by `arg` (None / "" / "default": none)."""
    if arg in (None, "", "default"):
        return c
    if arg == "smoke":
        return smoke(c)
    raise ValueError(f"unknown variant {arg!r}: use {' or '.join(VARIANTS)}")
