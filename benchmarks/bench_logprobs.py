"""Token log-probs and entropy with the written-out backward (`girl_jax.rl.logprobs`) against
autodiff of the textbook formulas, side by side: PPO's policy term on the response logits.

One step is the gradient, with respect to the hidden states and the tied LM head, of
``sum(adv * logp) + c * sum(entropy)`` where the logits are ``h @ W.T`` through
`layers.matmul` as the tied LM head computes them (PPO's update:
64 responses x 64 tokens, vocabulary 8192, d 256; `--quick`: 8 x 16 x 512 x 64). The peer
computes the same values with `jax.nn.logsumexp`, `take_along_axis` and `jax.nn.log_softmax`
(what `ppo_objective` ran before): autodiff walks the vocabulary axis several times and scatters
the target's gradient into a zero [B, T, V] array. Both sides' gradients are compared (max abs
difference, recorded). The figure is steps per second, ours / the textbook's.
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

    from girl_jax.models import layers
    from girl_jax.rl import logprobs

    B, T, V, D = (8, 16, 512, 64) if args.quick else (64, 64, 8192, 256)
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    w = jnp.asarray(0.05 * rng.normal(size=(V, D)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    adv = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)

    def make(fn):
        def loss(h, w):
            logits = layers.matmul(h, w, jnp.float32, w_transposed=True)  # the tied LM head
            logp, ent = fn(logits, targets)
            return (adv * logp).sum() + 0.01 * ent.sum()

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(h, w).compile()

    ours, peer = make(logprobs.logprobs_and_entropy), make(logprobs.textbook_logprobs_and_entropy)
    (l_ours, g_ours), (l_peer, g_peer) = ours(h, w), peer(h, w)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g_ours, g_peer))
    scale = max(float(jnp.max(jnp.abs(b))) for b in g_peer)
    bc.progress(f"logprobs: {B}x{T}x{V}, max |grad difference| {diff:.2e} (of {scale:.2e})")
    repeats = args.repeats or (2 if args.quick else 10)
    times = bc.interleaved(
        {
            "ours": lambda: jax.block_until_ready(ours(h, w)),
            "textbook": lambda: jax.block_until_ready(peer(h, w)),
        },
        repeats,
    )
    t_ours, t_peer = bc.median(times["ours"]), bc.median(times["textbook"])
    return dict(
        figures=[
            bc.figure(
                f"PPO policy term on {B}x{T}x{V} logits, log-probs + entropy written out",
                "steps/s",
                1 / t_ours,
                1 / t_peer,
                "the same step, autodiff of logsumexp / take_along_axis / log_softmax",
                note=f"{t_ours * 1e3:.0f} vs {t_peer * 1e3:.0f} ms",
            )
        ],
        details=dict(
            shape=[B, T, V, D],
            ours_s=times["ours"],
            textbook_s=times["textbook"],
            loss_difference=float(abs(l_ours - l_peer)),
            max_abs_grad_difference=diff,
            max_abs_grad=scale,
        ),
    )


def main(argv=None):
    bc.single_device_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
