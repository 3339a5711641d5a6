"""The market's hidden facts, drawn with NumPy: seekers, jobs, who applies where, and the splits.

`girl_jax.data.market.generate` calls these with one child generator each, then renders the facts
as text (`market_text`) and labels the applications with the oracle (`market_oracle`). Lists
are padded with -1 to the widths below (`Market` documents every field).
"""

import numpy as np

from girl_jax.data import market_taxonomy as tax
from girl_jax.data.market_text import NUM_CV_TEMPLATES, NUM_JD_TEMPLATES
from girl_jax.data.schema import SPLITS

MAX_SKILLS, MAX_REQUIRED, MAX_NICE, MAX_PAST, MAX_DUTIES = 12, 7, 4, 3, 4


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
