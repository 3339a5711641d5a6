"""bf16 matrix units through XLA:CPU: the model's matmul shapes in float32 against bf16 x bf16 ->
float32 (what `DecoderConfig.matmul_dtype="bfloat16"` runs), numpy float32 beside them, and
the decode step's attention mat-vec over the KV cache (XLA against torch `bmm` where torch is
installed). Run alone (not part of `make bench`): findings in docs/benchmarks.md,
"bf16 matmuls on a CPU with AMX".

    .venv/bin/python benchmarks/bench_bf16_matmul.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

# (M, K, N): a decode step at batch 32 (LM head, MLP, q/k/v), a wider M, and a training step's
# weight gradient x^T dy over 64 x 128 tokens (K = tokens).
SHAPES = [(32, 256, 8192), (32, 256, 1024), (32, 1024, 256), (32, 256, 768), (128, 256, 8192)]
GRAD = (64 * 128, 256, 1024)
CACHE = (32, 4, 192, 64)  # B, kv heads, slots, head dim


def best_of(fn, *args, calls: int = 50, rounds: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def main() -> int:
    rng = np.random.default_rng(0)
    f32 = jax.jit(lambda x, w: x @ w)
    mixed = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32))
    print(f"{'M x K x N':>20}  {'float32':>18}  {'bf16 -> f32':>18}  {'numpy f32':>10}")
    for m, k, n in SHAPES:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        flops = 2 * m * k * n
        t32 = best_of(f32, jnp.asarray(x), jnp.asarray(w))
        t16 = best_of(mixed, jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16))
        tnp = best_of(lambda a, b: np.asarray(a @ b), x, w)
        print(
            f"{m:>6} x {k:>4} x {n:>5}  {t32 * 1e3:7.3f} ms {flops / t32 / 1e9:5.0f} GF"
            f"  {t16 * 1e3:7.3f} ms {flops / t16 / 1e9:5.0f} GF  {tnp * 1e3:7.3f} ms"
        )
    tokens, d, f = GRAD
    x = jnp.asarray(rng.standard_normal((64, tokens // 64, d)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((64, tokens // 64, f)), jnp.float32)
    grad32 = jax.jit(lambda x, dy: jnp.einsum("btd,btf->df", x, dy))
    grad16 = jax.jit(
        lambda x, dy: jnp.einsum(
            "btd,btf->df",
            x.astype(jnp.bfloat16),
            dy.astype(jnp.bfloat16),
            preferred_element_type=jnp.float32,
        )
    )
    flops = 2 * tokens * d * f
    t32, t16 = best_of(grad32, x, dy, calls=5), best_of(grad16, x, dy, calls=5)
    print(
        f"weight gradient {tokens} x {d} x {f}: float32 {t32 * 1e3:.1f} ms "
        f"({flops / t32 / 1e9:.0f} GF), bf16 -> f32 {t16 * 1e3:.1f} ms ({flops / t16 / 1e9:.0f} GF)"
    )
    b, g, s, k = CACHE
    q = jnp.asarray(rng.standard_normal((b, g, k)), jnp.float32)
    cache = jnp.asarray(rng.standard_normal((b, g, s, k)), jnp.float32)
    scores = jax.jit(lambda q, c: jnp.einsum("bgk,bgsk->bgs", q, c))
    t = best_of(scores, q, cache, calls=100)
    print(
        f"attention q.K^T over a {b} x {g} x {s} x {k} float32 cache: XLA {t * 1e6:.0f} us "
        f"({cache.nbytes / t / 1e9:.0f} GB/s)"
    )
    try:
        import torch
    except ImportError:
        return 0
    tq, tc = (
        torch.from_numpy(np.array(q)).reshape(b * g, 1, k),
        torch.from_numpy(np.array(cache)).reshape(b * g, s, k),
    )
    for threads in (1, torch.get_num_threads()):
        torch.set_num_threads(threads)
        t = best_of(lambda a, c: torch.bmm(a, c.transpose(1, 2)), tq, tc, calls=100)
        print(f"  torch bmm, {threads} thread(s): {t * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
