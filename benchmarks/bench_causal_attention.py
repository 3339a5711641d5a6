"""The decoder's causal self-attention in two blocks against the full score matrix, side by side.

`Attention._attend_causal` (no cache, float32, T >= `CAUSAL_SPLIT_MIN_LEN`) against the
full-matrix `_attend` that every shorter sequence still takes: the default decoder
(`configs/default.py`'s model: d 128, 4 layers, 4 heads, vocab 4096), random weights, rows of
2/3 to full length (right padding).
Two programs: the trunk's forward to the reward features' depth (3 blocks; the reward stage's
features, PPO's rollout forwards) and the gradient of the whole trunk (SFT, PPO's update). The
two paths alternate in one process (`--rounds` times, fresh jit traces each); medians.

    .venv/bin/python benchmarks/bench_causal_attention.py                  # ~2 min
    .venv/bin/python benchmarks/bench_causal_attention.py --shapes 128x224
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from girl_jax.configuration import load_config
from girl_jax.models import decoder_blocks
from girl_jax.models.decoder import Decoder
from girl_jax.stages import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timed(fn, *args, n: int) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def measure(B: int, T: int, rounds: int, calls: int = 3) -> dict:
    config = load_config(os.path.join(ROOT, "configs/default.py"))
    vocab = config.tokenizer.vocab_size
    cfg = common.decoder_config(config, vocab)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, vocab, (B, T)), jnp.int32)
    lens = rng.integers(T * 2 // 3, T + 1, B)
    mask = jnp.asarray((np.arange(T)[None] < lens[:, None]).astype(np.int32))

    def programs():  # fresh closures: jit traces again under the threshold in force
        def forward(p):
            return nnx.merge(graphdef, p).hidden(ids, mask, depth=3)[0]

        def loss(p):
            h, _ = nnx.merge(graphdef, p).hidden(ids, mask)
            return (h * mask[..., None]).sum()

        return jax.jit(forward), jax.jit(jax.grad(loss))

    default = decoder_blocks.CAUSAL_SPLIT_MIN_LEN
    times: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            for name, threshold in (("full", 10**9), ("two_blocks", default)):
                decoder_blocks.CAUSAL_SPLIT_MIN_LEN = threshold
                fwd, grad = programs()
                times.setdefault(f"{name}_forward_s", []).append(_timed(fwd, params, n=calls))
                times.setdefault(f"{name}_grad_s", []).append(_timed(grad, params, n=calls))
    finally:
        decoder_blocks.CAUSAL_SPLIT_MIN_LEN = default
    out = {k: statistics.median(v) for k, v in times.items()}
    out["forward_speedup"] = out["full_forward_s"] / out["two_blocks_forward_s"]
    out["grad_speedup"] = out["full_grad_s"] / out["two_blocks_grad_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=["256x192", "128x224", "32x192"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    print("| batch x length | forward: full / two blocks | gradient: full / two blocks |")
    print("|---|---|---|")
    for shape in args.shapes:
        B, T = (int(x) for x in shape.split("x"))
        r = measure(B, T, args.rounds)
        print(
            f"| {B} x {T} | {r['full_forward_s']:.3f} / {r['two_blocks_forward_s']:.3f} s "
            f"({r['forward_speedup']:.2f}x) | {r['full_grad_s']:.3f} / "
            f"{r['two_blocks_grad_s']:.3f} s ({r['grad_speedup']:.2f}x) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
