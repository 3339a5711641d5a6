"""Reward-ensemble aggregations against plain NumPy."""

import jax
import numpy as np
import pytest

from girl_jax.errors import ConfigError
from girl_jax.rl import ensemble

K, B = 5, 7


def _scores(seed=0):
    return np.random.default_rng(seed).normal(size=(K, B)).astype(np.float32)


@pytest.mark.parametrize(
    "how, want",
    [
        ("mean", lambda s, lam: s.mean(0)),
        ("min", lambda s, lam: s.min(0)),
        ("mean_minus_std", lambda s, lam: s.mean(0) - lam * s.std(0, ddof=0)),
    ],
)
@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_aggregate_matches_numpy(how, want, lam):
    s = _scores()
    got = ensemble.aggregate(s, how, lam=lam)
    assert got.shape == (B,) and got.dtype == np.float32
    np.testing.assert_allclose(
        np.asarray(got), want(s.astype(np.float64), lam), rtol=1e-5, atol=1e-6
    )
    jitted = jax.jit(ensemble.aggregate, static_argnames="how")(s, how=how, lam=lam)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(got), rtol=1e-6, atol=1e-6)


def test_equal_members_aggregate_to_the_member():
    row = _scores()[0]
    s = np.repeat(row[None], K, 0)
    for how in ensemble.AGGREGATIONS:
        np.testing.assert_allclose(np.asarray(ensemble.aggregate(s, how, lam=3.0)), row, atol=1e-6)


def test_unknown_aggregation_is_a_config_error():
    with pytest.raises(ConfigError, match="mean, min, mean_minus_std.*'median'"):
        ensemble.aggregate(_scores(), "median")
    assert ensemble.check("min") == "min"
