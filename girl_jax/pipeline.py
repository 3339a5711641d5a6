"""Stage order, resume and the results report: what `girl run` does.

data -> sft -> reward -> ppo -> generated -> recommend -> report. A stage with a final marker is
skipped, so rerunning the same command after a kill finishes the job.
"""

from __future__ import annotations

import importlib
import json
import os
import time

import jax
from rich.console import Console

from girl_jax import report
from girl_jax.checkpoint import write_json_atomic
from girl_jax.data.prepare import prepare
from girl_jax.parallel import distributed
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.stages import generate, ppo, recommend, reward, sft

STAGES = ("data", "sft", "reward", "ppo", "generated", "recommend")


def _stage_fn(name):
    if name == "data":
        return prepare
    if name == "generated":
        return generate.run
    if name == "generate":
        name = "generated"
    return importlib.import_module(f"girl_jax.stages.{name}").train_and_evaluate


def preflight(config) -> None:
    """Validate every stage's settings and the mesh before anything trains or is written."""
    sft.SFTConfig.from_config(config.sft)
    reward.RewardConfig.from_config(config.reward)
    ppo.PPOConfig.from_config(config.ppo)
    recommend.RecommendConfig.from_config(config.recommend)
    mesh = mesh_mod.make_mesh(config.mesh)
    for key in ("sft.batch_size", "reward.batch_size", "ppo.batch_size"):
        stage, field = key.split(".")
        mesh_mod.check_batch(config[stage][field], mesh, key=key)


def _save_config(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        write_json_atomic(path, json.loads(config.to_json_best_effort()))


def run_stage(name: str, config, workdir: str) -> dict:
    """Run one stage (its inputs must exist: a clear CheckpointError says which is missing)."""
    distributed.initialize(config.get("distributed"))
    preflight(config)
    os.makedirs(workdir, exist_ok=True)
    _save_config(config, workdir)
    if name not in ("data",):
        prepare(config, workdir)  # cheap when done; sft etc. need it
    t0 = time.time()
    out = _stage_fn(name)(config, workdir)
    _record_timing(workdir, name, time.time() - t0)
    return out


def _record_timing(workdir: str, name: str, seconds: float) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "timings.json")
    timings = json.load(open(path)) if os.path.isfile(path) else {}
    timings[name] = round(timings.get(name, 0.0) + seconds, 2)
    write_json_atomic(path, timings)


def _done(workdir: str, name: str) -> bool:
    return os.path.isfile(os.path.join(workdir, name, "final.json"))


def run(config, workdir: str) -> dict:
    """The whole pipeline, resumable; writes results.json and report.md."""
    console = Console(stderr=True)
    distributed.initialize(config.get("distributed"))
    preflight(config)
    os.makedirs(workdir, exist_ok=True)
    _save_config(config, workdir)
    t_start = time.time()
    for i, name in enumerate(STAGES):
        if _done(workdir, name):
            console.print(f"[dim]stage {i + 1}/{len(STAGES)} {name}: done, skipped[/dim]")
            continue
        console.rule(f"stage {i + 1}/{len(STAGES)}: {name}")
        t0 = time.time()
        _stage_fn(name)(config, workdir)
        dt = time.time() - t0
        _record_timing(workdir, name, dt)
        console.print(f"stage {name} finished in {dt:.0f}s (total {time.time() - t_start:.0f}s)")
    results = report.build_results(workdir)
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "results.json"), results)
        path = report.render(workdir)
        console.print(f"results: {os.path.join(workdir, 'results.json')}  report: {path}")
    return results
