"""Writing JDs for CVs with a trained generator: fixed-shape batches through the jitted sampler.

`Generator` serves the generate stage (`generate.py`), `girl generate` (`generate_cli.py`) and
the SFT, reward and PPO evaluations. It reads no stage's checkpoints (the final reward model
as a scorer of JDs, `reward_scorer`, is in `stages/reward/state.py`), so every stage can use it.
"""

from __future__ import annotations

import jax
import numpy as np

from girl_jax import host_threads, sampling
from girl_jax.data import batches
from girl_jax.data import market as market_mod

# Rows per sampler call in the stages' evaluations (and `generate.batch_size` in
# configs/default.py). On a CPU a smaller batch decodes faster per row: its KV cache stays in
# the processor's caches (batch 32 against 128: 1.5x the rows per second for the default model
# on the 2-core VM, docs/benchmarks.md "Decoding in 32-row passes"), and `host_threads` keeps two
# batches in flight, one per core. An accelerator wants larger batches: set them per config.
EVAL_BATCH = 32

# The decoding options of `generate.*` that change greedy JDs, with the value that turns each off.
GUARD_KEYS = (
    ("repetition_penalty", 1.0),
    ("no_repeat_ngram_size", 0),
    ("encoder_repetition_penalty", 1.0),
)


class Generator:
    """Batched JD generation; one compile per (batch, prompt length), reused across calls."""

    def __init__(
        self,
        graphdef,
        params,
        tokenizer,
        *,
        max_prompt_len: int,
        max_new_tokens: int,
        greedy: bool = True,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        encoder_repetition_penalty: float = 1.0,
        batch_size: int = 64,
        workers: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.workers = workers  # batches in flight at once (None: host_threads.workers())
        self.params = params
        self.max_prompt_len = max_prompt_len
        self.batch_size = batch_size
        self.cfg = sampling.SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            repetition_penalty=float(repetition_penalty),
            no_repeat_ngram_size=int(no_repeat_ngram_size),
            encoder_repetition_penalty=float(encoder_repetition_penalty),
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
        )
        step_fn, init_cache_fn = sampling.decoder_fns(graphdef)
        self._sample = sampling.make_sampler(step_fn, init_cache_fn, self.cfg)

    @classmethod
    def from_config(cls, graphdef, params, tokenizer, config, **kwargs) -> Generator:
        """A generator with the run's prompt and JD lengths (`sft.max_prompt_len`,
        `ppo.max_new_tokens`), repetition guard (`generate.repetition_penalty`,
        `generate.no_repeat_ngram_size`) and copy bias (`generate.encoder_repetition_penalty`),
        each off when absent (`GUARD_KEYS`); `kwargs` are the sampling settings and the batch
        size, and override those."""
        g = config.get("generate") or {}
        for key, off in GUARD_KEYS:
            if kwargs.get(key) is None:
                kwargs[key] = g.get(key, off)
        return cls(
            graphdef,
            params,
            tokenizer,
            max_prompt_len=config.sft.max_prompt_len,
            max_new_tokens=config.ppo.max_new_tokens,
            **kwargs,
        )

    def encode(self, cvs):
        """Left-padded prompts at the width the longest of `cvs` needs (`batches.trim_prompts`):
        one compile per (batch, width), the same JDs as at `max_prompt_len` up to rounding."""
        ids, mask = batches.encode_prompts(
            self.tokenizer, list(cvs), max_prompt_len=self.max_prompt_len
        )
        return batches.trim_prompts(ids, mask)

    def sample_arrays(self, ids, mask, rng):
        """One batch of already-encoded prompts -> SampleOutput (device arrays)."""
        return self._sample(self.params, ids, mask, rng)

    def generate(self, cvs, rng) -> list[str]:
        """JD texts for `cvs`, in order; the last batch is padded so shapes never change."""
        cvs = list(cvs)
        if not cvs:
            return []
        ids, mask = self.encode(cvs)
        n, bs = len(cvs), self.batch_size
        pad = (-n) % bs
        if pad:
            ids = np.concatenate([ids, np.repeat(ids[-1:], pad, 0)])
            mask = np.concatenate([mask, np.repeat(mask[-1:], pad, 0)])

        def batch(b):
            out = self._sample(
                self.params, ids[b : b + bs], mask[b : b + bs], jax.random.fold_in(rng, b // bs)
            )
            tokens, resp_mask = jax.device_get((out.tokens, out.mask))
            return batches.decode_responses(self.tokenizer, tokens, resp_mask)

        # batches side by side on a CPU's cores (host_threads): the same JDs as one by one
        parts = host_threads.ordered_map(batch, range(0, len(ids), bs), num_workers=self.workers)
        return [t for part in parts for t in part][:n]


def score_texts(market, seeker_ids, texts) -> dict[str, float]:
    """True match rate (oracle) and parse rate of generated JDs; empty when there is no oracle."""
    if market is None or not len(texts):
        return {}

    true = market.true_match(np.asarray(seeker_ids), list(texts))
    parsed = [market_mod.parse_jd(t) for t in texts]
    ok = [p is not None and getattr(p, "valid", True) for p in parsed]
    return {"true_match_rate": float(np.mean(true)), "parse_rate": float(np.mean(ok))}


def best_of_n(gen: Generator, score_fn, cvs, n: int, rng):
    """Best-of-n: `n` sampled JDs per CV, the one `score_fn(cvs, jds) -> [B]` rates highest
    (e.g. the final reward model's, `reward.reward_scorer`).

    Returns (texts, their scores [B], all scores [n, B]). The baseline PPO should beat at equal
    KL (KL of best-of-n from its sampler: log n - (n - 1) / n, `overopt.bon_kl`).
    """
    cvs = list(cvs)
    if n < 1:
        raise ValueError(f"best_of must be >= 1, got {n}")
    draws = [gen.generate(cvs, jax.random.fold_in(rng, i)) for i in range(n)]
    scores_NxB = np.stack([np.asarray(score_fn(cvs, d), dtype=np.float64) for d in draws])
    best_B = np.argmax(scores_NxB, axis=0)
    texts = [draws[k][b] for b, k in enumerate(best_B)]
    return texts, scores_NxB[best_B, np.arange(len(cvs))], scores_NxB
