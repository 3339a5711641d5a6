"""Reward-model ensemble aggregation (Coste et al. 2023): K member scores -> one score per row.

Pure and jittable (`how` is static: a Python string). `scores_KxB` is what
`girl_jax.stages.reward.ensemble_scores` returns, members on axis 0:

- ``mean``: the members' mean (mean optimisation);
- ``min``: the lowest member score (worst-case optimisation, WCO);
- ``mean_minus_std``: ``mean - lam * std`` (uncertainty-weighted optimisation, UWO), the
  population standard deviation over members (ddof=0, ``jnp.std``'s default).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from girl_jax.errors import ConfigError

AGGREGATIONS = ("mean", "min", "mean_minus_std")


def check(how: str) -> str:
    """`how` if it names an aggregation, else a ConfigError listing them."""
    if how not in AGGREGATIONS:
        raise ConfigError(
            f"reward ensemble aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}"
        )
    return how


def aggregate(scores_KxB: jax.Array, how: str, lam: float = 1.0) -> jax.Array:
    """One score per row [B] float32 from the K members' [K, B]; `lam` is read by
    ``mean_minus_std`` only."""
    check(how)
    s = jnp.asarray(scores_KxB, jnp.float32)
    if how == "mean":
        return s.mean(0)
    if how == "min":
        return s.min(0)
    return s.mean(0) - lam * s.std(0)
