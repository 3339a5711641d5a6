"""Masked reductions over valid tokens, shared by the advantage estimators and the losses.

Positions where the mask is 0 are replaced by 0 before any arithmetic, so garbage (even
inf / nan) there is harmless.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_sum(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Sum of `x` over positions where `mask` is nonzero."""
    return jnp.sum(jnp.where(mask.astype(bool), x, 0), axis=axis)


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Mean of `x` over positions where `mask` is nonzero; 0 where there are none."""
    count = jnp.sum(mask.astype(bool), axis=axis).astype(jnp.result_type(x, jnp.float32))
    return masked_sum(x, mask, axis) / jnp.maximum(count, 1)


__all__ = ["masked_mean", "masked_sum"]
