"""One process of the multi-host test: `python multihost_worker.py PORT PROC_ID NUM_PROCS MODE`.

MODE "train": 3 train steps of the toy LM on a (2, 4, 1) mesh over every process's
devices; process 0 prints `LOSSES <json>`. MODE "hang": train, print READY, then keep
stepping (with barriers) until a peer dies; exits non-zero naming the failure.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import optax  # noqa: E402
from parallel_toy import toy_batch, toy_fn  # noqa: E402

from girl_jax.errors import GirlError  # noqa: E402
from girl_jax.parallel import distributed  # noqa: E402
from girl_jax.parallel.mesh import make_mesh  # noqa: E402
from girl_jax.parallel.plan import make_lm_train_step  # noqa: E402
from girl_jax.parallel.rules import activate, replicated  # noqa: E402
from girl_jax.parallel.state import (  # noqa: E402
    batch_sharding,
    create_train_state,
    local_batch_slice,
    put_batch,
)

GLOBAL_BATCH = 8


def train(steps: int, mesh, forever: bool = False) -> list[float]:
    tx = optax.adamw(1e-2)
    graphdef, state, shardings = create_train_state(toy_fn(), tx, mesh, seed=0)
    rep = replicated(mesh)
    rows = local_batch_slice(GLOBAL_BATCH, mesh)
    losses = []
    with activate(mesh):
        step = jax.jit(
            make_lm_train_step(graphdef, tx),
            in_shardings=(shardings, batch_sharding(mesh, 2), rep),
            out_shardings=(shardings, rep),
        )
        i = 0
        while i < steps or forever:
            batch = {k: v[rows] for k, v in toy_batch(GLOBAL_BATCH, seed=i % steps).items()}
            state, metrics = step(state, put_batch(batch, mesh), jax.random.key(i))
            losses.append(float(metrics["loss"]))
            if forever:
                if i == steps - 1:
                    print("READY", flush=True)
                distributed.barrier("step", timeout_s=20)
                time.sleep(0.2)
            i += 1
    return losses


def main() -> int:
    port, proc_id, num_procs, mode = sys.argv[1:5]
    cfg = dict(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_procs),
        process_id=int(proc_id),
        init_timeout_s=int(os.environ.get("GIRL_TEST_INIT_TIMEOUT", "60")),
        heartbeat_timeout_s=10,
    )
    try:
        distributed.initialize(cfg)
        mesh = make_mesh(dict(data=2, fsdp=-1, tensor=1))
        losses = train(3, mesh, forever=(mode == "hang"))
    except GirlError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 3
    except Exception as exc:  # noqa: BLE001 - a dead peer surfaces as an XLA runtime error
        print(f"DistributedError: peer failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 4
    if distributed.is_main():
        print("LOSSES " + json.dumps(losses), flush=True)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
