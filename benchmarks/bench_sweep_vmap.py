"""Sweep cells per hour: `girl sweep` cell by cell against `girl sweep --vmap`, side by side.

    .venv/bin/python benchmarks/bench_sweep_vmap.py --workdir W [--iterations 10] \\
        [--grid ppo.learning_rate=2e-5,3e-5] [--seeds 0,1] [--config configs/default.py]

W must hold finished data / sft / reward stages (e.g. a `make run` workdir; without --workdir a
tiny smoke workdir is built first). The same grid x seeds runs twice from W, once cell by cell
(each cell its own compiled step, loaded from the persistent compilation cache after the first)
and once with --vmap (the cells stacked on one vmapped axis), in sweeps named bench-seq-* and
bench-vmap-* (removed first). Prints and writes JSON: wall time, cells per hour and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _tiny_workdir(path: str, config_spec: str) -> None:
    from girl_jax import cli

    tiny = [
        "--config.data.num_seekers=200",
        "--config.data.num_jobs=40",
        "--config.sft.steps=20",
        "--config.reward.probe_epochs=2",
    ]
    for stage in ("sft", "reward"):
        code = cli.main([stage, "--config", config_spec, "--workdir", path, *tiny])
        if code:
            raise SystemExit(f"building the tiny workdir failed at {stage}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="")
    ap.add_argument("--config", default="")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--grid", action="append", default=[])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    from girl_jax import compile_cache, sweep
    from girl_jax.configuration import load_config

    compile_cache.enable()
    spec = args.config or ("configs/default.py" if args.workdir else "configs/default.py:smoke")
    workdir = args.workdir or "/tmp/bench_sweep_vmap"
    if not args.workdir:
        _tiny_workdir(workdir, spec)
    grid = args.grid or ["ppo.learning_rate=2e-5,3e-5"]
    overrides = [
        f"ppo.iterations={args.iterations}",
        f"ppo.eval_every={args.iterations}",
        f"ppo.checkpoint_every={args.iterations}",
    ]
    config = load_config(spec, overrides)
    out = {"workdir": workdir, "config": spec, "grid": grid, "seeds": args.seeds, **vars(args)}
    for mode in ("seq", "vmap"):
        name = f"bench-{mode}-{args.iterations}"
        shutil.rmtree(os.path.join(workdir, "sweeps", name), ignore_errors=True)
        t0 = time.time()
        table = sweep.run(config, workdir, grid, args.seeds, name, vmap=mode == "vmap")
        wall = time.time() - t0
        cells = len(table["cells"])
        out[mode] = {
            "wall_s": round(wall, 1),
            "cells": cells,
            "cells_per_hour": cells * 3600 / wall,
        }
        print(f"{mode}: {cells} cells x {args.iterations} iterations in {wall:.1f} s", flush=True)
    out["vmap_speedup"] = out["vmap"]["cells_per_hour"] / out["seq"]["cells_per_hour"]
    out["loadavg"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
