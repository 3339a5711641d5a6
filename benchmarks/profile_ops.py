"""Where a jitted step spends its time, by XLA op: the two `make run` pieces not yet profiled.

- `features`: the reward stage's frozen-trunk forward (`RewardModel.features` at
  `reward.feature_layer` 3 of the default decoder, d 128, 4 heads), one batch of 256 rows x 192
  columns, the probe's feature batch (`reward.probe_batch_size`);
- `encoder`: the recommender's encoder step (2-layer BERT, d 64, 2 heads, T 96, batch 128 (CV,
  JD) pairs, AdamW), the one `make run` takes 387 times.

Random weights and ids at the default shapes (the time does not depend on their values). Each
step is timed (median of `--runs` calls after a warm-up), traced with `jax.profiler` and the
trace's op times are summed by the jax primitive that made each op (`op_name` in the compiled
HLO): dot_general, reduce_sum, mul, ... The per-op times are XLA's (thread time of one op; ops
of one step run one after another).

    .venv/bin/python benchmarks/profile_ops.py                 # both, ~1 min
    .venv/bin/python benchmarks/profile_ops.py --only encoder --top 25
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def features_case():
    from girl_jax.models.decoder import DecoderConfig
    from girl_jax.models.heads import RewardModel

    cfg = DecoderConfig(
        family="gpt2", vocab_size=4096, max_len=256, d_model=128, num_layers=4, num_heads=4
    )
    model = RewardModel(
        cfg,
        rngs=nnx.Rngs(0),
        head="attn_mlp",
        head_hidden=256,
        feature_layer=3,
        match_features=True,
    )
    graphdef, params = nnx.split(model)
    B, T = 256, 192
    rng = np.random.default_rng(0)
    lens = rng.integers(120, T + 1, B)
    mask = (np.arange(T)[None] < lens[:, None]).astype(np.int32)
    args = (
        params,
        jnp.asarray(rng.integers(5, 4096, (B, T)), jnp.int32) * mask,
        jnp.asarray(mask),
        jnp.asarray(mask * (np.arange(T)[None] >= 100)),
    )

    def fn(p, ids, m, r):
        return nnx.merge(graphdef, p).features(ids, m, r)

    # 2 x multiply-adds x (4 d^2 attention + 8 d^2 MLP) per token and layer, + QK^T and PV
    d, L = cfg.d_model, 3
    flops = 2 * B * T * L * (12 * d * d) + 2 * 2 * B * T * T * d * L
    return jax.jit(fn), args, flops


def encoder_case():
    from girl_jax.models.bert import BertConfig
    from girl_jax.models.predictors import Recommender
    from girl_jax.stages import recommend_fit

    bcfg = BertConfig(
        vocab_size=4096,
        max_len=96,
        d_model=64,
        num_layers=2,
        num_heads=2,
        mlp_dim=128,
        pooling="mean",
        normalize=False,
    )
    model = Recommender(bcfg, "mlp", 2, rngs=nnx.Rngs(0), hidden_dims=(256,), proj_dim=64)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    N, T = 4000, 96
    lens = rng.integers(46, T, N)
    ids = rng.integers(5, 4096, (N, T)).astype(np.int32)
    mask = (np.arange(T)[None] < lens[:, None]).astype(np.int32)
    tables = {
        "cv_ids": jnp.asarray(ids),
        "cv_mask": jnp.asarray(mask),
        "jd_ids": jnp.asarray(ids[::-1].copy()),
        "jd_mask": jnp.asarray(mask[::-1].copy()),
    }
    batch = {
        "cv_idx": jnp.asarray(rng.integers(0, N, 128)),
        "jd_idx": jnp.asarray(rng.integers(0, N, 128)),
        "label": jnp.asarray(rng.integers(0, 2, 128).astype(np.float32)),
    }
    forward = functools.partial(recommend_fit.token_forward, order=("cv", "jd"))
    tx = optax.adamw(2e-3, weight_decay=0.01)

    def step(params, opt, tables, batch):
        loss, grads = jax.value_and_grad(recommend_fit.loss_fn)(
            params, rest, tables, batch, graphdef=graphdef, forward=forward
        )
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    d, L, tokens = 64, 2, 2 * 128 * T  # forward + backward: 3x the forward's FLOPs
    flops = 3 * (2 * tokens * L * (4 * d * d + 2 * d * 128) + 2 * 2 * 2 * 128 * T * T * d * L)
    return jax.jit(step), (params, tx.init(params), tables, batch), flops


CASES = {"features": features_case, "encoder": encoder_case}


def op_names(compiled_text: str) -> dict[str, str]:
    """HLO instruction name -> the jax primitive that made it (last part of op_name), with
    the einsum's spec for a dot_general made by one ("dot_general btd,dhk->bthk")."""
    out = {}
    for line in compiled_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        op = re.search(r'op_name="([^"]+)"', line)
        if m and op:
            parts = op.group(1).split("/")
            prim = re.sub(r"\(.*", "", parts[-1]) or "?"
            spec = re.search(r"\(([a-z]+,[a-z]+->[a-z]+)\)", parts[-2]) if len(parts) > 1 else None
            out[m.group(1)] = f"{prim} {spec.group(1)}" if spec else prim  # an einsum's spec
    return out


def profile(name: str, runs: int, top: int) -> dict:
    fn, args, flops = CASES[name]()
    names = op_names(fn.lower(*args).compile().as_text())
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(3):
                jax.block_until_ready(fn(*args))
        trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
    by_op: collections.Counter = collections.Counter()
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e.get("name") in names:
            by_op[names[e["name"]]] += e["dur"] / 3 / 1e3  # ms per step
    wall = statistics.median(times)
    rate = flops / wall / 1e9
    print(f"\n{name}: {wall * 1e3:.0f} ms a call (median of {runs}), {rate:.1f} GFLOP/s")
    total = sum(by_op.values())
    for op, ms in by_op.most_common(top):
        print(f"  {ms:8.1f} ms  {100 * ms / total:5.1f}%  {op}")
    return {"wall_s": wall, "gflops": flops / wall / 1e9, "ms_by_op": dict(by_op)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(CASES), default=sorted(CASES))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    for name in args.only:
        profile(name, args.runs, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
