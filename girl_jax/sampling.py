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
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from girl_jax.errors import ConfigError

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

    @property
    def guarded(self) -> bool:
        """Whether the repetition guard changes any logits (`guard_logits`)."""
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0

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
        if not (
            isinstance(self.repetition_penalty, (int, float))
            and not isinstance(self.repetition_penalty, bool)
            and self.repetition_penalty > 0
        ):
            bad("repetition_penalty", "a number > 0 (1.0 disables)")
        if not _is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            bad("no_repeat_ngram_size", "an int >= 0 (0 disables)")


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


def filter_logits(logits_BxV: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (ties are kept).

    The nucleus is the smallest prefix of tokens, by descending probability, whose mass
    reaches `top_p`; it always holds at least the most likely token.
    """
    vocab = logits_BxV.shape[-1]
    neg_inf = jnp.asarray(-jnp.inf, logits_BxV.dtype)
    if 0 < top_k < vocab:
        kth_Bx1 = lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg_inf, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        n_keep_B = jnp.sum(mass_before_BxV < top_p, axis=-1)  # >= 1: the first has 0 before it
        cutoff_Bx1 = jnp.take_along_axis(sorted_BxV, n_keep_B[:, None] - 1, axis=-1)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, neg_inf, logits_BxV)
    return logits_BxV


def guard_logits(
    logits_BxV: Array,
    tokens_BxN: Array,
    num_done: Array | int,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> Array:
    """The repetition guard of Hugging Face ``generate``, on the generated tokens only.

    `tokens_BxN[:, :num_done]` are the tokens generated so far (later columns are ignored, so
    a fixed-shape buffer works under jit); `logits_BxV` are the next token's logits.

    * ``repetition_penalty`` p (CTRL, Keskar et al. 2019): the logit of every token already
      generated is divided by p when positive and multiplied by p when negative (p > 1 makes
      repeats less likely; p < 1 more likely). Once per token, however often it occurred.
    * ``no_repeat_ngram_size`` n: a token that would complete an n-gram already present in the
      generated tokens gets -inf (n = 1: no token twice). Fewer than n - 1 tokens: no ban.
    """
    B, V = logits_BxV.shape
    N = tokens_BxN.shape[1]
    num_done = jnp.asarray(num_done, jnp.int32)
    tokens_BxN = tokens_BxN.astype(jnp.int32)
    rows_Bx1 = jnp.arange(B)[:, None]
    if repetition_penalty != 1.0:
        done_BxN = jnp.broadcast_to(jnp.arange(N) < num_done, (B, N))
        seen_BxV = jnp.zeros((B, V), bool).at[rows_Bx1, tokens_BxN].max(done_BxN)
        p = jnp.asarray(repetition_penalty, logits_BxV.dtype)
        penalised_BxV = jnp.where(logits_BxV < 0, logits_BxV * p, logits_BxV / p)
        logits_BxV = jnp.where(seen_BxV, penalised_BxV, logits_BxV)
    n = no_repeat_ngram_size
    if 0 < n <= N:
        W = N - n + 1  # n-grams starting at 0 .. N - n
        # An n-gram starting at j is complete (all generated) when j + n <= num_done.
        match_BxW = jnp.broadcast_to(jnp.arange(W) + n <= num_done, (B, W))
        if n > 1:
            start = jnp.maximum(num_done - (n - 1), 0)
            last_Bxm = lax.dynamic_slice(tokens_BxN, (0, start), (B, n - 1))  # the n - 1 latest
            for k in range(n - 1):
                match_BxW &= tokens_BxN[:, k : k + W] == last_Bxm[:, k : k + 1]
            match_BxW &= num_done >= n - 1
        banned_BxV = jnp.zeros((B, V), bool).at[rows_Bx1, tokens_BxN[:, n - 1 :]].max(match_BxW)
        logits_BxV = jnp.where(banned_BxV, jnp.asarray(-jnp.inf, logits_BxV.dtype), logits_BxV)
    return logits_BxV


def prompt_positions(prompt_mask_BxP: Array) -> Array:
    """``max(cumsum(mask) - 1, 0)``: 0-based positions that ignore left padding."""
    return jnp.maximum(jnp.cumsum(prompt_mask_BxP.astype(jnp.int32), axis=1) - 1, 0)


def _block_size(vocab: int) -> int:
    """A power of two near sqrt(vocab): both stages of `_inverse_cdf` stay short."""
    return 1 << max(0, (vocab - 1).bit_length() + 1) // 2


def _inverse_cdf(weights_BxV: Array, u_Bx1: Array) -> Array:
    """Index i with probability ``weights[i] / sum(weights)`` per row, one uniform per row.

    Two stages (a block of ~sqrt(V) entries by its mass, then the entry inside the block), so
    no cumulative sum over the whole vocabulary (XLA's CPU cumsum over 8192 entries costs
    more than the rest of a decode step's sampling together). A zero weight is never chosen:
    the search only stops on entries with positive weight, and the target is clamped below
    the mass it searches, so float rounding cannot push it past the end.
    """
    B, V = weights_BxV.shape
    blk = _block_size(V)
    nb = -(-V // blk)
    if nb * blk != V:
        weights_BxV = jnp.pad(weights_BxV, ((0, 0), (0, nb * blk - V)))
    w_BxNxK = weights_BxV.reshape(B, nb, blk)
    mass_BxN = jnp.sum(w_BxNxK, axis=-1)
    cum_BxN = jnp.cumsum(mass_BxN, axis=-1)
    total_Bx1 = cum_BxN[:, -1:]
    target_Bx1 = jnp.minimum(u_Bx1 * total_Bx1, jnp.nextafter(total_Bx1, 0))
    block_B = _first(cum_BxN > target_Bx1, mass_BxN > 0)
    w_BxK = jnp.take_along_axis(w_BxNxK, block_B[:, None, None], axis=1)[:, 0]
    cum_BxK = jnp.cumsum(w_BxK, axis=-1)
    before_Bx1 = jnp.take_along_axis(cum_BxN - mass_BxN, block_B[:, None], axis=1)
    rest_Bx1 = jnp.clip(target_Bx1 - before_Bx1, 0, jnp.nextafter(cum_BxK[:, -1:], 0))
    return block_B * blk + _first(cum_BxK > rest_Bx1, w_BxK > 0)


def _first(hit_BxN: Array, allowed_BxN: Array) -> Array:
    """First column where both hold (the last allowed column if none: rounding only)."""
    N = hit_BxN.shape[-1]
    col = jnp.arange(N, dtype=jnp.int32)
    last = jnp.max(jnp.where(allowed_BxN, col, 0), axis=-1)
    return jnp.minimum(jnp.min(jnp.where(hit_BxN & allowed_BxN, col, N), axis=-1), last)


def _argmax(x_BxV: Array, max_Bx1: Array) -> Array:
    """`jnp.argmax` (first maximum) as two plain reductions: XLA's CPU argmax (a variadic
    reduce) is ~4x slower on 32 x 8192."""
    col = jnp.arange(x_BxV.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x_BxV == max_Bx1, col, x_BxV.shape[-1]), axis=-1)


def _choose(logits_BxV: Array, key: Array, cfg: SamplingConfig) -> tuple[Array, Array]:
    """(token, log-prob of the token under ``log_softmax(logits / temperature)``).

    Sampling draws one uniform per row and inverts the CDF of the (filtered) softmax: the
    same distribution as `jax.random.categorical`, whose Gumbel noise costs two logs and
    32 random bits per vocabulary entry (~8 ms of a ~30 ms decode step at 32 x 8192).
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    scaled_BxV = logits_BxV if cfg.temperature == 1.0 else logits_BxV / cfg.temperature
    max_Bx1 = jnp.max(scaled_BxV, axis=-1, keepdims=True)
    shifted_BxV = scaled_BxV - max_Bx1
    exp_BxV = jnp.exp(shifted_BxV)
    log_norm_B = jnp.log(jnp.sum(exp_BxV, axis=-1))  # as in jax.nn.log_softmax
    if cfg.greedy:
        # On the raw logits: dividing by a temperature may round two of them into a tie.
        raw_max_Bx1 = max_Bx1 if cfg.temperature == 1.0 else jnp.max(logits_BxV, -1, keepdims=True)
        token_B = _argmax(logits_BxV, raw_max_Bx1)
    else:
        weights_BxV = exp_BxV
        if cfg.top_k or cfg.top_p < 1.0:
            keep_BxV = jnp.isfinite(filter_logits(scaled_BxV, cfg.top_k, cfg.top_p))
            weights_BxV = jnp.where(keep_BxV, exp_BxV, 0.0)
        u_Bx1 = jax.random.uniform(key, (logits_BxV.shape[0], 1), jnp.float32)
        token_B = _inverse_cdf(weights_BxV, u_Bx1)
    token_B = token_B.astype(jnp.int32)
    picked_B = jnp.take_along_axis(shifted_BxV, token_B[:, None], axis=-1)[:, 0]
    return token_B, picked_B - log_norm_B


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
    """
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

    def body(s: _Loop, S: int) -> _Loop:
        logits_BxV = s.logits_BxV
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


def _find_decoder_config(graphdef):
    from girl_jax.models.decoder import DecoderConfig

    # The NNX graphdef keeps static attributes as (name, Static(value)) pairs.
    for _, attr in getattr(graphdef, "attributes", ()):
        value = getattr(attr, "value", None)
        if isinstance(value, DecoderConfig):
            return value
    raise ConfigError(
        "decoder_fns: no DecoderConfig found in the graphdef; pass decoder_config= explicitly"
    )


def decoder_fns(graphdef, decoder_config=None, cache_dtype=None) -> tuple[StepFn, InitCacheFn]:
    """`(step_fn, init_cache_fn)` driving a split `girl_jax.models.decoder.Decoder`.

    `params` given to `step_fn` is the state from ``nnx.split(model)`` (or a tuple of states,
    merged in order). The cache is the decoder's own (``Transformer.init_cache``).
    """
    from flax import nnx

    from girl_jax.models import decoder as decoder_mod

    dcfg = decoder_config or _find_decoder_config(graphdef)

    def step_fn(params, ids_BxT, kv_mask_BxS, positions_BxT, cache):
        states = params if isinstance(params, (tuple, list)) else (params,)
        model = nnx.merge(graphdef, *states)
        if hasattr(model, "hidden") and hasattr(model, "logits"):
            # LM head on the last position only: the sampler needs nothing else.
            h_BxTxD, new_cache = model.hidden(ids_BxT, kv_mask_BxS, positions_BxT, cache=cache)
            return model.logits(h_BxTxD[:, -1:]).astype(jnp.float32), new_cache
        logits_BxTxV, aux = model(ids_BxT, kv_mask_BxS, positions_BxT, cache=cache)
        return logits_BxTxV[:, -1:].astype(jnp.float32), aux["cache"]

    def init_cache_fn(batch_size, max_len):
        if max_len > dcfg.max_len:
            raise ConfigError(
                f"sampling: prompt length + max_new_tokens = {max_len} exceeds "
                f"DecoderConfig.max_len = {dcfg.max_len}"
            )
        # init_cache reads only `self.cfg`: no need to build (or own) the parameters.
        holder = types.SimpleNamespace(cfg=dcfg)
        # Per-layer head-major caches: a decode step writes each layer's new slot in place and
        # attends over it as stored (the stacked [L, B, S, G, K] cache cost a slice + transpose
        # copy of every layer per token). Scanned layers need the stacked one.
        layout = "stacked" if dcfg.scan_layers else "per_layer"
        return decoder_mod.Transformer.init_cache(
            holder, batch_size, max_len, cache_dtype, layout=layout
        )

    return step_fn, init_cache_fn


__all__ = [
    "SampleOutput",
    "SamplingConfig",
    "decode_chunks",
    "decoder_fns",
    "filter_logits",
    "guard_logits",
    "make_sampler",
    "prompt_positions",
    "sample",
]
