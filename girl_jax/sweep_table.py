"""The tables and the plot of `girl sweep`: each cell's result, seeds aggregated per grid point.

`build_table` -> table.json's content; `table_markdown` -> table.md; `plot_sweep` -> one
over-optimisation plot with every grid point (girl_jax/sweep.py runs the cells).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from girl_jax import atomic, checkpoint, overopt
from girl_jax.checkpoint import write_json_atomic
from girl_jax.metrics import read_metrics

if TYPE_CHECKING:
    from girl_jax.sweep import Cell

METRICS = (
    ("true_match_gain", "true match gain"),
    ("proxy_gain", "proxy gain"),
    ("kl_end", "KL end"),
    ("parse_rate_end", "parse rate end"),
    ("wall_time_s", "wall time (s)"),
)


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------- aggregation


def _stat(values: Sequence[float | None]) -> dict:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return {
        "mean": float(np.mean(vals)) if vals else None,
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        "n": len(vals),
        "values": vals,
    }


def _diff(a, b):
    return None if a is None or b is None else float(a) - float(b)


def cell_result(cell: Cell) -> dict | None:
    """The finished cell's numbers (None while it has no PPO final marker)."""
    if not checkpoint.is_final(cell.ppo_dir):
        return None
    ev = _read_json(os.path.join(cell.ppo_dir, "eval.json"))
    meta = _read_json(os.path.join(cell.dir, "cell.json"))
    return {
        "true_match_gain": _diff(ev.get("true_match_rate_end"), ev.get("true_match_rate_start")),
        "proxy_gain": _diff(ev.get("proxy_reward_end"), ev.get("proxy_reward_start")),
        "kl_end": ev.get("kl_end"),
        "parse_rate_end": ev.get("parse_rate_end"),
        "wall_time_s": meta.get("wall_time_s"),
        "eval": ev,
    }


def _curve(cell: Cell) -> dict:
    return overopt.curve_from_metrics(read_metrics(cell.ppo_dir))


def _label(point) -> str:
    return ", ".join(f"{k.removeprefix('ppo.')}={v}" for k, v in point) or "all"


def build_table(name: str, workdir: str, grid, seeds, cells: Sequence[Cell]) -> dict:
    """table.json's content: one row per grid point (finished seeds aggregated) and every cell."""
    rows, cell_rows = [], []
    points = list(dict.fromkeys(c.point for c in cells))
    for point in points:
        members = [c for c in cells if c.point == point]
        results = [(c, cell_result(c)) for c in members]
        done = [(c, r) for c, r in results if r is not None]
        curves = [_curve(c) for c, _ in done]
        curves = [cv for cv in curves if len(cv["d"])]
        row = {
            "params": {k: _get(members[0].config, k) for k, _ in point},
            "label": _label(point),
            "n_seeds": len(done),
            "seeds": [c.seed for c, _ in done],
        }
        for key, _ in METRICS:
            row[key] = _stat([r[key] for _, r in done])
        row["overoptimisation"] = overopt.summary(overopt.mean_curve(curves)) if curves else None
        rows.append(row)
        for c, r in results:
            cell_rows.append(
                {
                    "id": c.id,
                    "params": row["params"],
                    "seed": c.seed,
                    "finished": r is not None,
                    "dir": os.path.relpath(c.dir, workdir),
                    **({k: r[k] for k, _ in METRICS} if r else {}),
                }
            )
    return {
        "name": name,
        "workdir": workdir,
        "grid": [{"key": k, "values": list(v)} for k, v in grid],
        "seeds": list(seeds),
        "rows": rows,
        "cells": cell_rows,
    }


def _cell_text(s: dict, nd: int) -> str:
    if s["mean"] is None:
        return "n/a"
    text = f"{s['mean']:.{nd}f}"
    return text + (f" ± {s['std']:.{nd}f}" if s["std"] is not None else "")


def _peak_text(summary: dict | None) -> str:
    if not summary or summary.get("true") is None:
        return "n/a"
    if summary["true"].get("alpha") is None:
        return "n/a (few points)"
    if summary.get("true_peak_d") is None:
        return "no peak"
    if not summary.get("true_peak_within_run"):
        return f"beyond run ({summary['true_peak_d']:.3g})"
    return f"{summary['true_peak_d']:.3g}"


def table_markdown(table: dict) -> str:
    keys = [g["key"] for g in table["grid"]]
    head = [k.removeprefix("ppo.") for k in keys] + [t for _, t in METRICS]
    head += ["true-reward peak d", "seeds"]
    lines = [
        f"# Sweep `{table['name']}`",
        "",
        f"Workdir `{table['workdir']}`; seeds {table['seeds']}. Gains are end - start of PPO "
        "(greedy eval on the validation CVs); each cell is mean ± sample std over the finished "
        "seeds. Peak d: where the fitted true reward d (alpha - beta log d) of the seed-averaged "
        "curve peaks, d = sqrt(KL(policy||SFT)) (overoptimisation.png).",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for row in table["rows"]:
        cells = [str(row["params"][k]) for k in keys]
        for key, _ in METRICS:
            cells.append(_cell_text(row[key], 1 if key == "wall_time_s" else 4))
        cells += [_peak_text(row["overoptimisation"]), str(row["n_seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(sweep_dir: str, table: dict) -> None:
    write_json_atomic(os.path.join(sweep_dir, "table.json"), table)
    atomic.write_text(os.path.join(sweep_dir, "table.md"), table_markdown(table))


def plot_sweep(sweep_dir: str, name: str, cells: Sequence[Cell]) -> str | None:
    """overoptimisation.png: one seed-averaged curve per grid point with a finished seed."""
    curves = {}
    for point in dict.fromkeys(c.point for c in cells):
        done = [c for c in cells if c.point == point and checkpoint.is_final(c.ppo_dir)]
        per_seed = [cv for cv in (_curve(c) for c in done) if len(cv["d"])]
        if per_seed:
            curves[f"{_label(point)} (n={len(per_seed)})"] = overopt.mean_curve(per_seed)
    if not curves:
        return None
    return overopt.plot(
        curves,
        os.path.join(sweep_dir, "overoptimisation.png"),
        title=f"sweep {name}: eval curves averaged over seeds",
    )
