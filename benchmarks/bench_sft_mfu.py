"""SFT step MFU: achieved FLOP/s of `girl_jax.stages.sft.train_step` on bench-medium against
the machine's compute limit (CPU: numpy float32 2048³ matmul measured in this process; GPU:
the card's dense bf16 peak).

FLOPs per step = 3 x forward (forward + backward at 2x): 2·N_matmul per token for the
weights (12·d² per layer + the LM head d·V) and 4·T²·d per layer per sequence for attention
(QK^T and AV, counted whole as XLA computes them). Also reported, as diagnostics: XLA's own
float32 matmul rate on the same shape (what the compiler can reach at best) and the forward
pass alone.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


def xla_matmul_flops(n: int, dtype, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.dot)
    jax.block_until_ready(f(a, b))
    best = min(bc.time_call(lambda: jax.block_until_ready(f(a, b))) for _ in range(repeats))
    return 2.0 * n**3 / best


def run(args) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from girl_jax.models.decoder import Decoder
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import state as state_mod
    from girl_jax.stages import common, sft

    quick = args.quick
    shape = "bench-tiny" if quick else "bench-medium"
    batch = args.batch or (4 if quick else 16)
    seq = args.seq or (32 if quick else 256)
    repeats = args.repeats or (2 if quick else 5)
    gpu = args.device == "gpu"
    dtype = "bfloat16" if gpu else "float32"

    peak, peak_name = bc.peak_flops(args.device, quick)
    cfg = bc.decoder_config(shape, dtype=dtype)
    mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    tx = common.make_optimizer(1e-4, 1000, warmup_steps=10, weight_decay=0.01, grad_clip=1.0)
    graphdef, state, shardings = state_mod.create_train_state(
        lambda rngs: Decoder(cfg, rngs=rngs), tx, mesh, seed=0
    )
    step = jax.jit(
        functools.partial(sft.train_step, graphdef=graphdef, tx=tx),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
    ids = np.random.default_rng(0).integers(1, cfg.vocab_size, (batch, seq), dtype=np.int32)
    data = {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.ones((batch, seq), jnp.int32),
        "target_mask": jnp.ones((batch, seq), jnp.int32),
    }
    holder = {"state": state}

    def train():
        s, m = step(holder["state"], data, None)
        jax.block_until_ready(m)
        holder["state"] = s

    fwd = jax.jit(functools.partial(sft.lm_loss_sums, graphdef=graphdef))

    def forward():
        jax.block_until_ready(fwd(holder["state"].params, batch=data))

    t0 = time.perf_counter()
    train()
    compile_s = time.perf_counter() - t0
    bc.progress(f"sft: first step (compile + run) {compile_s:.1f}s")
    forward()
    times = bc.interleaved({"train": train, "forward": forward}, repeats)
    train_s, fwd_s = bc.median(times["train"]), bc.median(times["forward"])
    flops_fwd = bc.forward_flops(cfg, batch, seq)
    flops_step = 3 * flops_fwd
    xla_dtype = jnp.bfloat16 if gpu else jnp.float32
    xla_mm = xla_matmul_flops(512 if quick else 2048, xla_dtype, 2 if quick else 5)
    cost = step.lower(holder["state"], data, None).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    figures = [
        bc.figure(
            f"SFT step {shape} ({batch}x{seq}) MFU",
            "FLOP/s",
            flops_step / train_s,
            peak,
            peak_name,
            target=None if gpu else 0.5,
            note=f"{flops_step / 1e9:.1f} GFLOP/step, compile {compile_s:.1f}s",
        ),
    ]
    details = dict(
        shape=shape,
        batch=batch,
        seq=seq,
        dtype=dtype,
        step_s=times["train"],
        forward_s=times["forward"],
        flops_per_step=flops_step,
        xla_cost_analysis_flops=(cost or {}).get("flops"),
        forward_mfu=flops_fwd / fwd_s / peak,
        xla_matmul_flops_per_s=xla_mm,
        xla_matmul_vs_peak=xla_mm / peak,
        tokens_per_s=batch * seq / train_s,
        compile_s=compile_s,
        matmul_params=bc.matmul_params(cfg),
    )
    return {"figures": figures, "details": details}


def main(argv=None):
    p = bc.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--seq", type=int, default=0)
    args = p.parse_args(argv)
    bc.single_device_env(args.device)
    bc.emit(run(args), args.out)


if __name__ == "__main__":
    main()
