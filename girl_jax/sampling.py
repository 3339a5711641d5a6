"""Jitted autoregressive sampler: prefill a left-padded prompt into a KV cache, then decode.

Model-agnostic: the caller passes two pure functions,

    step_fn(params, input_ids_BxT, kv_mask_BxS, positions_BxT, cache) -> (logits_BxTxV, new_cache)
    init_cache_fn(batch_size, max_len) -> cache pytree

where the cache tracks its own write index (the T new keys / values go to the next T
slots) and `kv_mask_BxS` marks the valid slots of the whole cache, the ones written by
this call included; causal masking by slot is the model's job. The sampler reads only
the logits of the last input position, so `step_fn` may return just those (``[B, 1, V]``):
a prefill then never materialises ``[B, P, V]``. `decoder_fns(graphdef)` builds both
functions for `girl_jax.models.decoder.Decoder` (and does exactly that).

Prompts must be LEFT-padded: the last column is every row's last prompt token. Slot
layout: ``[0, P)`` prompt, ``[P, P + N)`` generated tokens; positions are
``cumsum(mask) - 1`` so left padding does not shift them.
"""

from __future__ import annotations

import dataclasses
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


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class SampleOutput(NamedTuple):
    """What `sample` returns; N = max_new_tokens.

    tokens_BxN int32, `pad_id` after EOS; logprobs_BxN float32, log-prob of each chosen
    token under ``log_softmax(logits / temperature)`` (before top-k / top-p filtering),
    0 where masked; mask_BxN int32, 1 on generated tokens up to and including EOS;
    lengths_B int32; has_eos_B bool.
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


def prompt_positions(prompt_mask_BxP: Array) -> Array:
    """``max(cumsum(mask) - 1, 0)``: 0-based positions that ignore left padding."""
    return jnp.maximum(jnp.cumsum(prompt_mask_BxP.astype(jnp.int32), axis=1) - 1, 0)


def _choose(logits_BxV: Array, key: Array, cfg: SamplingConfig) -> tuple[Array, Array]:
    scaled_BxV = logits_BxV.astype(jnp.float32) / cfg.temperature
    logp_BxV = jax.nn.log_softmax(scaled_BxV, axis=-1)
    if cfg.greedy:
        token_B = jnp.argmax(logits_BxV, axis=-1)
    else:
        filtered_BxV = filter_logits(scaled_BxV, cfg.top_k, cfg.top_p)
        token_B = jax.random.categorical(key, filtered_BxV, axis=-1)
    token_B = token_B.astype(jnp.int32)
    return token_B, jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]


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

    Deterministic given `rng`: step i draws with ``fold_in(rng, i)``.
    """
    B, P = prompt_ids_BxP.shape
    N = cfg.max_new_tokens
    prompt_mask_BxP = prompt_mask_BxP.astype(jnp.int32)
    cache = init_cache_fn(B, P + N)
    kv_mask_BxS = jnp.concatenate([prompt_mask_BxP, jnp.zeros((B, N), jnp.int32)], axis=1)
    logits_BxPxV, cache = step_fn(
        params,
        prompt_ids_BxP.astype(jnp.int32),
        kv_mask_BxS,
        prompt_positions(prompt_mask_BxP),
        cache,
    )
    eos = -1 if cfg.eos_id is None else cfg.eos_id

    def body(s: _Loop) -> _Loop:
        token_B, logp_B = _choose(s.logits_BxV, jax.random.fold_in(rng, s.i), cfg)
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
            params, token_B[:, None], kv_mask_BxS, s.next_pos_B[:, None], s.cache
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

    def cond(s: _Loop) -> Array:
        more = s.i < N
        return more & ~jnp.all(s.done_B) if cfg.early_stop else more

    init = _Loop(
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
    out = lax.while_loop(cond, body, init)
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
        return decoder_mod.Transformer.init_cache(holder, batch_size, max_len, cache_dtype)

    return step_fn, init_cache_fn


__all__ = [
    "SampleOutput",
    "SamplingConfig",
    "decoder_fns",
    "filter_logits",
    "make_sampler",
    "prompt_positions",
    "sample",
]
