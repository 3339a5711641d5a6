"""Train state built abstractly and materialised already sharded.

`create_train_state` traces model construction and `tx.init` with `jax.eval_shape`,
derives a NamedSharding for every leaf (parameters from their logical axis names,
optimizer moments from their parameter, counters and scalars replicated), then runs
the initialiser once under `jax.jit(out_shardings=...)`: no array is ever whole on
one device. (`jax.jit(tx.init)` alone would leave Adam moments replicated.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from girl_jax.errors import ConfigError
from girl_jax.parallel.mesh import BATCH_AXES
from girl_jax.parallel.rules import (
    Rules,
    logical_specs,
    normalize_rules,
    replicated,
    tree_shardings,
)

ModelFn = Callable[[nnx.Rngs], nnx.Module]


@flax.struct.dataclass
class TrainState:
    """Everything a train step updates; the model's graphdef stays outside (static)."""

    step: jax.Array  # int32 scalar
    params: nnx.State  # nnx.Param variables
    opt_state: optax.OptState
    rest: nnx.State  # non-Param model variables (usually empty)

    def apply_gradients(self, grads: nnx.State, tx: optax.GradientTransformation) -> TrainState:
        """One optimizer update; `grads` has the structure of `params`."""
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def _key(rng: jax.Array | None, seed: int) -> jax.Array:
    return jax.random.key(seed) if rng is None else rng


def _build(model_fn: ModelFn, key: jax.Array) -> nnx.Module:
    # Sharding comes from out_shardings; eager per-variable sharding would need a global mesh.
    with nnx.use_eager_sharding(False):
        return model_fn(nnx.Rngs(key))


def _variable_shardings(abstract: nnx.State, mesh: Mesh, rules: Rules) -> Any:
    return tree_shardings(abstract, logical_specs(abstract), mesh, rules)


def _fits(sharding: NamedSharding, shape: tuple[int, ...]) -> bool:
    spec = tuple(sharding.spec)
    if len(spec) > len(shape):
        return False
    for dim, axes in zip(shape, spec):
        if axes is None:
            continue
        names = (axes,) if isinstance(axes, str) else axes
        size = int(np.prod([sharding.mesh.shape[a] for a in names]))
        if dim % size:
            return False
    return True


def opt_state_shardings(
    tx: optax.GradientTransformation, abstract_opt_state: Any, param_shardings: Any, mesh: Mesh
) -> Any:
    """Optimizer-state shardings: per-param leaves follow their param; the rest replicate."""
    rep = replicated(mesh)
    try:
        mapped = optax.tree_map_params(
            tx,
            lambda _, sharding: sharding,
            abstract_opt_state,
            param_shardings,
            transform_non_params=lambda _: rep,
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )
    except Exception:  # noqa: BLE001 - unusual optimizer: fall back to replication
        mapped = jax.tree.map(lambda _: rep, abstract_opt_state)
    leaves, treedef = jax.tree.flatten(abstract_opt_state)
    mapped_leaves = jax.tree.leaves(mapped, is_leaf=lambda x: isinstance(x, NamedSharding))
    if len(mapped_leaves) != len(leaves):
        return jax.tree.unflatten(treedef, [rep] * len(leaves))
    # Factored statistics (e.g. Adafactor rows) have another shape than their parameter.
    fixed = [s if _fits(s, tuple(leaf.shape)) else rep for leaf, s in zip(leaves, mapped_leaves)]
    return jax.tree.unflatten(treedef, fixed)


def abstract_train_state(
    model_fn: ModelFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Any = None,
    *,
    rng: jax.Array | None = None,
    seed: int = 0,
) -> tuple[nnx.GraphDef, TrainState, TrainState, Callable[[jax.Array], TrainState]]:
    """(graphdef, abstract state with shardings, state shardings, init fn); allocates nothing."""
    rules = normalize_rules(rules)
    key = _key(rng, seed)
    graphdefs = []

    def init(key: jax.Array) -> TrainState:
        graphdef, params, rest = nnx.split(_build(model_fn, key), nnx.Param, ...)
        graphdefs.append(graphdef)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rest=rest
        )

    abstract = jax.eval_shape(init, key)
    param_sh = _variable_shardings(abstract.params, mesh, rules)
    shardings = TrainState(
        step=replicated(mesh),
        params=param_sh,
        opt_state=opt_state_shardings(tx, abstract.opt_state, param_sh, mesh),
        rest=_variable_shardings(abstract.rest, mesh, rules),
    )
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return graphdefs[-1], abstract, shardings, init


def create_train_state(
    model_fn: ModelFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Any = None,
    *,
    rng: jax.Array | None = None,
    seed: int = 0,
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """Builds params + optimizer state sharded on `mesh`.

    Args:
      model_fn: `rngs -> nnx.Module`, e.g. `lambda rngs: Decoder(cfg, rngs=rngs)`; every
        `nnx.Param` may carry logical axis names (`sharding_names=` / `nnx.with_partitioning`).
      tx: the optax optimizer.
      mesh: from `make_mesh`; rules: `logical_axis_rules` (None = defaults).
      rng / seed: the init key (rng wins when given).
    Returns:
      (graphdef, state, state_shardings); `nnx.merge(graphdef, state.params, state.rest)`
      rebuilds the module.
    """
    key = _key(rng, seed)
    graphdef, _, shardings, init = abstract_train_state(model_fn, tx, mesh, rules, rng=key)
    state = jax.jit(init, out_shardings=shardings)(key)
    return graphdef, state, shardings


class StageState(NamedTuple):
    """What a stage's `build_state` returns: one train state, abstract or real, and its pieces.

    `state` holds ShapeDtypeStructs carrying their shardings (abstract) or sharded arrays;
    `shardings` is the same tree of NamedShardings; `tx` the optimizer the state was made for.
    """

    graphdef: nnx.GraphDef
    state: TrainState
    shardings: TrainState
    tx: optax.GradientTransformation


def build_train_state(
    model_fn: ModelFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Any = None,
    *,
    abstract: bool,
    seed: int = 0,
) -> StageState:
    """`abstract_train_state` (abstract: nothing allocated) or `create_train_state` (the real,
    sharded state from `seed`): the same tree, shapes, dtypes and shardings either way."""
    if abstract:
        graphdef, state, shardings, _ = abstract_train_state(model_fn, tx, mesh, rules, seed=seed)
    else:
        graphdef, state, shardings = create_train_state(model_fn, tx, mesh, rules, seed=seed)
    return StageState(graphdef, state, shardings, tx)


def shard_params(
    model_fn: ModelFn,
    mesh: Mesh,
    rules: Any = None,
    *,
    rng: jax.Array | None = None,
    seed: int = 0,
) -> tuple[nnx.GraphDef, nnx.State, Any]:
    """Sharded parameters without optimizer state (frozen roles: reference, reward model).

    Returns (graphdef, params, param_shardings); non-Param variables must be absent.
    """
    rules = normalize_rules(rules)
    key = _key(rng, seed)
    graphdefs = []

    def init(key: jax.Array) -> nnx.State:
        graphdef, params, rest = nnx.split(_build(model_fn, key), nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ConfigError("shard_params: the model has non-Param variables; use a TrainState")
        graphdefs.append(graphdef)
        return params

    abstract = jax.eval_shape(init, key)
    shardings = _variable_shardings(abstract, mesh, rules)
    params = jax.jit(init, out_shardings=shardings)(key)
    return graphdefs[-1], params, shardings


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dim over ("data", "fsdp"); other dims replicated."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))


def local_batch_slice(global_batch: int, mesh: Mesh) -> slice:
    """Rows of the global batch this process must load (contiguous under `make_mesh`)."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    starts = sorted({idx[0].indices(global_batch)[:2] for idx in index_map.values()})
    lo, hi = starts[0][0], starts[-1][1]
    if sum(stop - start for start, stop in starts) != hi - lo:
        raise ConfigError(
            f"this process's batch rows are not contiguous on mesh {dict(mesh.shape)}; "
            "order the devices so each host owns whole data/fsdp slices"
        )
    return slice(lo, hi)


def put_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy arrays (this process's rows) -> global arrays sharded over the batch axes.

    Under multiple processes each passes its own contiguous slice of the global batch;
    the global batch is `process_count x` the local one.
    """
    out = {}
    for name, value in batch.items():
        local = np.asarray(value)
        if local.ndim == 0:
            raise ConfigError(f"batch field {name!r} is a scalar; it needs a leading batch dim")
        sharding = batch_sharding(mesh, local.ndim)
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


def _leaf_bytes_per_device(leaf: Any) -> int:
    shape = tuple(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
        shape = tuple(sharding.shard_shape(shape))
    return int(np.prod(shape, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize


def state_bytes_per_device(state: Any) -> int:
    """Bytes one device holds for `state` (arrays or ShapeDtypeStructs with shardings)."""
    return sum(_leaf_bytes_per_device(leaf) for leaf in jax.tree.leaves(state))


def state_bytes_total(state: Any) -> int:
    """Unsharded bytes of `state`."""
    return sum(
        int(np.prod(leaf.shape, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(state)
    )
