"""The sampler's model adapter: `decoder_fns(graphdef)` builds the pure `step_fn` and
`init_cache_fn` that drive a split `girl_jax.models.decoder.Decoder` (last-position logits only,
per-layer head-major caches when the layers are not scanned).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING

import jax.numpy as jnp
from flax import nnx

from girl_jax.errors import ConfigError
from girl_jax.models import decoder as decoder_mod
from girl_jax.models.decoder import DecoderConfig

if TYPE_CHECKING:  # annotations only: girl_jax.sampling imports this module
    from girl_jax.sampling import InitCacheFn, StepFn


def _find_decoder_config(graphdef):

    # The NNX graphdef keeps static attributes as (name, Static(value)) pairs.
    for _, attr in getattr(graphdef, "attributes", ()):
        value = getattr(attr, "value", None)
        if isinstance(value, DecoderConfig):
            return value
    raise ConfigError(
        "decoder_fns: no DecoderConfig found in the graphdef; pass decoder_config= explicitly"
    )


def decoder_fns(graphdef, decoder_config=None, cache_dtype=None) -> tuple[StepFn, InitCacheFn]:
    """`(step_fn, init_cache_fn)` driving a split `girl_jax.models.decoder.Decoder`.

    `params` given to `step_fn` is the state from ``nnx.split(model)`` (or a tuple of states,
    merged in order). The cache is the decoder's own (``Transformer.init_cache``).
    """
    dcfg = decoder_config or _find_decoder_config(graphdef)

    def step_fn(params, ids_BxT, kv_mask_BxS, positions_BxT, cache):
        states = params if isinstance(params, (tuple, list)) else (params,)
        model = nnx.merge(graphdef, *states)
        if hasattr(model, "hidden") and hasattr(model, "logits"):
            # LM head on the last position only: the sampler needs nothing else.
            h_BxTxD, new_cache = model.hidden(ids_BxT, kv_mask_BxS, positions_BxT, cache=cache)
            return model.logits(h_BxTxD[:, -1:]).astype(jnp.float32), new_cache
        logits_BxTxV, aux = model(ids_BxT, kv_mask_BxS, positions_BxT, cache=cache)
        return logits_BxTxV[:, -1:].astype(jnp.float32), aux["cache"]

    def init_cache_fn(batch_size, max_len):
        if max_len > dcfg.max_len:
            raise ConfigError(
                f"sampling: prompt length + max_new_tokens = {max_len} exceeds "
                f"DecoderConfig.max_len = {dcfg.max_len}"
            )
        # init_cache reads only `self.cfg`: no need to build (or own) the parameters.
        holder = types.SimpleNamespace(cfg=dcfg)
        # Per-layer head-major caches: a decode step writes each layer's new slot in place and
        # attends over it as stored (the stacked [L, B, S, G, K] cache cost a slice + transpose
        # copy of every layer per token). Scanned layers need the stacked one.
        layout = "stacked" if dcfg.scan_layers else "per_layer"
        return decoder_mod.Transformer.init_cache(
            holder, batch_size, max_len, cache_dtype, layout=layout
        )

    return step_fn, init_cache_fn
