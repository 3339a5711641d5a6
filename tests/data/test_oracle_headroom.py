"""The oracle's utility terms (market_oracle.utility_terms) and scripts/oracle_headroom.py."""

import os
import sys

import numpy as np

from girl_jax.data import market, market_oracle, negatives

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import oracle_headroom  # noqa: E402

TERMS = {"skills", "family", "seniority", "years", "degree", "location", "salary", "company"}


def _positives(m, n):
    p = m.pairs
    pos = np.flatnonzero(p["label"] == 1)[:n]
    return p["seeker_id"][pos], p["job_id"][pos]


def test_terms_sum_to_the_utility_and_name_the_corrupted_field():
    m = market.generate(num_seekers=150, num_jobs=50, seed=5)
    sids, jids = _positives(m, 80)
    fields = market_oracle._job_fields(m.jobs, jids)
    terms = market_oracle.utility_terms(m.seekers, sids, fields, m.taste)
    assert set(terms) == TERMS
    u = market_oracle._utility(m.seekers, sids, fields, m.taste)
    np.testing.assert_allclose(sum(terms.values()), u, atol=1e-9)
    # a JD re-rendered with the pay made wrong loses utility in the salary term alone
    texts, kinds = negatives.corrupt(m, sids, jids, seed=0)
    pay = np.array(kinds) == "pay"
    real = oracle_headroom.term_means(m, sids[pay], [m.jds[j] for j in jids[pay]])
    bad = oracle_headroom.term_means(m, sids[pay], [t for t, k in zip(texts, pay) if k])
    assert bad["salary"] < real["salary"] - 0.1
    for key in TERMS - {"salary"}:
        np.testing.assert_allclose(bad[key], real[key], atol=1e-9, err_msg=key)


def test_headroom_picks_the_oracle_best_sample_per_cv():
    m = market.generate(num_seekers=60, num_jobs=30, seed=1)
    sids, jids = _positives(m, 20)
    good = [m.jds[j] for j in jids]
    bad, _ = negatives.corrupt(m, sids, jids, seed=0)
    g, b = oracle_headroom.headroom(m, sids, bad, [bad, good, ["not a jd"] * len(good)])
    best = np.maximum(m.true_match(sids, bad), m.true_match(sids, good)).mean()
    np.testing.assert_allclose(b["true_match"], best, atol=1e-9)
    assert b["utility"] > g["utility"] and b["parse_rate"] == 1.0
