"""Where a PPO iteration's time goes on a workdir, at the trimmed and at the full prompt width.

    python scripts/ppo_iteration_profile.py --workdir workdir/default [--iterations 3]
        [--config configs/default.py] [--json-out F]

Needs a workdir whose `sft` and `reward` stages have finished (`girl run` or `girl sft` + `girl
reward`). Builds PPO as the stage does (`stages.ppo.driver.build`), then for each of the first
`--iterations` batches of training CVs times the three jitted pieces of an iteration apart:
sampling (`step.sample_step`), scoring (actor, reference and reward-model forwards, advantages:
`step.score_rollout`) and the update (`step.ppo_update`), and the fused `step.train_step` the
driver runs. Each batch runs at the width `batches.trim_prompts` gives (what the stage uses)
and at `sft.max_prompt_len`, alternately, in this one process; the first call of each (compile
+ run) is reported apart and left out of the medians. Prints the prompt lengths and a table.
The fused step also runs without `ppo.reuse_rollout_forward` ("fused_noreuse", alternating with
the others): the gain of pulling the first epoch's gradient back through the rollout's forward.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--config", default="configs/default.py")
    ap.add_argument("--iterations", type=int, default=3, help="timed batches per width")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args(argv)
    if args.iterations < 1:
        ap.error("--iterations must be >= 1")

    import jax
    import numpy as np

    from girl_jax.configuration import load_config
    from girl_jax.data import batches, prepare
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import rules as rules_mod
    from girl_jax.parallel import state as state_mod
    from girl_jax.stages import common
    from girl_jax.stages.ppo import driver
    from girl_jax.stages.ppo.step import ppo_update, sample_step, score_rollout, train_step

    config = load_config(args.config)
    with common.activate_rules(config):
        data = prepare.load(args.workdir)
        mesh = mesh_mod.make_mesh(config.mesh)
        rules = rules_mod.normalize_rules(config.logical_axis_rules)
        cfg, graphs, state, _, frozen, (atx, ctx, controller) = driver.build(
            config, args.workdir, data, mesh, rules
        )
        scfg = driver.sampling_config(cfg, data.tokenizer, greedy=False)
        full = batches.encode_prompts(
            data.tokenizer,
            list(data.seekers("train")["cv"]),
            max_prompt_len=config.sft.max_prompt_len,
        )
        trimmed = batches.trim_prompts(*full)
        lengths = full[1].sum(1)
        print(
            f"prompt tokens: mean {lengths.mean():.1f}, max {lengths.max()}; width "
            f"{full[0].shape[1]} (sft.max_prompt_len) -> {trimmed[0].shape[1]} (trim_prompts)"
        )
        roles = dict(graphs=graphs, cfg=cfg, actor_tx=atx, critic_tx=ctx)
        fns = {
            "sample": jax.jit(functools.partial(sample_step, graphs=graphs, scfg=scfg)),
            "score": jax.jit(functools.partial(score_rollout, graphs=graphs, cfg=cfg)),
            "update": jax.jit(functools.partial(ppo_update, **roles)),
            "fused": jax.jit(
                functools.partial(train_step, **roles, scfg=scfg, controller=controller)
            ),
        }
        roles_off = {**roles, "cfg": dataclasses.replace(cfg, reuse_rollout_forward=False)}
        fns["fused_noreuse"] = jax.jit(
            functools.partial(train_step, **roles_off, scfg=scfg, controller=controller)
        )

        def timed(fn, *a):
            t = time.perf_counter()
            out = jax.block_until_ready(fn(*a))
            return out, time.perf_counter() - t

        per = cfg.batch_size // cfg.group_size
        times = {w: {k: [] for k in fns} for w in ("trimmed", "full")}
        first = {}
        for i in range(args.iterations + 1):
            for width, (ids, mask) in (("trimmed", trimmed), ("full", full)):
                rows = slice(i * per, (i + 1) * per)
                raw = {
                    "prompt_ids": np.repeat(ids[rows], cfg.group_size, 0),
                    "prompt_mask": np.repeat(mask[rows], cfg.group_size, 0),
                }
                batch = state_mod.put_batch(raw, mesh)
                rng = common.fold_rng(config.seed, "ppo", i)
                out, t_sample = timed(fns["sample"], state, batch, rng)
                (rollout, _), t_score = timed(fns["score"], state, frozen, batch, out, None)
                _, t_update = timed(fns["update"], state, rollout, rng)
                _, t_fused = timed(fns["fused"], state, frozen, batch, rng)
                _, t_off = timed(fns["fused_noreuse"], state, frozen, batch, rng)
                row = dict(
                    sample=t_sample,
                    score=t_score,
                    update=t_update,
                    fused=t_fused,
                    fused_noreuse=t_off,
                )
                if i == 0:
                    first[width] = row
                else:
                    for k, v in row.items():
                        times[width][k].append(v)
    med = {w: {k: statistics.median(v) for k, v in d.items()} for w, d in times.items()}
    print(f"\nmedian seconds over {args.iterations} batches (first call, compile included):")
    print(f"{'':10s}" + "".join(f"{k:>16s}" for k in fns))
    for w in med:
        cells = "".join(f"{med[w][k]:8.2f} ({first[w][k]:5.1f})" for k in fns)
        print(f"{w:10s}{cells}")
    ratio = med["full"]["fused"] / med["trimmed"]["fused"]
    print(f"\nfused iteration, full width / trimmed: {ratio:.2f}x")
    reuse = med["trimmed"]["fused_noreuse"] / med["trimmed"]["fused"]
    print(f"fused iteration (trimmed), without / with reuse_rollout_forward: {reuse:.2f}x")
    if args.json_out:
        result = {
            "widths": {"full": int(full[0].shape[1]), "trimmed": int(trimmed[0].shape[1])},
            "median_s": med,
            "first_call_s": first,
            "fused_ratio_full_over_trimmed": ratio,
            "fused_ratio_noreuse_over_reuse": reuse,
        }
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
