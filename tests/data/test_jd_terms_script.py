"""scripts/jd_terms.py: per-term diagnosis of JDs, checked on the market's own and altered JDs."""

import os
import sys

import numpy as np

from girl_jax.data import market, negatives

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import jd_terms  # noqa: E402


def test_terms_see_the_field_that_was_made_wrong():
    m = market.generate(num_seekers=150, num_jobs=50, seed=5)
    p = m.pairs
    pos = np.flatnonzero(p["label"] == 1)[:80]
    sids, jids = p["seeker_id"][pos], p["job_id"][pos]
    real = jd_terms.terms(m, sids, [m.jds[j] for j in jids])
    assert real["parse_rate"] == 1.0
    np.testing.assert_allclose(real["true_match"], m.oracle_prob(sids, jids).mean(), atol=1e-6)
    texts, kinds = negatives.corrupt(m, sids, jids, seed=0)
    bad = jd_terms.terms(m, sids, texts)
    assert bad["true_match"] < real["true_match"]
    kinds = np.array(kinds)
    for kind, term in (
        ("city", "city_mismatch"),
        ("pay", "pay_below_expectation"),
        ("years", "years_above"),
    ):
        sel = kinds == kind
        got = jd_terms.terms(m, sids[sel], [t for t, k in zip(texts, sel) if k])
        assert got[term] == 1.0, (kind, got)
