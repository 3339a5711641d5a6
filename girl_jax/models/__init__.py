"""Models: decoder LM (GPT-2 / Llama), BERT encoder, heads, LoRA, HF import / export.

Heavy submodules load on first use so `import girl_jax.models.layers` stays cheap.
"""

import importlib

_EXPORTS = {
    "Decoder": "girl_jax.models.decoder",
    "DecoderConfig": "girl_jax.models.decoder",
    "ScalarHead": "girl_jax.models.heads",
    "ScoreModel": "girl_jax.models.heads",
    "PolicyWithValueHead": "girl_jax.models.heads",
    "from_pretrained": "girl_jax.models.hub",
    "save_pretrained": "girl_jax.models.hub",
    "logical_axes": "girl_jax.models.layers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'girl_jax.models' has no attribute {name!r}")
