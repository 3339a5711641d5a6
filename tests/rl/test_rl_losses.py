"""Policy / value losses and entropy against plain NumPy loops, masks included."""

import jax
import numpy as np
import pytest

from girl_jax.errors import ConfigError
from girl_jax.rl import losses, registry

B, T, V = 6, 5, 11
TOL = dict(rtol=1e-5, atol=1e-5)


def prefix_mask(rng):
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0], lengths[1] = 0, T
    return (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)


def inputs(seed):
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(size=(B, T)).astype(np.float32)
    old_logp = (logp + 0.4 * rng.normal(size=(B, T))).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    return logp, old_logp, adv, prefix_mask(rng), rng


def valid_items(mask):
    return [(b, t) for b in range(B) for t in range(T) if mask[b, t]]


def np_mean(fn, mask):
    return np.mean([fn(b, t) for b, t in valid_items(mask)])


@pytest.mark.parametrize("seed,eps", [(0, 0.2), (1, 0.1)])
def test_clipped_policy_loss_matches_loop(seed, eps):
    logp, old, adv, mask, _ = inputs(seed)
    old = np.where(mask > 0, old, np.inf).astype(np.float32)  # garbage outside the mask

    def tok(b, t):
        r = np.exp(np.float64(logp[b, t]) - old[b, t])
        return max(-adv[b, t] * r, -adv[b, t] * min(max(r, 1 - eps), 1 + eps))

    def clipped(b, t):
        r = np.exp(np.float64(logp[b, t]) - old[b, t])
        return float(-adv[b, t] * min(max(r, 1 - eps), 1 + eps) > -adv[b, t] * r)

    def k3(b, t):
        lr = np.float64(logp[b, t]) - old[b, t]
        return np.expm1(lr) - lr

    loss, m = jax.jit(losses.clipped_policy_loss, static_argnums=4)(logp, old, adv, mask, eps)
    np.testing.assert_allclose(loss, np_mean(tok, mask), **TOL)
    np.testing.assert_allclose(m["clip_fraction"], np_mean(clipped, mask), **TOL)
    np.testing.assert_allclose(m["approx_kl"], np_mean(k3, mask), **TOL)
    ratio_mean = np_mean(lambda b, t: np.exp(np.float64(logp[b, t]) - old[b, t]), mask)
    np.testing.assert_allclose(m["ratio_mean"], ratio_mean, **TOL)
    assert 0 < float(m["clip_fraction"]) < 1


def test_dual_clip_matches_loop():
    logp, old, adv, mask, _ = inputs(2)
    logp = (logp + 1.5 * (np.arange(T) % 2)).astype(np.float32)  # big ratios hit the cap
    eps, c = 0.2, 3.0

    def tok(b, t):
        a = adv[b, t]
        r = np.exp(np.float64(logp[b, t]) - old[b, t])
        base = max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
        return min(base, -c * a) if a < 0 else base

    loss, m = losses.dual_clip_policy_loss(logp, old, adv, mask, eps, c)
    np.testing.assert_allclose(loss, np_mean(tok, mask), **TOL)
    assert float(m["dual_clip_fraction"]) > 0
    plain, _ = losses.clipped_policy_loss(logp, old, adv, mask, eps)
    assert float(loss) < float(plain)


def test_policy_loss_gradient_zero_when_clipped():
    # Positive advantage and ratio above 1+eps: the clipped branch has zero gradient.
    logp = np.full((1, 2), 0.5, np.float32)
    old = np.zeros((1, 2), np.float32)
    adv = np.ones((1, 2), np.float32)
    mask = np.ones((1, 2), np.int32)
    g = jax.grad(lambda lp: losses.clipped_policy_loss(lp, old, adv, mask, 0.2)[0])(logp)
    np.testing.assert_allclose(g, 0.0)
    g = jax.grad(lambda lp: losses.clipped_policy_loss(lp, old, -adv, mask, 0.2)[0])(logp)
    assert np.all(np.asarray(g) > 0)


def test_clipped_value_loss_matches_loop():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(B, T)).astype(np.float32)
    old = (values + 0.3 * rng.normal(size=(B, T))).astype(np.float32)
    returns = rng.normal(size=(B, T)).astype(np.float32)
    mask = prefix_mask(rng)
    eps = 0.2

    def tok(b, t):
        v, vo, r = np.float64(values[b, t]), old[b, t], returns[b, t]
        vc = vo + min(max(v - vo, -eps), eps)
        return 0.5 * max((v - r) ** 2, (vc - r) ** 2)

    loss, m = losses.clipped_value_loss(values, old, returns, mask, eps)
    np.testing.assert_allclose(loss, np_mean(tok, mask), **TOL)
    assert 0 <= float(m["vf_clip_fraction"]) <= 1
    loss, _ = losses.plain_value_loss(values, returns, mask)
    ref = np_mean(lambda b, t: 0.5 * (np.float64(values[b, t]) - returns[b, t]) ** 2, mask)
    np.testing.assert_allclose(loss, ref, **TOL)


def test_entropy_matches_loop():
    rng = np.random.default_rng(4)
    logits = (3 * rng.normal(size=(B, T, V))).astype(np.float32)
    logits[0, 0, :3] = -np.inf  # impossible tokens are fine
    logits[2, 1] += 1e4  # stable for huge logits
    mask = prefix_mask(rng)
    mask[0, 0] = 1

    def tok(b, t):
        x = logits[b, t].astype(np.float64)
        p = np.exp(x - x.max())
        p /= p.sum()
        nz = p > 0
        return -np.sum(p[nz] * np.log(p[nz]))

    np.testing.assert_allclose(losses.entropy_from_logits(logits, mask), np_mean(tok, mask), **TOL)


def test_masked_mean_and_sum():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(B, T)).astype(np.float32)
    mask = prefix_mask(rng)
    x_bad = np.where(mask > 0, x, np.nan).astype(np.float32)
    np.testing.assert_allclose(losses.masked_sum(x_bad, mask), x[mask > 0].sum(), **TOL)
    np.testing.assert_allclose(losses.masked_mean(x_bad, mask), x[mask > 0].mean(), **TOL)
    per_row = losses.masked_mean(x_bad, mask, axis=1)
    for b in range(B):
        expect = x[b][mask[b] > 0].mean() if mask[b].any() else 0.0
        np.testing.assert_allclose(per_row[b], expect, **TOL)
    assert float(losses.masked_mean(x, np.zeros_like(mask))) == 0.0


def test_ratio_skip():
    assert not bool(losses.ratio_skip(1.5, 2.0))
    assert bool(losses.ratio_skip(2.5, 2.0))
    assert bool(losses.ratio_skip(0.4, 2.0))
    assert not bool(losses.ratio_skip(0.51, 2.0))
    assert not bool(losses.ratio_skip(100.0, None))


def test_registered_losses():
    logp, old, adv, mask, _ = inputs(6)
    cfg = {"clip_eps": 0.1, "dual_clip_c": 2.0}
    loss, _ = registry.get("policy_loss", "clipped")(logp, old, adv, mask, config=cfg)
    np.testing.assert_allclose(loss, losses.clipped_policy_loss(logp, old, adv, mask, 0.1)[0])
    loss, _ = registry.get("policy_loss", "dual_clip")(logp, old, adv, mask, config=cfg)
    np.testing.assert_allclose(
        loss, losses.dual_clip_policy_loss(logp, old, adv, mask, 0.1, 2.0)[0]
    )
    loss, _ = registry.get("value_loss", "clipped")(logp, old, adv, mask, config=cfg)
    np.testing.assert_allclose(loss, losses.clipped_value_loss(logp, old, adv, mask, 0.1)[0])
    loss, _ = registry.get("value_loss", "plain")(logp, old, adv, mask, config=cfg)
    np.testing.assert_allclose(loss, losses.plain_value_loss(logp, adv, mask)[0])
    with pytest.raises(ConfigError, match="clipped, dual_clip"):
        registry.get("policy_loss", "ppo2")
    with pytest.raises(ConfigError, match="clip_eps"):
        losses.clipped_policy_loss(logp, old, adv, mask, 0.0)
    with pytest.raises(ConfigError, match="dual_clip_c"):
        losses.dual_clip_policy_loss(logp, old, adv, mask, 0.2, 1.0)


def test_weighted_nll_loss_matches_loop_and_is_sft_on_the_selected_rows():
    logp, old, _, mask, rng = inputs(5)
    # bon-style weights: 1 on every token of a few rows, 0 elsewhere (garbage outside the mask)
    pick = np.array([0, 1, 1, 0, 1, 0], np.float32)
    adv = np.where(mask > 0, pick[:, None], np.nan).astype(np.float32)
    loss, m = jax.jit(losses.weighted_nll_policy_loss)(logp, old, adv, mask)
    num = sum(-adv[b, t] * np.float64(logp[b, t]) for b, t in valid_items(mask))
    den = sum(abs(adv[b, t]) for b, t in valid_items(mask))
    np.testing.assert_allclose(loss, num / den, **TOL)
    # = the mean token NLL over the picked rows' valid tokens
    picked = [(b, t) for b, t in valid_items(mask) if pick[b]]
    np.testing.assert_allclose(loss, np.mean([-logp[b, t] for b, t in picked]), **TOL)
    assert float(m["clip_fraction"]) == 0.0
    # the gradient w.r.t. logp is -w / sum|w| on valid tokens, 0 elsewhere: no ratio, no clip
    g = jax.grad(lambda lp: losses.weighted_nll_policy_loss(lp, old, adv, mask)[0])(logp)
    want = np.where(mask > 0, -np.nan_to_num(adv) / den, 0.0)
    np.testing.assert_allclose(g, want, **TOL)
    # nothing selected: 0, not NaN
    zero, _ = losses.weighted_nll_policy_loss(logp, old, np.zeros_like(logp), mask)
    assert float(zero) == 0.0
    assert registry.get("policy_loss", "nll") is not None
    del rng
