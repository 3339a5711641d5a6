"""PPO policy / value losses and entropy, as masked means over valid tokens.

Semantics follow openai/lm-human-preferences (`train_policy.py`): the clipped
surrogate takes the max of the two *negated* objectives, the value loss is
``0.5 * max(unclipped, clipped)`` squared errors, and by default every mean runs
over the valid (mask == 1) tokens of the whole batch. Positions where the mask is
0 are replaced by 0 before any arithmetic, so garbage (even inf / nan) there is harmless.

Variants: DAPO clip-higher (an upper clip ``clip_eps_high`` apart from the lower
``clip_eps``), verl's loss aggregation modes (`aggregate`: token_mean /
seq_mean_token_mean / seq_mean_token_sum_norm for Dr. GRPO) and GSPO's
sequence-level importance ratio (`gspo_policy_loss`); the advantage-weighted NLL of
best-of-n distillation (`weighted_nll_policy_loss`, ``policy_loss=nll``).
"""

from typing import Any

import jax
import jax.numpy as jnp

from girl_jax.errors import ConfigError
from girl_jax.rl import logprobs, registry
from girl_jax.rl.masked import masked_mean, masked_sum  # noqa: F401  (public here too)

Array = jax.Array


LOSS_AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate(
    loss_BxT: Array, mask: Array, mode: str = "token_mean", max_len: int | None = None
) -> Array:
    """Reduce a per-token loss ``[B, T]`` to a scalar (verl's ``loss_agg_mode``, ``_`` for ``-``).

    - ``token_mean``: mean over all valid tokens of the batch (PPO / DAPO; the default).
    - ``seq_mean_token_mean``: mean over each row's valid tokens, then mean over the rows
      (original GRPO, GSPO).
    - ``seq_mean_token_sum_norm``: each row's sum over valid tokens divided by the constant
      `max_len` (``max_new_tokens``; None means ``T``), then mean over the rows (Dr. GRPO).

    The sequence modes average over rows with at least one valid token, so a row whose mask
    was zeroed (e.g. by `girl_jax.rl.filters.groups_with_signal`) counts as removed from the
    batch; 0 when no row has one.
    """
    if mode == "token_mean":
        return masked_mean(loss_BxT, mask)
    has_B = jnp.any(mask.astype(bool), axis=-1)
    if mode == "seq_mean_token_mean":
        return masked_mean(masked_mean(loss_BxT, mask, axis=-1), has_B)
    if mode == "seq_mean_token_sum_norm":
        norm = mask.shape[-1] if max_len is None else max_len
        if isinstance(norm, (int, float)) and not norm > 0:
            raise ConfigError(f"max_new_tokens (loss normaliser) must be > 0, got {norm}")
        return masked_mean(masked_sum(loss_BxT, mask, axis=-1) / norm, has_B)
    raise ConfigError(f"loss_agg must be one of {', '.join(LOSS_AGG_MODES)}, got {mode!r}")


def weighted_nll_policy_loss(
    logp: Array, old_logp: Array, advantages: Array, mask: Array
) -> tuple[Array, dict[str, Array]]:
    """Advantage-weighted negative log-likelihood: ``-sum(A * logp) / sum(|A|)`` over valid tokens.

    With the `bon` advantage (1 on each group's best sample, 0 elsewhere) this is the SFT step
    of best-of-n distillation (RAFT, Dong et al. 2023; ReST / expert iteration, Gulcehre et al.
    2023): the mean token NLL of the selected samples, with no ratio and no clip, so several
    epochs keep fitting them. Meant for non-negative weights; 0 when no token is selected.
    The ratio metrics are reported as for the clipped loss (``clip_fraction`` is 0).
    """
    valid = mask.astype(bool)
    w = jnp.where(valid, advantages, 0.0)
    log_ratio = jnp.where(valid, logp - old_logp, 0.0)
    norm = jnp.maximum(jnp.sum(jnp.abs(w)), 1e-8)
    loss = -jnp.sum(w * jnp.where(valid, logp, 0.0)) / norm
    metrics = _ratio_metrics(log_ratio, jnp.exp(log_ratio), mask)
    metrics["clip_fraction"] = jnp.zeros((), jnp.float32)
    return loss, metrics


def _check_clip(clip_eps: float) -> None:
    if isinstance(clip_eps, (int, float)) and not clip_eps > 0:
        raise ConfigError(f"clip_eps must be > 0, got {clip_eps}")


def _clip_high(clip_eps: float, clip_eps_high: float | None) -> float:
    """The upper clip range: `clip_eps_high` where > 0 (DAPO clip-higher), else `clip_eps`."""
    if clip_eps_high is None:
        return clip_eps
    if isinstance(clip_eps_high, (int, float)):
        if clip_eps_high < 0:
            raise ConfigError(f"clip_eps_high must be >= 0 (0 = clip_eps), got {clip_eps_high}")
        return clip_eps_high if clip_eps_high > 0 else clip_eps
    return jnp.where(clip_eps_high > 0, clip_eps_high, clip_eps)


def _ratio_metrics(log_ratio: Array, ratio: Array, mask: Array) -> dict[str, Array]:
    # k3 estimator of KL(old || new): non-negative and low-variance (Schulman's blog).
    return {
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": jnp.max(jnp.where(mask.astype(bool), ratio, -jnp.inf), initial=0.0),
    }


def clipped_policy_loss(
    logp: Array,
    old_logp: Array,
    advantages: Array,
    mask: Array,
    clip_eps: float,
    clip_eps_high: float | None = 0.0,
    loss_agg: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """PPO clipped surrogate: `aggregate` of ``max(-A*r, -A*clip(r, 1-eps, 1+eps_high))``.

    Args:
      logp, old_logp, advantages, mask: ``[B, T]``; `r = exp(logp - old_logp)`.
      clip_eps: the PPO clip range (lower side, and upper side unless `clip_eps_high` > 0).
      clip_eps_high: DAPO clip-higher upper range; 0 or None means `clip_eps` (symmetric).
      loss_agg, max_len: see `aggregate`; the default is the masked mean over valid tokens.
    Returns:
      (loss scalar, metrics with ``clip_fraction``, ``approx_kl``, ``ratio_mean``, ``ratio_max``;
      the metrics are means over valid tokens whatever `loss_agg`).
    """
    _check_clip(clip_eps)
    high = _clip_high(clip_eps, clip_eps_high)
    log_ratio = jnp.where(mask.astype(bool), logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    losses1 = -advantages * ratio
    losses2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
    loss = aggregate(jnp.maximum(losses1, losses2), mask, loss_agg, max_len)
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
    clip_eps_high: float | None = 0.0,
    loss_agg: str = "token_mean",
    max_len: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Dual-clip PPO (Ye et al. 2020): for A < 0 the clipped loss is also capped at ``-c*A``.

    `clip_eps_high`, `loss_agg` and `max_len` as in `clipped_policy_loss`.
    """
    _check_clip(clip_eps)
    if isinstance(dual_clip_c, (int, float)) and not dual_clip_c > 1.0:
        raise ConfigError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    high = _clip_high(clip_eps, clip_eps_high)
    log_ratio = jnp.where(mask.astype(bool), logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    losses1 = -advantages * ratio
    losses2 = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
    clipped = jnp.maximum(losses1, losses2)
    cap = -advantages * dual_clip_c
    per_token = jnp.where(advantages < 0, jnp.minimum(clipped, cap), clipped)
    loss = aggregate(per_token, mask, loss_agg, max_len)
    metrics = _ratio_metrics(log_ratio, ratio, mask)
    metrics["clip_fraction"] = masked_mean((losses2 > losses1).astype(jnp.float32), mask)
    metrics["dual_clip_fraction"] = masked_mean(
        ((advantages < 0) & (cap < clipped)).astype(jnp.float32), mask
    )
    return loss, metrics


def gspo_policy_loss(
    logp: Array,
    old_logp: Array,
    advantages: Array,
    mask: Array,
    clip_eps: float,
    clip_eps_high: float | None = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """GSPO (Zheng et al. 2025): PPO clipping on a sequence-level importance ratio.

    ``s_i = exp(mean_t (logp - old_logp))`` over row i's valid tokens, used per token as
    ``s_i,t = sg[s_i] * exp(logp_t - sg[logp_t])`` (as the paper / verl), so the value is
    ``s_i`` and the gradient is ``s_i * grad logp_t``; the clip to ``[1-eps, 1+eps_high]``
    acts on the sequence. The per-token ``max(-A*s, -A*clip(s))`` is averaged per row, then
    over rows (``seq_mean_token_mean``); with one advantage per row that is the paper's
    ``-mean_i min(s_i A_i, clip(s_i) A_i)`` with ``grad s_i = s_i * mean_t grad logp_t``.
    The log of ``s_i,t`` is capped at 10 (as verl) against overflow.

    Args:
      logp, old_logp, advantages, mask: ``[B, T]``.
      clip_eps, clip_eps_high: sequence-level clip ranges (the paper uses ~3e-4 / 4e-4);
        `clip_eps_high` 0 or None means `clip_eps`.
    Returns:
      (loss scalar, metrics: ``clip_fraction`` (valid tokens in a clipped sequence),
      ``approx_kl`` (token-level k3, comparable with the other losses), ``ratio_mean`` /
      ``ratio_max`` of the sequence ratio over valid tokens).
    """
    _check_clip(clip_eps)
    high = _clip_high(clip_eps, clip_eps_high)
    valid = mask.astype(bool)
    log_ratio = jnp.where(valid, logp - old_logp, 0.0)
    seq_log_ratio_B = jax.lax.stop_gradient(masked_mean(log_ratio, mask, axis=-1))
    logp_v = jnp.where(valid, logp, 0.0)
    log_seq_ratio = jnp.minimum(
        logp_v - jax.lax.stop_gradient(logp_v) + seq_log_ratio_B[:, None], 10.0
    )
    seq_ratio = jnp.where(valid, jnp.exp(log_seq_ratio), 0.0)
    losses1 = -advantages * seq_ratio
    losses2 = -advantages * jnp.clip(seq_ratio, 1.0 - clip_eps, 1.0 + high)
    loss = aggregate(jnp.maximum(losses1, losses2), mask, "seq_mean_token_mean")
    ratio = jnp.exp(log_ratio)
    metrics = {
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
        "ratio_mean": masked_mean(seq_ratio, mask),
        "ratio_max": jnp.max(jnp.where(valid, seq_ratio, -jnp.inf), initial=0.0),
        "clip_fraction": masked_mean((losses2 > losses1).astype(jnp.float32), mask),
    }
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
    """Entropy of softmax(logits) per position (`girl_jax.rl.logprobs`: p log p is 0 where
    p == 0, also where logits were -inf)."""
    return logprobs.entropy(logits_BxTxV)


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


def _opt(config: Any, key: str, default: Any) -> Any:
    """`registry.hparam` where a present-but-None value also means the default."""
    value = registry.hparam(config, key, default)
    return default if value is None else value


def _agg_hparams(config: Any) -> dict[str, Any]:
    return dict(
        clip_eps_high=_opt(config, "clip_eps_high", 0.0),
        loss_agg=_opt(config, "loss_agg", "token_mean"),
        max_len=_opt(config, "max_new_tokens", None),
    )


@registry.register("policy_loss", "clipped")
def _clipped_policy(logp, old_logp, advantages, mask, *, config: Any):
    return clipped_policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        registry.hparam(config, "clip_eps", 0.2),
        **_agg_hparams(config),
    )


@registry.register("policy_loss", "dual_clip")
def _dual_clip_policy(logp, old_logp, advantages, mask, *, config: Any):
    return dual_clip_policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        registry.hparam(config, "clip_eps", 0.2),
        _opt(config, "dual_clip_c", 3.0),
        **_agg_hparams(config),
    )


@registry.register("policy_loss", "gspo")
def _gspo_policy(logp, old_logp, advantages, mask, *, config: Any):
    return gspo_policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        registry.hparam(config, "clip_eps", 0.2),
        _opt(config, "clip_eps_high", 0.0),
    )


@registry.register("policy_loss", "nll")
def _nll_policy(logp, old_logp, advantages, mask, *, config: Any):
    del config
    return weighted_nll_policy_loss(logp, old_logp, advantages, mask)


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
