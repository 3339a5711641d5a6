"""Mesh, logical-axis rules, sharded state, multi-host start-up and ahead-of-time plans."""

from girl_jax.parallel.distributed import barrier, initialize, is_main, shutdown
from girl_jax.parallel.mesh import check_batch, data_parallel_size, make_mesh
from girl_jax.parallel.rules import (
    DEFAULT_RULES,
    activate,
    constrain,
    logical_specs,
    logical_to_mesh_spec,
    normalize_rules,
    replicated,
    tree_shardings,
)
from girl_jax.parallel.state import (
    TrainState,
    abstract_train_state,
    batch_sharding,
    create_train_state,
    local_batch_slice,
    put_batch,
    shard_params,
    state_bytes_per_device,
    state_bytes_total,
)

__all__ = [
    "DEFAULT_RULES",
    "TrainState",
    "abstract_train_state",
    "activate",
    "barrier",
    "batch_sharding",
    "check_batch",
    "constrain",
    "create_train_state",
    "data_parallel_size",
    "initialize",
    "is_main",
    "local_batch_slice",
    "logical_specs",
    "logical_to_mesh_spec",
    "make_mesh",
    "normalize_rules",
    "put_batch",
    "replicated",
    "shard_params",
    "shutdown",
    "state_bytes_per_device",
    "state_bytes_total",
    "tree_shardings",
]
