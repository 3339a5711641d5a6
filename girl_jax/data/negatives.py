"""Synthetic hard negatives for the reward model: a seeker's accepted JD with one field made wrong.

The recruiter labels say which real jobs a seeker was accepted for, but an accepted JD and a
rejected one differ in many fields at once, so a reward model learns the fields that vary most
between jobs (family, seniority) and barely the ones PPO can change within a JD (the city, the
pay, the years or degree asked, which skills). `corrupt` re-renders an accepted JD in its own
template with exactly one of those fields moved against the seeker — another city with office
work, pay well below the seeker's expectation, years or a degree above theirs, required skills
they do not have — as a negative off the real-JD distribution (`reward.synthetic_negatives`).
Only the market's structured fields are used, never the recruiter oracle.
"""

from __future__ import annotations

import numpy as np

from girl_jax.data import market_styles, market_text
from girl_jax.data import market_taxonomy as tax

KINDS = ("city", "pay", "years", "degree", "skills")
# Opt-in kinds (`reward.synthetic_negative_kinds`): "repeat" repeats a required skill the
# seeker has, or a duty, 3-7 more times — what a policy that games a reward model counting
# CV-matching tokens writes ("We need sql, sql, sql, ..."), and what the oracle's parser ignores.
ALL_KINDS = (*KINDS, "repeat")


def _corrupt_one(kind: str, job: dict, seeker: dict, rng: np.random.Generator) -> dict:
    job = dict(job)
    if kind == "city":
        others = [c for c in range(len(tax.CITIES)) if c != seeker["city"]]
        job["city"], job["remote"] = int(rng.choice(others)), 0
    elif kind == "pay":
        hi = max(10, int(round(seeker["salary"] * rng.uniform(0.55, 0.8))))
        job["salary_hi"], job["salary_lo"] = hi, max(5, int(round(hi * 0.85)))
    elif kind == "years":
        job["min_years"] = int(seeker["years"] + rng.integers(4, 9))
    elif kind == "repeat":
        extra = int(rng.integers(3, 8))
        mine = [x for x in job["required"] if x in set(seeker["skills"])]
        if rng.random() < 0.7 or not job["duties"]:
            skill = int(rng.choice(mine or job["required"]))
            job["required"] = list(job["required"]) + [skill] * extra
        else:
            duty = int(rng.choice(job["duties"]))
            job["duties"] = list(job["duties"]) + [duty] * min(extra, 3)
    elif kind == "degree":
        job["degree_level"] = int(min(seeker["edu_level"] + 2, len(tax.EDUCATION_LEVELS) - 1))
        if job["degree_level"] <= seeker["edu_level"]:  # already the top level: move skills
            return _corrupt_one("skills", job, seeker, rng)
    else:  # required skills the seeker does not have, from the job's family
        fam = job["family"]
        start, count = tax.FAMILY_SKILL_START[fam], tax.FAMILY_SKILL_COUNT[fam]
        has = set(seeker["skills"])
        lacking = [s for s in range(start, start + count) if s not in has]
        n = len(job["required"])
        if len(lacking) >= n:
            job["required"] = [int(s) for s in rng.choice(lacking, n, replace=False)]
    return job


def _job_facts(j: dict, jid: int) -> dict:
    """The facts `market_text.render_jd` writes job `jid` from (the market's job arrays `j`)."""
    return dict(
        company=int(j["company"][jid]),
        family=int(j["family"][jid]),
        seniority=int(j["seniority"][jid]),
        required=[int(x) for x in j["required"][jid][: j["num_required"][jid]]],
        nice=[int(x) for x in j["nice"][jid][: j["num_nice"][jid]]],
        min_years=int(j["min_years"][jid]),
        degree_level=int(j["degree_level"][jid]),
        degree_field=int(j["degree_field"][jid]),
        city=int(j["city"][jid]),
        remote=int(j["remote"][jid]),
        salary_lo=int(j["salary_lo"][jid]),
        salary_hi=int(j["salary_hi"][jid]),
        duties=[int(d) for d in j["duties"][jid] if d >= 0],
    )


def _render_like(market, jid: int, facts: dict) -> str:
    """`facts` written the way the market wrote job `jid`: its template, or, on a market with
    `text_variation` (`jd_text_variation`), the same varied style (the row's own draws), so that
    a negative differs from its positive in the corrupted field and never in the style."""
    cfg = market.config
    variation = float(cfg.get("jd_text_variation", cfg.get("text_variation", 0.0)))
    if variation > 0:
        rng = market_styles.row_rng(int(market.config.get("seed", 0)), "jd", jid)
        if rng.random() < variation:
            return market_styles.vary_jd(rng, **facts)
    return market_text.render_jd(int(market.jobs["template"][jid]), **facts)


def corrupt(
    market, seeker_ids, job_ids, seed: int, kinds: tuple[str, ...] = KINDS
) -> tuple[list[str], list[str]]:
    """For each (seeker, accepted job): the job's JD re-rendered with one field made wrong for
    that seeker, and which field (one of `kinds`, drawn uniformly)."""
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise ValueError(f"negative kinds must be among {ALL_KINDS}, got {kinds!r}")
    rng = np.random.default_rng(seed)
    j, s = market.jobs, market.seekers
    texts, drawn = [], []
    for sid, jid in zip(np.asarray(seeker_ids).tolist(), np.asarray(job_ids).tolist()):
        job = _job_facts(j, jid)
        seeker = dict(
            city=int(s["city"][sid]),
            salary=float(s["salary"][sid]),
            years=int(s["years"][sid]),
            edu_level=int(s["edu_level"][sid]),
            skills=[int(x) for x in s["skills"][sid][: s["num_skills"][sid]]],
        )
        kind = kinds[int(rng.integers(len(kinds)))]
        texts.append(_render_like(market, jid, _corrupt_one(kind, job, seeker, rng)))
        drawn.append(kind)
    return texts, drawn


def augment(train_df, market, fraction: float, seed: int, kinds: tuple[str, ...] = KINDS):
    """`train_df` plus `fraction` x (its positives) synthetic negatives (label 0), shuffled in."""
    import pandas as pd  # heavy: pandas, only on this path

    pos = train_df[train_df["label"] == 1]
    n = int(round(fraction * len(pos)))
    if n <= 0 or market is None:
        return train_df
    pick = pos.sample(n=min(n, len(pos)), random_state=seed, replace=n > len(pos))
    texts, _ = corrupt(market, pick["seeker_id"].to_numpy(), pick["job_id"].to_numpy(), seed, kinds)
    neg = pick.copy()
    neg["jd"], neg["label"] = texts, 0
    out = pd.concat([train_df, neg], ignore_index=True)
    return out.sample(frac=1.0, random_state=seed + 1).reset_index(drop=True)
