"""Upper bound for the GIRL row: a generator that writes the market's best-matching real JD.

    python scripts/oracle_generator.py --workdir workdir/default [--config configs/default.py]

Needs a finished run (market data, `recommend/encoder/embeddings.npz`). For every seeker the
"generated" JD is the real JD of the job with the highest oracle acceptance probability among
all jobs; its frozen-encoder embedding takes the GIRL slot, and the MLP and Dot heads train over
the run's seeds exactly as `girl recommend` does. Prints test and cold-start AUC (mean ± std)
next to the run's own Base / GIRL-SFT / GIRL rows. Writes WORKDIR/oracle_generator/.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--config", default="configs/default.py")
    args = ap.parse_args(argv)

    from girl_jax.configuration import load_config
    from girl_jax.data import prepare
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.stages import generate, recommend

    config = load_config(args.config)
    cfg = recommend.RecommendConfig.from_config(config.recommend)
    data = prepare.load(args.workdir)
    if data.market is None:
        raise SystemExit("oracle_generator needs the embedded market (its oracle)")
    seekers, jobs, splits = recommend.interaction_index(
        data.interactions, generate.load(args.workdir)
    )
    tables = recommend.load_embeddings(os.path.join(args.workdir, "recommend"))
    if tables is None:
        raise SystemExit(f"{args.workdir}/recommend/encoder/embeddings.npz is missing: run first")
    job_ids = jobs["job_id"].to_numpy()
    best = np.array(
        [
            np.argmax(data.market.oracle_prob(np.full(len(job_ids), s), job_ids))
            for s in seekers.index
        ]
    )
    tables["jd_ppo_emb"] = tables["jd_emb"][best]  # the GIRL slot holds the oracle's best JD
    mesh = mesh_mod.make_mesh(config.mesh)
    out_dir = os.path.join(args.workdir, "oracle_generator")
    runs = [
        recommend.train_one(cfg, "GIRL", pred, seed, tables, splits, out_dir, mesh, None)
        for pred in cfg.predictors
        for seed in cfg.seeds
    ]
    oracle = recommend.summarize(runs)
    with open(os.path.join(args.workdir, "recommend", "eval.json")) as f:
        own = json.load(f)
    summary = {}
    for split in ("test", "cold_start"):
        rows = dict(own.get(split, {}))
        rows["oracle-best JD"] = oracle[split]["GIRL"]
        summary[split] = rows
        for feat, cells in rows.items():
            text = "  ".join(
                f"{p} {c['auc']:.4f} ± {c.get('auc_std', 0.0):.4f}"
                for p, c in sorted(cells.items())
            )
            print(f"{split:10s} {feat:15s} {text}")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
