"""`girl sweep`: a grid of PPO settings x seeds, all started from one finished SFT + reward model.

    girl sweep --config configs/default.py --workdir W \\
        --grid ppo.advantage=gae,grpo,rloo --grid ppo.kl_coef=0.05,0.2 --seeds 0,1,2 \\
        [--name NAME] [--config.ppo.group_size=4 ...]

W must hold finished `data`, `sft` and `reward` stages (e.g. from `girl run` or `girl reward`);
they are reused, never retrained. Every cell (a grid point x a seed) runs the PPO stage
(`girl_jax.stages.ppo.train_and_evaluate`) in its own workdir

    W/sweeps/NAME/cells/CELL_ID/{data,sft,reward -> W's (relative symlinks), ppo/, cell.json}

with the grid values and `config.seed = SEED` applied to the loaded config (after the
`--config.x=y` overrides, which apply to every cell) by the same type-checked override machinery
as the CLI. CELL_ID reads like `ppo.advantage=grpo,ppo.kl_coef=0.05,seed=1` (characters other
than letters, digits and `._=,-` become `_`). NAME defaults to the grid's key names plus a short
hash of keys and values, e.g. `advantage-kl_coef-3f9c1a`.

--grid KEY=V1,V2,...  one axis (repeatable); keys must be config.ppo.* (data, SFT and reward are
                      shared); values are parsed like --config overrides (commas inside [...] or
                      (...) do not split, so list values work). Grid points are the product of
                      the axes, in the order given.
--seeds S1,S2,...     seeds per grid point (default: config.seed). Seeds vary PPO's
                      initialisation order, rollout sampling and data order; the SFT and reward
                      model are the same for every seed.

Resumable: a cell with a PPO final marker is skipped; a killed cell resumes from its own PPO
checkpoints. Every cell's settings are recorded in its cell.json, and a rerun whose settings
for a finished or started cell differ (e.g. another --config.ppo.iterations) stops with an
error instead of mixing results: use --name for a new sweep. A cell's wall time is the time of
the call that finished it (a cell resumed after a kill records only the resumed part).

Outputs, rewritten after every cell (atomically):
    W/sweeps/NAME/table.md, table.json   one row per grid point, seeds aggregated: true-match
        gain (end - start of PPO, greedy eval on the validation CVs), proxy (RM) gain, KL end,
        parse rate end and wall time, each mean ± sample std over the finished seeds, n seeds;
        plus each row's over-optimisation summary (girl_jax.overopt) of its seed-averaged curve.
        table.json also lists every cell.
    W/sweeps/NAME/overoptimisation.png  (at the end) one curve per grid point: the seeds'
        eval curves averaged iteration by iteration (d, proxy and true reward), with the fitted
        Gao et al. (2022) RL form and the true-reward peak (girl_jax.overopt.plot).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Sequence

import jax
from rich.console import Console
from rich.markup import escape

from girl_jax import checkpoint, sweep_vmap
from girl_jax.checkpoint import write_json_atomic
from girl_jax.configuration import apply_override, validate
from girl_jax.errors import CheckpointError, ConfigError
from girl_jax.parallel import distributed
from girl_jax.pipeline import preflight
from girl_jax.stages import ppo
from girl_jax.sweep_table import (  # noqa: F401  (re-exported: girl_jax.sweep.build_table etc.)
    METRICS,
    _read_json,
    build_table,
    plot_sweep,
    table_markdown,
    write_outputs,
)

SHARED_STAGES = ("data", "sft", "reward")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,-]")


# ---------------------------------------------------------------- parsing


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets / parentheses / quotes."""
    out, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [v.strip() for v in out]


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`["ppo.kl_coef=0.05,0.2", ...]` -> [("ppo.kl_coef", ["0.05", "0.2"]), ...] (syntax only).

    ConfigError (one line) for a missing `=`, an empty key or value, a key outside config.ppo,
    `seed` (use --seeds), a repeated key or a repeated value.
    """
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().removeprefix("--").removeprefix("config.")
        if not sep or not key:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... e.g. ppo.kl_coef=0.05,0.2")
        if key == "seed":
            raise ConfigError(f"--grid {item!r}: give seeds with --seeds S1,S2,...")
        if not key.startswith("ppo.") or key == "ppo.":
            raise ConfigError(
                f"--grid {item!r}: a sweep varies PPO settings only (config.ppo.*); data, sft "
                "and reward are reused from the workdir"
            )
        values = _split_values(raw)
        if any(v == "" for v in values):
            raise ConfigError(f"--grid {item!r}: empty value for {key}")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {item!r}: a value of {key} is repeated")
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid {item!r}: {key} is given twice")
        grid.append((key, values))
    return grid


def parse_seeds(text: str | None, default: int) -> list[int]:
    """`"0,1,2"` -> [0, 1, 2]; None -> [default]."""
    if text is None:
        return [int(default)]
    parts = [p.strip() for p in str(text).split(",")]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected integers like 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def default_name(grid: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Key names (without `ppo.`) plus a 6-hex hash of the keys and values: deterministic."""
    digest = hashlib.sha1(json.dumps([[k, list(v)] for k, v in grid]).encode()).hexdigest()[:6]
    stem = "-".join(k.removeprefix("ppo.") for k, _ in grid) or "seeds"
    return f"{_UNSAFE.sub('_', stem)[:80]}-{digest}"


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ConfigError(f"--name {name!r}: must be a plain directory name")
    return name


def cell_id(params: Sequence[tuple[str, str]], seed: int) -> str:
    """`ppo.advantage=grpo,ppo.kl_coef=0.05,seed=1`, made safe as one directory name."""
    text = ",".join([f"{k}={v}" for k, v in params] + [f"seed={seed}"])
    safe = _UNSAFE.sub("_", text)
    if len(safe) > 180:  # file names stop at 255 bytes
        safe = safe[:170] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return safe


# ---------------------------------------------------------------- cells


@dataclasses.dataclass
class Cell:
    id: str
    params: tuple[tuple[str, str], ...]  # (key, value as typed)
    seed: int
    config: object  # ml_collections.ConfigDict
    dir: str = ""

    @property
    def point(self) -> tuple[tuple[str, str], ...]:
        return self.params

    @property
    def ppo_dir(self) -> str:
        return os.path.join(self.dir, "ppo")

    def settings(self) -> dict:
        """What makes the cell's result: config.ppo and the seed (JSON-normalised)."""
        return {"ppo": json.loads(self.config.ppo.to_json_best_effort()), "seed": self.seed}


def cell_config(config, params: Sequence[tuple[str, str]], seed: int):
    """A copy of `config` with each `key=value` and `seed=SEED` applied as CLI overrides."""
    cell = copy.deepcopy(config)
    for key, value in params:
        apply_override(cell, f"{key}={value}")
    apply_override(cell, f"seed={int(seed)}")
    validate(cell)
    return cell


def plan(config, grid, seeds) -> list[Cell]:
    """Every cell, its config built and checked (PPO settings, mesh) before anything runs."""
    cells, seen = [], {}
    for values in itertools.product(*[v for _, v in grid]):
        params = tuple(zip([k for k, _ in grid], values))
        for seed in seeds:
            cid = cell_id(params, seed)
            try:
                cfg = cell_config(config, params, seed)
                preflight(cfg)
            except ConfigError as exc:
                raise ConfigError(f"sweep cell {cid}: {exc}") from None
            if cid in seen:
                raise ConfigError(f"sweep cells {seen[cid]} and {params} get the same id {cid}")
            seen[cid] = params
            cells.append(Cell(cid, params, seed, cfg))
    return cells


def check_workdir(workdir: str) -> None:
    """CheckpointError (one line) unless W's data, sft and reward stages have final markers."""
    for stage in SHARED_STAGES:
        if not checkpoint.is_final(os.path.join(workdir, stage)):
            raise CheckpointError(
                f"girl sweep reuses the finished data, sft and reward stages of {workdir}, but "
                f"{os.path.join(workdir, stage, 'final.json')} is missing: run `girl run` or "
                f"`girl {stage if stage != 'data' else 'data make'} ...` on it first"
            )


def _first_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """The first key present in both whose values differ (keys only one side has are ignored)."""
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            diff = _first_difference(a, b, f"{prefix}{key}.")
            if diff:
                return diff
        elif a != b:
            return f"config.{prefix}{key}: {a!r} then, {b!r} now"
    return None


def _link_shared(cell_dir: str, workdir: str) -> None:
    os.makedirs(cell_dir, exist_ok=True)
    for stage in SHARED_STAGES:
        link = os.path.join(cell_dir, stage)
        target = os.path.relpath(os.path.join(workdir, stage), cell_dir)
        if os.path.islink(link):
            if os.readlink(link) == target:
                continue
            os.unlink(link)
        elif os.path.exists(link):
            raise CheckpointError(f"{link} exists and is not a symlink to {workdir}/{stage}")
        try:
            os.symlink(target, link)
        except FileExistsError:  # another process of a multi-host run made it
            pass


# ---------------------------------------------------------------- run


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run(
    config,
    workdir: str,
    grid_items: Sequence[str] = (),
    seeds: str | None = None,
    name: str | None = None,
    vmap: bool = False,
) -> dict:
    """Run (or resume) the sweep; returns table.json's content. See the module docstring."""
    workdir = os.path.abspath(workdir)
    grid = parse_grid(grid_items)
    seed_list = parse_seeds(seeds, config.seed)
    name = _check_name(name) if name is not None else default_name(grid)
    distributed.initialize(config.get("distributed"))
    cells = plan(config, grid, seed_list)
    check_workdir(workdir)
    sweep_dir = os.path.join(workdir, "sweeps", name)
    lead = jax.process_index() == 0
    for cell in cells:
        cell.dir = os.path.join(sweep_dir, "cells", cell.id)
        meta = _read_json(os.path.join(cell.dir, "cell.json"))
        diff = _first_difference(meta.get("settings", {}), cell.settings()) if meta else None
        if diff:
            raise ConfigError(
                f"sweep {name}: cell {cell.id} was started with other settings ({diff}); "
                "rerun with the same settings or pick a new --name"
            )
    if lead:
        write_json_atomic(
            os.path.join(sweep_dir, "sweep.json"),
            {"name": name, "grid": [[k, v] for k, v in grid], "seeds": seed_list},
        )
    console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message
    t_start, n = time.time(), len(cells)

    def start_cell(cell) -> dict:
        _link_shared(cell.dir, workdir)
        meta = {"id": cell.id, "params": dict(cell.params), "settings": cell.settings()}
        if lead:
            write_json_atomic(os.path.join(cell.dir, "cell.json"), meta)
        return meta

    def finish_cell(cell, meta: dict, extra: dict) -> None:
        if lead:
            write_json_atomic(os.path.join(cell.dir, "cell.json"), {**meta, **extra})
            write_outputs(sweep_dir, build_table(name, workdir, grid, seed_list, cells))

    if vmap:  # cells that differ only in traced settings: one vmapped program per group
        for g, group in enumerate(sweep_vmap.groups(cells), 1):
            todo = [c for c in group if not checkpoint.is_final(c.ppo_dir)]
            tag = escape(f"sweep {name}: group {g} ({len(group)} cells, vmapped)")
            if not todo:
                console.print(f"[dim]{tag}: done, skipped[/dim]")
                continue
            console.print(
                f"{tag}: start {', '.join(c.id for c in todo)} "
                f"(sweep elapsed {_clock(time.time() - t_start)})"
            )
            metas = [start_cell(c) for c in todo]
            wall = sweep_vmap.run_group(todo)
            for c, meta in zip(todo, metas):
                extra = {"group_wall_time_s": round(wall, 2), "vmap_group_size": len(todo)}
                finish_cell(c, meta, {"wall_time_s": round(wall / len(todo), 2), **extra})
            console.print(f"{tag}: finished in {_clock(wall)}")
    for i, cell in enumerate(cells, 1):
        tag = escape(f"sweep {name}: cell {i}/{n} {cell.id}")
        if checkpoint.is_final(cell.ppo_dir):
            if not vmap:
                console.print(f"[dim]{tag}: done, skipped[/dim]")
            continue
        console.print(f"{tag}: start (sweep elapsed {_clock(time.time() - t_start)})")
        meta = start_cell(cell)
        t0 = time.time()
        ppo.train_and_evaluate(cell.config, cell.dir)
        wall = time.time() - t0
        finish_cell(cell, meta, {"wall_time_s": round(wall, 2)})
        console.print(
            f"{tag}: finished in {_clock(wall)} (sweep elapsed {_clock(time.time() - t_start)})"
        )
    table = build_table(name, workdir, grid, seed_list, cells)
    if lead:
        write_outputs(sweep_dir, table)
        plot_sweep(sweep_dir, name, cells)
    console.print(escape(f"sweep {name}: {os.path.join(sweep_dir, 'table.md')}"))
    return table
