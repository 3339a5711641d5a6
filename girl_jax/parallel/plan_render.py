"""Plan rows as a text table or JSON, and the largest arrays of a step's arguments."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

GiB = 1024**3


def _per_device_bytes(leaf: Any) -> int:
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding):
        shape = tuple(sharding.shard_shape(shape))
    itemsize = 4 if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf.dtype.itemsize
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def largest_arrays(tree: Any, top: int = 5) -> list[dict[str, Any]]:
    """The `top` leaves of `tree` with the most bytes per device: path, shape, dtype, sharding."""
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(leaf, "shape"):
            continue
        sharding = getattr(leaf, "sharding", None)
        rows.append(
            dict(
                path=jax.tree_util.keystr(path, simple=True, separator="/"),
                shape=tuple(int(d) for d in leaf.shape),
                dtype=str(leaf.dtype),
                spec=str(getattr(sharding, "spec", "")),
                bytes_per_device=_per_device_bytes(leaf),
            )
        )
    rows.sort(key=lambda r: -r["bytes_per_device"])
    return rows[:top]


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GiB:.2f}"


def _fits(row: Mapping[str, Any]) -> str:
    fits = row.get("fits")
    return "?" if fits is None else ("yes" if fits else "NO")


def format_plan_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table, one line per planned step; a step that does not fit is
    followed by its compile error (if any) and its largest arguments per device."""
    header = (
        "step", "topology", "mesh", "params", "args GiB", "temp GiB", "out GiB",
        "total GiB", "HBM GiB", "fits", "TFLOP/dev", "compile s",
    )  # fmt: skip
    lines = [header]
    for r in rows:
        mesh = "x".join(str(v) for v in (r.get("mesh") or {}).values())
        flops = r.get("flops")
        lines.append(
            (
                str(r.get("step", "")),
                str(r.get("topology", "")),
                mesh,
                f"{r.get('params', 0) / 1e6:.1f}M",
                _gib(r.get("args_bytes")),
                _gib(r.get("temp_bytes")),
                _gib(r.get("output_bytes")),
                _gib(r.get("total_bytes")),
                _gib(r.get("capacity_bytes")),
                _fits(r),
                "-" if flops is None else f"{flops / 1e12:.2f}",
                f"{r.get('compile_s', 0.0):.1f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        where = f"{r.get('step')} @ {r.get('topology')}"
        if r.get("note"):
            out.append(f"{where}: {r['note']}")
        if r.get("error"):
            out.append(f"{where}: {r['error']}")
        if r.get("fits") is False:
            for a in r.get("largest_arrays") or ():
                out.append(
                    f"  {_gib(a['bytes_per_device'])} GiB/dev  {a['path']}  "
                    f"{a['dtype']}{list(a['shape'])}  {a['spec']}"
                )
    return "\n".join(out)


def plan_to_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """JSON rendering of the rows (tuples as lists)."""
    return json.dumps(list(rows), indent=2, default=str)


__all__ = ["format_plan_table", "largest_arrays", "plan_to_json"]
