"""Advantage estimators: GAE, GRPO / Dr. GRPO, RLOO, REINFORCE and REINFORCE++.

All arrays are ``[B, T]`` over response tokens with a mask that is 1 on a
contiguous prefix of each row (the generated tokens up to and including EOS).
Outputs are 0 where the mask is 0. Nothing here whitens unless asked: the PPO
stage decides (lm-human-preferences whitens advantages per batch).
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from girl_jax.errors import ConfigError
from girl_jax.rl import registry
from girl_jax.rl.masked import masked_mean, masked_sum

Array = jax.Array


def whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """``(x - mean) / sqrt(var + eps)`` with mean / biased var over valid tokens; 0 where masked.

    With ``shift_mean=False`` the mean is added back (scale only), as lm-human-preferences.
    """
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    out = (x - mean) * lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(mask.astype(bool), out, 0.0)


def gae(
    rewards: Array, values: Array, mask: Array, gamma: float, lam: float
) -> tuple[Array, Array]:
    """Generalised advantage estimation as a reverse scan over time.

    Args:
      rewards, values, mask: ``[B, T]``; the value after the last valid token counts as 0.
      gamma, lam: discount and GAE lambda.
    Returns:
      (advantages_BxT, returns_BxT), both 0 outside the mask; ``returns = advantages + values``
      on valid tokens. Not whitened.
    """
    dtype = jnp.result_type(rewards, values, jnp.float32)
    m_BxT = mask.astype(dtype)
    r_BxT = jnp.where(mask.astype(bool), rewards, 0).astype(dtype)
    v_BxT = jnp.where(mask.astype(bool), values, 0).astype(dtype)

    def step(carry, xs):
        next_value_B, next_adv_B = carry
        r_B, v_B, m_B = xs
        delta_B = r_B + gamma * next_value_B - v_B
        adv_B = (delta_B + gamma * lam * next_adv_B) * m_B
        # Invalid steps carry zeros back, so the last valid token bootstraps from 0.
        return (v_B * m_B, adv_B), adv_B

    zeros_B = jnp.zeros(rewards.shape[:1], dtype)
    _, adv_TxB = lax.scan(step, (zeros_B, zeros_B), (r_BxT.T, v_BxT.T, m_BxT.T), reverse=True)
    adv_BxT = adv_TxB.T
    return adv_BxT, (adv_BxT + v_BxT) * m_BxT


def _grouped(scores_B: Array, group_size: int) -> Array:
    if not isinstance(group_size, int) or group_size < 2:
        raise ConfigError(f"group_size must be an int >= 2, got {group_size!r}")
    if scores_B.shape[0] % group_size:
        raise ConfigError(
            f"batch of {scores_B.shape[0]} sequences is not a multiple of group_size={group_size}"
        )
    return scores_B.reshape(-1, group_size)


def _broadcast(seq_B: Array, mask: Array) -> Array:
    return jnp.where(mask.astype(bool), seq_B[:, None], 0.0).astype(seq_B.dtype)


def grpo(
    scores_B: Array,
    mask: Array,
    group_size: int,
    eps: float = 1e-4,
    scale_by_std: bool = True,
) -> Array:
    """Group-relative advantages: ``(s - mean_g) / (std_g + eps)`` on valid tokens.

    Groups are `group_size` consecutive rows (samples of one prompt); std is the
    unbiased one (ddof=1), as TRL / Tunix. With ``scale_by_std=False`` only the
    mean is removed (Dr. GRPO).
    """
    s_GxK = _grouped(scores_B.astype(jnp.float32), group_size)
    adv_GxK = s_GxK - jnp.mean(s_GxK, axis=1, keepdims=True)
    if scale_by_std:
        adv_GxK = adv_GxK / (jnp.std(s_GxK, axis=1, ddof=1, keepdims=True) + eps)
    return _broadcast(adv_GxK.reshape(-1), mask)


def rloo(scores_B: Array, mask: Array, group_size: int) -> Array:
    """REINFORCE leave-one-out: ``s_i - mean_{j != i in group} s_j`` on valid tokens."""
    s_GxK = _grouped(scores_B.astype(jnp.float32), group_size)
    baseline_GxK = (jnp.sum(s_GxK, axis=1, keepdims=True) - s_GxK) / (group_size - 1)
    return _broadcast((s_GxK - baseline_GxK).reshape(-1), mask)


def returns_to_go(rewards: Array, mask: Array, gamma: float) -> Array:
    """``G_t = sum_{k >= t} gamma^(k-t) r_k`` over valid tokens; 0 outside the mask."""
    dtype = jnp.result_type(rewards, jnp.float32)
    m_BxT = mask.astype(dtype)
    r_BxT = jnp.where(mask.astype(bool), rewards, 0).astype(dtype)

    def step(next_g_B, xs):
        r_B, m_B = xs
        g_B = (r_B + gamma * next_g_B) * m_B
        return g_B, g_B

    _, g_TxB = lax.scan(step, jnp.zeros(rewards.shape[:1], dtype), (r_BxT.T, m_BxT.T), reverse=True)
    return g_TxB.T


def reinforce(
    rewards: Array, mask: Array, gamma: float = 1.0, baseline: Array | None = None
) -> tuple[Array, Array]:
    """REINFORCE: advantages = returns-to-go minus an optional baseline (``[B]`` or ``[B, T]``).

    `rewards` is per-token ``[B, T]`` or sequence scores ``[B]`` (placed at the last valid
    token). Returns (advantages_BxT, returns_BxT), 0 outside the mask.
    """
    if rewards.ndim == 1:
        rewards = scores_to_token_rewards(rewards, mask)
    g_BxT = returns_to_go(rewards, mask, gamma)
    if baseline is None:
        return g_BxT, g_BxT
    if baseline.ndim == 1:
        baseline = baseline[:, None]
    return jnp.where(mask.astype(bool), g_BxT - baseline, 0.0), g_BxT


def group_mean_baseline(scores_B: Array, group_size: int) -> Array:
    """Each row's group mean of `scores_B` (``[B]``); groups are `group_size` consecutive rows."""
    s_GxK = _grouped(scores_B.astype(jnp.float32), group_size)
    return jnp.broadcast_to(jnp.mean(s_GxK, axis=1, keepdims=True), s_GxK.shape).reshape(-1)


def reinforce_pp(
    rewards: Array,
    mask: Array,
    gamma: float = 1.0,
    baseline_B: Array | None = None,
    eps: float = 1e-8,
) -> tuple[Array, Array]:
    """REINFORCE++ (Hu 2025): returns-to-go whitened over the batch's valid tokens, no critic.

    Args:
      rewards: per-token ``[B, T]`` (-beta*KL plus the score at the last valid token).
      mask: ``[B, T]`` prefix mask.
      gamma: discount of the returns-to-go.
      baseline_B: optional ``[B]`` subtracted from the reward at each row's last valid token
        before the returns (REINFORCE++-baseline: the group mean of the scores).
      eps: whitening epsilon, ``(G - mean) / sqrt(var + eps)``.
    Returns:
      (advantages_BxT, returns_BxT): the whitened returns-to-go of the (baselined) rewards,
      and the returns-to-go of the original `rewards`; 0 outside the mask.
    """
    g_BxT = returns_to_go(rewards, mask, gamma)
    if baseline_B is None:
        shaped_g = g_BxT
    else:
        shaped = rewards - scores_to_token_rewards(baseline_B, mask)
        shaped_g = returns_to_go(shaped, mask, gamma)
    return whiten(shaped_g, mask, eps=eps), g_BxT


def scores_to_token_rewards(scores_B: Array, mask: Array) -> Array:
    """Place each sequence score at its last valid token (0 elsewhere; dropped if no tokens)."""
    length_B = jnp.sum(mask.astype(jnp.int32), axis=1)
    last_BxT = jax.nn.one_hot(length_B - 1, mask.shape[1], dtype=jnp.float32)
    return last_BxT * scores_B.astype(jnp.float32)[:, None]


# Registered estimators: keyword-only, one shape for all (see girl_jax.rl docstring).


def _sequence_rewards(rewards, scores, mask, name):
    if scores is not None:
        return scores
    if rewards is None:
        raise ConfigError(f"advantage {name!r} needs `scores` or per-token `rewards`")
    return masked_sum(rewards, mask, axis=1)


@registry.register("advantage", "gae")
def _gae_estimator(*, rewards=None, values=None, mask, scores=None, config: Any = None):
    if rewards is None or values is None:
        raise ConfigError("advantage 'gae' needs per-token `rewards` and critic `values`")
    del scores
    return gae(
        rewards,
        values,
        mask,
        registry.hparam(config, "gamma", 1.0),
        registry.hparam(config, "lam", 0.95),
    )


@registry.register("advantage", "grpo")
def _grpo_estimator(*, rewards=None, values=None, mask, scores=None, config: Any = None):
    del values
    seq_B = _sequence_rewards(rewards, scores, mask, "grpo")
    adv = grpo(
        seq_B,
        mask,
        registry.hparam(config, "group_size"),
        registry.hparam(config, "grpo_eps", 1e-4),
        registry.hparam(config, "scale_by_std", True),
    )
    return adv, _broadcast(seq_B.astype(jnp.float32), mask)


@registry.register("advantage", "dr_grpo")
def _dr_grpo_estimator(*, rewards=None, values=None, mask, scores=None, config: Any = None):
    # Dr. GRPO (Liu et al. 2025): group mean removed, never divided by the group std.
    del values
    seq_B = _sequence_rewards(rewards, scores, mask, "dr_grpo")
    adv = grpo(seq_B, mask, registry.hparam(config, "group_size"), scale_by_std=False)
    return adv, _broadcast(seq_B.astype(jnp.float32), mask)


def best_of_group(scores_B: Array, mask: Array, group_size: int) -> Array:
    """1 on every valid token of each group's highest-scoring row (first on ties), else 0;
    a group whose rows all scored the same gets 0 (nothing to prefer).

    With an unwhitened clipped loss this is best-of-n distillation (RAFT, Dong et al. 2023;
    ReST-style expert iteration): the first epoch's gradient is SFT on the group's best sample,
    the clip bounds how far one iteration moves it.
    """
    s_GxK = _grouped(scores_B.astype(jnp.float32), group_size)
    best_GxK = jax.nn.one_hot(jnp.argmax(s_GxK, axis=1), group_size, dtype=jnp.float32)
    best_GxK = best_GxK * (jnp.max(s_GxK, axis=1) > jnp.min(s_GxK, axis=1))[:, None]
    return _broadcast(best_GxK.reshape(-1), mask)


@registry.register("advantage", "bon")
def _bon_estimator(*, rewards=None, values=None, mask, scores=None, config: Any = None):
    del values
    seq_B = _sequence_rewards(rewards, scores, mask, "bon")
    adv = best_of_group(seq_B, mask, registry.hparam(config, "group_size"))
    return adv, _broadcast(seq_B.astype(jnp.float32), mask)


@registry.register("advantage", "rloo")
def _rloo_estimator(*, rewards=None, values=None, mask, scores=None, config: Any = None):
    del values
    seq_B = _sequence_rewards(rewards, scores, mask, "rloo")
    adv = rloo(seq_B, mask, registry.hparam(config, "group_size"))
    return adv, _broadcast(seq_B.astype(jnp.float32), mask)


@registry.register("advantage", "reinforce")
def _reinforce_estimator(*, rewards=None, values=None, mask, scores=None, config: Any = None):
    if rewards is None:
        if scores is None:
            raise ConfigError("advantage 'reinforce' needs per-token `rewards` or `scores`")
        rewards = scores_to_token_rewards(scores, mask)
    gamma = registry.hparam(config, "gamma", 1.0)
    kind = registry.hparam(config, "baseline", "none")
    if kind == "none":
        baseline = None
    elif kind == "mean":
        # Batch mean of the whole-sequence return.
        g0_B = returns_to_go(rewards, mask, gamma)[:, 0]
        has_B = jnp.any(mask.astype(bool), axis=1)
        baseline = masked_mean(g0_B, has_B) * jnp.ones_like(g0_B)
    elif kind == "value":
        if values is None:
            raise ConfigError("advantage 'reinforce' with baseline='value' needs `values`")
        baseline = values
    else:
        raise ConfigError(f"reinforce baseline must be 'none', 'mean' or 'value', got {kind!r}")
    return reinforce(rewards, mask, gamma, baseline)


def _token_rewards(rewards, scores, mask, name):
    if rewards is not None:
        return rewards
    if scores is None:
        raise ConfigError(f"advantage {name!r} needs per-token `rewards` or `scores`")
    return scores_to_token_rewards(scores, mask)


@registry.register("advantage", "reinforce_pp")
def _reinforce_pp_estimator(*, rewards=None, values=None, mask, scores=None, config: Any = None):
    del values
    rewards = _token_rewards(rewards, scores, mask, "reinforce_pp")
    return reinforce_pp(rewards, mask, registry.hparam(config, "gamma", 1.0))


@registry.register("advantage", "reinforce_pp_baseline")
def _reinforce_pp_baseline_estimator(
    *, rewards=None, values=None, mask, scores=None, config: Any = None
):
    # OpenRLHF's reinforce_baseline: the group mean of the sequence scores comes off the
    # reward at the last token, then returns-to-go and batch whitening as REINFORCE++.
    del values
    token_rewards = _token_rewards(rewards, scores, mask, "reinforce_pp_baseline")
    group_size = registry.hparam(config, "group_size", 1)
    baseline_B = None
    if group_size is not None and group_size > 1:
        seq_B = _sequence_rewards(rewards, scores, mask, "reinforce_pp_baseline")
        baseline_B = group_mean_baseline(seq_B, group_size)
    return reinforce_pp(token_rewards, mask, registry.hparam(config, "gamma", 1.0), baseline_B)


def process_advantages(
    steps_BxT: Array,
    step_mask_BxT: Array,
    mask: Array,
    group_size: int,
    eps: float = 1e-4,
) -> Array:
    """Process supervision as GRPO does it (DeepSeekMath, Shao et al. 2024, sec. 4.1.3).

    A step reward sits at the token where its step ends (``step_mask`` 1 there, e.g. the last
    token of a skill the JD asks for). Each is normalised by the mean and the (population) std
    of every step reward of its group, and every token gets the sum of the normalised step
    rewards at or after it: a token is credited with what it led to, not with what came
    before it. A group with fewer than 2 step rewards, or all equal, contributes 0.
    """
    sm_BxT = (step_mask_BxT.astype(bool) & mask.astype(bool)).astype(jnp.float32)
    r_BxT = jnp.where(sm_BxT > 0, steps_BxT.astype(jnp.float32), 0.0)
    T = r_BxT.shape[1]
    _grouped(r_BxT[:, 0], group_size)  # checks group_size and the batch
    r_GxKT = r_BxT.reshape(-1, group_size * T)
    sm_GxKT = sm_BxT.reshape(-1, group_size * T)
    n_G1 = jnp.sum(sm_GxKT, axis=1, keepdims=True)
    mean_G1 = jnp.sum(r_GxKT, axis=1, keepdims=True) / jnp.maximum(n_G1, 1.0)
    var_G1 = jnp.sum(sm_GxKT * jnp.square(r_GxKT - mean_G1), axis=1, keepdims=True)
    std_G1 = jnp.sqrt(var_G1 / jnp.maximum(n_G1, 1.0))
    norm_GxKT = jnp.where(
        (sm_GxKT > 0) & (n_G1 >= 2) & (std_G1 > 0), (r_GxKT - mean_G1) / (std_G1 + eps), 0.0
    )
    norm_BxT = norm_GxKT.reshape(-1, T)
    # sum over t' >= t: a reverse cumulative sum along the response
    togo_BxT = jnp.flip(jnp.cumsum(jnp.flip(norm_BxT, axis=1), axis=1), axis=1)
    return jnp.where(mask.astype(bool), togo_BxT, 0.0)


@registry.register("advantage", "grpo_process")
def _grpo_process_estimator(
    *, rewards=None, values=None, mask, scores=None, config: Any = None, steps=None
):
    # GRPO's outcome advantage on every token plus the process advantage of the step rewards
    # (`steps` = (values_BxT, step_mask_BxT), e.g. from a span reward such as oracle_credit);
    # without steps it is GRPO. Returns as grpo: the sequence reward on every valid token.
    adv, returns = _grpo_estimator(
        rewards=rewards, values=values, mask=mask, scores=scores, config=config
    )
    if steps is not None:
        adv = adv + process_advantages(
            steps[0],
            steps[1],
            mask,
            registry.hparam(config, "group_size"),
            registry.hparam(config, "grpo_eps", 1e-4),
        )
    return adv, returns
