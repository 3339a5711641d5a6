"""JD generation with two batches in flight (`host_threads`) against one batch at a time, side
by side, on the default run's decoder shape.

XLA:CPU runs one program's chain of small ops (a decode step) mostly on one core, and a loop
that dispatches batch after batch waits for each. `Generator.generate` keeps up to
`host_threads.workers()` batches in flight from as many host threads (2 on a one-device CPU
process with >= 2 cores): the same compiled sampler on the same inputs, so the same JDs. Both
sides run the same `Generator` (greedy, the repetition guard and copy bias of the default run)
over the same CVs, interleaved A B A B; the figure is CVs per second, and the JSON records
whether the two sides wrote identical JDs (they must).

Shapes: the default model (d_model 128, 4 layers, 4 heads), batch 128 (`generate.batch_size`),
prompts up to 128 tokens, 96 new tokens, 8 batches; `--quick`: tiny.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

SKILLS = ("python", "sql", "java", "excel", "sales", "nursing", "welding", "design", "payroll")
CITIES = ("Berlin", "Leeds", "Porto", "Lyon", "Graz", "Turin")


def _cvs(n: int) -> list[str]:
    """CV-like lines of varied length (the prompts are trimmed to the longest)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        skills = " ".join(rng.choice(SKILLS, rng.integers(2, 7)))
        years = int(rng.integers(0, 20))
        out.append(f"CV {i}. {skills}. {years} years. lives in {rng.choice(CITIES)}. " * 2)
    return out


def run(args) -> dict:
    import jax
    from flax import nnx

    from girl_jax import host_threads
    from girl_jax.data.tokenizer import Tokenizer
    from girl_jax.models.decoder import Decoder, DecoderConfig
    from girl_jax.stages.generator import Generator

    quick = args.quick
    n, batch, new = (8, 4, 8) if quick else (1024, 128, 96)
    shape = (
        dict(d_model=32, num_layers=1, num_heads=2)
        if quick
        else dict(d_model=128, num_layers=4, num_heads=4)
    )
    repeats = args.repeats or (1 if quick else 3)
    cvs = _cvs(n)
    tok = Tokenizer.train(cvs, vocab_size=400, min_frequency=1)
    cfg = DecoderConfig(family="gpt2", vocab_size=tok.vocab_size, max_len=256, **shape)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    workers = max(2, host_threads.workers())
    texts = {}

    def side(name, w):
        gen = Generator(
            graphdef,
            params,
            tok,
            max_prompt_len=128,
            max_new_tokens=new,
            greedy=True,
            repetition_penalty=1.2,
            no_repeat_ngram_size=3,
            encoder_repetition_penalty=1.6,
            batch_size=batch,
            workers=w,
        )

        def call():
            texts[name] = gen.generate(cvs, jax.random.key(0))

        return call

    fns = {"ours": side("ours", workers), "peer": side("peer", 1)}
    first = {k: bc.time_call(fn) for k, fn in fns.items()}  # compile + the first run
    bc.progress(f"host threads: first calls {first}")
    times = bc.interleaved(fns, repeats)
    identical = texts["ours"] == texts["peer"]
    rate = {k: n / bc.median(v) for k, v in times.items()}
    return {
        "figures": [
            bc.figure(
                f"JD generation, {n} CVs, batch {batch}, {new} new tokens, d {cfg.d_model}",
                "CVs/s",
                rate["ours"],
                rate["peer"],
                "the same Generator, one batch at a time",
                note=f"{workers} batches in flight; identical JDs: "
                + ("yes" if identical else "NO"),
            )
        ],
        "details": {
            "cvs": n,
            "batch": batch,
            "new_tokens": new,
            "workers": workers,
            "cpu_count": os.cpu_count(),
            "times_s": times,
            "first_call_s": first,
            "identical": identical,
        },
    }


def main(argv=None):
    bc.single_device_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
