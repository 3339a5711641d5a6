"""The `girl` command: run the whole pipeline or one stage.

    girl run      --config configs/default.py[:variant] --workdir DIR [--config.key=value ...]
    girl data     make  --config ... --workdir DIR      write the market / user data + tokenizer
    girl data     check PATH                            validate a user file, print a summary
    girl sft | reward | ppo | recommend --config ... --workdir DIR
    girl generate --workdir DIR --cv FILE|- [--json]    JDs for a CV and the closest real jobs
    girl plan     --config ... --topology v5e:16x16     per-chip memory of the real steps (AOT)
    girl sweep    --config ... --workdir DIR --grid ppo.kl_coef=0.05,0.2 [--grid ...]
                  [--seeds 0,1,2] [--name NAME]       PPO grid x seeds from DIR's SFT + RM;
                                                        DIR/sweeps/NAME/{table.md,table.json,
                                                        overoptimisation.png} (girl_jax/sweep.py)
    girl report   DIR                                   re-render report.md and plots

Errors caused by input (data, config, checkpoints) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from girl_jax.errors import GirlError

STAGES = ("sft", "reward", "ppo", "recommend")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="girl",
        description="GIRL (generative job recommendation) in JAX: SFT -> reward model -> PPO -> "
        "enhanced recommender. Config overrides: --config.ppo.kl_coef=0.05",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp, workdir=True):
        sp.add_argument("--config", required=True, help="configs/NAME.py[:variant]")
        if workdir:
            sp.add_argument("--workdir", required=True, help="output directory (resumable)")
        return sp

    with_config(sub.add_parser("run", help="the whole pipeline, resumable"))
    for stage in STAGES:
        with_config(sub.add_parser(stage, help=f"stage {stage} only (needs earlier stages)"))
    d = sub.add_parser("data", help="make the market data or check a user file")
    dsub = d.add_subparsers(dest="data_command", required=True)
    with_config(dsub.add_parser("make", help="write WORKDIR/data (Parquet, tokenizer.json)"))
    chk = dsub.add_parser("check", help="validate a JSONL / CSV / Parquet file")
    chk.add_argument("path")
    g = sub.add_parser("generate", help="write JDs for a CV with the trained generator")
    g.add_argument("--workdir", required=True)
    g.add_argument("--cv", required=True, help="a text file with the CV, or - for stdin")
    g.add_argument("--config", default=None, help="defaults to the config saved in the workdir")
    g.add_argument("--num", type=int, default=3, help="JDs to write")
    g.add_argument("--jobs", type=int, default=5, help="closest real jobs to list")
    g.add_argument("--generator", choices=("ppo", "sft"), default="ppo")
    g.add_argument(
        "--best-of",
        type=int,
        default=0,
        help="first JD = the reward model's favourite of N samples (default: greedy)",
    )
    g.add_argument("--seeker-id", type=int, default=None, help="market seeker id (oracle score)")
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="CTRL-style penalty on tokens already generated, > 1 discourages repeats "
        "(default: the config's generate.repetition_penalty, 1.0 = off)",
    )
    g.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=None,
        help="never repeat an n-gram of this many tokens in a JD "
        "(default: the config's generate.no_repeat_ngram_size, 0 = off)",
    )
    g.add_argument(
        "--encoder-repetition-penalty",
        type=float,
        default=None,
        help="copy bias: > 1 favours the CV's tokens in the JD (Hugging Face's "
        "encoder_repetition_penalty; default: the config's generate value, 1.0 = off)",
    )
    g.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: the JDs, their parsed fields and the closest real jobs",
    )
    pl = with_config(sub.add_parser("plan", help="ahead-of-time memory plan"), workdir=False)
    pl.add_argument("--topology", required=True, help="e.g. v5e:16x16, v5p:4x4x4, cpu:8")
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pl.add_argument("--steps", default="sft,reward,ppo", help="comma-separated steps to plan")
    sw = with_config(
        sub.add_parser(
            "sweep",
            help="PPO settings grid x seeds from a workdir's finished data/sft/reward",
            description="Run PPO for every grid point x seed, each from WORKDIR's finished SFT "
            "model and reward model, in WORKDIR/sweeps/NAME/cells/<cell>/ (resumable; finished "
            "cells are skipped). Writes WORKDIR/sweeps/NAME/table.md, table.json (seeds "
            "aggregated: true-match and proxy gains, KL, parse rate, wall time, mean ± std) and "
            "overoptimisation.png. --config.x=y overrides apply to every cell. Example: girl sweep "
            "--config configs/default.py --workdir W --grid ppo.advantage=gae,grpo,rloo "
            "--grid ppo.kl_coef=0.05,0.2 --seeds 0,1,2 --config.ppo.group_size=4",
        )
    )
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="one axis of the grid, a config.ppo key and its values (repeatable)",
    )
    sw.add_argument("--seeds", default=None, help="comma-separated seeds (default: config.seed)")
    sw.add_argument("--name", default=None, help="sweep name (default: derived from the grid)")
    sw.add_argument(
        "--vmap",
        action="store_true",
        help="run cells that differ only in continuous settings (learning rates, KL "
        "coefficient, clip ranges, seeds) side by side as one jax.vmap-ped program",
    )
    r = sub.add_parser("report", help="re-render report.md and plots from a workdir")
    r.add_argument("workdir")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    args = _parser().parse_args(rest)
    from girl_jax import compile_cache, preemption  # deferred: `girl --help` imports no jax

    compile_cache.enable()  # before any compile; $GIRL_COMPILE_CACHE=off switches it off
    preemption.install()
    try:
        return _dispatch(args, overrides)
    except preemption.Preempted as exc:
        print(f"girl: {exc}", file=sys.stderr)
        return exc.exit_code
    except GirlError as exc:
        print(f"girl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("girl: interrupted", file=sys.stderr)
        return 130


def _load(args, overrides):
    from girl_jax.configuration import load_config  # deferred: `girl --help` imports no jax

    return load_config(args.config, overrides)


def _dispatch(args, overrides) -> int:
    cmd = args.command
    if cmd == "data" and args.data_command == "check":
        from girl_jax.data import io  # deferred: `girl --help` imports no jax

        ds = io.load_interactions(args.path)
        print(json.dumps(io.summarize(ds), indent=2))
        return 0
    if cmd == "report":
        from girl_jax import report  # deferred: `girl --help` imports no jax

        path = report.render(args.workdir)
        print(f"wrote {path}")
        return 0
    if cmd == "generate":
        from girl_jax.stages import generate_cli  # deferred: `girl --help` imports no jax

        generate_cli.main(args, overrides)
        return 0
    config = _load(args, overrides)
    if cmd == "plan":
        from girl_jax.parallel import plan  # deferred: `girl --help` imports no jax
        from girl_jax.stages import plans  # deferred: `girl --help` imports no jax

        rows = plans.plan(config, args.topology, tuple(args.steps.split(",")))
        print(plan.plan_to_json(rows) if args.json else plan.format_plan_table(rows))
        return 0
    if cmd == "sweep":
        from girl_jax import sweep  # deferred: `girl --help` imports no jax

        sweep.run(config, args.workdir, args.grid, args.seeds, args.name, vmap=args.vmap)
        return 0
    from girl_jax import pipeline  # deferred: `girl --help` imports no jax

    workdir = os.path.abspath(args.workdir)
    if cmd == "run":
        pipeline.run(config, workdir)
    elif cmd == "data":
        pipeline.run_stage("data", config, workdir)
    else:
        pipeline.run_stage(cmd, config, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
