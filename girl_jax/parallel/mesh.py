"""Device mesh with axes ("data", "fsdp", "tensor") built from `config.mesh`.

Axis types are *Auto* on purpose: parameters and activations are placed with
`jax.jit(in_shardings=..., out_shardings=...)` and `with_sharding_constraint`
(see `rules.constrain`), and XLA's partitioner inserts the collectives. Under
*Explicit* axes (the default of `jax.make_mesh` in jax 0.10) a matmul whose two
contracting dims are sharded raises `ShardingTypeError`, which FSDP weights hit
on every layer; Auto keeps the model code sharding-agnostic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from girl_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def _field(cfg: Any, name: str, default: int = 1) -> int:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        value = cfg.get(name, default)
    else:
        value = getattr(cfg, name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"mesh.{name} must be an integer (or -1 for 'the rest'), got {value!r}")
    return int(value)


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """Returns (data, fsdp, tensor) with a single -1 replaced by the remaining device count."""
    sizes = [_field(mesh_cfg, axis) for axis in MESH_AXES]
    for axis, size in zip(MESH_AXES, sizes):
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis} must be a positive integer or -1, got {size}")
    rest = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
    if len(rest) > 1:
        raise ConfigError(f"at most one of mesh.data/fsdp/tensor may be -1, got -1 for {rest}")
    known = math.prod(size for size in sizes if size != -1)
    described = ", ".join(f"mesh.{a}={s}" for a, s in zip(MESH_AXES, sizes))
    if rest:
        if num_devices % known:
            raise ConfigError(
                f"{described}: the product of the fixed axes ({known}) does not divide the "
                f"{num_devices} devices, so mesh.{rest[0]}=-1 cannot take the rest"
            )
        sizes = [num_devices // known if size == -1 else size for size in sizes]
    elif known != num_devices:
        raise ConfigError(
            f"{described}: product {known} != {num_devices} devices; set one of "
            "mesh.data/fsdp/tensor to -1 to use the rest"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: Any = None, devices: Sequence[Any] | None = None) -> Mesh:
    """Builds an Auto-typed `Mesh(("data", "fsdp", "tensor"))` over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    auto = (AxisType.Auto,) * len(MESH_AXES)
    try:
        # Topology-aware device order (ICI rings on TPU); works for topology devices too.
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    except Exception:  # noqa: BLE001 - fall back to plain order for unusual device sets
        return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards: data x fsdp."""
    return math.prod(mesh.shape.get(axis, 1) for axis in BATCH_AXES)


def check_batch(global_batch: int, mesh: Mesh, key: str = "sft.batch_size") -> None:
    """Raises ConfigError naming `key` when the global batch does not split over data x fsdp."""
    shards = data_parallel_size(mesh)
    if global_batch <= 0 or global_batch % shards:
        raise ConfigError(
            f"{key}={global_batch} must be a positive multiple of mesh data x fsdp = "
            f"{mesh.shape.get('data', 1)} x {mesh.shape.get('fsdp', 1)} = {shards}"
        )
