"""Best-of-n: the scorer's favourite of n draws per CV, and its KL from the sampler."""

import jax
import numpy as np
import pytest

from girl_jax import overopt
from girl_jax.stages.generator import best_of_n


class FakeGenerator:
    """Draw i for CV c is the text f"{c}-{v}" with v a value drawn from the key."""

    def generate(self, cvs, rng):
        vals = np.asarray(jax.random.randint(rng, (len(cvs),), 0, 100))
        return [f"{c}-{v}" for c, v in zip(cvs, vals)]


def test_best_of_n_picks_the_highest_score_per_cv():
    score = lambda cvs, jds: np.array([float(j.split("-")[1]) for j in jds])
    cvs = ["a", "b", "c"]
    texts, best, all_scores = best_of_n(FakeGenerator(), score, cvs, 5, jax.random.key(0))
    assert all_scores.shape == (5, 3)
    np.testing.assert_array_equal(best, all_scores.max(0))
    for c, t, b in zip(cvs, texts, best):
        assert t == f"{c}-{int(b)}"
    one, _, _ = best_of_n(FakeGenerator(), score, cvs, 1, jax.random.key(0))
    assert one == FakeGenerator().generate(cvs, jax.random.fold_in(jax.random.key(0), 0))
    with pytest.raises(ValueError):
        best_of_n(FakeGenerator(), score, cvs, 0, jax.random.key(0))


def test_bon_kl_is_zero_for_one_sample_and_grows_like_log_n():
    assert overopt.bon_kl(1) == pytest.approx(0.0)
    assert overopt.bon_kl(16) == pytest.approx(np.log(16) - 15 / 16)
