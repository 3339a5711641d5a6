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
The utility, the taste and the calibration live in `girl_jax.data.market_oracle`, the draws of
the facts (seekers, jobs, applications, splits) in `girl_jax.data.market_facts`.
`text_variation` > 0 writes that share of CVs / JDs in varied styles (`market_styles`).
"""

import dataclasses
import functools
import json
import os

import numpy as np

from girl_jax.data.market_facts import (
    _applications,
    _assign_splits,
    _make_jobs,
    _make_seekers,
)
from girl_jax.data.market_oracle import (  # noqa: F401 (_coverage: re-exported)
    _MISSING_PENALTY,
    _calibrate,
    _coverage,
    _job_fields,
    _make_taste,
    _sigmoid,
    _utility,
)
from girl_jax.data.market_text import (  # noqa: F401 (NUM_*_TEMPLATES: re-exported)
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
