"""Low-rank adapters (LoRA) on the decoder's projections, and merging them back into W.

The adapted projection is ``y = x W + b + (alpha / r) · (x A) B`` with B zero at init, so an
adapted model equals its base until the first update. Adapter weights are `LoRAParam`s (a
subclass of `nnx.Param`): ``nnx.Optimizer(model, tx, wrt=LoRAParam)`` or
``nnx.state(model, LoRAParam)`` selects only them, ``BASE_PARAMS`` everything else.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from girl_jax.models.layers import Initializer, Linear, default_kernel_init, param

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRAParam(nnx.Param):
    """An adapter weight: the only Params an adapter-only optimizer updates."""


# Filters for nnx.state / nnx.Optimizer(wrt=...).
ADAPTER_PARAMS = LoRAParam
BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(LoRAParam))


class LoRALinear(Linear):
    """A `Linear` plus a rank-`rank` update scaled by `alpha / rank`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        alpha: float,
        axes: tuple[str | None, str | None] = ("embed", "mlp"),
        use_bias: bool = True,
        rngs: nnx.Rngs,
        kernel_init: Initializer = default_kernel_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ):
        super().__init__(
            in_features,
            out_features,
            axes=axes,
            use_bias=use_bias,
            rngs=rngs,
            kernel_init=kernel_init,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.lora_scale = alpha / rank
        a_init = nnx.initializers.normal(1.0 / math.sqrt(in_features))
        self.lora_a = param(
            a_init(rngs.params(), (in_features, rank), param_dtype), (axes[0], None), kind=LoRAParam
        )
        self.lora_b = param(
            jnp.zeros((rank, out_features), param_dtype), (None, axes[1]), kind=LoRAParam
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        dtype = y.dtype
        a, b = self.lora_a[...].astype(dtype), self.lora_b[...].astype(dtype)
        return y + self.lora_scale * jnp.dot(jnp.dot(x.astype(dtype), a), b)


def _merge_dict(tree: Any, scale: float) -> Any:
    if not isinstance(tree, dict):
        return tree
    if "lora_a" in tree and "lora_b" in tree:
        out = {k: v for k, v in tree.items() if k not in ("lora_a", "lora_b")}
        kernel = tree["kernel"]
        # stacked (scanned) layers carry a leading `layers` dim: matmul broadcasts over it
        delta = jnp.matmul(tree["lora_a"], tree["lora_b"]) * scale
        out["kernel"] = (kernel + delta.astype(kernel.dtype)).astype(kernel.dtype)
        return out
    return {k: _merge_dict(v, scale) for k, v in tree.items()}


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` (same class, `lora_rank=0`) with every adapter folded into its kernel.

    Works for any model class built as ``cls(cfg, rngs=...)`` whose `cfg` is a DecoderConfig.
    """
    cfg = model.cfg
    if cfg.lora_rank == 0:
        return model
    base_cfg = dataclasses.replace(cfg, lora_rank=0)
    merged = _merge_dict(nnx.state(model).to_pure_dict(), cfg.lora_alpha / cfg.lora_rank)
    target = nnx.eval_shape(lambda: type(model)(base_cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(target)
    nnx.replace_by_pure_dict(state, merged)
    nnx.update(target, state)
    return target
