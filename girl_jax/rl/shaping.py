"""Reward shaping: per-token reward assembly, score normalisation, clipping, missing-EOS penalty."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from girl_jax.rl.advantages import scores_to_token_rewards

Array = jax.Array


def token_rewards(score_B: Array, kl_rewards_BxT: Array, mask: Array) -> Array:
    """KL rewards on valid tokens plus the score at each row's LAST valid token.

    A row with no valid token gets all zeros (its score has nowhere to go).
    """
    kl_BxT = jnp.where(mask.astype(bool), kl_rewards_BxT, 0.0).astype(jnp.float32)
    return kl_BxT + scores_to_token_rewards(score_B, mask)


def apply_missing_eos_penalty(score_B: Array, has_eos_B: Array, penalty: float | None) -> Array:
    """Replace the score of rows that never emitted EOS by `penalty` (None: unchanged).

    As lm-human-preferences' ``penalty_reward_value`` for truncated responses.
    """
    if penalty is None:
        return score_B
    return jnp.where(has_eos_B.astype(bool), score_B, jnp.asarray(penalty, score_B.dtype))


def clip_scores(score_B: Array, clip: float | None) -> Array:
    """Clip scores to ``[-clip, clip]``; None or <= 0 disables."""
    if clip is None or clip <= 0:
        return score_B
    return jnp.clip(score_B, -clip, clip)


def whiten_scores(score_B: Array, eps: float = 1e-8) -> Array:
    """Batch whitening of sequence scores (mean 0, var 1 over the batch)."""
    mean = jnp.mean(score_B)
    return (score_B - mean) * jax.lax.rsqrt(jnp.var(score_B) + eps)


class RunningMoments(NamedTuple):
    """Running count / mean / (population) variance of scores: a pytree for jit and checkpoints."""

    count: Array
    mean: Array
    var: Array


def init_running_moments() -> RunningMoments:
    zero = jnp.zeros((), jnp.float32)
    return RunningMoments(zero, zero, jnp.ones((), jnp.float32))


def update_running_moments(state: RunningMoments, x_B: Array) -> RunningMoments:
    """Merge a batch into the running moments (Chan et al. parallel update); exact, order-free."""
    x_B = x_B.astype(jnp.float32).reshape(-1)
    n_b = jnp.asarray(x_B.shape[0], jnp.float32)
    mean_b = jnp.mean(x_B)
    var_b = jnp.var(x_B)
    total = state.count + n_b
    delta = mean_b - state.mean
    mean = state.mean + delta * n_b / total
    m2 = state.var * state.count + var_b * n_b + jnp.square(delta) * state.count * n_b / total
    return RunningMoments(total, mean, m2 / total)


def normalize_scores(
    score_B: Array, state: RunningMoments, shift_mean: bool = True, eps: float = 1e-8
) -> Array:
    """``(s - mean) / std`` with the running moments (``s / std`` when not shifting)."""
    centred = score_B - state.mean if shift_mean else score_B
    return centred * jax.lax.rsqrt(state.var + eps)
