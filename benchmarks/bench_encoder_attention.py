"""The recommender's encoder step with BERT's attention normalised after the value product,
against the probabilities normalised first (the form before 2026-12-04), side by side.

`bert.SelfAttention` computes softmax(s) @ v as (exp(s - max) @ v) / sum(exp(s - max)): the
division runs on [B, T, H, K] instead of the [B, H, T, S] probabilities. The peer here is the
previous form, written out below and swapped in for its programs. Both time the stage's own
`recommend_fit.train_step` on the default encoder (`profile_ops.encoder_case`: 2-layer BERT,
d 64, 2 heads, T 96, 128 (CV, JD) pairs, AdamW), alternating in one process (`--rounds`, fresh
jit traces); medians.

    .venv/bin/python benchmarks/bench_encoder_attention.py            # ~1 min
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import profile_ops

from girl_jax.models import bert


def probabilities_first(self, x_BxTxD, mask_BxT):
    """`bert.SelfAttention.__call__` as it was: softmax probabilities, then the value product."""
    q, k, v = self.query(x_BxTxD), self.key(x_BxTxD), self.value(x_BxTxD)
    scores = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32)
    scores = scores * self.scale
    keep = mask_BxT[:, None, None, :].astype(bool)
    scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return self.out(jnp.einsum("bhts,bshk->bthk", probs, v))


def _timed(fn, args, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def measure(rounds: int = 5, calls: int = 3) -> dict:
    model_call = bert.SelfAttention.__call__
    programs = {}
    try:
        for name, call in (("probabilities_first", probabilities_first), ("after_values", None)):
            bert.SelfAttention.__call__ = call or model_call
            step, args, flops = profile_ops.encoder_case()
            jax.block_until_ready(step(*args))  # traced and compiled under this attention
            programs[name] = (step, args)
    finally:
        bert.SelfAttention.__call__ = model_call
    times = {name: [] for name in programs}
    for _ in range(rounds):
        for name, (step, args) in programs.items():
            times[name].append(_timed(step, args, calls))
    out = {f"{name}_s": statistics.median(v) for name, v in times.items()}
    out["speedup"] = out["probabilities_first_s"] / out["after_values_s"]
    out["gflops_per_step"] = flops / 1e9
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    r = measure(args.rounds)
    print(
        f"encoder step: probabilities first {1e3 * r['probabilities_first_s']:.1f} ms, "
        f"normalised after the values {1e3 * r['after_values_s']:.1f} ms "
        f"({r['speedup']:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
