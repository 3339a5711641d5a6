"""PPO policy / value losses and entropy, as masked means over valid tokens.

Semantics follow openai/lm-human-preferences (`train_policy.py`): the clipped
surrogate takes the max of the two *negated* objectives, the value loss is
``0.5 * max(unclipped, clipped)`` squared errors, and every mean runs over the
valid (mask == 1) tokens of the whole batch. Positions where the mask is 0 are
replaced by 0 before any arithmetic, so garbage (even inf / nan) there is harmless.
"""

from typing import Any

import jax
import jax.numpy as jnp

from girl_jax.errors import ConfigError
from girl_jax.rl import registry

Array = jax.Array


def masked_sum(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Sum of `x` over positions where `mask` is nonzero."""
    return jnp.sum(jnp.where(mask.astype(bool), x, 0), axis=axis)


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Mean of `x` over positions where `mask` is nonzero; 0 where there are none."""
    count = jnp.sum(mask.astype(bool), axis=axis).astype(jnp.result_type(x, jnp.float32))
    return masked_sum(x, mask, axis) / jnp.maximum(count, 1)


def _check_clip(clip_eps: float) -> None:
    if isinstance(clip_eps, (int, float)) and not clip_eps > 0:
        raise ConfigError(f"clip_eps must be > 0, got {clip_eps}")


def _ratio_metrics(log_ratio: Array, ratio: Array, mask: Array) -> dict[str, Array]:
    # k3 estimator of KL(old || new): non-negative and low-variance (Schulman's blog).
    return {
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": jnp.max(jnp.where(mask.astype(bool), ratio, -jnp.inf), initial=0.0),
    }


def clipped_policy_loss(
    logp: Array, old_logp: Array, advantages: Array, mask: Array, clip_eps: float
) -> tuple[Array, dict[str, Array]]:
    """PPO clipped surrogate: masked mean of ``max(-A*r, -A*clip(r, 1-eps, 1+eps))``.

    Args:
      logp, old_logp, advantages, mask: ``[B, T]``; `r = exp(logp - old_logp)`.
      clip_eps: the PPO clip range.
    Returns:
      (loss scalar, metrics with ``clip_fraction``, ``approx_kl``, ``ratio_mean``, ``ratio_max``).
    """
    _check_clip(clip_eps)
    log_ratio = jnp.where(mask.astype(bool), logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    losses1 = -advantages * ratio
    losses2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(losses1, losses2), mask)
    metrics = _ratio_metrics(log_ratio, ratio, mask)
    # As lm-human-preferences' pg_clipfrac: the clipped branch strictly wins.
    metrics["clip_fraction"] = masked_mean((losses2 > losses1).astype(jnp.float32), mask)
    return loss, metrics


def dual_clip_policy_loss(
    logp: Array,
    old_logp: Array,
    advantages: Array,
    mask: Array,
    clip_eps: float,
    dual_clip_c: float = 3.0,
) -> tuple[Array, dict[str, Array]]:
    """Dual-clip PPO (Ye et al. 2020): for A < 0 the clipped loss is also capped at ``-c*A``."""
    _check_clip(clip_eps)
    if isinstance(dual_clip_c, (int, float)) and not dual_clip_c > 1.0:
        raise ConfigError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    log_ratio = jnp.where(mask.astype(bool), logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    losses1 = -advantages * ratio
    losses2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    clipped = jnp.maximum(losses1, losses2)
    cap = -advantages * dual_clip_c
    per_token = jnp.where(advantages < 0, jnp.minimum(clipped, cap), clipped)
    loss = masked_mean(per_token, mask)
    metrics = _ratio_metrics(log_ratio, ratio, mask)
    metrics["clip_fraction"] = masked_mean((losses2 > losses1).astype(jnp.float32), mask)
    metrics["dual_clip_fraction"] = masked_mean(
        ((advantages < 0) & (cap < clipped)).astype(jnp.float32), mask
    )
    return loss, metrics


def clipped_value_loss(
    values: Array, old_values: Array, returns: Array, mask: Array, clip_eps: float
) -> tuple[Array, dict[str, Array]]:
    """``0.5 * masked_mean(max((v - R)^2, (v_old + clip(v - v_old, ±eps) - R)^2))``."""
    _check_clip(clip_eps)
    v_clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    losses1 = jnp.square(values - returns)
    losses2 = jnp.square(v_clipped - returns)
    loss = 0.5 * masked_mean(jnp.maximum(losses1, losses2), mask)
    metrics = {
        "vf_clip_fraction": masked_mean((losses2 > losses1).astype(jnp.float32), mask),
        "value_mean": masked_mean(values, mask),
        "value_error": masked_mean(losses1, mask),
    }
    return loss, metrics


def plain_value_loss(values: Array, returns: Array, mask: Array) -> tuple[Array, dict[str, Array]]:
    """``0.5 * masked_mean((v - R)^2)``."""
    losses = jnp.square(values - returns)
    loss = 0.5 * masked_mean(losses, mask)
    return loss, {"value_mean": masked_mean(values, mask), "value_error": masked_mean(losses, mask)}


def entropy_per_token(logits_BxTxV: Array) -> Array:
    """Entropy of softmax(logits) per position, from a stable log_softmax."""
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    p_BxTxV = jnp.exp(logp_BxTxV)
    # p * log p is 0 for p == 0 (also where logits were -inf).
    return -jnp.sum(jnp.where(p_BxTxV > 0, p_BxTxV * logp_BxTxV, 0.0), axis=-1)


def entropy_from_logits(logits_BxTxV: Array, mask: Array) -> Array:
    """Masked mean over valid tokens of the per-token entropy."""
    return masked_mean(entropy_per_token(logits_BxTxV), mask)


def ratio_skip(ratio_mean: Array, threshold: float | None) -> Array:
    """True when `ratio_mean` leaves ``[1/threshold, threshold]``: skip this minibatch's update.

    `threshold` of None or <= 1 disables the check (always False).
    """
    if threshold is None or threshold <= 1.0:
        return jnp.zeros((), dtype=bool)
    return (ratio_mean > threshold) | (ratio_mean < 1.0 / threshold)


# Registered adapters: one call convention per kind, hyper-parameters from `config`.


@registry.register("policy_loss", "clipped")
def _clipped_policy(logp, old_logp, advantages, mask, *, config: Any):
    return clipped_policy_loss(
        logp, old_logp, advantages, mask, registry.hparam(config, "clip_eps", 0.2)
    )


@registry.register("policy_loss", "dual_clip")
def _dual_clip_policy(logp, old_logp, advantages, mask, *, config: Any):
    return dual_clip_policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        registry.hparam(config, "clip_eps", 0.2),
        registry.hparam(config, "dual_clip_c", 3.0),
    )


@registry.register("value_loss", "clipped")
def _clipped_value(values, old_values, returns, mask, *, config: Any):
    clip = registry.hparam(config, "value_clip_eps", None)
    if clip is None:
        clip = registry.hparam(config, "clip_eps", 0.2)
    return clipped_value_loss(values, old_values, returns, mask, clip)


@registry.register("value_loss", "plain")
def _plain_value(values, old_values, returns, mask, *, config: Any):
    del old_values, config
    return plain_value_loss(values, returns, mask)
