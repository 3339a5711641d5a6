"""Advantage estimators against plain NumPy loops on random inputs with prefix masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax.errors import ConfigError
from girl_jax.rl import advantages, registry

B, T = 8, 7
TOL = dict(rtol=1e-5, atol=1e-5)


def prefix_mask(rng, b=B, t=T):
    """Random contiguous-prefix masks, including an all-zero row and a full row."""
    lengths = rng.integers(0, t + 1, size=b)
    lengths[0], lengths[1] = 0, t
    return (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)


def random_inputs(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(B, T)).astype(np.float32)
    values = rng.normal(size=(B, T)).astype(np.float32)
    return rewards, values, prefix_mask(rng), rng


def np_gae(rewards, values, mask, gamma, lam):
    adv = np.zeros_like(rewards, dtype=np.float64)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1] if t + 1 < n else 0.0
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t] = last
    returns = np.where(mask > 0, adv + values, 0.0)
    return adv, returns


@pytest.mark.parametrize("seed,gamma,lam", [(0, 1.0, 0.95), (1, 0.9, 0.8), (2, 0.99, 1.0)])
def test_gae_matches_loop(seed, gamma, lam):
    rewards, values, mask, _ = random_inputs(seed)
    # Garbage beyond the mask must not leak in.
    rewards = np.where(mask > 0, rewards, 1e6).astype(np.float32)
    adv, ret = jax.jit(advantages.gae, static_argnums=(3, 4))(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = np_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, **TOL)
    np.testing.assert_allclose(ret, ref_ret, **TOL)
    assert np.all(np.asarray(adv)[mask == 0] == 0)


def test_gae_lambda_one_is_mc_return_minus_value():
    rewards, values, mask, _ = random_inputs(3)
    adv, _ = advantages.gae(rewards, values, mask, 1.0, 1.0)
    g = np.zeros_like(rewards)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            g[b, t] = rewards[b, t:n].sum() - values[b, t]
    np.testing.assert_allclose(adv, g, **TOL)


def np_group_scores(scores, k, fn):
    out = np.zeros_like(scores, dtype=np.float64)
    for g in range(len(scores) // k):
        grp = scores[g * k : (g + 1) * k].astype(np.float64)
        for i in range(k):
            out[g * k + i] = fn(grp, i)
    return out


@pytest.mark.parametrize("k", [2, 4])
def test_grpo_matches_loop(k):
    _, _, mask, rng = random_inputs(4)
    scores = rng.normal(size=B).astype(np.float32)
    eps = 1e-4
    ref_seq = np_group_scores(scores, k, lambda g, i: (g[i] - g.mean()) / (np.std(g, ddof=1) + eps))
    ref = np.where(mask > 0, ref_seq[:, None], 0.0)
    np.testing.assert_allclose(advantages.grpo(scores, mask, k, eps), ref, **TOL)
    ref_nostd = np.where(
        mask > 0, np_group_scores(scores, k, lambda g, i: g[i] - g.mean())[:, None], 0
    )
    np.testing.assert_allclose(
        advantages.grpo(scores, mask, k, scale_by_std=False), ref_nostd, **TOL
    )


@pytest.mark.parametrize("k", [2, 4, 8])
def test_rloo_matches_loop(k):
    _, _, mask, rng = random_inputs(5)
    scores = rng.normal(size=B).astype(np.float32)
    ref_seq = np_group_scores(scores, k, lambda g, i: g[i] - (g.sum() - g[i]) / (k - 1))
    ref = np.where(mask > 0, ref_seq[:, None], 0.0)
    np.testing.assert_allclose(advantages.rloo(scores, mask, k), ref, **TOL)


def test_group_size_errors():
    mask = np.ones((6, 3), np.int32)
    with pytest.raises(ConfigError, match="multiple of group_size"):
        advantages.grpo(np.zeros(6, np.float32), mask, 4)
    with pytest.raises(ConfigError, match="group_size"):
        advantages.rloo(np.zeros(6, np.float32), mask, 1)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_matches_loop(gamma):
    rewards, values, mask, rng = random_inputs(6)
    ref = np.zeros_like(rewards, dtype=np.float64)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            ref[b, t] = sum(gamma ** (j - t) * rewards[b, j] for j in range(t, n))
    adv, ret = advantages.reinforce(rewards, mask, gamma)
    np.testing.assert_allclose(adv, ref, **TOL)
    np.testing.assert_allclose(ret, ref, **TOL)
    base = rng.normal(size=B).astype(np.float32)
    adv_b, _ = advantages.reinforce(rewards, mask, gamma, jnp.asarray(base))
    np.testing.assert_allclose(adv_b, np.where(mask > 0, ref - base[:, None], 0.0), **TOL)
    # Sequence scores [B] count as a reward at the last valid token.
    adv_s, _ = advantages.reinforce(base, mask, gamma)
    ref_s = np.zeros_like(ref)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            ref_s[b, t] = gamma ** (n - 1 - t) * base[b]
    np.testing.assert_allclose(adv_s, ref_s, **TOL)


def test_whiten_matches_loop():
    x, _, mask, _ = random_inputs(7)
    vals = np.array([x[b, t] for b in range(B) for t in range(T) if mask[b, t]], np.float64)
    mean, var = vals.mean(), vals.var()
    ref = np.where(mask > 0, (x - mean) / np.sqrt(var + 1e-8), 0.0)
    np.testing.assert_allclose(advantages.whiten(x, mask), ref, **TOL)
    ref_keep = np.where(mask > 0, ref + mean, 0.0)
    np.testing.assert_allclose(advantages.whiten(x, mask, shift_mean=False), ref_keep, **TOL)
    w = np.asarray(advantages.whiten(x, mask))[mask > 0]
    assert abs(w.mean()) < 1e-5 and abs(w.std() - 1) < 1e-4


def test_registered_estimators_uniform_call():
    rewards, values, mask, rng = random_inputs(8)
    scores = rng.normal(size=B).astype(np.float32)
    cfg = {"gamma": 0.9, "lam": 0.8, "group_size": 4}
    for name in ("gae", "grpo", "rloo", "reinforce"):
        fn = registry.get("advantage", name)
        adv, ret = jax.jit(
            lambda r, v, m, s, fn=fn: fn(rewards=r, values=v, mask=m, scores=s, config=cfg)
        )(rewards, values, mask, scores)
        assert adv.shape == ret.shape == (B, T)
        assert np.all(np.asarray(adv)[mask == 0] == 0), name
    adv, _ = registry.get("advantage", "gae")(
        rewards=rewards, values=values, mask=mask, scores=None, config=cfg
    )
    np.testing.assert_allclose(adv, np_gae(rewards, values, mask, 0.9, 0.8)[0], **TOL)
    # grpo without scores uses the masked sum of per-token rewards as the sequence reward.
    seq = np.where(mask > 0, rewards, 0).sum(1)
    adv, ret = registry.get("advantage", "grpo")(
        rewards=rewards, values=None, mask=mask, scores=None, config=cfg
    )
    np.testing.assert_allclose(adv, advantages.grpo(seq, mask, 4), **TOL)
    np.testing.assert_allclose(ret, np.where(mask > 0, seq[:, None], 0), **TOL)
    # reinforce from scores: the score sits at the last valid token.
    adv, _ = registry.get("advantage", "reinforce")(
        rewards=None, values=None, mask=mask, scores=scores, config={"gamma": 1.0}
    )
    np.testing.assert_allclose(adv, np.where(mask > 0, scores[:, None], 0), **TOL)


def test_reinforce_mean_baseline():
    rewards, _, mask, _ = random_inputs(9)
    adv, g = registry.get("advantage", "reinforce")(
        rewards=rewards, values=None, mask=mask, scores=None, config={"baseline": "mean"}
    )
    g0 = np.asarray(g)[:, 0][mask.sum(1) > 0]
    np.testing.assert_allclose(adv, np.where(mask > 0, np.asarray(g) - g0.mean(), 0), **TOL)


def test_registry_errors():
    with pytest.raises(ConfigError, match="gae.*grpo.*reinforce.*rloo"):
        registry.get("advantage", "nope")
    with pytest.raises(ConfigError, match="known kinds"):
        registry.get("nope", "gae")
    with pytest.raises(ConfigError, match="group_size"):
        registry.get("advantage", "rloo")(
            rewards=None, values=None, mask=np.ones((2, 2)), scores=np.zeros(2), config={}
        )
    with pytest.raises(ConfigError, match="values"):
        registry.get("advantage", "gae")(
            rewards=np.zeros((2, 2)), values=None, mask=np.ones((2, 2)), scores=None, config={}
        )
