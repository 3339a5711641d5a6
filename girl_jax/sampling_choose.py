"""How the sampler picks a token from the next-token logits: `filter_logits` (top-k / top-p),
`guard_logits` (the repetition guard), `bias_to_prompt` (a copy bias towards the prompt's
tokens) and `_choose` (temperature, greedy or an inverse-CDF draw,
with the chosen token's log-prob), with the reductions they use (`_inverse_cdf`, `_argmax`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax import lax

if TYPE_CHECKING:  # annotations only: girl_jax.sampling imports this module
    from girl_jax.sampling import SamplingConfig

Array = jax.Array


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


def prompt_tokens(prompt_ids_BxP: Array, prompt_mask_BxP: Array, vocab: int) -> Array:
    """in_prompt_BxV bool: True for every token id among a row's unmasked prompt tokens."""
    B = prompt_ids_BxP.shape[0]
    rows_Bx1 = jnp.arange(B)[:, None]
    valid_BxP = prompt_mask_BxP.astype(bool)
    return jnp.zeros((B, vocab), bool).at[rows_Bx1, prompt_ids_BxP.astype(jnp.int32)].max(valid_BxP)


def bias_to_prompt(logits_BxV: Array, in_prompt_BxV: Array, penalty: float) -> Array:
    """Hugging Face's ``encoder_repetition_penalty`` p (Keskar et al.'s penalty turned round):
    the logit of every token in the prompt is multiplied by p when positive and divided by p
    when negative, so p > 1 makes the prompt's tokens more likely (p < 1 less). Once per token,
    however often the prompt holds it; padding never counts (`prompt_tokens`)."""
    p = jnp.asarray(penalty, logits_BxV.dtype)
    boosted_BxV = jnp.where(logits_BxV < 0, logits_BxV / p, logits_BxV * p)
    return jnp.where(in_prompt_BxV, boosted_BxV, logits_BxV)


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
