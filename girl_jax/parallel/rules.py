"""Logical axis names -> mesh axes: the rules that turn sharding metadata into placements.

Parameters and activations are annotated with logical names (`embed`, `mlp`,
`heads`, ...). A rule list maps each name to a mesh axis, a tuple of mesh axes,
or None (replicated). The mapping is shape-aware: a mesh axis that does not
divide the dimension is dropped, and a mesh axis is used at most once per spec,
so every spec produced here is valid for the array it describes.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from girl_jax.errors import ConfigError

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("head_dim", None),
    ("pos", None),
    ("length", None),
)


def normalize_rules(rules: Any = None, key: str = "logical_axis_rules") -> Rules:
    """Turns a config's list of (logical, mesh axis | tuple | None) pairs into a tuple of rules."""
    if rules is None:
        return DEFAULT_RULES
    out = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ConfigError(f"{key}[{i}] must be a (logical_name, mesh_axes) pair, got {rule!r}")
        name, target = rule
        if target is None or isinstance(target, str):
            out.append((name, target))
        elif isinstance(target, (tuple, list)) and all(isinstance(a, str) for a in target):
            out.append((name, tuple(target)))
        else:
            raise ConfigError(
                f"{key}[{i}] ({name!r}): mesh axes must be a name, a tuple of names or None, "
                f"got {target!r}"
            )
    return tuple(out)


def check_rules(rules: Rules, mesh: Mesh, key: str = "logical_axis_rules") -> None:
    """Raises ConfigError when a rule names a mesh axis the mesh does not have."""
    for i, (name, target) in enumerate(rules):
        for axis in _as_tuple(target):
            if axis not in mesh.shape:
                raise ConfigError(
                    f"{key}[{i}] maps {name!r} to mesh axis {axis!r}; the mesh has "
                    f"{tuple(mesh.shape)}"
                )


def _as_tuple(target: MeshAxes) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def _mesh_axes_for_dim(
    names: MeshAxes, dim: int | None, rules: Rules, mesh_shape: dict, used: set
) -> MeshAxes:
    """Mesh axes for one array dim; first rule (per logical name) that yields any axis wins."""
    chosen: list[str] = []
    product = 1
    for name in _as_tuple(names):
        for rule_name, target in rules:
            if rule_name != name:
                continue
            picked = []
            for axis in _as_tuple(target):
                size = mesh_shape.get(axis)
                if size is None or size == 1 or axis in used or axis in chosen:
                    continue
                if dim is not None and dim % (product * size):
                    continue
                picked.append(axis)
                product *= size
            if picked:
                chosen.extend(picked)
                break
    used.update(chosen)
    if not chosen:
        return None
    return chosen[0] if len(chosen) == 1 else tuple(chosen)


def logical_to_mesh_spec(
    logical_spec: Sequence[MeshAxes] | PartitionSpec | None,
    rules: Rules | None = None,
    mesh: Mesh | Any = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Maps a spec of logical names to a PartitionSpec of mesh axes.

    Args:
      logical_spec: one entry per array dim: a logical name, a tuple of names, or None.
      rules: (logical, mesh axes) pairs; defaults to `DEFAULT_RULES`.
      mesh: the mesh (concrete or abstract); axes it lacks or of size 1 are skipped.
      shape: the array shape; a mesh axis that does not divide its dim is dropped.
    Returns:
      A PartitionSpec that is valid for `shape` on `mesh`, each mesh axis used at most once.
    """
    rules = DEFAULT_RULES if rules is None else rules
    logical_spec = tuple(logical_spec or ())
    if shape is not None and len(logical_spec) > len(shape):
        raise ConfigError(
            f"logical spec {logical_spec} has more names than the array has dims {tuple(shape)}"
        )
    mesh_shape = dict(mesh.shape) if mesh is not None else {}
    used: set[str] = set()
    out = []
    for i, names in enumerate(logical_spec):
        dim = None if shape is None else int(shape[i])
        out.append(_mesh_axes_for_dim(names, dim, rules, mesh_shape, used))
    return PartitionSpec(*out)


# Variable metadata keys that may hold logical names, in order of preference: girl_jax models
# use "logical_axes" (flax ignores it); flax's own `sharding_names` is stored as "out_sharding".
AXES_METADATA_KEYS = ("logical_axes", "out_sharding", "sharding_names", "sharding")


def variable_logical_spec(variable: Any) -> PartitionSpec:
    """Logical PartitionSpec of one nnx.Variable (right-aligned to its rank), or P()."""
    metadata = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    names = next((metadata[k] for k in AXES_METADATA_KEYS if metadata.get(k)), None)
    if names is None or isinstance(names, (NamedSharding,)):
        return PartitionSpec()
    names = tuple(names)
    ndim = len(getattr(variable.get_raw_value(), "shape", ()))
    if len(names) < ndim:
        # Stacked (scanned / vmapped) layers add leading dims the names may not mention.
        names = (None,) * (ndim - len(names)) + names
    return PartitionSpec(*names)


def logical_specs(state: Any) -> Any:
    """Same structure as an nnx.State, each Variable holding its logical PartitionSpec."""

    def to_spec(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            return x.replace(variable_logical_spec(x))
        return PartitionSpec()

    return jax.tree.map(to_spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _spec_leaf(x: Any) -> bool:
    return x is None or isinstance(x, PartitionSpec)


def tree_shardings(
    abstract_tree: Any, logical_specs: Any, mesh: Mesh, rules: Rules | None = None
) -> Any:
    """Pytree of NamedSharding matching `abstract_tree` (arrays / ShapeDtypeStructs).

    `logical_specs` has the same structure, with a PartitionSpec of logical names
    (or None) where `abstract_tree` has an array, e.g. `nnx.get_partition_spec(state)`.
    """
    leaves, treedef = jax.tree.flatten(abstract_tree)
    spec_leaves = jax.tree.leaves(logical_specs, is_leaf=_spec_leaf)
    if len(spec_leaves) != len(leaves):
        raise ConfigError(
            f"logical specs have {len(spec_leaves)} leaves but the state has {len(leaves)}"
        )
    shardings = [
        NamedSharding(mesh, logical_to_mesh_spec(spec, rules, mesh, getattr(leaf, "shape", ())))
        for leaf, spec in zip(leaves, spec_leaves)
    ]
    return jax.tree.unflatten(treedef, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


# Active mesh + rules, read by `constrain` inside model code at trace time.
class _Active(threading.local):
    mesh: Mesh | None = None
    rules: Rules = DEFAULT_RULES


_active = _Active()


@contextlib.contextmanager
def activate(mesh: Mesh | None, rules: Rules | None = None) -> Iterator[None]:
    """Makes `mesh` and `rules` the ones `constrain` uses; trace (jit / lower) the step inside."""
    old = (_active.mesh, _active.rules)
    _active.mesh, _active.rules = mesh, normalize_rules(rules)
    try:
        # jax's own mesh context is part of jit's cache key, so a function traced outside
        # `activate` (constraints off) is not reused inside it, and vice versa.
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            yield
    finally:
        _active.mesh, _active.rules = old


def activated() -> tuple[Mesh | None, Rules]:
    """(mesh, rules) of the innermost `activate` on this thread: what a worker thread re-enters
    (`activate(*activated())`), since the context is per thread."""
    return _active.mesh, _active.rules


def active_mesh() -> Mesh | None:
    """The mesh set by `activate`, else a non-empty mesh set with `jax.set_mesh`, else None."""
    if _active.mesh is not None:
        return _active.mesh
    abstract = jax.sharding.get_abstract_mesh()
    if abstract is not None and not abstract.empty:
        return abstract
    return None


def active_rules() -> Rules:
    return _active.rules


def constrain(x: jax.Array, logical_axes: Sequence[MeshAxes]) -> jax.Array:
    """`with_sharding_constraint` by logical names under an active mesh; identity otherwise.

    Inside `jax.shard_map` the mapped axes are Manual: each shard already is the placement along
    them, so they are dropped from the spec (the constraint keeps only the Auto axes, or is the
    identity when none is left) and the model runs unchanged in a per-shard function."""
    mesh = active_mesh()
    if mesh is None or math.prod(mesh.shape.values()) == 1:
        return x
    spec = logical_to_mesh_spec(logical_axes, _active.rules, mesh, x.shape)
    manual = _manual_axes()
    if manual:
        spec = _without_axes(spec, manual)
        if all(entry is None for entry in spec):
            return x
        return jax.lax.with_sharding_constraint(x, spec)  # on the shard_map's own (abstract) mesh
    if isinstance(mesh, Mesh):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return jax.lax.with_sharding_constraint(x, spec)


def _manual_axes() -> frozenset[str]:
    """The mesh axes that are Manual where this is traced (inside `jax.shard_map`)."""
    abstract = jax.sharding.get_abstract_mesh()
    if abstract is None or abstract.empty:
        return frozenset()
    return frozenset(abstract.manual_axes)


def _without_axes(spec: PartitionSpec, axes: frozenset[str]) -> PartitionSpec:
    kept = []
    for entry in spec:
        names = tuple(a for a in _as_tuple(entry) if a not in axes)
        kept.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*kept)
