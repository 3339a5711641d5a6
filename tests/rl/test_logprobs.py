"""girl_jax.rl.logprobs: values against float64 NumPy, gradients against float64 central
differences and against autodiff of the textbook formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax.rl import logprobs
from girl_jax.stages import common

B, T, V = 3, 4, 11


def np_stats(logits, targets):
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    p = np.exp(x - m)
    p /= p.sum(-1, keepdims=True)
    logz = m[..., 0] + np.log(np.exp(x - m).sum(-1))
    logp = np.take_along_axis(x, targets[..., None], -1)[..., 0] - logz
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    return logp, -plogp.sum(-1)


textbook = logprobs.textbook_logprobs_and_entropy


def data(seed, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.normal(size=(B, T, V))).astype(np.float32)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    return logits, targets


def test_values_match_float64_numpy_with_impossible_and_huge_logits():
    logits, targets = data(0)
    logits[0, 0, :3] = -np.inf  # impossible tokens
    targets[0, 0] = 5
    logits[2, 1] += 1e4  # huge but finite: stable
    logp, ent = jax.jit(logprobs.logprobs_and_entropy)(logits, targets)
    ref_logp, ref_ent = np_stats(logits, targets)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, ref_ent, rtol=1e-5, atol=1e-5)
    assert logp.dtype == ent.dtype == jnp.float32


def test_gradient_matches_float64_central_differences():
    logits, targets = data(1, scale=1.5)
    rng = np.random.default_rng(2)
    g_logp, g_ent = rng.normal(size=(2, B, T))

    def f64(x):
        lp, h = np_stats(x, targets)
        return float((g_logp * lp).sum() + (g_ent * h).sum())

    x64 = logits.astype(np.float64)
    num = np.zeros_like(x64)
    eps = 1e-6
    for idx in np.ndindex(*x64.shape):
        hi, lo = x64.copy(), x64.copy()
        hi[idx] += eps
        lo[idx] -= eps
        num[idx] = (f64(hi) - f64(lo)) / (2 * eps)

    def f(x):
        lp, h = logprobs.logprobs_and_entropy(x, targets)
        return (g_logp * lp).sum() + (g_ent * h).sum()

    grad = jax.jit(jax.grad(f))(logits)
    np.testing.assert_allclose(grad, num, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("impossible", [False, True])
def test_gradient_equals_autodiff_of_the_textbook_formulas(impossible):
    logits, targets = data(3)
    if impossible:
        logits[1, 2, ::2] = -np.inf
        targets[1, 2] = 1
    rng = np.random.default_rng(4)
    g = [jnp.asarray(a, jnp.float32) for a in rng.normal(size=(2, B, T))]

    def loss(fn, x):
        lp, h = fn(x, targets)
        return (g[0] * lp).sum() + (g[1] * h).sum()

    ours = jax.jit(jax.grad(lambda x: loss(logprobs.logprobs_and_entropy, x)))(logits)
    ref = jax.jit(jax.grad(lambda x: loss(textbook, x)))(logits)
    ours, ref = np.array(ours), np.array(ref)
    assert np.all(np.isfinite(ours))
    if impossible:
        # the textbook entropy's gradient is NaN on a row with -inf logits (0 * -inf in the
        # product's derivative, under the where); ours is 0 at those tokens, finite elsewhere
        assert np.isnan(ref[1, 2]).any()
        assert np.all(ours[1, 2, ::2] == 0.0)
        ours[1, 2], ref[1, 2] = 0.0, 0.0
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_unused_entropy_and_vmap_and_bf16():
    logits, targets = data(5)
    # the log-prob alone (the entropy's cotangent is zero): the log-softmax gradient
    g_ours = jax.grad(lambda x: logprobs.token_logprobs(x, targets).sum())(logits)
    g_ref = jax.grad(lambda x: textbook(x, targets)[0].sum())(logits)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-6)
    # vmapped over a leading axis: the same as unbatched
    stacked = np.stack([logits, 2 * logits])
    vm = jax.vmap(lambda x: jax.grad(lambda y: logprobs.entropy(y).sum())(x))(stacked)
    for i in range(2):
        one = jax.grad(lambda y: logprobs.entropy(y).sum())(stacked[i])
        np.testing.assert_allclose(vm[i], one, rtol=1e-6, atol=1e-7)
    # bf16 logits: float32 results, a bf16 cotangent for the logits
    lb = jnp.asarray(logits, jnp.bfloat16)
    lp, h = logprobs.logprobs_and_entropy(lb, targets)
    assert lp.dtype == h.dtype == jnp.float32
    ref_lp, ref_h = np_stats(np.asarray(lb.astype(jnp.float32)), targets)
    np.testing.assert_allclose(lp, ref_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, ref_h, rtol=1e-5, atol=1e-5)
    gb = jax.grad(lambda x: logprobs.logprobs_and_entropy(x, targets)[1].sum())(lb)
    assert gb.dtype == jnp.bfloat16


def test_temperature_is_applied_before_the_softmax():
    logits, targets = data(6)
    got = common.token_logprobs(logits, targets, temperature=0.7)
    ref, _ = np_stats(logits.astype(np.float64) / 0.7, targets)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
