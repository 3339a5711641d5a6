"""The synthetic job market: determinism, plausibility, the JD parser and the oracle on text."""

import re
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

import girl_jax.data.market as market
from girl_jax import metrics
from girl_jax.data import market_taxonomy as tax
from girl_jax.errors import ConfigError, DataError

SMALL = dict(num_seekers=1500, num_jobs=300, seed=0)


@pytest.fixture(scope="module")
def m():
    return market.generate(**SMALL)


def test_auc_helper_matches_definition():
    # girl_jax.metrics.auc (every AUC the pipeline reports) against sklearn and the
    # Mann-Whitney definition (ties count half), on tied scores; argument order matters.
    rng = np.random.default_rng(0)
    for trial in range(5):
        s, y = rng.random(200).round(1), rng.integers(0, 2, 200)
        s = s + 0.3 * y * (trial % 2)  # separable to a varying degree
        pairs = (s[y == 1][:, None] > s[y == 0][None, :]) + 0.5 * (
            s[y == 1][:, None] == s[y == 0][None, :]
        )
        ours = metrics.auc(y, s)
        assert ours == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert ours == pytest.approx(pairs.mean(), abs=1e-12)
        assert metrics.auc(y, -s) == pytest.approx(1 - ours, abs=1e-12)
    assert np.isnan(metrics.auc(np.ones(5), np.arange(5.0)))  # one class: undefined


def test_contract_columns_types_and_sizes(m):
    ds = m.interactions
    assert ds.column_names == ["seeker_id", "job_id", "cv", "jd", "label", "split"]
    assert {k: v.dtype for k, v in ds.features.items()} == dict(
        seeker_id="int64", job_id="int64", cv="string", jd="string", label="int64", split="string"
    )
    assert len(m.cvs) == SMALL["num_seekers"] and len(m.jds) == SMALL["num_jobs"]
    row = ds[5]
    assert row["cv"] == m.cvs[row["seeker_id"]] and row["jd"] == m.jds[row["job_id"]]
    assert set(ds.unique("split")) == {"train", "validation", "test", "cold_start"}
    assert set(np.unique(ds["label"])) == {0, 1}
    assert set(m.seeker_split) == {"warm", "cold_start"}
    summary = m.summary()
    assert summary["seekers"] == 1500 and summary["jobs"] == 300
    assert summary["interactions"] == ds.num_rows
    assert summary["positive_rate"] == pytest.approx(np.mean(ds["label"]))
    for key in ("skills", "past_title", "past_company", "past_years"):
        assert len(m.seekers[key]) == 1500
    assert len(m.jobs["required"]) == 300


def test_same_seed_is_identical_other_seed_differs():
    a = market.generate(num_seekers=300, num_jobs=80, seed=7)
    b = market.generate(num_seekers=300, num_jobs=80, seed=7)
    c = market.generate(num_seekers=300, num_jobs=80, seed=8)
    assert a.interactions.to_dict() == b.interactions.to_dict()
    assert a.cvs == b.cvs and a.jds == b.jds and a.bias == b.bias
    assert a.cvs != c.cvs and a.jds != c.jds
    assert a.interactions.to_dict() != c.interactions.to_dict()


def test_config_rebuilds_the_market(m):
    again = market.generate(**m.config)
    assert again.cvs == m.cvs and again.jds == m.jds
    for key in ("seeker_id", "job_id", "label", "split"):
        np.testing.assert_array_equal(again.pairs[key], m.pairs[key])


@pytest.mark.parametrize("rate", [0.25, 0.4, 0.1])
def test_positive_rate_close_to_configured(rate):
    mk = market.generate(num_seekers=1000, num_jobs=200, seed=1, positive_rate=rate)
    assert abs(mk.summary()["positive_rate"] - rate) < 0.05


def test_oracle_ranks_accepted_above_rejected(m):
    p = m.pairs
    prob = m.oracle_prob(p["seeker_id"], p["job_id"])
    assert np.all((prob >= 0) & (prob <= 1))
    assert roc_auc_score(p["label"], prob) > 0.75


def test_true_match_of_real_jd_text_equals_oracle(m):
    p = m.pairs
    idx = np.arange(0, len(p["label"]), 7)
    texts = [m.jds[j] for j in p["job_id"][idx]]
    np.testing.assert_allclose(
        m.true_match(p["seeker_id"][idx], texts),
        m.oracle_prob(p["seeker_id"][idx], p["job_id"][idx]),
    )


def test_true_match_accepted_jd_beats_random_jd(m):
    p = m.pairs
    acc = p["label"] == 1
    accepted = m.true_match(p["seeker_id"][acc], [m.jds[j] for j in p["job_id"][acc]])
    rand_jobs = np.random.default_rng(3).integers(0, len(m.jds), acc.sum())
    random = m.true_match(p["seeker_id"][acc], [m.jds[j] for j in rand_jobs])
    assert accepted.mean() > random.mean() + 0.25


def _expected(m, j):
    jobs = m.jobs
    return dict(
        family=jobs["family"][j],
        seniority=jobs["seniority"][j],
        title=jobs["family"][j] * 4 + jobs["seniority"][j],
        required=tuple(jobs["required"][j][: jobs["num_required"][j]].tolist()),
        nice=tuple(jobs["nice"][j][: jobs["num_nice"][j]].tolist()),
        company=jobs["company"][j],
        city=jobs["city"][j],
        remote=jobs["remote"][j],
        min_years=jobs["min_years"][j],
        degree_level=jobs["degree_level"][j],
        degree_field=jobs["degree_field"][j],
        salary_lo=jobs["salary_lo"][j],
        salary_hi=jobs["salary_hi"][j],
    )


@pytest.mark.parametrize("template", range(market.NUM_JD_TEMPLATES))
def test_parse_jd_round_trips_every_template(m, template):
    jobs = np.flatnonzero(m.jobs["template"] == template)
    assert len(jobs) > 20
    for j in jobs:
        parsed = market.parse_jd(m.jds[j])
        assert parsed is not None and parsed.valid, m.jds[j]
        got = {k: getattr(parsed, k) for k in _expected(m, j)}
        assert got == _expected(m, j), m.jds[j]
        assert parsed.title_text == tax.TITLES[got["title"]]


def test_parse_jd_reads_hand_written_text():
    firm = tax.COMPANIES[5]
    text = (
        f"We are {firm.title()}, hiring a senior data analyst in York (remote). You know sql, "
        "tableau and spark. Bonus: airflow. 6+ years, a master in statistics. Pay 60k to 75k."
    )
    p = market.parse_jd(text)
    assert p.valid and p.family_name == "data" and p.seniority == 2
    assert [tax.SKILLS[s] for s in p.required] == ["sql", "tableau", "spark"]
    assert [tax.SKILLS[s] for s in p.nice] == ["airflow"]
    assert (tax.COMPANIES[p.company], tax.CITIES[p.city], p.remote) == (firm, "york", 2)
    assert (p.min_years, p.degree_level, tax.DEGREE_FIELDS[p.degree_field]) == (6, 2, "statistics")
    assert (p.salary_lo, p.salary_hi) == (60, 75)


def test_parse_jd_tolerates_garbled_text(m):
    rng, same_family = np.random.default_rng(0), []
    for j in range(0, len(m.jds), 5):
        words = m.jds[j].split()
        for text in (
            " ".join(words[: len(words) // 2]),
            " ".join(rng.permutation(words)),
            m.jds[j][: int(rng.integers(0, len(m.jds[j])))],
            "".join(rng.permutation(list(m.jds[j]))),
        ):
            p = market.parse_jd(text)
            assert p is None or isinstance(p, market.ParsedJD)
        shuffled = market.parse_jd(" ".join(rng.permutation(words)))
        same_family.append(shuffled is not None and shuffled.family == m.jobs["family"][j])
    assert np.mean(same_family) > 0.8  # shuffling can re-form another title, rarely
    # a JD cut after its title and first skills still carries the essentials
    half = market.parse_jd("Role: junior accountant | Skills: payroll, vat | Experience")
    assert half.valid and half.family_name == "finance" and half.salary_lo == -1


@pytest.mark.parametrize(
    "text", ["", "   ", "hello world", "!!! ??? 123", "\x00\x01 garbage", "k" * 500, None, 12]
)
def test_unparseable_text_scores_zero(m, text):
    assert m.true_match([0], [text])[0] == 0.0
    assert market.parse_jd(text) is None


def test_text_without_essentials_is_invalid_and_scores_zero(m):
    text = f"A nice job at {tax.COMPANIES[0]} in London, hybrid, 50k to 60k."
    p = market.parse_jd(text)
    assert p is not None and not p.valid and p.company == 0 and p.city == 0
    assert m.true_match(0, [text])[0] == 0


def test_oracle_rewards_skill_overlap_and_company_taste(m):
    """The seeker's own skills beat another family's; the hidden company taste moves the score."""
    sid = int(np.flatnonzero(m.seekers["num_skills"] >= 6)[0])
    fam = m.seekers["family"][sid]
    own = [tax.SKILLS[s] for s in m.seekers["skills"][sid][:5]]
    other_fam = (fam + 3) % tax.NUM_FAMILIES
    other = list(tax.FAMILY_SKILLS[other_fam][:5])
    title = tax.TITLES[fam * 4 + m.seekers["seniority"][sid]]

    def jd(company, skills):
        return (
            f"{title} at {company}, remote. Required: {', '.join(skills)}. 1+ years, 200k to 250k."
        )

    good, bad = m.true_match([sid, sid], [jd(tax.COMPANIES[0], own), jd(tax.COMPANIES[0], other)])
    assert good > bad + 0.2
    by_company = m.true_match([sid] * len(tax.COMPANIES), [jd(c, own) for c in tax.COMPANIES])
    logit = np.log(by_company / (1 - by_company))
    assert logit.max() - logit.min() > 0.5


def test_template_variety(m):
    assert (
        set(m.seekers["template"]) == set(range(market.NUM_CV_TEMPLATES))
        and len(set(m.seekers["template"])) >= 4
    )
    assert len(set(m.jobs["template"])) >= 3

    # each template has its own layout: the first two words (title words masked) differ
    def opening(text):
        for t in sorted(tax.TITLES, key=len, reverse=True):
            text = re.sub(rf"\b{t}\b", "TITLE", text, flags=re.I)
        return " ".join(text.split()[:2])

    cv_openings = {opening(c) for c in m.cvs}
    jd_openings = {re.sub(r"^[A-Z][a-z]+ [A-Z][a-z]+", "FIRM", opening(j)) for j in m.jds}
    assert len({o.split()[0] for o in cv_openings}) >= 4
    assert len({o.split()[0] for o in jd_openings}) >= 3


def test_texts_are_compact(m):
    assert max(len(c.split()) for c in m.cvs) <= 92
    assert max(len(j.split()) for j in m.jds) <= 75
    assert np.mean([len(j.split()) for j in m.jds]) < 62


def test_seekers_and_jobs_are_plausible(m):
    s, j = m.seekers, m.jobs
    assert 4 <= s["num_skills"].min() and s["num_skills"].max() <= 12
    assert 1 <= s["num_past"].min() and s["num_past"].max() <= 3
    fam_of = tax.SKILL_FAMILY[np.maximum(s["skills"], 0)]
    mine = (fam_of == s["family"][:, None]) | (fam_of == s["second_family"][:, None])
    assert mine[s["skills"] >= 0].mean() > 0.85
    assert 3 <= j["num_required"].min() and j["num_required"].max() <= 7
    assert j["num_nice"].max() <= 4
    assert np.all(j["salary_lo"] < j["salary_hi"])
    assert len(set(j["company"])) > 15 and len(set(s["city"])) >= 15
    same = m.jobs["family"][m.pairs["job_id"]] == s["family"][m.pairs["seeker_id"]]
    assert 0.5 < same.mean() < 0.9  # mostly own family, not only


def test_split_invariants(m):
    p = m.pairs
    cold = m.seeker_split == "cold_start"
    assert 0.08 < cold.mean() < 0.12
    assert np.all((p["split"] == "cold_start") == cold[p["seeker_id"]])
    warm_with_apps = np.unique(p["seeker_id"][~cold[p["seeker_id"]]])
    with_train = np.unique(p["seeker_id"][p["split"] == "train"])
    np.testing.assert_array_equal(warm_with_apps, with_train)
    warm = p["split"][p["split"] != "cold_start"]
    for name, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs((warm == name).mean() - share) < 0.04
    assert len(np.unique(p["seeker_id"] * 10**6 + p["job_id"])) == len(p["seeker_id"])


def test_to_parquet_and_load(tmp_path):
    mk = market.generate(num_seekers=200, num_jobs=50, seed=4)
    mk.to_parquet(str(tmp_path))
    inter = pq.read_table(tmp_path / "interactions.parquet")
    assert inter.column_names == ["seeker_id", "job_id", "cv", "jd", "label", "split"]
    assert inter.num_rows == mk.summary()["interactions"]
    seekers = pq.read_table(tmp_path / "seekers.parquet").to_pydict()
    assert seekers["cv"] == mk.cvs and seekers["skills"][0] == mk.seekers["skills"][0].tolist()
    assert pq.read_table(tmp_path / "jobs.parquet").to_pydict()["jd"] == mk.jds
    assert market.load(str(tmp_path)).cvs == mk.cvs
    with pytest.raises(DataError, match="config.json"):
        market.load(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_seekers=0),
        dict(num_jobs=-1),
        dict(positive_rate=1.0),
        dict(positive_rate=0.0),
        dict(applications_per_seeker=0),
        dict(cold_start_fraction=1.5),
        dict(seed=-1),
        dict(num_seekers=2.5),
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ConfigError, match="market."):
        market.generate(**{**SMALL, **kwargs})


def test_ids_out_of_range_raise(m):
    with pytest.raises(DataError, match="seeker ids"):
        m.true_match([10**6], ["x"])
    with pytest.raises(DataError, match="job ids"):
        m.oracle_prob([0], [10**6])


@pytest.mark.slow
def test_100k_seekers_in_under_a_minute():
    start = time.perf_counter()
    big = market.generate(num_seekers=100_000, num_jobs=20_000, seed=0)
    elapsed = time.perf_counter() - start
    assert big.summary()["seekers"] == 100_000 and len(big.cvs) == 100_000
    assert elapsed < 60, f"generating 100k seekers took {elapsed:.1f} s"
