"""Multi-host start-up: `jax.distributed.initialize` from config or the environment.

Every failure to reach a peer (coordinator unreachable, a process missing at start,
a barrier that times out) becomes a `DistributedError` with the address, process id
and timeout involved, instead of a hang or a deep XLA traceback.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import jax
from jax._src import distributed as _dist

from girl_jax.errors import DistributedError

# Environment variables that mean "a cluster launcher started us": jax detects the rest.
_CLUSTER_ENV = {
    "slurm": ("SLURM_JOB_ID", "SLURM_NTASKS"),
    "tpu": ("TPU_WORKER_HOSTNAMES",),
    "tpu-megascale": ("MEGASCALE_COORDINATOR_ADDRESS",),
    "mpi": ("OMPI_COMM_WORLD_SIZE",),
}
_barrier_counter = itertools.count()


def _get(cfg: Any, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    value = cfg.get(name, default) if isinstance(cfg, Mapping) else getattr(cfg, name, default)
    return default if value is None else value


def detected_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """Names the launcher whose variables are set (slurm with > 1 task, tpu, mpi), else None."""
    env = os.environ if environ is None else environ
    for name, keys in _CLUSTER_ENV.items():
        if all(env.get(k) for k in keys):
            if name == "slurm" and int(env.get("SLURM_NTASKS", "1")) <= 1:
                continue
            if name == "tpu" and len(env["TPU_WORKER_HOSTNAMES"].split(",")) <= 1:
                continue
            return name
    return None


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Polls a TCP connect to `host:port`; DistributedError when it never opens.

    jax 0.10 aborts the whole process (a C++ fatal error, no Python exception) when
    `initialize` cannot reach the coordinator, so non-coordinator processes check first.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"coordinator {address} not reachable within {timeout_s:g}s "
                    f"(distributed.coordinator_address / init_timeout_s): {exc}"
                ) from exc
            time.sleep(0.5)


def is_initialized() -> bool:
    return _dist.global_state.client is not None


def initialize(dist_cfg: Any = None, environ: Mapping[str, str] | None = None) -> bool:
    """Joins the process group; returns True when running multi-process.

    Config keys (`config.distributed`): coordinator_address ("host:port"), num_processes,
    process_id, local_device_ids, init_timeout_s (default 300), heartbeat_timeout_s
    (default 60). Without a coordinator address, jax's auto-detection is used when a
    SLURM / TPU-VM / MPI launcher is detected; otherwise this is a single-process run and
    nothing happens. Call before anything touches a JAX device.
    """
    if is_initialized():
        return True
    env = os.environ if environ is None else environ
    address = _get(dist_cfg, "coordinator_address", "") or env.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = int(_get(dist_cfg, "num_processes", 0) or env.get("JAX_NUM_PROCESSES", 0))
    process_id = int(_get(dist_cfg, "process_id", -1))
    if process_id < 0:
        process_id = int(env.get("JAX_PROCESS_ID", -1))
    init_timeout = int(_get(dist_cfg, "init_timeout_s", 300))
    heartbeat = int(_get(dist_cfg, "heartbeat_timeout_s", 60))
    local_ids = _get(dist_cfg, "local_device_ids", None)
    kwargs: dict[str, Any] = dict(
        initialization_timeout=init_timeout, heartbeat_timeout_seconds=heartbeat
    )
    if address:
        if num_processes <= 0 or process_id < 0:
            raise DistributedError(
                f"distributed.coordinator_address={address!r} needs distributed.num_processes "
                f"(got {num_processes}) and distributed.process_id (got {process_id}) "
                "or JAX_NUM_PROCESSES / JAX_PROCESS_ID"
            )
        if num_processes == 1:
            return False
        kwargs.update(
            coordinator_address=address, num_processes=num_processes, process_id=process_id
        )
        if local_ids is not None:
            kwargs["local_device_ids"] = list(local_ids)
        where = f"coordinator {address}, process {process_id} of {num_processes}"
        if process_id != 0:
            wait_for_coordinator(address, init_timeout)
    else:
        cluster = detected_cluster(env)
        if cluster is None:
            return False
        where = f"{cluster} auto-detection"
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as exc:  # noqa: BLE001 - XLA raises several runtime error types
        raise DistributedError(
            f"jax.distributed.initialize failed ({where}, timeout {init_timeout}s): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return jax.process_count() > 1


def shutdown() -> None:
    """Leaves the process group (no-op when single-process)."""
    if is_initialized():
        jax.distributed.shutdown()


def is_main() -> bool:
    """True on process 0, the one that writes files and metrics."""
    return jax.process_index() == 0


def barrier(name: str, timeout_s: float = 300.0) -> None:
    """Blocks until every process reaches `name`; DistributedError after `timeout_s`."""
    if jax.process_count() == 1 or not is_initialized():
        return

    # Barrier ids must be unique per use; the counter advances identically on every process.
    barrier_id = f"girl:{name}:{next(_barrier_counter)}"
    try:
        _dist.global_state.client.wait_at_barrier(barrier_id, int(timeout_s * 1000))
    except Exception as exc:  # noqa: BLE001
        raise DistributedError(
            f"barrier {name!r}: not all {jax.process_count()} processes arrived within "
            f"{timeout_s:g}s (this is process {jax.process_index()}): {exc}"
        ) from exc
