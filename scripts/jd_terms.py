"""What a generator's JDs get right, term by term of the recruiter oracle (market only).

    python scripts/jd_terms.py --workdir W [--workdir W2 ...]

Reads W/generated/generated.parquet (greedy JDs of every seeker by the SFT and the PPO
generator) and prints, per generator: true match, parse rate, required-skill coverage of the
seeker's skills, repeated skills, family match, city mismatch (not remote), pay below the
seeker's expectation, years / degree above the seeker. Shows which oracle terms RL moved.
"""

import argparse

import numpy as np
import pandas as pd

from girl_jax.data import market_text, prepare


def terms(market, sids, texts) -> dict:
    parsed = [market_text.parse_jd(t) for t in texts]
    ok = np.array([p is not None and p.valid for p in parsed])
    sk = market.seekers
    out = {"parse_rate": ok.mean(), "true_match": market.true_match(sids, texts).mean()}
    f = market_text.parsed_fields([p for p, g in zip(parsed, ok) if g])
    s = np.asarray(sids)[ok]
    req = f["required"]
    has = (sk["skills"][s][:, :, None] == req[:, None, :]).any(1) & (req >= 0)
    n_req = (req >= 0).sum(1)
    out["required_skills"] = n_req.mean()
    out["coverage"] = (has.sum(1) / np.maximum(n_req, 1)).mean()
    dup = [len(r[r >= 0]) - len(set(r[r >= 0].tolist())) > 0 for r in req]
    out["repeated_skills"] = np.mean(dup)
    out["family_match"] = (f["family"] == sk["family"][s]).mean()
    away = (f["city"] >= 0) & (f["city"] != sk["city"][s]) & (f["remote"] != 2)
    out["city_mismatch"] = away.mean()
    hi = f["salary_hi"]
    out["pay_below_expectation"] = ((hi > 0) & (hi < sk["salary"][s])).mean()
    out["years_above"] = ((f["min_years"] >= 0) & (f["min_years"] > sk["years"][s])).mean()
    out["degree_above"] = (f["degree_level"] > sk["edu_level"][s]).mean()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", action="append", required=True)
    args = ap.parse_args()
    rows = []
    for wd in args.workdir:
        market = prepare.load(wd).market
        df = pd.read_parquet(f"{wd}/generated/generated.parquet")
        for g in ("sft", "ppo", "bon"):
            if f"jd_{g}" in df:
                r = terms(market, df["seeker_id"].to_numpy(), list(df[f"jd_{g}"]))
                rows.append({"workdir": wd, "generator": g, **r})
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )


if __name__ == "__main__":
    main()
