"""Built-in host reward functions (girl_jax/rewards.py) and their use as a ppo.reward term."""

import numpy as np
import pytest

from girl_jax import rewards
from girl_jax.stages import ppo

LOOP = "We need closing deals, cold calling, cold calling, cold calling and cold calling."
CLEAN = "Role: sales manager | Skills: cold calling, negotiation | Duties: grow revenue; hire"


def test_repeated_share_counts_items_equal_to_an_earlier_one():
    # items: "we need closing deals", then "cold calling" x 4 -> 3 of 5 repeat
    assert rewards.repeated_share(LOOP) == 3 / 5
    assert rewards.repeated_share(CLEAN) == 0.0
    assert rewards.repeated_share("") == 0.0
    # case and spacing do not hide a repeat; a repeated sentence counts too
    assert rewards.repeated_share("Help pupils.  help   PUPILS. Teach.") == pytest.approx(1 / 3)


def test_repeated_items_reward_shape_and_sign():
    out = rewards.repeated_items(["cv"] * 3, [LOOP, CLEAN, ""], np.arange(3))
    assert out.shape == (3,) and out.dtype == np.float64
    np.testing.assert_allclose(out, [-0.6, 0.0, 0.0])


def test_distinct_cv_skills_counts_shared_distinct_items():
    cv = "I know sql, python, tableau and excel. Django since 2019."
    jd = "Must have: sql, sql, python | Plus: go"  # "go" is not a word of the CV
    out = rewards.distinct_cv_skills([cv, cv], [jd, "nothing shared"], [0, 1])
    np.testing.assert_allclose(out, [2 / 5, 0.0])


def test_usable_as_a_python_reward_term():
    terms = ppo.rewards.parse("model:1.0,python:girl_jax.rewards:repeated_items:2.0")
    host = ppo.rewards.HostRewards(terms, market=None)
    total, parts = host.score(["cv", "cv"], [LOOP, CLEAN], np.array([0, 1]), 1)
    np.testing.assert_allclose(total, [-1.2, 0.0])
    assert any("repeated_items" in k for k in parts)
