"""`data.text_variation`: varied CV / JD styles from the same facts; off, the text of before."""

import hashlib
import re

import numpy as np
import pytest

from girl_jax.data import market, market_text
from girl_jax.data import market_styles as styles
from girl_jax.data import market_taxonomy as tax
from girl_jax.errors import ConfigError

SMALL = dict(num_seekers=600, num_jobs=300, seed=5)


@pytest.fixture(scope="module")
def plain():
    return market.generate(**SMALL)


@pytest.fixture(scope="module")
def varied():
    return market.generate(**SMALL, text_variation=1.0)


def _job(m, j: int) -> dict:
    cols = m.jobs
    keys = "company family seniority min_years degree_level degree_field city remote"
    return {k: int(cols[k][j]) for k in keys.split() + ["salary_lo", "salary_hi"]} | dict(
        required=[int(x) for x in cols["required"][j][: cols["num_required"][j]]],
        nice=[int(x) for x in cols["nice"][j][: cols["num_nice"][j]]],
        duties=[int(d) for d in cols["duties"][j] if d >= 0],
    )


def test_default_text_is_byte_for_byte_the_text_of_before():
    # sha256 of this market's CVs and JDs, recorded with the templates before styles existed
    m = market.generate(num_seekers=2000, num_jobs=1500, seed=11)
    digest = hashlib.sha256("\x00".join(m.cvs + m.jds).encode()).hexdigest()
    assert digest == "d046569e8d9029fade3de4a4156acb78caf90918ac994a944b7b0d93f37fb2af"
    assert (
        market.generate(num_seekers=2000, num_jobs=1500, seed=11, text_variation=0.0).cvs == m.cvs
    )
    assert "text_variation" not in m.config  # a default market's config.json is unchanged


def test_variation_is_seeded_reproducible_and_a_share(plain, varied):
    again = market.generate(**SMALL, text_variation=1.0)
    assert again.cvs == varied.cvs and again.jds == varied.jds
    other = market.generate(**{**SMALL, "seed": 6}, text_variation=1.0)
    assert other.cvs != varied.cvs
    rebuilt = market.generate(**varied.config)
    assert rebuilt.config["text_variation"] == 1.0 and rebuilt.jds == varied.jds
    # labels, splits and facts do not depend on the text
    np.testing.assert_array_equal(varied.pairs["label"], plain.pairs["label"])
    assert all(a != b for a, b in zip(varied.cvs, plain.cvs))
    half = market.generate(**SMALL, text_variation=0.3)
    changed_cv = np.mean([a != b for a, b in zip(half.cvs, plain.cvs)])
    changed_jd = np.mean([a != b for a, b in zip(half.jds, plain.jds)])
    assert 0.24 < changed_cv < 0.36 and 0.22 < changed_jd < 0.38
    # a row varied at 0.3 is varied, in the same words, at 0.6 (one draw per row)
    more = market.generate(**SMALL, text_variation=0.6)
    assert all(m == h for m, h, p in zip(more.cvs, half.cvs, plain.cvs) if h != p)


@pytest.mark.parametrize("layout", styles.JD_LAYOUTS)
def test_parse_jd_reads_every_jd_style_as_the_plain_jd(plain, layout):
    for j in range(len(plain.jds)):
        want = market_text.parse_jd(plain.jds[j])
        for seed in range(3):
            text = styles.vary_jd(styles.row_rng(seed, layout, j), layout, **_job(plain, j))
            assert market_text.parse_jd(text) == want, text


def test_varied_market_jds_parse_and_score_like_the_plain_ones(plain, varied):
    for a, b in zip(plain.jds, varied.jds):
        assert market_text.parse_jd(a) == market_text.parse_jd(b), b
    sid, jid = plain.pairs["seeker_id"][:300], plain.pairs["job_id"][:300]
    texts = [varied.jds[j] for j in jid]
    np.testing.assert_allclose(varied.true_match(sid, texts), varied.oracle_prob(sid, jid))


def test_styles_have_their_features(varied):
    cvs, jds = varied.cvs, varied.jds
    assert all("\n" not in cv for cv in cvs)  # one line, as `girl generate` reads a CV
    assert any(re.search(r"^[-*•] ", jd, re.M) for jd in jds)  # bullet lists
    assert any(re.search(r"^(Requirements|What you need|Essential):", jd, re.M) for jd in jds)
    for pattern in (r"£\d+k", r"\d+-\d+k", r"thousand", r"\byrs\b", r"\bMSc\b", r"\bSQL\b"):
        assert any(re.search(pattern, cv) for cv in cvs), pattern
    for pattern in (r"£\d+", r"\bSr\b|\bSnr\b", r"K8s|A/B testing|PostgreSQL|GA4", r"on-site"):
        assert any(re.search(pattern, jd) for jd in jds), pattern
    assert any("example.com" in cv for cv in cvs) and any("on request" in cv for cv in cvs)
    assert any(cv == cv.lower() for cv in cvs) and any(cv != cv.lower() for cv in cvs)
    no_pay = [cv for cv in cvs if not re.search(r"\d+k|thousand|£", cv)]
    assert 0.05 < len(no_pay) / len(cvs) < 0.4  # CVs leave the salary out
    layouts = {
        styles.vary_jd(styles.row_rng(0, "x", 0), lay, **_job(varied, 0))
        for lay in styles.JD_LAYOUTS
    }
    assert len(layouts) == len(styles.JD_LAYOUTS)


def test_cv_typos_are_rare_and_cv_only(varied, monkeypatch):
    share = styles.CV_TYPO_SHARE
    monkeypatch.setattr(styles, "CV_TYPO_SHARE", 0.0)
    clean = market.generate(**SMALL, text_variation=1.0)
    assert clean.jds == varied.jds  # JDs never carry typos
    typo_cvs, words, typos = 0, 0, 0
    for a, b in zip(clean.cvs, varied.cvs):
        wa, wb = a.split(" "), b.split(" ")
        assert len(wa) == len(wb)  # a typo changes letters within a word
        diff = sum(x != y for x, y in zip(wa, wb))
        typo_cvs, words, typos = typo_cvs + (diff > 0), words + len(wa), typos + diff
    assert 0.1 < typo_cvs / len(varied.cvs) < share
    assert 0.002 < typos / words < 0.02


def test_varied_texts_stay_compact(plain, varied):
    # pieces ~ tokens of the market tokenizer: plain JDs are <= 91 tokens (ppo.max_new_tokens 96)
    assert max(map(styles._pieces, varied.jds)) <= styles.JD_BUDGET
    assert max(map(styles._pieces, varied.cvs)) <= styles.CV_BUDGET
    assert max(len(j.split()) for j in varied.jds) <= 80
    assert np.mean([len(j.split()) for j in varied.jds]) < 62


def test_extra_lines_name_nothing_the_parser_reads():
    for line in styles._JD_EXTRAS + styles._CV_EXTRAS:
        assert market_text.parse_jd(line) is None, line
        assert not re.search(
            r"\d|remote|hybrid|office|site|degree|master|bachelor|phd", line.lower()
        )


def test_aliases_read_back_as_their_phrase():
    tables = {"skill": tax.SKILLS, "title": tax.TITLES, "company": tax.COMPANIES}
    for words, (kind, i) in styles.PARSE_ALIASES.items():
        assert market_text._scan(" ".join(words)) == [(kind, i)], words
        assert tuple(tables[kind][i].split()) != words


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5", None])
def test_bad_text_variation_raises(bad):
    with pytest.raises(ConfigError, match="text_variation"):
        market.generate(num_seekers=10, num_jobs=5, text_variation=bad)
    if bad is not None:  # None is jd_text_variation's "the same as text_variation"
        with pytest.raises(ConfigError, match="jd_text_variation"):
            market.generate(num_seekers=10, num_jobs=5, jd_text_variation=bad)


def test_jd_text_variation_sets_the_jds_share_apart_from_the_cvs(plain, varied):
    cv_only = market.generate(**SMALL, text_variation=1.0, jd_text_variation=0.0)
    assert cv_only.cvs == varied.cvs and cv_only.jds == plain.jds
    jd_only = market.generate(**SMALL, jd_text_variation=1.0)
    assert jd_only.cvs == plain.cvs and jd_only.jds == varied.jds
    # recorded only when it differs, and the market rebuilds from its config
    assert "jd_text_variation" not in market.generate(**SMALL, jd_text_variation=0.0).config
    assert "jd_text_variation" not in varied.config
    assert cv_only.config["jd_text_variation"] == 0.0
    assert market.generate(**cv_only.config).jds == plain.jds
