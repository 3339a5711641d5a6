"""Low-rank adapters (LoRA) on the decoder's projections, and merging them back into W.

The adapted projection is ``y = x W + b + (alpha / r) · (x A) B`` with B zero at init, so an
adapted model equals its base until the first update. Adapter weights are `LoRAParam`s (a
subclass of `nnx.Param`): ``nnx.Optimizer(model, tx, wrt=LoRAParam)`` or
``nnx.state(model, LoRAParam)`` selects only them, ``BASE_PARAMS`` everything else.

On a model's `nnx.State` of Params: `split_adapters` / `join_adapters` part the adapters from
the base and put them back (PPO's shared-base actor trains the first alone), `adapters_off`
zeroes every B (the function of the base: PPO's reference), `fold_adapters` folds each A B
into its kernel and zeroes B (the same function, adapters fresh), `merge_lora` a whole model.
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
        matmul_dtype: Any = None,
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
            matmul_dtype=matmul_dtype,
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


def split_adapters(params: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(adapters, base) of a State of Params (or a tree of the same structure: abstract arrays,
    shardings): the `LoRAParam`s, and every other Param."""
    return params.split(ADAPTER_PARAMS, ...)


def join_adapters(base: nnx.State, adapters: nnx.State) -> nnx.State:
    """The inverse of `split_adapters`: one State with the structure of the original."""
    return nnx.State.merge(base, adapters)


def _is_b(path) -> bool:
    return any(getattr(k, "key", None) == "lora_b" for k in path)


def adapters_off(params: nnx.State) -> nnx.State:
    """`params` with every adapter's B zeroed: the model computes its base, ``x W + b`` (exactly,
    for finite activations: the adapter branch adds 0)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if _is_b(path) else x, params
    )


def _delta_kernel(tree: dict, scale: float) -> jax.Array:
    kernel = tree["kernel"]
    # stacked (scanned) layers carry a leading `layers` dim: matmul broadcasts over it
    delta = jnp.matmul(tree["lora_a"], tree["lora_b"]) * scale
    return (kernel + delta.astype(kernel.dtype)).astype(kernel.dtype)


def _merge_dict(tree: Any, scale: float, keep: bool = False) -> Any:
    """Every adapter of a pure dict folded into its kernel; keep: A kept and B zeroed, else both
    dropped (the `lora_rank=0` layout)."""
    if not isinstance(tree, dict):
        return tree
    if "lora_a" in tree and "lora_b" in tree:
        out = {k: v for k, v in tree.items() if keep or k not in ("lora_a", "lora_b")}
        out["kernel"] = _delta_kernel(tree, scale)
        if keep:
            out["lora_b"] = jnp.zeros_like(tree["lora_b"])
        return out
    return {k: _merge_dict(v, scale, keep) for k, v in tree.items()}


def fold_adapters(params: nnx.State, scale: float) -> nnx.State:
    """`params` (a LoRA model's State of Params) with each adapter folded into its kernel,
    ``W + scale · A B``, and its B zeroed: the same function, with adapters that start afresh.
    `scale` is the model's ``lora_alpha / lora_rank``. A State without adapters is returned as is.
    """
    if not jax.tree.leaves(split_adapters(params)[0]):
        return params
    out = jax.tree.map(lambda x: x, params)  # a new State: replace_by_pure_dict writes in place
    nnx.replace_by_pure_dict(out, _merge_dict(params.to_pure_dict(), scale, keep=True))
    return out


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
