"""Scalar heads on the decoder trunk: the reward model, and a value head on the policy.

`ScoreModel` and `PolicyWithValueHead` subclass the same `Transformer` trunk as `Decoder`,
so their trunk parameters have the same names and an SFT checkpoint's trunk moves into
them with `transplant_trunk`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from girl_jax.errors import ModelError
from girl_jax.models.decoder import Cache, Decoder, DecoderConfig, Transformer
from girl_jax.models.layers import Linear

TRUNK_KEYS = ("embed", "pos_embed", "layers", "final_norm")


class ScalarHead(nnx.Module):
    """hidden [B, T, D] -> float32 scalar per token [B, T]; zero-initialised by default."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, zero_init: bool = True):
        init = (
            nnx.initializers.zeros_init()
            if zero_init
            else nnx.initializers.normal(1.0 / (d_model + 1) ** 0.5)
        )
        self.proj = Linear(
            d_model, 1, axes=("embed", None), rngs=rngs, kernel_init=init, dtype=jnp.float32
        )

    def __call__(self, h_BxTxD: jax.Array) -> jax.Array:
        return self.proj(h_BxTxD.astype(jnp.float32))[..., 0]


class ScoreModel(Transformer):
    """Reward model / separate critic: decoder trunk + `score_head` -> per-token scores."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, zero_init_head: bool = True):
        super().__init__(cfg, rngs=rngs)
        self.score_head = ScalarHead(cfg.d_model, rngs=rngs, zero_init=zero_init_head)

    def __call__(self, ids_BxT, attention_mask=None, positions=None):
        """Returns (values [B, T] float32, {"hidden": [B, T, D]})."""
        h, _ = self.hidden(ids_BxT, attention_mask, positions)
        return self.score_head(h), {"hidden": h}


class PolicyWithValueHead(Decoder):
    """A Decoder whose trunk also feeds a `value_head` (the shared-trunk critic)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, zero_init_head: bool = True):
        super().__init__(cfg, rngs=rngs)
        self.value_head = ScalarHead(cfg.d_model, rngs=rngs, zero_init=zero_init_head)

    def __call__(self, ids_BxT, attention_mask=None, positions=None, cache: Cache | None = None):
        """Returns (logits [B, T, V] float32, values [B, T] float32, aux)."""
        logits, aux = Decoder.__call__(self, ids_BxT, attention_mask, positions, cache)
        return logits, self.value_head(aux["hidden"]), aux

    def lm(self, ids_BxT, attention_mask=None, positions=None, cache: Cache | None = None):
        """The plain Decoder contract (logits, aux), for the sampler."""
        return Decoder.__call__(self, ids_BxT, attention_mask, positions, cache)


def last_token_score(values_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """Value at each row's last valid token [B] (right or left padding; 0th when none valid)."""
    T = values_BxT.shape[-1]
    idx_B = jnp.max(jnp.where(mask_BxT.astype(bool), jnp.arange(T), 0), axis=-1)
    return jnp.take_along_axis(values_BxT, idx_B[:, None], axis=-1)[:, 0]


def transplant_trunk(src: Any, dst: Any) -> Any:
    """Copies the trunk params (embed, pos_embed, layers, final_norm) of `src` into `dst`.

    `src` / `dst` are modules or `nnx.State`s (e.g. a Decoder's and a ScoreModel's);
    heads are left as they are. Returns the updated `dst` (modules are updated in place).
    """
    src_state = nnx.state(src, nnx.Param) if isinstance(src, nnx.Module) else src
    dst_state = nnx.state(dst, nnx.Param) if isinstance(dst, nnx.Module) else dst
    src_flat = {tuple(p): v for p, v in nnx.to_flat_state(src_state)}
    for path, var in nnx.to_flat_state(dst_state):
        path = tuple(path)
        if path[0] not in TRUNK_KEYS:
            continue
        name = "/".join(map(str, path))
        if path not in src_flat:
            raise ModelError(f"transplant_trunk: source has no parameter {name}")
        value = src_flat[path][...]
        if value.shape != var.shape:
            raise ModelError(
                f"transplant_trunk: {name} has shape {value.shape} in the source, "
                f"{var.shape} in the target"
            )
        var.set_value(value)
    if isinstance(dst, nnx.Module):
        nnx.update(dst, dst_state)
    return dst


def score_model_from_decoder(
    decoder: Decoder, *, rngs: nnx.Rngs, zero_init_head: bool = True
) -> ScoreModel:
    """A ScoreModel with `decoder`'s config and trunk and a fresh score head."""
    model = ScoreModel(decoder.cfg, rngs=rngs, zero_init_head=zero_init_head)
    return transplant_trunk(decoder, model)
