"""scripts/gold_term_rewards.py: the oracle's skill term as a reward, checked on real JDs."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))

import gold_term_rewards  # noqa: E402

from girl_jax.data import market  # noqa: E402


def test_skill_coverage_equals_the_oracle_term_on_real_jds():
    m = gold_term_rewards._market(0)
    sids, jids = np.arange(40), (np.arange(40) * 7) % 500
    got = gold_term_rewards.skill_coverage(None, [m.jds[j] for j in jids], sids)
    want = 6.0 * market._coverage(m.seekers["skills"][sids], m.jobs["required"][jids])
    np.testing.assert_allclose(got, want)
    assert got.max() > 0 and got.min() == 0  # some JDs cover skills, some none
    assert gold_term_rewards.skill_coverage(None, ["not a JD"], [0]).tolist() == [0.0]
