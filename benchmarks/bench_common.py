"""Shared pieces of the benchmarks: model shapes, weight export, peak matmul, timing, JSON.

Each `bench_*.py` runs as its own process (so XLA_FLAGS, thread pools and memory stay
separate) and prints one JSON object: ``{"figures": [...], "details": {...}}``. A figure is
``{"name", "unit", "ours", "peer", "peer_name", "ratio", "higher_is_better", "target"}``;
`ratio` is ``ours / peer`` (for MFU-like figures the peer is the hardware peak).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# Shapes named in the brief: GPT-2 architecture, vocab 8192, 512 positions.
SHAPES = {
    "bench-small": dict(d_model=256, num_layers=4, num_heads=4),
    "bench-medium": dict(d_model=512, num_layers=8, num_heads=8),
    # --quick: only to check the plumbing and the JSON schema in the test suite.
    "bench-tiny": dict(d_model=32, num_layers=1, num_heads=2),
}
VOCAB = 8192
MAX_LEN = 512
TINY_VOCAB = 512
# Dense bf16 peaks (no sparsity), FLOP/s, by `jax.devices()[0].device_kind` substring.
GPU_BF16_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def single_device_env(device: str) -> None:
    """Before importing jax: one CPU device (the test conftest asks for 8) or the GPU."""
    flags = os.environ.get("XLA_FLAGS", "")
    kept = [f for f in flags.split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(kept)
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny shapes, one run: plumbing only")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per side (0: default)")
    return p


def decoder_config(shape: str, *, dtype: str = "float32", matmul_dtype: str | None = None):
    from girl_jax.models.decoder import DecoderConfig

    vocab = TINY_VOCAB if shape == "bench-tiny" else VOCAB
    return DecoderConfig(
        family="gpt2",
        vocab_size=vocab,
        max_len=MAX_LEN,
        dtype=dtype,
        matmul_dtype=matmul_dtype,
        **SHAPES[shape],
    )


def matmul_params(cfg) -> int:
    """Parameters that take part in a matmul per token: 12·d² per layer + the LM head d·V."""
    d, f = cfg.d_model, cfg.mlp_dim
    per_layer = 4 * d * d + 2 * d * f
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def trunk_matmul_params(cfg) -> int:
    d, f = cfg.d_model, cfg.mlp_dim
    return cfg.num_layers * (4 * d * d + 2 * d * f)


def forward_flops(cfg, batch: int, seq: int, *, lm_head: bool = True, head_rows: int = 0) -> float:
    """Forward FLOPs of `batch` full sequences of length `seq` (causal attention counted whole:
    QK^T and AV each 2·T²·d per layer, as XLA computes them). `head_rows` > 0 applies the LM
    head to only that many positions per row."""
    tokens = batch * seq
    f = 2.0 * tokens * trunk_matmul_params(cfg)
    f += 4.0 * batch * seq * seq * cfg.d_model * cfg.num_layers
    if lm_head:
        rows = head_rows or seq
        f += 2.0 * batch * rows * cfg.d_model * cfg.vocab_size
    return f


def decode_flops(cfg, batch: int, prompt: int, new: int) -> float:
    """Useful FLOPs of generating `new` tokens after a `prompt`: prefill + one token per step."""
    f = forward_flops(cfg, batch, prompt, head_rows=1)
    for i in range(new - 1):
        ctx = prompt + i + 1
        f += 2.0 * batch * (trunk_matmul_params(cfg) + cfg.d_model * cfg.vocab_size)
        f += 4.0 * batch * ctx * cfg.d_model * cfg.num_layers
    return f


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of numpy float32 n³ matmul FLOP/s on this machine (the CPU compute limit)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def gpu_peak_flops() -> tuple[float, str]:
    import jax

    kind = jax.devices()[0].device_kind
    for name, peak in GPU_BF16_PEAKS.items():
        if name in kind:
            return peak, f"{kind} bf16 dense peak (datasheet)"
    return float("nan"), f"{kind}: peak unknown"


def bf16_matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of XLA bf16 x bf16 -> float32 n³ matmul FLOP/s: the compute limit of a program whose
    matmuls run on the CPU's bf16 units (`matmul_dtype="bfloat16"`; numpy has no bf16)."""
    import jax
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.bfloat16)
    b = jax.random.normal(key_b, (n, n), jnp.bfloat16)
    fn = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    jax.block_until_ready(fn(a, b))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def cpu_has_bf16_units() -> bool:
    """AMX-BF16 or AVX512-BF16 in /proc/cpuinfo (Linux; False where it cannot be read)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def peak_flops(device: str, quick: bool) -> tuple[float, str]:
    if device == "gpu":
        return gpu_peak_flops()
    n = 512 if quick else 2048
    return matmul_peak_flops(n, 2 if quick else 5), f"numpy float32 matmul {n}^3 (measured)"


def best_torch_threads(
    max_threads: int | None = None, rows: int = 32, calls: int = 200
) -> tuple[int, dict[str, float]]:
    """Sets torch to the faster of 1 and `os.cpu_count()` threads on a probe of the peer's own
    op size: `calls` GELU(x @ w) with x [rows, 256], w [256, 1024] (a decode step: 32 rows;
    PPO's update: 64 x 64 rows, where the matmuls are large enough for every core to pay).

    On a loaded machine OpenMP's spinning threads make torch several times slower with 2
    threads than with 1 (measured here: 15-18 vs 140-160 tokens/s for `generate`); the
    peer gets whichever setting serves it best right now. Returns (threads, probe seconds).
    (2026-12-05: the 32-row probe picked 1 thread for TRL's PPO, which then ran 3x slower than
    on 2 threads the day before; the worker now probes at its update's size.)
    """
    import torch

    max_threads = max_threads or os.cpu_count() or 1
    x, w = torch.randn(rows, 256), torch.randn(256, 1024)
    probe = {}
    for threads in sorted({1, max_threads}) * 2:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(calls):
                torch.nn.functional.gelu(x @ w).sum()
        dt = time.perf_counter() - t0
        probe[str(threads)] = min(dt, probe.get(str(threads), float("inf")))
    best = int(min(probe, key=probe.get))
    torch.set_num_threads(best)
    return best, probe


def time_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def progress(msg: str) -> None:
    """A progress line on stderr (run_all.py sends it to OUT.log)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Runs A B A B ...: both sides see the same drift in machine load."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn))
        progress("  " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def figure(
    name: str,
    unit: str,
    ours: float | None,
    peer: float | None,
    peer_name: str,
    *,
    higher_is_better: bool = True,
    target: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    ratio = None
    if ours is not None and peer not in (None, 0) and peer == peer:
        ratio = ours / peer
    out = dict(
        name=name,
        unit=unit,
        ours=ours,
        peer=peer,
        peer_name=peer_name,
        ratio=ratio,
        higher_is_better=higher_is_better,
        target=target,
    )
    if target is not None and ratio is not None:
        out["target_met"] = bool(ratio >= target if higher_is_better else ratio <= target)
    if note:
        out["note"] = note
    return out


def single_device_main(run, doc: str, argv=None) -> None:
    """A benchmark's `main` on one device: the common flags, `run(args)`, its JSON emitted."""
    args = base_parser(doc.splitlines()[0]).parse_args(argv)
    single_device_env(args.device)
    emit(run(args), args.out)


def emit(result: dict[str, Any], out: str) -> None:
    text = json.dumps(result, indent=2, sort_keys=True)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text)
    sys.stdout.flush()


def export_hf(model, path: str) -> str:
    """Writes `model` as a HF GPT-2 directory (the peers load the same weights)."""
    from girl_jax.models import save_pretrained

    return str(save_pretrained(model, path))
