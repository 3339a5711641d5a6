"""PPO's rollout decoded in passes of 32 rows (`ppo.rollout_rows_per_pass`) against all of its
rows in one pass, side by side: the default run's generator shape (GPT-2, d 128, 4 layers,
vocabulary 4096), 128 rows, 104-token prompts, 96 new tokens at temperature 0.7 (`--quick`:
bench-tiny, 8 rows in passes of 2, 8 + 8 tokens).

Both sides are one jitted `sampling.sample` on the same weights and prompts; only
`SamplingConfig.rows_per_pass` differs. Random weights never emit EOS, so both decode every
step (no early stop). On a CPU a pass's KV cache (4 layers x 2 x 32 rows x 200 slots x 128
floats = 26 MB, against 105 MB for 128 rows) stays in the processor's caches. The figure is
rows per second, passes / one pass. A second figure times the generate stage's loop the same
way: greedy batches of 32 rows against batches of 128, two in flight (`host_threads`), with the
tokens compared (`greedy_tokens_identical`).
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

    from girl_jax import host_threads, sampling
    from girl_jax.models.decoder import Decoder, DecoderConfig

    if args.quick:
        shape = dict(vocab_size=bc.TINY_VOCAB, **bc.SHAPES["bench-tiny"])
        batch, rows, prompt, new = 8, 2, 8, 8
    else:  # configs/default.py: model_config(), tokenizer.vocab_size, the PPO rollout
        shape = dict(vocab_size=4096, d_model=128, num_layers=4, num_heads=4)
        batch, rows, prompt, new = 128, 32, 104, 96
    cfg = DecoderConfig(family="gpt2", max_len=256, dtype="float32", **shape)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    step_fn, init_cache_fn = sampling.decoder_fns(graphdef)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, cfg.vocab_size, (batch, prompt), dtype=np.int32))
    mask = jnp.ones((batch, prompt), jnp.int32)
    key = jax.random.key(0)

    def compiled(rows_per_pass):
        scfg = sampling.SamplingConfig(
            max_new_tokens=new, eos_id=None, pad_id=0, temperature=0.7, rows_per_pass=rows_per_pass
        )
        fn = sampling.make_sampler(step_fn, init_cache_fn, scfg).lower(params, ids, mask, key)
        return fn.compile()

    passes, one = compiled(rows), compiled(0)

    # The generate stage's loop (`Generator.generate`): greedy batches of `generate.batch_size`
    # rows through `host_threads` (two in flight on a 2-core CPU), `rows` against `batch`.
    greedy = sampling.SamplingConfig(max_new_tokens=new, eos_id=None, pad_id=0, greedy=True)
    greedy_fn = sampling.make_sampler(step_fn, init_cache_fn, greedy)

    def generate(size):
        def call(b):
            out = greedy_fn(params, ids[b : b + size], mask[b : b + size], key)
            return jax.device_get(out.tokens)

        return lambda: host_threads.ordered_map(call, range(0, batch, size))

    fns = {
        "passes": lambda: jax.block_until_ready(passes(params, ids, mask, key).tokens),
        "one_pass": lambda: jax.block_until_ready(one(params, ids, mask, key).tokens),
        "generate_small": generate(rows),
        "generate_large": generate(batch),
    }
    for fn in fns.values():
        fn()  # warm-up (and compile)
    small, large = fns["generate_small"](), fns["generate_large"]()
    identical = bool(np.array_equal(np.concatenate(small), np.concatenate(large)))
    repeats = args.repeats or (2 if args.quick else 7)
    times = bc.interleaved(fns, repeats)
    t = {k: bc.median(v) for k, v in times.items()}
    bc.progress(
        f"rows_per_pass: {rows} rows a pass {t['passes']:.3f}s, one pass {t['one_pass']:.3f}s; "
        f"greedy batches of {rows} {t['generate_small']:.3f}s, "
        f"of {batch} {t['generate_large']:.3f}s"
    )
    return dict(
        figures=[
            bc.figure(
                f"PPO rollout, {batch} rows decoded in passes of {rows}",
                "rows/s",
                batch / t["passes"],
                batch / t["one_pass"],
                f"the same sampler, all {batch} rows in one pass",
                note=f"{t['passes']:.2f} vs {t['one_pass']:.2f} s",
            ),
            bc.figure(
                f"Greedy generation of {batch} rows in batches of {rows} (host_threads)",
                "rows/s",
                batch / t["generate_small"],
                batch / t["generate_large"],
                f"the same loop, batches of {batch}",
                note=f"{t['generate_small']:.2f} vs {t['generate_large']:.2f} s",
            ),
        ],
        details=dict(
            batch=batch,
            rows_per_pass=rows,
            prompt=prompt,
            new_tokens=new,
            model=shape,
            workers=host_threads.workers(),
            greedy_tokens_identical=identical,
            times_s=times,
        ),
    )


def main(argv=None):
    bc.single_device_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
