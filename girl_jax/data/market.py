"""The embedded synthetic job market: seekers, jobs, applications and a hidden recruiter oracle.

`generate(num_seekers, num_jobs, seed, ...)` builds the whole market with NumPy, deterministically
from `seed` (each stage draws from its own child of one `SeedSequence`). Because the oracle is
known, the market also scores generated text: `true_match` parses a JD and returns the oracle's
expected acceptance probability.

Structured fields (dicts of NumPy arrays, row = id; -1 pads lists and marks "none"):

- `seekers`: family, second_family, years, seniority (0 junior .. 3 lead), edu_level
  (0 no degree .. 3 phd), edu_field, skills (N, 12), num_skills, city, relocate (0/1),
  remote_pref (0 office, 1 hybrid, 2 remote), salary (expected, thousands), past_title
  (N, 3; title id = family * 4 + seniority), past_company (N, 3), past_years (N, 3),
  num_past, template.
- `jobs`: company, family, seniority, required (J, 7), num_required, nice (J, 4), num_nice,
  min_years, degree_level, degree_field, city, remote (0 on site, 1 hybrid, 2 remote),
  salary_lo, salary_hi, duties (J, 4; ids into RESPONSIBILITIES), template.

The oracle's utility adds skill coverage, family, seniority and years fit, degree, location /
remote, salary fit and a company taste no text states (favoured and disliked skills per company
and family, favoured former employers, a liking or dislike for candidates with many past jobs);
labels are Bernoulli draws of sigmoid(utility + bias), the bias calibrated on the applications so
the positive rate is `positive_rate`. The taste is keyed by company, so it applies to a
generated JD too (an unknown company gets none). A generated JD that leaves a field out pays a
flat penalty in place of that term; fewer than three required skills, or pay far above the
title's band, also lower its score. `true_match` of a real JD's text equals `oracle_prob`.
The utility, the taste and the calibration live in `girl_jax.data.market_oracle`.
`text_variation` > 0 writes that share of CVs / JDs in varied styles (`market_styles`).
"""

import dataclasses
import functools
import json
import os

import numpy as np

from girl_jax.data import market_taxonomy as tax
from girl_jax.data.market_oracle import (  # noqa: F401 (_coverage: re-exported)
    _MISSING_PENALTY,
    _calibrate,
    _coverage,
    _job_fields,
    _make_taste,
    _sigmoid,
    _utility,
)
from girl_jax.data.market_text import (
    NUM_CV_TEMPLATES,
    NUM_JD_TEMPLATES,
    ParsedJD,
    parse_jd,
    parsed_fields,
    render_cvs,
    render_jds,
)
from girl_jax.errors import ConfigError, DataError

__all__ = ["Market", "ParsedJD", "generate", "load", "parse_jd"]

MAX_SKILLS, MAX_REQUIRED, MAX_NICE, MAX_PAST, MAX_DUTIES = 12, 7, 4, 3, 4
SPLITS = ("train", "validation", "test", "cold_start")


def _make_seekers(rng, n: int) -> dict[str, np.ndarray]:
    fam = rng.choice(tax.NUM_FAMILIES, n, p=tax.FAMILY_WEIGHTS / tax.FAMILY_WEIGHTS.sum())
    second = np.where(rng.random(n) < 0.3, tax.sample_adjacent(rng, fam), -1)
    years = np.clip(np.rint(rng.gamma(2.0, 3.5, n)), 0, 35).astype(int)
    seniority = np.searchsorted([2.5, 6.0, 11.0], years + rng.normal(0, 1.5, n))
    need_FxL = 0.7 * tax.FAMILY_DEGREE_NEED + 0.3 * np.array([0.1, 0.5, 0.3, 0.1])
    edu_level = tax.sample_categorical(rng, need_FxL[fam])
    edu_field = tax.sample_field(rng, fam, off_field_p=0.15)
    num_skills = np.clip(4 + years // 3 + rng.integers(-1, 3, n), 4, MAX_SKILLS)
    skills = np.empty((n, MAX_SKILLS), dtype=np.int64)
    pop_S = tax.skill_popularity()
    for lo in range(0, n, 20000):  # chunks keep the (rows x 324) key matrix small
        f, s = fam[lo : lo + 20000, None], second[lo : lo + 20000, None]
        logw = np.where(
            tax.SKILL_FAMILY == f,
            pop_S,
            np.where(tax.SKILL_FAMILY == s, pop_S - 0.8, np.float32(-7.5)),
        )
        skills[lo : lo + 20000] = tax.sample_top_k(rng, logw.astype(np.float32), MAX_SKILLS)
    skills = np.where(np.arange(MAX_SKILLS) < num_skills[:, None], skills, -1)
    city = rng.choice(len(tax.CITIES), n, p=tax.CITY_WEIGHTS / tax.CITY_WEIGHTS.sum())
    salary = tax.SALARY_BAND[fam, seniority] * tax.CITY_SALARY[city] * rng.lognormal(0, 0.12, n)
    num_past = np.clip(1 + rng.binomial(2, np.minimum(years / 12.0, 0.9)), 1, MAX_PAST)
    level_NxP = np.maximum(seniority[:, None] - np.cumsum(rng.random((n, MAX_PAST)) < 0.55, 1), 0)
    past_fam = np.tile(fam[:, None], (1, MAX_PAST))
    use_second = (second >= 0) & (rng.random(n) < 0.6) & (num_past > 1)
    past_fam[use_second, num_past[use_second] - 1] = second[use_second]  # their oldest job
    has_NxP = np.arange(MAX_PAST) < num_past[:, None]
    share_NxP = rng.exponential(size=(n, MAX_PAST)) * has_NxP
    past_years = np.maximum(
        1, np.rint(0.9 * years[:, None] * share_NxP / share_NxP.sum(1, keepdims=True))
    )
    return dict(
        family=fam,
        second_family=second,
        years=years,
        seniority=seniority,
        edu_level=edu_level,
        edu_field=edu_field,
        skills=skills,
        num_skills=num_skills,
        city=city,
        relocate=(rng.random(n) < 0.35).astype(int),
        remote_pref=rng.choice(3, n, p=[0.35, 0.45, 0.2]),
        salary=np.rint(salary).astype(int),
        past_title=np.where(has_NxP, past_fam * tax.NUM_LEVELS + level_NxP, -1),
        past_company=np.where(has_NxP, rng.integers(0, len(tax.COMPANIES), (n, MAX_PAST)), -1),
        past_years=np.where(has_NxP, past_years, -1).astype(int),
        num_past=num_past,
        template=rng.integers(0, NUM_CV_TEMPLATES, n),
    )


def _make_jobs(rng, n: int) -> dict[str, np.ndarray]:
    company_w = 1.0 / (np.arange(len(tax.COMPANIES)) + 2.0) ** 0.6
    fam = rng.choice(tax.NUM_FAMILIES, n, p=tax.FAMILY_WEIGHTS / tax.FAMILY_WEIGHTS.sum())
    seniority = rng.choice(tax.NUM_LEVELS, n, p=[0.25, 0.35, 0.27, 0.13])
    adj = tax.sample_adjacent(rng, fam)
    logw = np.where(
        tax.SKILL_FAMILY == fam[:, None],
        tax.skill_popularity(),
        np.where(tax.SKILL_FAMILY == adj[:, None], -4.0, -9.0),
    ).astype(np.float32)
    picked = tax.sample_top_k(rng, logw, MAX_REQUIRED + MAX_NICE)
    num_required = rng.integers(3, MAX_REQUIRED + 1, n)
    num_nice = np.minimum(rng.integers(0, MAX_NICE + 1, n), 10 - num_required)
    degree_level = tax.sample_categorical(rng, tax.FAMILY_DEGREE_NEED[fam])
    degree_field = np.where(degree_level > 0, tax.sample_field(rng, fam, off_field_p=0.0), -1)
    nice = np.take_along_axis(picked, num_required[:, None] + np.arange(MAX_NICE), axis=1)
    lo_hi = np.array(tax.MIN_YEARS_RANGE)[seniority]
    city = rng.choice(len(tax.CITIES), n, p=tax.CITY_WEIGHTS / tax.CITY_WEIGHTS.sum())
    mid = tax.SALARY_BAND[fam, seniority] * tax.CITY_SALARY[city] * rng.lognormal(0, 0.08, n)
    salary_lo = np.rint(0.9 * mid).astype(int)
    # fewer duties when the skill lists are long keep a JD within ~70 words
    listed = num_required + num_nice
    num_duties = np.minimum(rng.integers(2, MAX_DUTIES + 1, n), 4 - (listed > 6) - (listed > 8))
    duties = np.argsort(rng.random((n, tax.RESP_PER_FAMILY)), axis=1)[:, :MAX_DUTIES]
    return dict(
        company=rng.choice(len(tax.COMPANIES), n, p=company_w / company_w.sum()),
        family=fam,
        seniority=seniority,
        required=np.where(
            np.arange(MAX_REQUIRED) < num_required[:, None], picked[:, :MAX_REQUIRED], -1
        ),
        num_required=num_required,
        nice=np.where(np.arange(MAX_NICE) < num_nice[:, None], nice, -1),
        num_nice=num_nice,
        min_years=rng.integers(lo_hi[:, 0], lo_hi[:, 1] + 1),
        degree_level=degree_level,
        degree_field=degree_field,
        city=city,
        remote=rng.choice(3, n, p=[0.45, 0.35, 0.2]),
        salary_lo=salary_lo,
        salary_hi=np.maximum(np.rint(1.12 * mid).astype(int), salary_lo + 1),
        duties=np.where(
            np.arange(MAX_DUTIES) < num_duties[:, None],
            fam[:, None] * tax.RESP_PER_FAMILY + duties,
            -1,
        ),
        template=rng.integers(0, NUM_JD_TEMPLATES, n),
    )


def _applications(rng, seekers: dict, jobs: dict, per_seeker: int) -> tuple[np.ndarray, ...]:
    """(seeker_id, job_id) pairs: mostly own family, some adjacent, some random; no repeats."""
    n, j = len(seekers["family"]), len(jobs["family"])
    counts = rng.integers(max(1, per_seeker // 2), per_seeker + per_seeker // 2 + 1, n)
    sid = np.repeat(np.arange(n), counts)
    own = seekers["family"][sid]
    second = seekers["second_family"][sid]
    own = np.where((second >= 0) & (rng.random(len(sid)) < 0.3), second, own)
    kind = rng.random(len(sid))
    fam = np.where(
        kind < 0.72,
        own,
        np.where(
            kind < 0.9, tax.sample_adjacent(rng, own), rng.integers(0, tax.NUM_FAMILIES, len(sid))
        ),
    )
    order = np.argsort(jobs["family"], kind="stable")
    count_F = np.bincount(jobs["family"], minlength=tax.NUM_FAMILIES)
    start_F = np.cumsum(count_F) - count_F
    u_Ax3 = rng.random((len(sid), 3))
    in_family = order[
        np.minimum(start_F[fam, None] + (u_Ax3 * count_F[fam, None]).astype(int), j - 1)
    ]
    cand = np.where(count_F[fam, None] > 0, in_family, (u_Ax3 * j).astype(int))
    # of three candidates, a seeker applies to the one that looks closest in level and place
    far = (jobs["city"][cand] != seekers["city"][sid, None]) & (jobs["remote"][cand] != 2)
    score = -0.8 * np.abs(jobs["seniority"][cand] - seekers["seniority"][sid, None]) - 0.6 * far
    pick = np.argmax(score + rng.gumbel(size=score.shape), axis=1)
    job = cand[np.arange(len(sid)), pick]
    key = np.unique(sid.astype(np.int64) * j + job)
    return key // j, key % j


def _assign_splits(rng, sid: np.ndarray, n: int, cold_fraction: float):
    """Seeker split (warm / cold_start) and the split of each interaction."""
    cold = np.zeros(n, bool)
    cold[rng.permutation(n)[: int(round(cold_fraction * n))]] = True
    u = rng.random(len(sid))
    split = np.where(u < 0.8, 0, np.where(u < 0.9, 1, 2))
    split[cold[sid]] = 3
    no_train = np.bincount(sid[split == 0], minlength=n) == 0
    first = np.unique(sid, return_index=True)[1]
    fix = first[no_train[sid[first]] & ~cold[sid[first]]]
    split[fix] = 0  # every warm seeker keeps a train interaction
    return np.where(cold, "cold_start", "warm"), np.array(SPLITS)[split]


@dataclasses.dataclass(eq=False)
class Market:
    """A generated market. Build it with `generate`; `generate(**m.config)` rebuilds it exactly."""

    config: dict
    seekers: dict
    jobs: dict
    cvs: list
    jds: list
    seeker_split: np.ndarray
    pairs: dict  # seeker_id, job_id, label, split arrays, one entry per interaction
    taste: tuple
    bias: float

    @functools.cached_property
    def interactions(self):
        """datasets.Dataset with seeker_id, job_id, cv, jd, label, split (built on first use)."""
        import datasets  # heavy: datasets, only when a Dataset is asked for

        p = self.pairs
        features = datasets.Features(
            {
                "seeker_id": datasets.Value("int64"),
                "job_id": datasets.Value("int64"),
                "cv": datasets.Value("string"),
                "jd": datasets.Value("string"),
                "label": datasets.Value("int64"),
                "split": datasets.Value("string"),
            }
        )
        return datasets.Dataset.from_dict(
            {
                "seeker_id": p["seeker_id"],
                "job_id": p["job_id"],
                "cv": [self.cvs[i] for i in p["seeker_id"]],
                "jd": [self.jds[i] for i in p["job_id"]],
                "label": p["label"],
                "split": p["split"].tolist(),
            },
            features=features,
        )

    def _prob(self, sid: np.ndarray, fields: dict) -> np.ndarray:
        return _sigmoid(_utility(self.seekers, sid, fields, self.taste) + self.bias)

    def _seeker_ids(self, seeker_ids, n: int) -> np.ndarray:
        sid = np.broadcast_to(np.asarray(seeker_ids, dtype=np.int64), (n,))
        if n and (sid.min() < 0 or sid.max() >= len(self.cvs)):
            raise DataError(
                f"market: seeker ids must lie in [0, {len(self.cvs)}), got {sid.min()}..{sid.max()}"
            )
        return sid

    def oracle_prob(self, seeker_ids, job_ids) -> np.ndarray:
        """Expected acceptance probability of each (seeker, real job) pair."""
        jid = np.asarray(job_ids, dtype=np.int64).reshape(-1)
        if len(jid) and (jid.min() < 0 or jid.max() >= len(self.jds)):
            raise DataError(
                f"market: job ids must lie in [0, {len(self.jds)}), got {jid.min()}..{jid.max()}"
            )
        return self._prob(self._seeker_ids(seeker_ids, len(jid)), _job_fields(self.jobs, jid))

    def true_match(self, seeker_ids, jd_texts) -> np.ndarray:
        """Oracle acceptance probability of each (seeker, JD text) pair; unparseable text is 0."""
        texts = [jd_texts] if isinstance(jd_texts, str) else list(jd_texts)
        sid = self._seeker_ids(seeker_ids, len(texts))
        parsed = [parse_jd(t) for t in texts]
        ok = np.array([p is not None and p.valid for p in parsed], dtype=bool)
        out = np.zeros(len(texts))
        if ok.any():
            fields = parsed_fields([p for p, good in zip(parsed, ok) if good])
            out[ok] = self._prob(sid[ok], fields)
        return out

    def summary(self) -> dict:
        labels = self.pairs["label"]
        return dict(
            seekers=len(self.cvs),
            jobs=len(self.jds),
            interactions=len(labels),
            positive_rate=float(labels.mean()) if len(labels) else 0.0,
        )

    def to_parquet(self, directory: str) -> None:
        """Writes interactions / seekers (with cv) / jobs (with jd) .parquet and config.json."""
        import pyarrow as pa  # heavy: pyarrow, only for Parquet files
        import pyarrow.parquet as pq  # heavy: pyarrow, only for Parquet files

        os.makedirs(directory, exist_ok=True)
        self.interactions.to_parquet(os.path.join(directory, "interactions.parquet"))
        for name, table, text_key, texts in (
            ("seekers", self.seekers, "cv", self.cvs),
            ("jobs", self.jobs, "jd", self.jds),
        ):
            cols = {k: (v.tolist() if v.ndim > 1 else v) for k, v in table.items()}
            cols[text_key] = texts
            if name == "seekers":
                cols["split"] = self.seeker_split.tolist()
            pq.write_table(pa.table(cols), os.path.join(directory, f"{name}.parquet"))
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.config, f, indent=2)


def _check_share(name: str, value):
    """`value` if it is a number in [0, 1] (a share of the rows), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"market.{name} must lie in [0, 1], got {value!r}")
    return value


def generate(
    num_seekers: int = 2000,
    num_jobs: int = 400,
    seed: int = 0,
    positive_rate: float = 0.25,
    applications_per_seeker: int = 8,
    cold_start_fraction: float = 0.1,
    text_variation: float = 0.0,
    jd_text_variation: float | None = None,
) -> Market:
    """Builds a market deterministically from `seed`; see the module docstring for fields.
    `text_variation`: share of CVs / JDs in a varied style (`market_styles`); 0 = templates.
    `jd_text_variation`: the JDs' share when it should differ from the CVs' (None: the same)."""
    config = dict(
        num_seekers=num_seekers,
        num_jobs=num_jobs,
        seed=seed,
        positive_rate=positive_rate,
        applications_per_seeker=applications_per_seeker,
        cold_start_fraction=cold_start_fraction,
    )
    for key in ("num_seekers", "num_jobs", "applications_per_seeker"):
        if not isinstance(config[key], int | np.integer) or config[key] < 1:
            raise ConfigError(f"market.{key} must be a positive integer, got {config[key]!r}")
    if not isinstance(positive_rate, float | int) or not 0.0 < positive_rate < 1.0:
        raise ConfigError(f"market.positive_rate must lie in (0, 1), got {positive_rate!r}")
    if not 0.0 <= cold_start_fraction < 1.0:
        raise ConfigError(
            f"market.cold_start_fraction must lie in [0, 1), got {cold_start_fraction!r}"
        )
    _check_share("text_variation", text_variation)
    if text_variation:  # absent at 0, so a default market's config.json is the one of before
        config["text_variation"] = text_variation
    jd_variation = text_variation
    if jd_text_variation is not None:
        jd_variation = _check_share("jd_text_variation", jd_text_variation)
    if jd_variation != text_variation:  # absent when equal, as above
        config["jd_text_variation"] = jd_variation
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"market.seed must be a non-negative integer, got {seed!r}")
    # plain Python numbers, so the config survives JSON and `generate(**config)` is exact
    config = {
        k: (int(v) if isinstance(v, int | np.integer) else float(v)) for k, v in config.items()
    }
    r_taste, r_seek, r_jobs, r_apps, r_label, r_split = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    )
    taste = _make_taste(r_taste)
    seekers, jobs = _make_seekers(r_seek, num_seekers), _make_jobs(r_jobs, num_jobs)
    sid, jid = _applications(r_apps, seekers, jobs, applications_per_seeker)
    u = _utility(seekers, sid, _job_fields(jobs, jid), taste)
    bias = _calibrate(u, positive_rate)
    label = (r_label.random(len(sid)) < _sigmoid(u + bias)).astype(np.int64)
    seeker_split, split = _assign_splits(r_split, sid, num_seekers, cold_start_fraction)
    return Market(
        config=config,
        seekers=seekers,
        jobs=jobs,
        cvs=render_cvs(seekers, variation=text_variation, seed=seed),
        jds=render_jds(jobs, variation=jd_variation, seed=seed),
        seeker_split=seeker_split,
        pairs=dict(seeker_id=sid, job_id=jid, label=label, split=split),
        taste=taste,
        bias=bias,
    )


def load(directory: str) -> Market:
    """Rebuilds the market saved by `to_parquet` from its config.json (generation is exact)."""
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the market config ({e})") from None
    try:
        return generate(**config)
    except TypeError as e:
        raise DataError(f"{path}: not a market config ({e})") from None
