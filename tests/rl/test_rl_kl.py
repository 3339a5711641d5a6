"""KL estimators, penalty rewards and controllers against plain NumPy / the published formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax.errors import ConfigError
from girl_jax.rl import kl, registry

B, T = 6, 5
TOL = dict(rtol=1e-5, atol=1e-5)


def inputs(seed):
    rng = np.random.default_rng(seed)
    logp = -rng.exponential(size=(B, T)).astype(np.float32)
    logp_ref = -rng.exponential(size=(B, T)).astype(np.float32)
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0], lengths[1] = 0, T
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    return logp, logp_ref, mask


REFS = {
    "k1": lambda lp, lr: lp - lr,
    "k2": lambda lp, lr: 0.5 * (lp - lr) ** 2,
    "k3": lambda lp, lr: np.exp(lr - lp) - 1 - (lr - lp),
}


@pytest.mark.parametrize("name", sorted(REFS))
def test_estimators_match_loop(name):
    logp, logp_ref, _ = inputs(0)
    ref = np.array(
        [[REFS[name](np.float64(logp[b, t]), logp_ref[b, t]) for t in range(T)] for b in range(B)]
    )
    np.testing.assert_allclose(registry.get("kl", name)(logp, logp_ref), ref, **TOL)


def test_k3_nonnegative_and_unbiased_in_expectation():
    # Samples from p; E_p[k1] = E_p[k3] = KL(p || q).
    rng = np.random.default_rng(1)
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.3, 0.5])
    x = rng.choice(3, size=200_000, p=p)
    lp, lq = np.log(p)[x].astype(np.float32), np.log(q)[x].astype(np.float32)
    exact = np.sum(p * np.log(p / q))
    assert np.all(np.asarray(kl.k3(lp, lq)) >= 0)
    np.testing.assert_allclose(float(jnp.mean(kl.k3(lp, lq))), exact, rtol=0.03)
    np.testing.assert_allclose(float(jnp.mean(kl.k1(lp, lq))), exact, rtol=0.03)


@pytest.mark.parametrize("name", sorted(REFS))
def test_kl_penalty_rewards(name):
    logp, logp_ref, mask = inputs(2)
    logp_bad = np.where(mask > 0, logp, -np.inf).astype(np.float32)
    out = jax.jit(kl.kl_penalty_rewards, static_argnums=4)(logp_bad, logp_ref, mask, 0.1, name)
    ref = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                ref[b, t] = -0.1 * REFS[name](np.float64(logp[b, t]), logp_ref[b, t])
    np.testing.assert_allclose(out, ref, **TOL)


def test_adaptive_controller_matches_formula():
    ctl = kl.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    kls = [0.5, 3.0, 6.0, 8.0, 20.0, 100.0, 5.9]
    n_steps = [512, 512, 1024, 256, 512, 2048, 64]
    update = jax.jit(ctl.update)
    state = ctl.init()
    coef = 0.2
    for current, n in zip(kls, n_steps):
        state = update(state, jnp.float32(current), jnp.float32(n))
        err = np.clip(current / 6.0 - 1, -0.2, 0.2)
        coef *= 1 + err * n / 10_000
        np.testing.assert_allclose(float(state.kl_coef), coef, rtol=1e-5)
    assert state.kl_coef.dtype == jnp.float32


def test_fixed_controller_and_factory():
    ctl = kl.make_kl_controller("fixed", 0.05)
    state = ctl.update(ctl.init(), jnp.float32(100.0), 10)
    np.testing.assert_allclose(float(state.kl_coef), 0.05)
    assert isinstance(kl.make_kl_controller("adaptive", 0.1, 6.0, 1e4), kl.AdaptiveKLController)
    with pytest.raises(ConfigError, match="adaptive, fixed"):
        kl.make_kl_controller("pid", 0.1)
    with pytest.raises(ConfigError, match="horizon"):
        kl.AdaptiveKLController(0.1, 6.0, 0.0)
    with pytest.raises(ConfigError, match="kl_coef"):
        kl.FixedKLController(-1.0)
