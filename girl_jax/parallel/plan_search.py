"""`auto:GEN`: the smallest slice of a TPU generation on which every planned step fits.

Slices are tried smallest first. A slice whose mesh the config cannot lay out (a batch the
batch axes do not divide, a tensor axis larger than the slice) is skipped with the reason; a
slice where the step's arguments alone (parameters, optimizer state, frozen roles, batch)
exceed the chip's memory is ruled out without compiling; the others are compiled, and the
search stops at the first slice where every step fits. Every slice tried is one row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax

from girl_jax.errors import ConfigError
from girl_jax.parallel import plan as plan_mod
from girl_jax.parallel import plan_targets
from girl_jax.parallel.mesh import check_batch, make_mesh
from girl_jax.parallel.plan_render import _per_device_bytes, largest_arrays
from girl_jax.parallel.rules import normalize_rules


def _skipped(name: str, topology: str, devices: int, reason: str, **extra: Any) -> dict:
    row = dict(
        step=name,
        topology=topology,
        devices=devices,
        mesh={},
        params=0,
        note="",
        args_bytes=None,
        temp_bytes=None,
        output_bytes=None,
        alias_bytes=None,
        total_bytes=None,
        flops=None,
        compile_s=0.0,
        fits=False,
        error=reason,
        largest_arrays=[],
    )
    row.update(extra)
    return row


def _precheck(config: Any, topology: str, steps: Mapping[str, plan_mod.StepSpec]) -> list[dict]:
    """Rows for steps ruled out on `topology` without compiling (empty: compile them all)."""
    devices = plan_targets.topology_devices(topology)
    capacity = plan_targets.capacity_bytes(topology, devices)
    rows = []
    try:
        mesh = make_mesh(plan_mod._cfg(config, "mesh"), devices)
        rules = normalize_rules(plan_mod._cfg(config, "logical_axis_rules"))
        for spec in steps.values():
            check_batch(int(plan_mod._cfg(config, spec.batch_key)), mesh, key=spec.batch_key)
    except ConfigError as exc:
        return [
            _skipped(n, topology, len(devices), f"skipped: {exc}", capacity_bytes=capacity)
            for n in steps
        ]
    for name, spec in steps.items():
        planned = spec.build(config, mesh, rules)
        args = sum(_per_device_bytes(x) for x in jax.tree.leaves(planned.abstract_args))
        if capacity is not None and args > capacity:
            rows.append(
                _skipped(
                    name,
                    topology,
                    len(devices),
                    f"not compiled: the arguments alone need {args / plan_targets.GiB:.2f} GiB "
                    f"per device (> {capacity / plan_targets.GiB:.2f})",
                    mesh=dict(mesh.shape),
                    params=plan_mod.actor_params(planned.abstract_args[0]),
                    note=planned.note,
                    args_bytes=args,
                    capacity_bytes=capacity,
                    largest_arrays=largest_arrays(planned.abstract_args),
                )
            )
    return rows


def smallest_slice(
    config: Any, topology: str, steps: Mapping[str, plan_mod.StepSpec]
) -> list[dict[str, Any]]:
    """Rows of every slice tried for `auto:GEN`, smallest first, ending at the first that fits.

    Each row carries `search=topology`; the slice that fits has `smallest=True`.
    """
    rows: list[dict[str, Any]] = []
    for candidate in plan_targets.auto_candidates(topology):
        ruled_out = _precheck(config, candidate, steps)
        if ruled_out:
            found = ruled_out
        else:
            found = plan_mod.plan_config(config, candidate, steps)
        fits = all(r.get("fits") for r in found)
        for r in found:
            r.update(search=topology, smallest=fits)
        rows.extend(found)
        if fits:
            return rows
    return rows


def chips(topology: str) -> int:
    """Chips in a slice name (`v5e:4x8` -> 32)."""
    return math.prod(plan_targets.parse_topology(topology).dims)


__all__ = ["chips", "smallest_slice"]
