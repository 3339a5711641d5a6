"""The market's hidden recruiter oracle: each company's taste (`_make_taste`), the utility of a
(seeker, job fields) pair (`_utility`: skill coverage, family, seniority and years fit, degree,
location / remote, salary, taste; a flat penalty per field a generated JD leaves out) and the
bias that calibrates the positive rate (`_calibrate`). `girl_jax.data.market` builds on it.
"""

import numpy as np

from girl_jax.data import market_taxonomy as tax

_MISSING_PENALTY = 0.3  # per field a generated JD leaves out: an incomplete JD matches worse


def _make_taste(rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per company: skill preferences (C, S), liked former employers (C, C), weight on job count."""
    num_c = len(tax.COMPANIES)
    skill_CxS = np.zeros((num_c, len(tax.SKILLS)), np.float32)
    alumni_CxC = np.zeros((num_c, num_c), np.float32)
    for c in range(num_c):
        for f in range(tax.NUM_FAMILIES):
            start, count = tax.FAMILY_SKILL_START[f], tax.FAMILY_SKILL_COUNT[f]
            picks = start + rng.permutation(count)[:6]
            skill_CxS[c, picks[:4]], skill_CxS[c, picks[4:]] = 0.9, -0.9
        alumni_CxC[c, rng.permutation(num_c)[:4]] = 0.7
    return skill_CxS, alumni_CxC, rng.normal(0.0, 0.4, num_c).astype(np.float32)


def _job_fields(jobs: dict, job_ids: np.ndarray) -> dict[str, np.ndarray]:
    keys = "company family seniority required nice min_years degree_level degree_field city"
    return {k: jobs[k][job_ids] for k in keys.split() + ["remote", "salary_lo", "salary_hi"]}


def _coverage(skills_PxK: np.ndarray, wanted_PxW: np.ndarray) -> np.ndarray:
    has_PxW = (skills_PxK[:, :, None] == wanted_PxW[:, None, :]).any(1) & (wanted_PxW >= 0)
    return has_PxW.sum(1) / np.maximum((wanted_PxW >= 0).sum(1), 1)


def _utility_pieces(seekers: dict, sid: np.ndarray, job: dict, taste) -> list:
    """The utility as (term, sign, array) pieces in the order they are summed (`_utility`)."""
    sk = seekers["skills"][sid]
    fam = job["family"]
    years, need = seekers["years"][sid], job["min_years"]
    level = job["degree_level"]
    city, remote = job["city"], job["remote"]
    local = (city == seekers["city"][sid]) | (city < 0)  # a missing city pays the flat penalty
    away = np.where(seekers["relocate"][sid] == 1, -0.7, -2.2)
    pref = seekers["remote_pref"][sid]
    hi = job["salary_hi"]
    gap = np.maximum(seekers["salary"][sid] - hi, 0) / np.maximum(hi, 1)
    # pay far above the title's band is not credible (real jobs stay below ~1.4x the band)
    band = tax.SALARY_BAND[np.maximum(fam, 0), job["seniority"]]
    skill_CxS, alumni_CxC, tenure_C = taste
    c = np.maximum(job["company"], 0)
    liked = np.where(sk >= 0, skill_CxS[c[:, None], np.maximum(sk, 0)], 0.0).sum(1)
    past = seekers["past_company"][sid]
    liked += np.where(past >= 0, alumni_CxC[c[:, None], np.maximum(past, 0)], 0.0).sum(1)
    tenure = tenure_C[c] * (seekers["num_past"][sid] - 2)
    sec = seekers["second_family"][sid]
    return [
        ("skills", 1, 6.0 * _coverage(sk, job["required"]) + 1.0 * _coverage(sk, job["nice"])),
        # real jobs ask for >= 3 skills; a generated JD asking for fewer is less credible
        ("skills", -1, _MISSING_PENALTY * np.maximum(3 - (job["required"] >= 0).sum(1), 0)),
        (
            "family",
            1,
            np.where(seekers["family"][sid] == fam, 1.0, np.where(sec == fam, 0.2, -1.2)),
        ),
        ("seniority", -1, 0.8 * np.abs(seekers["seniority"][sid] - job["seniority"])),
        (
            "years",
            -1,
            np.where(
                need >= 0,
                0.45 * np.minimum(np.maximum(need - years, 0), 5)
                + 0.06 * np.maximum(years - need - 10, 0),
                _MISSING_PENALTY,
            ),
        ),
        (
            "degree",
            -1,
            np.where(
                level >= 0, 0.9 * np.maximum(level - seekers["edu_level"][sid], 0), _MISSING_PENALTY
            ),
        ),
        (
            "degree",
            1,
            np.where(
                (job["degree_field"] >= 0) & (job["degree_field"] == seekers["edu_field"][sid]),
                0.4,
                0.0,
            ),
        ),
        (
            "location",
            1,
            np.where(
                remote == 2, 0.0, np.where(local, 0.0, np.where(remote == 1, 0.6 * away, away))
            ),
        ),
        ("location", -1, np.where((city < 0) & (remote != 2), _MISSING_PENALTY, 0.0)),
        (
            "location",
            -1,
            np.where(pref == 2, np.select([remote == 0, remote == 1], [1.2, 0.4], 0.0), 0.0),
        ),
        (
            "location",
            -1,
            np.where((pref == 0) & (remote == 2), 0.3, 0.0)
            + np.where(remote < 0, _MISSING_PENALTY, 0),
        ),
        ("salary", -1, np.where(hi > 0, 6.0 * gap, _MISSING_PENALTY)),
        ("salary", -1, 4.0 * np.maximum(job["salary_lo"] / band - 1.5, 0.0)),
        ("company", 1, np.where(job["company"] >= 0, liked + tenure, 0.0)),
    ]


def utility_terms(seekers: dict, sid: np.ndarray, job: dict, taste) -> dict[str, np.ndarray]:
    """The recruiter's utility term by term: skills, family, seniority, years, degree, location
    (city, remote, the seeker's remote preference), salary, company (its taste). They sum to
    `_utility` up to rounding (scripts/oracle_terms.py prints them for generated JDs)."""
    out: dict[str, np.ndarray] = {}
    for name, sign, value in _utility_pieces(seekers, sid, job, taste):
        out[name] = out.get(name, 0.0) + sign * value
    return out


def _utility(seekers: dict, sid: np.ndarray, job: dict, taste) -> np.ndarray:
    """The recruiter's utility (logit before the bias) for each (seeker, job fields) pair:
    the pieces summed in their fixed order, so the market's labels never change."""
    pieces = _utility_pieces(seekers, sid, job, taste)
    u = pieces[0][2]
    for _, sign, value in pieces[1:]:
        u = u + value if sign > 0 else u - value
    return u


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for the extreme logits of odd JDs


def _calibrate(u: np.ndarray, rate: float) -> float:
    """The bias b with mean(sigmoid(u + b)) == rate, by bisection (the mean is monotone in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _sigmoid(u + mid).mean() < rate else (lo, mid)
    return 0.5 * (lo + hi)
