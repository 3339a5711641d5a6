"""Where a jitted step spends its time, by XLA op: the two `make run` pieces not yet profiled.

- `features`: the reward stage's frozen-trunk forward (`RewardModel.features` at
  `reward.feature_layer` 3 of the default decoder, d 128, 4 heads), one batch of 256 rows x 192
  columns, the probe's feature batch (`reward.probe_batch_size`);
- `encoder`: the recommender's encoder step (2-layer BERT, d 64, 2 heads, T 96, batch 128 (CV,
  JD) pairs, AdamW), the one `make run` takes 387 times.

Both built from `configs/default.py` with the stages' own builders (`reward.state.build_model_fn`,
`recommend._encoder` / `_recommender_fn`, `recommend_fit.train_step`). Random weights and ids at
the default shapes (the time does not depend on their values). Each
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
import os
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from girl_jax.configuration import load_config
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import recommend, recommend_fit
from girl_jax.stages.recommend import RecommendConfig
from girl_jax.stages.reward import state as reward_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DEFAULT = "configs/default.py"


def _default_config():
    """The default run's config (`make run`) and its tokenizer's vocabulary size."""
    config = load_config(os.path.join(ROOT, DEFAULT))
    return config, config.tokenizer.vocab_size


def features_case():
    config, vocab = _default_config()
    mcfg, model_fn = reward_state.build_model_fn(config, vocab, config.seed)
    graphdef, params = nnx.split(model_fn(nnx.Rngs(0)))
    B, T = config.reward.probe_batch_size, 192
    rng = np.random.default_rng(0)
    lens = rng.integers(120, T + 1, B)
    mask = (np.arange(T)[None] < lens[:, None]).astype(np.int32)
    args = (
        params,
        jnp.asarray(rng.integers(5, vocab, (B, T)), jnp.int32) * mask,
        jnp.asarray(mask),
        jnp.asarray(mask * (np.arange(T)[None] >= 100)),
    )

    def fn(p, ids, m, r):
        return nnx.merge(graphdef, p).features(ids, m, r)

    # 2 FLOPs per multiply-add: 4 d^2 attention + 2 d m MLP weights per token and block, QK^T, PV
    d, L = mcfg.d_model, config.reward.feature_layer or mcfg.num_layers
    flops = 2 * B * T * L * (4 * d * d + 2 * d * mcfg.mlp_dim) + 2 * 2 * B * T * T * d * L
    return jax.jit(fn), args, flops


def encoder_case():
    """The stage's own `recommend_fit.train_step` (jitted here without donating the state, so
    that the same arguments can be timed again) on the default encoder and MLP head."""
    config, vocab = _default_config()
    cfg = RecommendConfig.from_config(config.recommend)
    bcfg, _, _ = recommend._encoder(cfg, vocab)
    order = ("cv", "jd")
    model_fn = recommend._recommender_fn(cfg, bcfg, None, "mlp", len(order))
    steps = 387  # the default run's encoder steps (3 epochs of 129)
    tx = recommend_fit._optimizer(cfg.learning_rate, steps, steps // 10, cfg.weight_decay)
    mesh = mesh_mod.make_mesh({"data": 1}, jax.devices()[:1])  # one device, as `make run`
    graphdef, state, _ = state_mod.create_train_state(model_fn, tx, mesh, seed=0)
    rng = np.random.default_rng(0)
    N, T, B = 4000, bcfg.max_len, cfg.batch_size
    lens = rng.integers(T // 2, T, N)
    ids = rng.integers(5, vocab, (N, T)).astype(np.int32)
    mask = (np.arange(T)[None] < lens[:, None]).astype(np.int32)
    tables = {
        "cv_ids": jnp.asarray(ids),
        "cv_mask": jnp.asarray(mask),
        "jd_ids": jnp.asarray(ids[::-1].copy()),
        "jd_mask": jnp.asarray(mask[::-1].copy()),
    }
    batch = {
        "cv_idx": jnp.asarray(rng.integers(0, N, B)),
        "jd_idx": jnp.asarray(rng.integers(0, N, B)),
        "label": jnp.asarray(rng.integers(0, 2, B).astype(np.float32)),
    }
    step = functools.partial(
        recommend_fit.train_step,
        graphdef=graphdef,
        tx=tx,
        forward=functools.partial(recommend_fit.token_forward, order=order),
    )
    # forward + backward: 3x the forward's FLOPs, both texts of each pair
    d, L, tokens = bcfg.d_model, bcfg.num_layers, len(order) * B * T
    forward = 2 * tokens * L * (4 * d * d + 2 * d * bcfg.mlp_dim) + 2 * 2 * tokens * T * d * L
    return jax.jit(step), (state, tables, batch), 3 * forward


def _sampler_case(matmul_dtype):
    """`bench_sampler.py`'s target run: bench-small, sampling, batch 32, prompt 64, 128 tokens."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_common as bc

    from girl_jax import sampling
    from girl_jax.models.decoder import Decoder

    cfg = bc.decoder_config("bench-small", matmul_dtype=matmul_dtype)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    scfg = sampling.SamplingConfig(
        max_new_tokens=128, eos_id=None, pad_id=0, temperature=1.0, top_k=0, early_stop=False
    )
    sampler = sampling.make_sampler(*sampling.decoder_fns(graphdef), scfg)
    rng = np.random.default_rng(32)
    ids = jnp.asarray(rng.integers(1, cfg.vocab_size, (32, 64)), jnp.int32)
    args = (params, ids, jnp.ones_like(ids), jax.random.key(0))
    return sampler, args, bc.decode_flops(cfg, 32, 64, 128)


def sampler_case():
    return _sampler_case(None)


def sampler_bf16_case():
    """The same with bf16 matmul operands and float32 accumulation (`matmul_dtype`)."""
    return _sampler_case("bfloat16")


CASES = {
    "features": features_case,
    "encoder": encoder_case,
    "sampler": sampler_case,
    "sampler_bf16": sampler_bf16_case,
}


def op_names(compiled_text: str) -> dict[str, str]:
    """HLO instruction name -> the jax primitive that made it (last part of op_name), with
    the einsum's spec for a dot_general made by one ("dot_general btd,dhk->bthk"); an
    instruction without an op_name (XLA made it: the decode step's attention dots over the
    cache) gets its HLO opcode in brackets ("[dot]")."""
    out = {}
    for line in compiled_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        op = re.search(r'op_name="([^"]+)"', line)
        if m and not op:
            opcode = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = \S+ ([\w\-]+)\(", line)
            if opcode and opcode.group(1) not in ("parameter", "constant"):
                out[m.group(1)] = f"[{opcode.group(1)}]"
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
