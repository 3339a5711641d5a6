"""Synthetic hard negatives: an accepted JD re-rendered with one field wrong for the seeker."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from girl_jax.data import market, market_text, negatives


@pytest.fixture(scope="module")
def small_market():
    return market.generate(num_seekers=200, num_jobs=60, seed=3)


def _pairs(m, n=120):
    p = m.pairs
    pos = np.flatnonzero(p["label"] == 1)[:n]
    return p["seeker_id"][pos], p["job_id"][pos]


def test_each_kind_moves_its_field_against_the_seeker(small_market):
    m = small_market
    sids, jids = _pairs(m)
    texts, kinds = negatives.corrupt(m, sids, jids, seed=0)
    assert set(kinds) == set(negatives.KINDS)
    s = m.seekers
    for sid, jid, text, kind in zip(sids, jids, texts, kinds):
        p = market_text.parse_jd(text)
        assert p is not None and p.valid, text
        real = market_text.parse_jd(m.jds[jid])
        if kind == "city":
            assert p.city != s["city"][sid] and p.remote == 0
        elif kind == "pay":
            assert 0 < p.salary_hi < s["salary"][sid]
        elif kind == "years":
            assert p.min_years > s["years"][sid]
        elif kind == "degree" and p.degree_level != real.degree_level:
            assert p.degree_level > s["edu_level"][sid]
        elif kind == "skills" and set(p.required) != set(real.required):
            assert not set(p.required) & set(s["skills"][sid][: s["num_skills"][sid]].tolist())
    # the recruiter likes the corrupted JDs less (the oracle is only used here, in the test)
    assert m.true_match(sids, texts).mean() < m.oracle_prob(sids, jids).mean() - 0.1


def test_uncorrupted_fields_render_the_same_text(small_market):
    """The renderer reproduces the market's own JDs, so a negative differs only in its field."""
    m = small_market
    sids, jids = _pairs(m, 40)
    texts, kinds = negatives.corrupt(m, sids, jids, seed=1)
    for jid, text in zip(jids, texts):
        a, b = Counter(text.split()), Counter(m.jds[jid].split())
        assert sum((a & b).values()) >= 0.6 * sum(b.values()), (text, m.jds[jid])


def test_augment_adds_labelled_negatives_deterministically(small_market):
    m = small_market
    p = m.pairs
    df = pd.DataFrame(
        {
            "seeker_id": p["seeker_id"],
            "job_id": p["job_id"],
            "cv": [m.cvs[i] for i in p["seeker_id"]],
            "jd": [m.jds[i] for i in p["job_id"]],
            "label": p["label"],
        }
    )
    out = negatives.augment(df, m, 0.5, seed=4)
    n_pos = int((df.label == 1).sum())
    assert len(out) == len(df) + round(0.5 * n_pos)
    assert int((out.label == 1).sum()) == n_pos
    assert out.equals(negatives.augment(df, m, 0.5, seed=4))
    assert negatives.augment(df, m, 0.0, seed=4) is df


def test_repeat_kind_repeats_a_skill_or_duty_and_is_opt_in(small_market):
    m = small_market
    sids, jids = _pairs(m, 40)
    texts, kinds = negatives.corrupt(m, sids, jids, seed=1, kinds=("repeat",))
    assert set(kinds) == {"repeat"}
    originals = [m.jds[j] for j in jids]
    for text, orig in zip(texts, originals):
        words = Counter(w.strip(".,;:|") for w in text.lower().split())
        before = Counter(w.strip(".,;:|") for w in orig.lower().split())
        assert len(text) > len(orig)  # something was repeated
        assert max(words[w] - before[w] for w in words) >= 3
    # the default draws never produce it, and bad kinds are refused
    _, default_kinds = negatives.corrupt(m, sids, jids, seed=1)
    assert "repeat" not in default_kinds
    with pytest.raises(ValueError, match="negative kinds"):
        negatives.corrupt(m, sids, jids, seed=1, kinds=("nope",))


def test_negative_kinds_config_is_validated():
    from girl_jax.configuration import load_config
    from girl_jax.errors import ConfigError
    from girl_jax.stages.reward import RewardConfig

    c = load_config("configs/default.py", ["reward.synthetic_negative_kinds=city,repeat"])
    assert RewardConfig.from_config(c.reward).negative_kinds == ("city", "repeat")
    c = load_config("configs/default.py", ["reward.synthetic_negative_kinds=city,bogus"])
    with pytest.raises(ConfigError, match="synthetic_negative_kinds"):
        RewardConfig.from_config(c.reward)


@pytest.mark.parametrize(
    "variation, jd_variation", [(0.0, None), (0.6, None), (0.6, 0.0), (0, 0.6)]
)
def test_negatives_keep_the_style_of_their_positive(variation, jd_variation):
    m = market.generate(
        num_seekers=80,
        num_jobs=40,
        seed=3,
        text_variation=variation,
        jd_text_variation=jd_variation,
    )
    for jid in range(40):  # the unchanged facts re-render to the market's own JD, style and all
        assert negatives._render_like(m, jid, negatives._job_facts(m.jobs, jid)) == m.jds[jid]
    p = m.pairs
    pos = np.flatnonzero(p["label"] == 1)[:40]
    texts, kinds = negatives.corrupt(m, p["seeker_id"][pos], p["job_id"][pos], seed=0)
    for text, kind in zip(texts, kinds):  # a negative still parses, in whatever style
        assert market_text.parse_jd(text) is not None, (kind, text)
