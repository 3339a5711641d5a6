"""Jitted autoregressive sampler: prefill a left-padded prompt into a KV cache, then decode.

Model-agnostic: the caller passes two pure functions,

    step_fn(params, input_ids_BxT, kv_mask_BxS, positions_BxT, cache) -> (logits_BxTxV, new_cache)
    init_cache_fn(batch_size, max_len) -> cache pytree

where the cache tracks its own write index (the T new keys / values go to the next T
slots) and `kv_mask_BxS` marks the valid slots of the whole cache, the ones written by
this call included; causal masking by slot is the model's job. The decode loop grows the
cache in chunks (`SamplingConfig.cache_chunks`): `init_cache_fn` is called once per chunk
and the old cache is copied into the new one at offset 0 on every axis, so a cache's only
length-dependent axes must be slot axes. The sampler reads only
the logits of the last input position, so `step_fn` may return just those (``[B, 1, V]``):
a prefill then never materialises ``[B, P, V]``. `decoder_fns(graphdef)` builds both
functions for `girl_jax.models.decoder.Decoder` (and does exactly that).

Prompts must be LEFT-padded: the last column is every row's last prompt token. Slot
layout: ``[0, P)`` prompt, ``[P, P + N)`` generated tokens; positions are
``cumsum(mask) - 1`` so left padding does not shift them.

A repetition guard, as Hugging Face ``generate`` has, is off by default
(`SamplingConfig.repetition_penalty` 1.0, `no_repeat_ngram_size` 0; then the traced program
is the one without it). Unlike Hugging Face's, it looks at the generated tokens only, never
at the prompt: a JD should repeat the CV's skills, not avoid them. See `guard_logits`.
The opposite, Hugging Face's `encoder_repetition_penalty` p (off at 1.0), favours the prompt's
tokens: their logits are multiplied by p when positive and divided by p when negative, before
the guard (`bias_to_prompt`): a copy bias that makes a JD reuse the CV's words.

This module holds the config and the loop; the token choice (top-k / top-p, temperature, the
guard) lives in `girl_jax.sampling_choose`, `decoder_fns` in `girl_jax.sampling_decoder`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from girl_jax.errors import ConfigError
from girl_jax.sampling_choose import (  # noqa: F401 (_inverse_cdf, _argmax: re-exported)
    _argmax,
    _choose,
    _inverse_cdf,
    bias_to_prompt,
    filter_logits,
    guard_logits,
    prompt_tokens,
)
from girl_jax.sampling_decoder import decoder_fns

Array = jax.Array
StepFn = Callable[[Any, Array, Array, Array, Any], tuple[Array, Any]]
InitCacheFn = Callable[[int, int], Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Decoding settings; hashable and static under jit.

    `eos_id` None never stops a row early. `early_stop` uses a ``while_loop`` that
    ends once every row has emitted EOS (else a fixed-trip loop of `max_new_tokens`).
    """

    max_new_tokens: int
    eos_id: int | None
    pad_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    early_stop: bool = True
    cache_chunks: int | None = None  # None: min(4, max_new_tokens // 32), at least 1
    repetition_penalty: float = 1.0  # > 1: CTRL-style penalty on already generated tokens
    no_repeat_ngram_size: int = 0  # > 0: never complete an n-gram already generated
    encoder_repetition_penalty: float = 1.0  # > 1: favour the prompt's tokens (copy bias)
    # > 0: decode a bigger batch in passes of this many rows, one after another in one program
    # (`sample`): on a CPU a 32-row pass keeps its KV cache in the processor's caches, and the
    # sampler alone decodes 128 rows 1.3x faster in 4 passes (not so inside the fused PPO
    # iteration, nor at bench-small's batch 32; docs/benchmarks.md). 0: one pass.
    rows_per_pass: int = 0

    @property
    def guarded(self) -> bool:
        """Whether the repetition guard changes any logits (`guard_logits`)."""
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0

    @property
    def prompt_biased(self) -> bool:
        """Whether the prompt's tokens get `encoder_repetition_penalty` (`bias_to_prompt`)."""
        return self.encoder_repetition_penalty != 1.0

    def __post_init__(self):
        def bad(field, want):
            value = getattr(self, field)
            raise ConfigError(f"SamplingConfig.{field} must be {want}, got {value!r}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            bad("max_new_tokens", "an int >= 1")
        if self.eos_id is not None and (not _is_int(self.eos_id) or self.eos_id < 0):
            bad("eos_id", "None or an int >= 0")
        if not _is_int(self.pad_id) or self.pad_id < 0:
            bad("pad_id", "an int >= 0")
        if not self.temperature > 0:
            bad("temperature", "> 0 (use greedy=True for argmax decoding)")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "an int >= 0 (0 disables)")
        if not 0 < self.top_p <= 1:
            bad("top_p", "in (0, 1] (1 disables)")
        if self.cache_chunks is not None and (
            not _is_int(self.cache_chunks) or self.cache_chunks < 1
        ):
            bad("cache_chunks", "None or an int >= 1")
        for field in ("repetition_penalty", "encoder_repetition_penalty"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                bad(field, "a number > 0 (1.0 disables)")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            bad("no_repeat_ngram_size", "an int >= 0 (0 disables)")
        if not _is_int(self.rows_per_pass) or self.rows_per_pass < 0:
            bad("rows_per_pass", "an int >= 0 (0: every row in one pass)")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class SampleOutput(NamedTuple):
    """What `sample` returns; N = max_new_tokens.

    tokens_BxN int32, `pad_id` after EOS; logprobs_BxN float32, log-prob of each chosen
    token under ``log_softmax(logits / temperature)`` (before top-k / top-p filtering, after
    the repetition guard when it is on), 0 where masked; mask_BxN int32, 1 on generated
    tokens up to and including EOS; lengths_B int32; has_eos_B bool.
    """

    tokens: Array
    logprobs: Array
    mask: Array
    lengths: Array
    has_eos: Array


def prompt_positions(prompt_mask_BxP: Array) -> Array:
    """``max(cumsum(mask) - 1, 0)``: 0-based positions that ignore left padding."""
    return jnp.maximum(jnp.cumsum(prompt_mask_BxP.astype(jnp.int32), axis=1) - 1, 0)


class _Loop(NamedTuple):
    i: Array
    logits_BxV: Array
    cache: Any
    kv_mask_BxS: Array
    next_pos_B: Array
    done_B: Array
    tokens_BxN: Array
    logprobs_BxN: Array
    mask_BxN: Array


def decode_chunks(cfg: SamplingConfig) -> tuple[tuple[int, int], ...]:
    """The decode steps ``[start, stop)`` run against one cache size, ``P + stop`` slots.

    A decode step reads every slot of its cache, written or not: with one cache of
    ``P + N`` slots from the start, the first steps read up to N slots for nothing (on CPU
    the attention reads are memory-bound: ~30% of a bench-small step at P=64, N=128).
    Growing the cache in ``k`` chunks cuts that read to ~``P + N (k + 1) / (2k)`` slots on
    average, for one cache copy and one more compiled loop body per chunk.
    """
    N = cfg.max_new_tokens
    k = cfg.cache_chunks if cfg.cache_chunks is not None else max(1, min(4, N // 32))
    k = max(1, min(k, N))
    bounds = [round(N * j / k) for j in range(k + 1)]
    return tuple((a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)


def _grow_cache(cache: Any, init_cache_fn: InitCacheFn, batch: int, max_len: int) -> Any:
    """A cache of `max_len` slots holding `cache`'s contents at the same slots.

    Leaves whose shape does not depend on the length (the write index) are carried over;
    the others are copied into the zeros of the bigger cache at offset 0 on every axis.
    """

    def grow(new, old):
        if new.shape == old.shape:
            return old
        return lax.dynamic_update_slice(new, old.astype(new.dtype), (0,) * new.ndim)

    return jax.tree.map(grow, init_cache_fn(batch, max_len), cache)


def sample(
    step_fn: StepFn,
    init_cache_fn: InitCacheFn,
    params: Any,
    prompt_ids_BxP: Array,
    prompt_mask_BxP: Array,
    rng: Array,
    cfg: SamplingConfig,
) -> SampleOutput:
    """Generate up to ``cfg.max_new_tokens`` tokens per left-padded prompt (jittable).

    Deterministic given `rng`: step i draws with ``fold_in(rng, i)``. The cache grows in
    chunks (`decode_chunks`): `init_cache_fn` is called once per chunk, and a bigger cache
    must hold a smaller one's slots at the same indices (zeros elsewhere).

    With ``cfg.rows_per_pass`` = r < B, the rows are decoded in C = B / r passes (`lax.map`):
    pass c takes rows c, c + C, c + 2C, ... (strided, so that a batch laid out in contiguous
    blocks over devices keeps every pass spread over all of them) with key
    ``jax.random.split(rng, C)[c]``, exactly as a one-pass `sample` of those rows.
    """
    B = prompt_ids_BxP.shape[0]
    r = cfg.rows_per_pass
    if 0 < r < B:
        if B % r:
            raise ConfigError(
                f"SamplingConfig.rows_per_pass={r} must divide the batch of {B} prompts"
            )
        one = dataclasses.replace(cfg, rows_per_pass=0)
        C = B // r

        def passes(x):  # [B, ...] -> [C, r, ...], pass c = rows c::C
            return jnp.swapaxes(x.reshape(r, C, *x.shape[1:]), 0, 1)

        def one_pass(args):
            ids, mask, key = args
            return sample(step_fn, init_cache_fn, params, ids, mask, key, one)

        out = lax.map(
            one_pass, (passes(prompt_ids_BxP), passes(prompt_mask_BxP), jax.random.split(rng, C))
        )
        return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(B, *x.shape[2:]), out)
    B, P = prompt_ids_BxP.shape
    N = cfg.max_new_tokens
    chunks = decode_chunks(cfg)
    prompt_mask_BxP = prompt_mask_BxP.astype(jnp.int32)
    kv_mask_BxS = jnp.concatenate([prompt_mask_BxP, jnp.zeros((B, N), jnp.int32)], axis=1)
    S0 = P + chunks[0][1]
    logits_BxPxV, cache = step_fn(
        params,
        prompt_ids_BxP.astype(jnp.int32),
        kv_mask_BxS[:, :S0],
        prompt_positions(prompt_mask_BxP),
        init_cache_fn(B, S0),
    )
    eos = -1 if cfg.eos_id is None else cfg.eos_id
    if cfg.prompt_biased:  # which tokens the prompt holds: once, before the loop
        in_prompt_BxV = prompt_tokens(prompt_ids_BxP, prompt_mask_BxP, logits_BxPxV.shape[-1])

    def body(s: _Loop, S: int) -> _Loop:
        logits_BxV = s.logits_BxV
        if cfg.prompt_biased:  # Hugging Face's order: the prompt's bias, then the guard
            logits_BxV = bias_to_prompt(logits_BxV, in_prompt_BxV, cfg.encoder_repetition_penalty)
        if cfg.guarded:
            logits_BxV = guard_logits(
                logits_BxV, s.tokens_BxN, s.i, cfg.repetition_penalty, cfg.no_repeat_ngram_size
            )
        token_B, logp_B = _choose(logits_BxV, jax.random.fold_in(rng, s.i), cfg)
        alive_B = ~s.done_B
        token_B = jnp.where(alive_B, token_B, cfg.pad_id)
        logp_B = jnp.where(alive_B, logp_B, 0.0)
        col = (0, s.i)
        tokens_BxN = lax.dynamic_update_slice(s.tokens_BxN, token_B[:, None], col)
        logprobs_BxN = lax.dynamic_update_slice(s.logprobs_BxN, logp_B[:, None], col)
        mask_BxN = lax.dynamic_update_slice(s.mask_BxN, alive_B.astype(jnp.int32)[:, None], col)
        done_B = s.done_B | (alive_B & (token_B == eos))
        # Feed the token: its slot becomes visible as it is written. On the last step this
        # forward is wasted, a price paid for a loop body without a cond.
        kv_mask_BxS = lax.dynamic_update_slice(
            s.kv_mask_BxS, jnp.ones((B, 1), jnp.int32), (0, P + s.i)
        )
        logits_Bx1xV, cache = step_fn(
            params, token_B[:, None], kv_mask_BxS[:, :S], s.next_pos_B[:, None], s.cache
        )
        return _Loop(
            s.i + 1,
            logits_Bx1xV[:, -1].astype(jnp.float32),
            cache,
            kv_mask_BxS,
            s.next_pos_B + 1,
            done_B,
            tokens_BxN,
            logprobs_BxN,
            mask_BxN,
        )

    def cond(s: _Loop, stop: int) -> Array:
        more = s.i < stop
        return more & ~jnp.all(s.done_B) if cfg.early_stop else more

    state = _Loop(
        i=jnp.zeros((), jnp.int32),
        logits_BxV=logits_BxPxV[:, -1].astype(jnp.float32),
        cache=cache,
        kv_mask_BxS=kv_mask_BxS,
        next_pos_B=jnp.sum(prompt_mask_BxP, axis=1),
        done_B=jnp.zeros((B,), bool),
        tokens_BxN=jnp.full((B, N), cfg.pad_id, jnp.int32),
        logprobs_BxN=jnp.zeros((B, N), jnp.float32),
        mask_BxN=jnp.zeros((B, N), jnp.int32),
    )
    for j, (_, stop) in enumerate(chunks):
        S = P + stop
        if j:
            state = state._replace(cache=_grow_cache(state.cache, init_cache_fn, B, S))
        state = lax.while_loop(
            functools.partial(cond, stop=stop), functools.partial(body, S=S), state
        )
    out = state
    has_eos_B = jnp.any((out.tokens_BxN == eos) & (out.mask_BxN > 0), axis=1)
    return SampleOutput(
        tokens=out.tokens_BxN,
        logprobs=out.logprobs_BxN,
        mask=out.mask_BxN,
        lengths=jnp.sum(out.mask_BxN, axis=1),
        has_eos=has_eos_B,
    )


def make_sampler(
    step_fn: StepFn,
    init_cache_fn: InitCacheFn,
    cfg: SamplingConfig,
    *,
    in_shardings: Any = None,
    out_shardings: Any = None,
) -> Callable[[Any, Array, Array, Array], SampleOutput]:
    """``jit(sample)`` as ``fn(params, prompt_ids, prompt_mask, rng)``; one compile per shape."""

    def sampler(params, prompt_ids_BxP, prompt_mask_BxP, rng):
        return sample(step_fn, init_cache_fn, params, prompt_ids_BxP, prompt_mask_BxP, rng, cfg)

    kwargs = {}
    if in_shardings is not None:
        kwargs["in_shardings"] = in_shardings
    if out_shardings is not None:
        kwargs["out_shardings"] = out_shardings
    return jax.jit(sampler, **kwargs)


__all__ = [
    "SampleOutput",
    "SamplingConfig",
    "bias_to_prompt",
    "decode_chunks",
    "decoder_fns",
    "filter_logits",
    "guard_logits",
    "make_sampler",
    "prompt_positions",
    "prompt_tokens",
    "sample",
]
