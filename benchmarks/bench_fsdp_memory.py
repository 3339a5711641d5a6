"""FSDP memory: per-device bytes of the train state (params + AdamW moments) at fsdp = 1, 2,
4, 8 on simulated CPU devices, measured from the shards that actually sit on device 0 and
from `state_bytes_per_device`; the peer figure is the ideal ``total / fsdp``.

Runs with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set here, before jax loads).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

DEVICES = 8


def device0_bytes(state) -> int:
    """Bytes of every shard of `state` that lives on device 0 (what that device holds)."""
    import jax

    dev0 = jax.devices()[0]
    total = 0
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            if shard.device == dev0:
                total += shard.data.nbytes
    return total


def run(args) -> dict:
    import jax

    from girl_jax.models.decoder import Decoder
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import state as state_mod
    from girl_jax.stages import common

    shape = "bench-tiny" if args.quick else "bench-medium"
    cfg = bc.decoder_config(shape)
    tx = common.make_optimizer(1e-4, 1000, weight_decay=0.01, grad_clip=1.0)
    sizes = (1, 2) if args.quick else (1, 2, 4, 8)
    figures, rows = [], {}
    total = None
    for n in sizes:
        mesh = mesh_mod.make_mesh({"data": 1, "fsdp": n, "tensor": 1}, devices=jax.devices()[:n])
        _, state, _ = state_mod.create_train_state(lambda rngs: Decoder(cfg, rngs=rngs), tx, mesh)
        measured = device0_bytes(state)
        total = state_mod.state_bytes_total(state)
        rows[n] = dict(
            device0_bytes=measured,
            state_bytes_per_device=state_mod.state_bytes_per_device(state),
            total_bytes=total,
        )
        figures.append(
            bc.figure(
                f"train state per device {shape} fsdp={n}",
                "bytes",
                float(measured),
                total / n,
                "ideal total/fsdp",
                higher_is_better=False,
                target=1.1,
                note="params + AdamW moments; lower is better",
            )
        )
        del state
    return {"figures": figures, "details": dict(shape=shape, rows=rows, devices=len(jax.devices()))}


def main(argv=None):
    args = bc.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f
    ]
    os.environ["XLA_FLAGS"] = " ".join(
        flags + [f"--xla_force_host_platform_device_count={DEVICES}"]
    )
    os.environ["JAX_PLATFORMS"] = "cpu"
    bc.emit(run(args), args.out)


if __name__ == "__main__":
    main()
