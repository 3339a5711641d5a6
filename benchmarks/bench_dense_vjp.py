"""The projections' written-out backward (`layers.dense`) against autodiff of the same dot, side by
side: one decoder training step (forward, backward, the LM head on every position), same
params, same batch, same jit, the only difference being whether `layers.dense` carries its
`custom_vjp` or is the plain dot that autodiff differentiates.

Why: XLA:CPU lays out autodiff's weight gradient (``x^T dy``, contracting the token rows) by
first copying dy or x into a transposed [features, tokens] buffer, 20-30 ms per projection at
8192 rows on 2 cores; `dense` writes it as ``einsum("ni,no->io")``, one dot, no copy
(docs/benchmarks.md, "The projections' backward without transposed copies").

Shapes: bench-small (d 256, 4 layers, vocab 8192), batch 64 x 128 tokens (PPO's update);
`--quick`: bench-tiny. The figure is steps per second, ours / autodiff's; both sides' gradients
are compared (max abs difference, recorded).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


def run(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from girl_jax.models import layers
    from girl_jax.models.decoder import Decoder

    shape = "bench-tiny" if args.quick else "bench-small"
    batch, seq = (4, 32) if args.quick else (64, 128)
    cfg = bc.decoder_config(shape)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, cfg.vocab_size, (batch, seq)), jnp.int32)
    mask = jnp.ones((batch, seq), jnp.int32)

    def loss(p):
        logits, _ = nnx.merge(graphdef, p)(ids, mask)
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
        return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()

    def plain(x, w, w_transposed, md):  # the dot autodiff differentiates: the peer
        return layers._dense_dot(*layers._cast(md, x, w), w_transposed, md).astype(x.dtype)

    ours = jax.jit(jax.grad(loss))
    original = layers.dense
    layers.dense = plain
    try:
        peer = jax.jit(jax.grad(loss)).lower(params).compile()
    finally:
        layers.dense = original
    ours = ours.lower(params).compile()
    g_ours, g_peer = ours(params), peer(params)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_peer))
    )
    bc.progress(f"dense_vjp: {shape} {batch}x{seq}, max |grad difference| {diff:.2e}")
    repeats = args.repeats or (2 if args.quick else 10)
    times = bc.interleaved(
        {
            "ours": lambda: jax.block_until_ready(ours(params)),
            "autodiff": lambda: jax.block_until_ready(peer(params)),
        },
        repeats,
    )
    t_ours, t_peer = bc.median(times["ours"]), bc.median(times["autodiff"])
    flops = 3 * bc.forward_flops(cfg, batch, seq)
    return dict(
        figures=[
            bc.figure(
                f"decoder train step {shape} {batch}x{seq}, projections' backward written out",
                "steps/s",
                1 / t_ours,
                1 / t_peer,
                "the same step, autodiff of the plain dot",
                note=f"{flops / t_ours / 1e9:.0f} vs {flops / t_peer / 1e9:.0f} GFLOP/s",
            )
        ],
        details=dict(
            shape=shape,
            batch=batch,
            seq=seq,
            flops=flops,
            ours_s=times["ours"],
            autodiff_s=times["autodiff"],
            max_abs_grad_difference=diff,
        ),
    )


def main(argv=None):
    bc.single_device_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
