"""Peer RL variants (DAPO, GSPO, Dr. GRPO, REINFORCE++, loss aggregation) against NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax.errors import ConfigError
from girl_jax.rl import advantages, filters, losses, registry

B, T = 8, 6
TOL = dict(rtol=1e-5, atol=1e-5)


def prefix_mask(rng, b=B, t=T):
    """Random contiguous-prefix masks, including an all-zero row and a full row."""
    lengths = rng.integers(0, t + 1, size=b)
    lengths[0], lengths[1] = 0, t
    return (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)


def inputs(seed, spread=0.4):
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(size=(B, T)).astype(np.float32)
    old_logp = (logp + spread * rng.normal(size=(B, T))).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    return logp, old_logp, adv, prefix_mask(rng), rng


def lengths(mask):
    return [int(mask[b].sum()) for b in range(mask.shape[0])]


def np_aggregate(per_tok, mask, mode, max_len=None):
    """per_tok(b, t) -> float, reduced over valid tokens as verl's loss_agg_mode."""
    ns = lengths(mask)
    if mode == "token_mean":
        vals = [per_tok(b, t) for b in range(len(ns)) for t in range(ns[b])]
        return np.mean(vals) if vals else 0.0
    rows = []
    for b, n in enumerate(ns):
        if n == 0:
            continue
        total = sum(per_tok(b, t) for t in range(n))
        rows.append(total / n if mode == "seq_mean_token_mean" else total / max_len)
    return np.mean(rows) if rows else 0.0


def np_clip_tok(logp, old, adv, lo, hi, c=None):
    def tok(b, t):
        a = np.float64(adv[b, t])
        r = np.exp(np.float64(logp[b, t]) - old[b, t])
        base = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
        return min(base, -c * a) if (c is not None and a < 0) else base

    return tok


# ------------------------------------------------------------------ loss aggregation


@pytest.mark.parametrize("mode", losses.LOSS_AGG_MODES)
def test_aggregate_matches_loop(mode):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T)).astype(np.float32)
    mask = prefix_mask(rng)
    x_bad = np.where(mask > 0, x, np.nan).astype(np.float32)
    out = jax.jit(losses.aggregate, static_argnums=(2, 3))(x_bad, mask, mode, 32)
    np.testing.assert_allclose(out, np_aggregate(lambda b, t: x[b, t], mask, mode, 32), **TOL)
    # max_len None: the padded length T.
    if mode == "seq_mean_token_sum_norm":
        ref = np_aggregate(lambda b, t: x[b, t], mask, mode, T)
        np.testing.assert_allclose(losses.aggregate(x_bad, mask, mode), ref, **TOL)
    # No valid token anywhere: 0, not nan.
    assert float(losses.aggregate(x, np.zeros_like(mask), mode, 4)) == 0.0


def test_aggregate_errors():
    x, mask = np.zeros((2, 3), np.float32), np.ones((2, 3), np.int32)
    with pytest.raises(ConfigError, match="token_mean, seq_mean_token_mean"):
        losses.aggregate(x, mask, "seq-mean-token-mean")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        losses.aggregate(x, mask, "seq_mean_token_sum_norm", 0)


@pytest.mark.parametrize("name", ["clipped", "dual_clip"])
@pytest.mark.parametrize("mode", losses.LOSS_AGG_MODES)
def test_policy_loss_aggregation_and_clip_higher(name, mode):
    logp, old, adv, mask, _ = inputs(1, spread=0.6)
    old = np.where(mask > 0, old, np.inf).astype(np.float32)  # garbage outside the mask
    cfg = {"clip_eps": 0.2, "clip_eps_high": 0.28, "dual_clip_c": 2.5, "loss_agg": mode}
    cfg["max_new_tokens"] = 16
    loss, m = registry.get("policy_loss", name)(logp, old, adv, mask, config=cfg)
    c = 2.5 if name == "dual_clip" else None
    ref = np_aggregate(np_clip_tok(logp, old, adv, 0.2, 0.28, c), mask, mode, 16)
    np.testing.assert_allclose(loss, ref, **TOL)
    assert 0 < float(m["clip_fraction"]) < 1


def test_clip_higher_is_asymmetric():
    # A > 0, ratio 1.25: clipped at 1.2 symmetric, not clipped with clip_eps_high=0.28.
    logp = np.full((1, 1), np.log(1.25), np.float32)
    zero, one, mask = np.zeros((1, 1), np.float32), np.ones((1, 1), np.float32), np.ones((1, 1))
    sym, _ = losses.clipped_policy_loss(logp, zero, one, mask, 0.2)
    high, _ = losses.clipped_policy_loss(logp, zero, one, mask, 0.2, 0.28)
    np.testing.assert_allclose([sym, high], [-1.2, -1.25], **TOL)
    # The lower side still clips at 1 - clip_eps for A < 0.
    low, _ = losses.clipped_policy_loss(-logp - 0.1, zero, -one, mask, 0.2, 0.28)
    np.testing.assert_allclose(low, 0.8, **TOL)
    with pytest.raises(ConfigError, match="clip_eps_high"):
        losses.clipped_policy_loss(logp, zero, one, mask, 0.2, -0.1)


@pytest.mark.parametrize("name", ["clipped", "dual_clip"])
def test_defaults_keep_old_values_bit_identical(name):
    logp, old, adv, mask, _ = inputs(2, spread=0.6)
    plain = {"clip_eps": 0.2, "dual_clip_c": 3.0}
    fn = registry.get("policy_loss", name)
    base, base_m = fn(logp, old, adv, mask, config=plain)
    for extra in (
        {"clip_eps_high": 0.0},
        {"clip_eps_high": None, "loss_agg": None, "max_new_tokens": None},
        {"loss_agg": "token_mean", "max_new_tokens": 99},
    ):
        loss, m = fn(logp, old, adv, mask, config={**plain, **extra})
        assert np.array_equal(np.asarray(loss), np.asarray(base)), extra
        for k in base_m:
            assert np.array_equal(np.asarray(m[k]), np.asarray(base_m[k])), (extra, k)
    # And the pre-change formula, written out.
    r = jnp.exp(jnp.where(mask > 0, logp - old, 0.0))
    per = jnp.maximum(-adv * r, -adv * jnp.clip(r, 0.8, 1.2))
    if name == "dual_clip":
        per = jnp.where(adv < 0, jnp.minimum(per, -adv * 3.0), per)
    assert np.array_equal(np.asarray(base), np.asarray(losses.masked_mean(per, mask)))


# ------------------------------------------------------------------ GSPO


def np_gspo(logp, old, adv, mask, lo, hi):
    """The paper's objective with the ratio per token: (loss, per-row s_i, clipped flags)."""
    ns = lengths(mask)
    rows, s, clipped = [], np.zeros(B), np.zeros((B, T))
    for b, n in enumerate(ns):
        if n == 0:
            continue
        s[b] = np.exp(np.mean([np.float64(logp[b, t]) - old[b, t] for t in range(n)]))
        tot = 0.0
        for t in range(n):
            a = np.float64(adv[b, t])
            l1, l2 = -a * s[b], -a * min(max(s[b], 1 - lo), 1 + hi)
            tot += max(l1, l2)
            clipped[b, t] = l2 > l1
        rows.append(tot / n)
    return np.mean(rows), s, clipped


@pytest.mark.parametrize("lo,hi", [(0.2, 0.0), (0.05, 0.08), (3e-4, 4e-4)])
def test_gspo_matches_loop(lo, hi):
    logp, old, adv, mask, _ = inputs(3, spread=0.1)
    old_bad = np.where(mask > 0, old, -np.inf).astype(np.float32)
    logp_bad = np.where(mask > 0, logp, np.nan).astype(np.float32)
    cfg = {"clip_eps": lo, "clip_eps_high": hi, "loss_agg": "token_mean"}  # gspo ignores it
    loss, m = jax.jit(lambda *a: registry.get("policy_loss", "gspo")(*a, config=cfg))(
        logp_bad, old_bad, adv, mask
    )
    ref, s, clipped = np_gspo(logp, old, adv, mask, lo, hi or lo)
    np.testing.assert_allclose(loss, ref, **TOL)
    valid = [(b, t) for b in range(B) for t in range(T) if mask[b, t]]
    np.testing.assert_allclose(m["clip_fraction"], np.mean([clipped[v] for v in valid]), **TOL)
    np.testing.assert_allclose(m["ratio_mean"], np.mean([s[b] for b, _ in valid]), **TOL)
    np.testing.assert_allclose(m["ratio_max"], max(s[b] for b, _ in valid), **TOL)
    lr = [np.float64(logp[v]) - old[v] for v in valid]
    np.testing.assert_allclose(m["approx_kl"], np.mean([np.expm1(x) - x for x in lr]), **TOL)
    assert set(m) == {"clip_fraction", "approx_kl", "ratio_mean", "ratio_max"}


def test_gspo_gradient_matches_paper():
    # One advantage per sequence (as GRPO): grad of the per-token surrogate equals the
    # gradient of the paper's sequence objective, checked analytically and by finite differences.
    logp, old, _, mask, rng = inputs(4, spread=0.15)
    adv = np.where(mask > 0, rng.normal(size=(B, 1)), 0.0).astype(np.float32)
    lo, hi = 0.05, 0.08
    grad = jax.grad(lambda lp: losses.gspo_policy_loss(lp, old, adv, mask, lo, hi)[0])(logp)
    _, s, clipped = np_gspo(logp, old, adv, mask, lo, hi)
    ns = lengths(mask)
    n_rows = sum(n > 0 for n in ns)
    assert 0 < clipped.sum() < mask.sum()  # both branches are exercised
    analytic = np.zeros((B, T))
    for b, n in enumerate(ns):
        for t in range(n):
            if not clipped[b, t]:
                analytic[b, t] = -adv[b, t] * s[b] / n / n_rows
    np.testing.assert_allclose(grad, analytic, rtol=1e-4, atol=1e-6)
    # Central differences of the paper's objective, in float64.
    fd = np.zeros((B, T))
    h = 1e-6
    lp64 = logp.astype(np.float64)
    for b, n in enumerate(ns):
        for t in range(n):
            up, dn = lp64.copy(), lp64.copy()
            up[b, t] += h
            dn[b, t] -= h
            fd[b, t] = (
                np_gspo(up, old, adv, mask, lo, hi)[0] - np_gspo(dn, old, adv, mask, lo, hi)[0]
            ) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------ advantages


def np_returns_to_go(rewards, mask, gamma):
    g = np.zeros(rewards.shape)
    for b, n in enumerate(lengths(mask)):
        for t in range(n):
            g[b, t] = sum(gamma ** (j - t) * np.float64(rewards[b, j]) for j in range(t, n))
    return g


def np_whiten(x, mask, eps=1e-8):
    vals = np.array([x[b, t] for b in range(B) for t in range(T) if mask[b, t]])
    return np.where(mask > 0, (x - vals.mean()) / np.sqrt(vals.var() + eps), 0.0)


def adv_call(name, rewards=None, values=None, mask=None, scores=None, **cfg):
    return registry.get("advantage", name)(
        rewards=rewards, values=values, mask=mask, scores=scores, config=cfg
    )


@pytest.mark.parametrize("k", [2, 4])
def test_dr_grpo_is_group_mean_removed(k):
    rng = np.random.default_rng(5)
    mask, scores = prefix_mask(rng), rng.normal(size=B).astype(np.float32)
    ref = np.zeros((B, T))
    for g in range(B // k):
        grp = scores[g * k : (g + 1) * k].astype(np.float64)
        for i in range(k):
            ref[g * k + i] = np.where(mask[g * k + i] > 0, grp[i] - grp.mean(), 0.0)
    for scale in (True, False):  # scale_by_std never applies
        adv, ret = adv_call("dr_grpo", mask=mask, scores=scores, group_size=k, scale_by_std=scale)
        np.testing.assert_allclose(adv, ref, **TOL)
        np.testing.assert_allclose(ret, np.where(mask > 0, scores[:, None], 0.0), **TOL)
    adv, _ = adv_call("grpo", mask=mask, scores=scores, group_size=k, scale_by_std=False)
    np.testing.assert_allclose(adv, ref, **TOL)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_matches_loop(gamma):
    rng = np.random.default_rng(6)
    mask = prefix_mask(rng)
    rewards = np.where(mask > 0, rng.normal(size=(B, T)), 1e6).astype(np.float32)
    g = np_returns_to_go(rewards, mask, gamma)
    adv, ret = jax.jit(lambda r, m: adv_call("reinforce_pp", rewards=r, mask=m, gamma=gamma))(
        rewards, mask
    )
    np.testing.assert_allclose(adv, np_whiten(g, mask), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, g, **TOL)
    w = np.asarray(adv)[mask > 0]
    assert abs(w.mean()) < 1e-5 and abs(w.std() - 1) < 1e-4
    # From scores only: the score sits at the last valid token.
    scores = rng.normal(size=B).astype(np.float32)
    adv, _ = adv_call("reinforce_pp", mask=mask, scores=scores, gamma=gamma)
    token_r = np.asarray(advantages.scores_to_token_rewards(scores, mask))
    np.testing.assert_allclose(
        adv, np_whiten(np_returns_to_go(token_r, mask, gamma), mask), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("k,gamma", [(2, 1.0), (4, 0.95)])
def test_reinforce_pp_baseline_matches_loop(k, gamma):
    rng = np.random.default_rng(7)
    mask = prefix_mask(rng)
    scores = rng.normal(size=B).astype(np.float32)
    kl_r = (-0.05 * rng.exponential(size=(B, T))).astype(np.float32)
    rewards = np.where(mask > 0, kl_r, 0.0).astype(np.float32)
    ns = lengths(mask)
    for b, n in enumerate(ns):
        if n:
            rewards[b, n - 1] += scores[b]
    shaped = rewards.astype(np.float64).copy()
    for g in range(B // k):
        mean = scores[g * k : (g + 1) * k].astype(np.float64).mean()
        for i in range(g * k, (g + 1) * k):
            if ns[i]:
                shaped[i, ns[i] - 1] -= mean
    adv, ret = adv_call(
        "reinforce_pp_baseline",
        rewards=rewards,
        mask=mask,
        scores=scores,
        gamma=gamma,
        group_size=k,
    )
    ref = np_whiten(np_returns_to_go(shaped, mask, gamma), mask)
    np.testing.assert_allclose(adv, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, np_returns_to_go(rewards, mask, gamma), **TOL)
    # group_size 1 (or missing): plain REINFORCE++.
    for cfg in ({"group_size": 1}, {}):
        a1, _ = adv_call("reinforce_pp_baseline", rewards=rewards, mask=mask, scores=scores, **cfg)
        a0, _ = adv_call("reinforce_pp", rewards=rewards, mask=mask, scores=scores)
        np.testing.assert_allclose(a1, a0, **TOL)
    with pytest.raises(ConfigError, match="needs"):
        adv_call("reinforce_pp", mask=mask)


@pytest.mark.parametrize("baseline", ["none", "mean", "value"])
def test_reinforce_baselines_through_registry(baseline):
    rng = np.random.default_rng(8)
    mask = prefix_mask(rng)
    rewards = rng.normal(size=(B, T)).astype(np.float32)
    values = rng.normal(size=(B, T)).astype(np.float32)
    gamma = 0.9
    g = np_returns_to_go(rewards, mask, gamma)
    ns = lengths(mask)
    ref = np.zeros((B, T))
    mean_g0 = np.mean([g[b, 0] for b in range(B) if ns[b]])
    for b, n in enumerate(ns):
        for t in range(n):
            base = {"none": 0.0, "mean": mean_g0, "value": values[b, t]}[baseline]
            ref[b, t] = g[b, t] - base
    adv, ret = adv_call(
        "reinforce", rewards=rewards, values=values, mask=mask, gamma=gamma, baseline=baseline
    )
    np.testing.assert_allclose(adv, ref, **TOL)
    np.testing.assert_allclose(ret, g, **TOL)


def test_reinforce_baseline_errors():
    mask, r = np.ones((2, 2), np.int32), np.zeros((2, 2), np.float32)
    with pytest.raises(ConfigError, match="'none', 'mean' or 'value'"):
        adv_call("reinforce", rewards=r, mask=mask, baseline="critic")
    with pytest.raises(ConfigError, match="values"):
        adv_call("reinforce", rewards=r, mask=mask, baseline="value")


# ------------------------------------------------------------------ DAPO dynamic sampling


@pytest.mark.parametrize("k", [2, 4])
def test_groups_with_signal_matches_loop(k):
    rng = np.random.default_rng(9)
    scores = rng.integers(0, 2, size=4 * k).astype(np.float32)  # 0/1 rewards: ties are common
    scores[:k] = 1.0  # all right
    scores[k : 2 * k] = 0.0  # all wrong
    scores[2 * k : 3 * k] = 0.5 + np.arange(k) * 1e-7  # equal within atol
    ref = np.zeros(len(scores))
    for g in range(len(scores) // k):
        grp = scores[g * k : (g + 1) * k]
        ref[g * k : (g + 1) * k] = float(any(abs(a - grp[0]) > 1e-6 for a in grp))
    keep = jax.jit(filters.groups_with_signal, static_argnums=1)(scores, k)
    assert keep.dtype == jnp.float32
    np.testing.assert_array_equal(keep, ref)
    assert np.all(np.asarray(keep)[: 3 * k] == 0)
    # A tighter atol keeps the near-equal group.
    keep = filters.groups_with_signal(scores, k, atol=0.0)
    assert np.all(np.asarray(keep)[2 * k : 3 * k] == 1)
    # Kept groups are exactly those where GRPO's advantage is not all zero.
    adv = advantages.grpo(scores, np.ones((len(scores), 1)), k)[:, 0]
    dead = np.asarray(keep) == 0
    assert np.allclose(np.asarray(adv)[dead], 0, atol=1e-2)


def test_groups_with_signal_errors():
    with pytest.raises(ConfigError, match="multiple of group_size"):
        filters.groups_with_signal(np.zeros(6, np.float32), 4)
    with pytest.raises(ConfigError, match="group_size"):
        filters.groups_with_signal(np.zeros(6, np.float32), 1)


def test_registered_names():
    assert {"dr_grpo", "reinforce_pp", "reinforce_pp_baseline"} <= set(registry.names("advantage"))
    assert set(registry.names("policy_loss")) == {"clipped", "dual_clip", "gspo", "nll"}


def test_bon_marks_each_groups_best_row():
    from girl_jax.rl import registry

    scores = np.array([0.1, 0.9, 0.3, 0.9, 2.0, -1.0, 0.0, 1.0, 5, 5, 5, 5], np.float32)
    mask = np.ones((12, 3), np.float32)
    mask[1, 2] = 0
    adv, ret = registry.get("advantage", "bon")(
        rewards=None, values=None, mask=mask, scores=scores, config={"group_size": 4}
    )
    want = np.zeros(12)
    for g in range(3):  # NumPy reference: first argmax per group of 4, none if all equal
        group = scores[g * 4 : g * 4 + 4]
        if group.max() > group.min():
            want[g * 4 + int(np.argmax(group))] = 1.0
    np.testing.assert_array_equal(np.asarray(adv), want[:, None] * mask)
    np.testing.assert_allclose(np.asarray(ret), scores[:, None] * mask)
