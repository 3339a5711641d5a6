"""Batch filters as pure, jittable masks (DAPO dynamic sampling).

A filter returns a float ``[B]`` keep mask (1 keep, 0 drop); the PPO driver multiplies
the response mask by it, so a dropped row has no valid tokens and drops out of every
masked mean (and of the sequence-level loss aggregations).
"""

import jax
import jax.numpy as jnp

from girl_jax.rl.advantages import _grouped

Array = jax.Array


def groups_with_signal(scores_B: Array, group_size: int, atol: float = 1e-6) -> Array:
    """DAPO dynamic sampling: 0 for rows whose group's scores are all equal, else 1.

    A group whose scores all agree (every sample right, or every one wrong) has zero
    group-relative advantage and so carries no GRPO / RLOO signal.

    Args:
      scores_B: ``[B]`` sequence scores; rows ``i*group_size .. (i+1)*group_size-1`` are
        samples of the same prompt.
      group_size: samples per prompt (an int >= 2 dividing ``B``; ConfigError otherwise).
      atol: scores within `atol` of each other (``max - min <= atol``) count as equal.
    Returns:
      keep_B: float32 ``[B]``, 1.0 where the row's group has a spread above `atol`.
    """
    s_GxK = _grouped(jnp.asarray(scores_B, jnp.float32), group_size)
    spread_G = jnp.max(s_GxK, axis=1) - jnp.min(s_GxK, axis=1)
    keep_G = (spread_G > atol).astype(jnp.float32)
    return jnp.repeat(keep_G, group_size)
