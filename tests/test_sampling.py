"""Sampler tests with toy pure-JAX models (one causal attention layer; a bigram table)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax import sampling
from girl_jax.errors import ConfigError

V, D, MAXLEN = 13, 16, 64


# A one-layer causal attention LM with a KV cache that tracks its own write index.


def toy_params(seed=0):
    ks = jax.random.split(jax.random.key(seed), 6)
    n = lambda k, shape, s: s * jax.random.normal(k, shape)
    return {
        "emb": n(ks[0], (V, D), 1.0),
        "pos": n(ks[1], (MAXLEN, D), 0.5),
        "wq": n(ks[2], (D, D), D**-0.5),
        "wk": n(ks[3], (D, D), D**-0.5),
        "wv": n(ks[4], (D, D), D**-0.5),
        "wo": n(ks[5], (D, V), 1.0),
    }


def toy_init_cache(batch, max_len):
    return {
        "k": jnp.zeros((batch, max_len, D)),
        "v": jnp.zeros((batch, max_len, D)),
        "index": jnp.zeros((), jnp.int32),
    }


def toy_step(params, ids_BxT, kv_mask_BxS, positions_BxT, cache):
    x = params["emb"][ids_BxT] + params["pos"][positions_BxT]
    idx = cache["index"]
    k = jax.lax.dynamic_update_slice(cache["k"], x @ params["wk"], (0, idx, 0))
    v = jax.lax.dynamic_update_slice(cache["v"], x @ params["wv"], (0, idx, 0))
    T, S = ids_BxT.shape[1], k.shape[1]
    causal_TxS = jnp.arange(S)[None, :] <= idx + jnp.arange(T)[:, None]
    mask_BxTxS = causal_TxS[None] & kv_mask_BxS.astype(bool)[:, None, :]
    scores = jnp.einsum("btd,bsd->bts", x @ params["wq"], k) / jnp.sqrt(D)
    probs = jax.nn.softmax(jnp.where(mask_BxTxS, scores, -1e30), axis=-1)
    h = x + jnp.einsum("bts,bsd->btd", probs, v)
    return h @ params["wo"], {"k": k, "v": v, "index": idx + T}


def toy_full_forward(params, ids_BxL, mask_BxL):
    """Logits of the whole sequence in one call, no reuse of any earlier cache."""
    pos = sampling.prompt_positions(mask_BxL)
    logits, _ = toy_step(params, ids_BxL, mask_BxL, pos, toy_init_cache(*ids_BxL.shape))
    return logits


def left_padded_prompts(seed, batch=6, width=7, pad_id=0, min_len=1):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, width + 1, size=batch)
    lengths[0] = width
    ids = np.full((batch, width), pad_id, np.int32)
    mask = np.zeros((batch, width), np.int32)
    for b, n in enumerate(lengths):
        ids[b, width - n :] = rng.integers(1, V, size=n)
        mask[b, width - n :] = 1
    return ids, mask


def greedy_rollout(forward, ids, mask, n_new):
    """Greedy tokens by repeated full forwards of a fixed-length buffer (no cache).

    Unfilled slots are masked and lie after the query, so causality hides them; one shape
    means one compile.
    """
    B, P = ids.shape
    seq = np.concatenate([ids, np.zeros((B, n_new), np.int32)], 1)
    seq_mask = np.concatenate([mask, np.zeros((B, n_new), np.int32)], 1)
    for i in range(n_new):
        logits = forward(jnp.asarray(seq), jnp.asarray(seq_mask))
        seq[:, P + i] = np.asarray(jnp.argmax(logits[:, P - 1 + i], -1))
        seq_mask[:, P + i] = 1
    return seq[:, P:]


def reference_greedy(params, ids, mask, n_new, eos_id, pad_id):
    """Greedy rollout of the toy model without its cache, then EOS post-processing."""
    forward = jax.jit(lambda i, m: toy_full_forward(params, i, m))
    return apply_eos(greedy_rollout(forward, ids, mask, n_new), eos_id, pad_id)


def apply_eos(tokens, eos_id, pad_id):
    tokens, mask = tokens.copy(), np.ones_like(tokens)
    for b in range(tokens.shape[0]):
        hits = np.flatnonzero(tokens[b] == eos_id)
        if len(hits):
            tokens[b, hits[0] + 1 :] = pad_id
            mask[b, hits[0] + 1 :] = 0
    return tokens, mask


def common_eos(params, ids, mask, n_new):
    """A token that some rows emit mid-way, so EOS handling is exercised."""
    toks, _ = reference_greedy(params, ids, mask, n_new, eos_id=-1, pad_id=0)
    vals, counts = np.unique(toks[:, 1:-1], return_counts=True)
    return int(vals[np.argmax(counts)])


@pytest.mark.parametrize("early_stop", [True, False])
def test_greedy_equals_full_forward_rollout(early_stop):
    params = toy_params(0)
    ids, mask = left_padded_prompts(0)
    n_new = 8
    eos = common_eos(params, ids, mask, n_new)
    cfg = sampling.SamplingConfig(
        max_new_tokens=n_new, eos_id=eos, pad_id=0, greedy=True, early_stop=early_stop
    )
    out = sampling.make_sampler(toy_step, toy_init_cache, cfg)(params, ids, mask, jax.random.key(0))
    ref_tokens, ref_mask = reference_greedy(params, ids, mask, n_new, eos, 0)
    np.testing.assert_array_equal(out.tokens, ref_tokens)
    np.testing.assert_array_equal(out.mask, ref_mask)
    np.testing.assert_array_equal(out.lengths, ref_mask.sum(1))
    np.testing.assert_array_equal(out.has_eos, (ref_tokens == eos).any(1))
    assert 0 < int(np.sum(out.has_eos)) and int(np.min(out.lengths)) < n_new


def test_left_padding_invariance():
    params = toy_params(1)
    ids, mask = left_padded_prompts(1)
    cfg = sampling.SamplingConfig(max_new_tokens=6, eos_id=None, pad_id=0, greedy=True)
    run = sampling.make_sampler(toy_step, toy_init_cache, cfg)
    out = run(params, ids, mask, jax.random.key(0))
    more_ids = np.concatenate([np.full((ids.shape[0], 5), 3, np.int32), ids], 1)  # junk pads
    more_mask = np.concatenate([np.zeros((ids.shape[0], 5), np.int32), mask], 1)
    out2 = run(params, more_ids, more_mask, jax.random.key(0))
    np.testing.assert_array_equal(out.tokens, out2.tokens)
    np.testing.assert_allclose(out.logprobs, out2.logprobs, atol=1e-5)


def test_topk1_equals_greedy_and_determinism():
    params = toy_params(2)
    ids, mask = left_padded_prompts(2)
    base = dict(max_new_tokens=6, eos_id=None, pad_id=0)
    greedy = sampling.make_sampler(
        toy_step, toy_init_cache, sampling.SamplingConfig(**base, greedy=True)
    )(params, ids, mask, jax.random.key(0))
    top1 = sampling.make_sampler(
        toy_step, toy_init_cache, sampling.SamplingConfig(**base, top_k=1, temperature=0.5)
    )(params, ids, mask, jax.random.key(7))
    np.testing.assert_array_equal(greedy.tokens, top1.tokens)
    run = sampling.make_sampler(toy_step, toy_init_cache, sampling.SamplingConfig(**base))
    a = run(params, ids, mask, jax.random.key(3))
    b = run(params, ids, mask, jax.random.key(3))
    c = run(params, ids, mask, jax.random.key(4))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8)])
def test_logprobs_match_full_forward(temperature, top_k, top_p):
    params = toy_params(3)
    ids, mask = left_padded_prompts(3)
    n_new = 7
    eos = common_eos(params, ids, mask, n_new)
    cfg = sampling.SamplingConfig(
        max_new_tokens=n_new,
        eos_id=eos,
        pad_id=0,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    out = sampling.make_sampler(toy_step, toy_init_cache, cfg)(params, ids, mask, jax.random.key(5))
    full_ids = np.concatenate([ids, np.asarray(out.tokens)], 1)
    full_mask = np.concatenate([mask, np.asarray(out.mask)], 1)
    logits = toy_full_forward(params, full_ids, full_mask)[:, ids.shape[1] - 1 : -1]
    logp = jax.nn.log_softmax(logits / temperature, -1)
    expect = jnp.take_along_axis(logp, jnp.asarray(out.tokens)[..., None], -1)[..., 0]
    expect = np.where(np.asarray(out.mask) > 0, expect, 0.0)
    np.testing.assert_allclose(out.logprobs, expect, atol=1e-4, rtol=1e-4)
    # After EOS: pad tokens, masked, zero log-probs.
    tok, m = np.asarray(out.tokens), np.asarray(out.mask)
    assert np.all(tok[m == 0] == 0) and np.all(np.asarray(out.logprobs)[m == 0] == 0)
    np.testing.assert_array_equal(apply_eos(tok, eos, 0)[1], m)


# A bigram model: logits depend only on the last token; the cache is unused.


def bigram_step(table, ids_BxT, kv_mask_BxS, positions_BxT, cache):
    del kv_mask_BxS, positions_BxT
    return table[ids_BxT], cache


def bigram_cache(batch, max_len):
    return {"unused": jnp.zeros((batch,))}


def test_eos_masking_with_designed_chains():
    table = np.full((8, 8), -30.0, np.float32)
    for a, b in {1: 2, 2: 3, 3: 5, 4: 5, 5: 1, 6: 7, 7: 6}.items():
        table[a, b] = 10.0
    ids = np.array([[0, 1], [0, 4], [3, 3], [6, 6]], np.int32)
    mask = np.array([[0, 1], [0, 1], [1, 1], [1, 1]], np.int32)
    cfg = sampling.SamplingConfig(max_new_tokens=5, eos_id=5, pad_id=0)
    out = sampling.make_sampler(bigram_step, bigram_cache, cfg)(
        jnp.asarray(table), ids, mask, jax.random.key(0)
    )
    np.testing.assert_array_equal(
        out.tokens, [[2, 3, 5, 0, 0], [5, 0, 0, 0, 0], [5, 0, 0, 0, 0], [7, 6, 7, 6, 7]]
    )
    np.testing.assert_array_equal(
        out.mask, [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    )
    np.testing.assert_array_equal(out.lengths, [3, 1, 1, 5])
    np.testing.assert_array_equal(out.has_eos, [True, True, True, False])


P_FIXED = np.array([0.5, 0.3, 0.1, 0.06, 0.04])


def draw_first_tokens(n, **kw):
    table = np.zeros((5, 5), np.float32)
    table[0] = np.log(P_FIXED)
    cfg = sampling.SamplingConfig(max_new_tokens=1, eos_id=None, pad_id=0, **kw)
    out = sampling.make_sampler(bigram_step, bigram_cache, cfg)(
        jnp.asarray(table),
        np.zeros((n, 1), np.int32),
        np.ones((n, 1), np.int32),
        jax.random.key(11),
    )
    counts = np.bincount(np.asarray(out.tokens)[:, 0], minlength=5)
    return counts, np.asarray(out.logprobs)[:, 0], np.asarray(out.tokens)[:, 0]


def chi_square(counts, probs):
    keep = probs > 0
    assert np.all(counts[~keep] == 0), counts
    expected = counts.sum() * probs[keep]
    return float(np.sum((counts[keep] - expected) ** 2 / expected))


@pytest.mark.parametrize(
    "kw,probs",
    [
        ({}, P_FIXED),
        ({"temperature": 2.0}, np.sqrt(P_FIXED) / np.sqrt(P_FIXED).sum()),
        ({"top_k": 2}, np.array([5, 3, 0, 0, 0]) / 8),
        ({"top_p": 0.7}, np.array([5, 3, 0, 0, 0]) / 8),
        ({"top_p": 0.85}, np.array([5, 3, 1, 0, 0]) / 9),
        ({"top_p": 0.01}, np.array([1.0, 0, 0, 0, 0])),
    ],
    ids=["plain", "temp2", "topk2", "topp.7", "topp.85", "topp.01"],
)
def test_sampling_frequencies(kw, probs):
    counts, logprobs, tokens = draw_first_tokens(8000, **kw)
    # df <= 4; 30 is far beyond the 0.9999 quantile, yet a wrong distribution fails it.
    assert chi_square(counts, probs) < 30.0, (counts, probs)
    scaled = np.log(P_FIXED) / kw.get("temperature", 1.0)
    logp_ref = scaled - np.log(np.exp(scaled).sum())
    np.testing.assert_allclose(logprobs, logp_ref[tokens], atol=1e-5)


def test_filter_logits_keeps_nucleus():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.1, 0.3, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]]))
    kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_p=0.75)))
    np.testing.assert_array_equal(kept[0], [False, True, False, True, False])
    assert kept[1].all()  # ties at the cutoff are all kept
    kept = np.isfinite(np.asarray(sampling.filter_logits(logits, top_k=3)))
    np.testing.assert_array_equal(kept[0], [False, True, True, True, False])


def test_no_recompilation_across_batches():
    traces = []

    def counted_step(*args):
        traces.append(1)  # runs at trace time only
        return toy_step(*args)

    params = toy_params(4)
    cfg = sampling.SamplingConfig(max_new_tokens=4, eos_id=3, pad_id=0)
    run = sampling.make_sampler(counted_step, toy_init_cache, cfg)
    seen = []
    for i in range(3):
        ids, mask = left_padded_prompts(10 + i)
        jax.block_until_ready(run(params, ids, mask, jax.random.key(i)))
        seen.append(len(traces))
    assert seen[0] > 0 and seen[0] == seen[1] == seen[2], seen


def test_config_validation():
    with pytest.raises(ConfigError, match="max_new_tokens"):
        sampling.SamplingConfig(max_new_tokens=0, eos_id=1, pad_id=0)
    with pytest.raises(ConfigError, match="temperature"):
        sampling.SamplingConfig(max_new_tokens=3, eos_id=1, pad_id=0, temperature=0.0)
    with pytest.raises(ConfigError, match="top_p"):
        sampling.SamplingConfig(max_new_tokens=3, eos_id=1, pad_id=0, top_p=0.0)
    with pytest.raises(ConfigError, match="top_k"):
        sampling.SamplingConfig(max_new_tokens=3, eos_id=1, pad_id=0, top_k=-1)
    with pytest.raises(ConfigError, match="pad_id"):
        sampling.SamplingConfig(max_new_tokens=3, eos_id=1, pad_id=None)


# The real decoder, driven through nnx.split / merge.


@pytest.mark.parametrize(
    "family, matmul_dtype", [("gpt2", None), ("llama", None), ("gpt2", "bfloat16")]
)
def test_real_decoder_greedy_equals_full_forward(family, matmul_dtype):
    from flax import nnx

    from girl_jax.models.decoder import Decoder, DecoderConfig

    dcfg = DecoderConfig(
        family=family,
        vocab_size=V,
        d_model=32,
        num_layers=2,
        num_heads=4,
        max_len=MAXLEN,
        matmul_dtype=matmul_dtype,
    )
    model = Decoder(dcfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    ids, mask = left_padded_prompts(5)
    n_new = 6
    forward = jax.jit(lambda i, m: nnx.merge(graphdef, state)(i, m)[0])
    ref_tokens = greedy_rollout(forward, ids, mask, n_new)
    eos = int(ref_tokens[0, 2])
    ref_tokens, ref_mask = apply_eos(ref_tokens, eos, 0)
    step_fn, init_cache_fn = sampling.decoder_fns(graphdef)
    cfg = sampling.SamplingConfig(max_new_tokens=n_new, eos_id=eos, pad_id=0, greedy=True)
    out = sampling.make_sampler(step_fn, init_cache_fn, cfg)(state, ids, mask, jax.random.key(0))
    np.testing.assert_array_equal(out.tokens, ref_tokens)
    np.testing.assert_array_equal(out.mask, ref_mask)
    assert bool(out.has_eos[0])


def test_real_decoder_too_long_is_config_error():
    from flax import nnx

    from girl_jax.models.decoder import Decoder, DecoderConfig

    dcfg = DecoderConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, max_len=8)
    graphdef, state = nnx.split(Decoder(dcfg, rngs=nnx.Rngs(0)))
    cfg = sampling.SamplingConfig(max_new_tokens=6, eos_id=None, pad_id=0)
    run = sampling.make_sampler(*sampling.decoder_fns(graphdef), cfg)
    ids, mask = left_padded_prompts(0, batch=2, width=4)
    with pytest.raises(ConfigError, match="max_len"):
        run(state, ids, mask, jax.random.key(0))


# The inverse-CDF draw (one uniform per row, two-stage search over blocks of the vocabulary).


def _grid_counts(weights, n_grid):
    """How many of the uniforms (i + 0.5) / n_grid each token receives: its exact share."""
    u = (np.arange(n_grid, dtype=np.float64) + 0.5) / n_grid
    w = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), (n_grid, len(weights)))
    tokens = jax.jit(sampling._inverse_cdf)(w, jnp.asarray(u, jnp.float32)[:, None])
    return np.bincount(np.asarray(tokens), minlength=len(weights))


@pytest.mark.parametrize("vocab", [1, 5, 64, 300, 1027])
def test_inverse_cdf_gives_each_token_its_share_of_a_uniform_grid(vocab):
    rng = np.random.default_rng(vocab)
    weights = rng.gamma(0.3, size=vocab).astype(np.float32)
    weights[rng.random(vocab) < 0.3] = 0.0  # filtered-out tokens, at block edges too
    if vocab > 2:
        weights[[0, -1]] = 0.0
    weights[rng.integers(vocab)] += 1.0  # at least one positive weight
    n_grid = 200_000
    counts = _grid_counts(weights / 7.0, n_grid)  # any scale: the draw normalises
    assert np.all(counts[weights == 0] == 0)
    # Each token owns an interval of u of length p: at most one grid point either side,
    # plus float32 rounding of the cumulative sums.
    np.testing.assert_allclose(counts, n_grid * weights / weights.sum(), atol=2 + 1e-5 * n_grid)


def test_inverse_cdf_edges_never_pick_a_zero_weight():
    w = np.zeros((4, 300), np.float32)
    w[0, 7] = 1.0  # one token
    w[1, [31, 32]] = [1e-30, 1.0]  # a tiny weight at a block boundary
    w[2, 299] = 3.0  # the last token only
    w[3, :] = 1.0
    for u in (0.0, 1e-7, 0.5, 1.0 - 2**-24):
        got = np.asarray(sampling._inverse_cdf(jnp.asarray(w), jnp.full((4, 1), u, jnp.float32)))
        assert got[0] == 7 and got[2] == 299, (u, got)
        assert got[1] in (31, 32) and w[1, got[1]] > 0, (u, got)
    lo = sampling._inverse_cdf(jnp.asarray(w[3:]), jnp.zeros((1, 1)))
    hi = sampling._inverse_cdf(jnp.asarray(w[3:]), jnp.full((1, 1), 1.0 - 2**-24))
    assert int(lo[0]) == 0 and int(hi[0]) == 299


def test_argmax_is_jnp_argmax_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(64, 300)).astype(np.float32)  # many ties: first one wins
    x[3] = -np.inf
    x[4, 17] = np.inf
    xj = jnp.asarray(x)
    got = sampling._argmax(xj, jnp.max(xj, -1, keepdims=True))
    np.testing.assert_array_equal(got, np.argmax(x, -1))


def test_sampling_frequencies_large_vocab_through_the_sampler():
    """A 300-token distribution (several blocks) with top-k filtering, drawn by the sampler."""
    vocab, n = 300, 20_000
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, vocab).astype(np.float32)
    table = np.zeros((vocab, vocab), np.float32)
    table[0] = logits
    cfg = sampling.SamplingConfig(
        max_new_tokens=1, eos_id=None, pad_id=0, temperature=1.5, top_k=40
    )
    out = sampling.make_sampler(bigram_step, bigram_cache, cfg)(
        jnp.asarray(table),
        np.zeros((n, 1), np.int32),
        np.ones((n, 1), np.int32),
        jax.random.key(3),
    )
    tokens = np.asarray(out.tokens)[:, 0]
    scaled = logits / 1.5
    kept = scaled >= np.sort(scaled)[-40]
    probs = np.where(kept, np.exp(scaled - scaled.max()), 0.0)
    probs /= probs.sum()
    counts = np.bincount(tokens, minlength=vocab)
    # df = 39: mean 39, sd ~8.8; 100 is far beyond the 0.9999 quantile (~80).
    assert chi_square(counts, probs) < 100.0
    logp_ref = scaled - np.log(np.exp(scaled - scaled.max()).sum()) - scaled.max()
    np.testing.assert_allclose(np.asarray(out.logprobs)[:, 0], logp_ref[tokens], atol=1e-5)


# Growing the cache in chunks (`cache_chunks`) must not change what is generated.


@pytest.mark.parametrize("greedy", [True, False])
def test_cache_chunks_do_not_change_tokens(greedy):
    params = toy_params(6)
    ids, mask = left_padded_prompts(6)
    base = dict(max_new_tokens=11, eos_id=None, pad_id=0, greedy=greedy, early_stop=False)
    outs = [
        sampling.make_sampler(
            toy_step, toy_init_cache, sampling.SamplingConfig(**base, cache_chunks=k)
        )(params, ids, mask, jax.random.key(9))
        for k in (1, 3, 11)
    ]
    assert sampling.decode_chunks(sampling.SamplingConfig(**base, cache_chunks=3)) == (
        (0, 4),
        (4, 7),
        (7, 11),
    )
    for out in outs[1:]:
        np.testing.assert_array_equal(out.tokens, outs[0].tokens)
        np.testing.assert_allclose(out.logprobs, outs[0].logprobs, atol=1e-5)
    if greedy:
        ref, _ = reference_greedy(params, ids, mask, 11, eos_id=-1, pad_id=0)
        np.testing.assert_array_equal(outs[1].tokens, ref)


def test_default_cache_chunks():
    def chunks(n):
        return sampling.decode_chunks(
            sampling.SamplingConfig(max_new_tokens=n, eos_id=None, pad_id=0)
        )

    assert chunks(8) == ((0, 8),)
    assert chunks(64) == ((0, 32), (32, 64))
    assert chunks(128) == ((0, 32), (32, 64), (64, 96), (96, 128))
    assert chunks(1000)[-1] == (750, 1000) and len(chunks(1000)) == 4
    with pytest.raises(ConfigError, match="cache_chunks"):
        sampling.SamplingConfig(max_new_tokens=3, eos_id=None, pad_id=0, cache_chunks=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_real_decoder_chunked_cache_equals_one_cache(family):
    from flax import nnx

    from girl_jax.models.decoder import Decoder, DecoderConfig

    dcfg = DecoderConfig(
        family=family, vocab_size=V, d_model=32, num_layers=2, num_heads=4, max_len=MAXLEN
    )
    graphdef, state = nnx.split(Decoder(dcfg, rngs=nnx.Rngs(1)))
    ids, mask = left_padded_prompts(7)
    step_fn, init_cache_fn = sampling.decoder_fns(graphdef)
    base = dict(max_new_tokens=9, eos_id=None, pad_id=0, early_stop=False)
    for greedy in (True, False):
        a, b = (
            sampling.make_sampler(
                step_fn,
                init_cache_fn,
                sampling.SamplingConfig(**base, greedy=greedy, cache_chunks=k),
            )(state, ids, mask, jax.random.key(2))
            for k in (1, 4)
        )
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


# The repetition guard (`repetition_penalty`, `no_repeat_ngram_size`), against NumPy references.


def np_guard(logits, tokens, num_done, penalty=1.0, ngram=0):
    """Hugging Face's two rules, written plainly, on the first `num_done` tokens of each row."""
    out = np.array(logits, np.float32, copy=True)
    for b in range(out.shape[0]):
        gen = [int(t) for t in tokens[b, :num_done]]
        if penalty != 1.0:
            for t in set(gen):
                out[b, t] = out[b, t] * penalty if out[b, t] < 0 else out[b, t] / penalty
        if ngram > 0 and len(gen) >= ngram:
            prefix = gen[len(gen) - (ngram - 1) :] if ngram > 1 else []
            for j in range(len(gen) - ngram + 1):
                if gen[j : j + ngram - 1] == prefix:
                    out[b, gen[j + ngram - 1]] = -np.inf
    return out


@pytest.mark.parametrize("penalty,ngram", [(1.3, 0), (0.7, 0), (1.0, 1), (1.0, 2), (1.2, 3)])
def test_guard_logits_matches_numpy_reference(penalty, ngram):
    rng = np.random.default_rng(ngram * 10 + int(penalty * 10))
    B, N, Vs = 5, 9, 6  # a small vocabulary: histories repeat tokens and n-grams
    tokens = rng.integers(0, Vs, size=(B, N)).astype(np.int32)
    tokens[0, :6] = [1, 2, 3, 1, 2, 3]  # ...1 2 3 1 2 -> 3 completes a repeated 3-gram
    logits = rng.normal(size=(B, Vs)).astype(np.float32) * 2  # signs both ways
    fn = jax.jit(sampling.guard_logits, static_argnums=(3, 4))
    for num_done in range(N + 1):
        got = np.asarray(fn(logits, tokens, num_done, penalty, ngram))
        want = np_guard(logits, tokens, num_done, penalty, ngram)
        # rtol: XLA may divide by the penalty as a multiply by its reciprocal (1 ulp)
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"num_done={num_done}")
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    got = np.asarray(fn(logits, tokens, 5, penalty, ngram))
    if ngram in (1, 2, 3):
        assert got[0, 3] == -np.inf  # 3 follows "1 2" once already (and was generated)


def test_guard_logits_ngram_longer_than_buffer_bans_nothing():
    logits = np.arange(12, dtype=np.float32).reshape(2, 6) - 5
    tokens = np.ones((2, 3), np.int32)
    np.testing.assert_array_equal(
        np.asarray(sampling.guard_logits(logits, tokens, 3, 1.0, 4)), logits
    )


def guarded_greedy_rollout(params, ids, mask, n_new, penalty, ngram, copy_bias=1.0):
    """`greedy_rollout` of the toy model with `np_guard` applied to each step's logits, after
    the prompt's copy bias (`np_bias_to_prompt`) when `copy_bias` != 1, as Hugging Face does."""
    forward = jax.jit(lambda i, m: toy_full_forward(params, i, m))
    B, P = ids.shape
    seq = np.concatenate([ids, np.zeros((B, n_new), np.int32)], 1)
    seq_mask = np.concatenate([mask, np.zeros((B, n_new), np.int32)], 1)
    for i in range(n_new):
        logits = np.asarray(forward(jnp.asarray(seq), jnp.asarray(seq_mask))[:, P - 1 + i])
        if copy_bias != 1.0:
            logits = np_bias_to_prompt(logits, ids, mask, copy_bias)
        seq[:, P + i] = np.argmax(np_guard(logits, seq[:, P:], i, penalty, ngram), -1)
        seq_mask[:, P + i] = 1
    return seq[:, P:]


@pytest.mark.parametrize("penalty,ngram,chunks", [(1.5, 0, 1), (1.0, 2, 3), (1.3, 3, 2)])
def test_guarded_greedy_equals_reference_rollout(penalty, ngram, chunks):
    params = toy_params(11)
    ids, mask = left_padded_prompts(11, batch=4, width=5)
    cfg = sampling.SamplingConfig(
        max_new_tokens=12,
        eos_id=None,
        pad_id=0,
        greedy=True,
        repetition_penalty=penalty,
        no_repeat_ngram_size=ngram,
        cache_chunks=chunks,
    )
    out = sampling.make_sampler(toy_step, toy_init_cache, cfg)(params, ids, mask, jax.random.key(0))
    want = guarded_greedy_rollout(params, ids, mask, 12, penalty, ngram)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    plain = sampling.make_sampler(
        toy_step,
        toy_init_cache,
        dataclasses.replace(cfg, repetition_penalty=1.0, no_repeat_ngram_size=0),
    )(params, ids, mask, jax.random.key(0))
    assert not np.array_equal(np.asarray(plain.tokens), want)  # the guard changed something


@pytest.mark.parametrize("ngram", [1, 2])
def test_sampled_tokens_never_repeat_an_ngram(ngram):
    params = toy_params(4)
    ids, mask = left_padded_prompts(4, batch=6)
    n_new = 10 if ngram == 1 else 12  # n = 1 bans each token once: at most V distinct tokens
    cfg = sampling.SamplingConfig(
        max_new_tokens=n_new, eos_id=None, pad_id=0, temperature=1.5, no_repeat_ngram_size=ngram
    )
    out = sampling.make_sampler(toy_step, toy_init_cache, cfg)(params, ids, mask, jax.random.key(2))
    tokens = np.asarray(out.tokens)
    for row in tokens:
        grams = [tuple(row[j : j + ngram]) for j in range(len(row) - ngram + 1)]
        assert len(set(grams)) == len(grams), row
    # the recorded log-probs are those of the guarded distribution the tokens were drawn from
    seq = np.concatenate([ids, tokens], 1)
    seq_mask = np.ones_like(seq)
    seq_mask[:, : ids.shape[1]] = mask
    logits = np.asarray(toy_full_forward(params, jnp.asarray(seq), jnp.asarray(seq_mask)))
    P = ids.shape[1]
    for i in range(n_new):
        guarded = np_guard(logits[:, P - 1 + i], tokens, i, 1.0, ngram) / 1.5
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(guarded), -1))
        want = np.take_along_axis(logp, tokens[:, i : i + 1], 1)[:, 0]
        np.testing.assert_allclose(np.asarray(out.logprobs)[:, i], want, atol=2e-5)


# Golden outputs of the sampler before the guard existed (same toy model, same keys): with the
# guard off, the traced program is the old one, so tokens and log-probs are bit-identical.
GOLDEN_TOKENS = {
    "greedy": [
        [1, 11, 7, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [11, 11, 11, 7, 12, 8, 0, 0, 0, 0, 0, 0],
        [11, 11, 11, 11, 7, 3, 0, 0, 0, 0, 0, 0],
    ],
    "sample": [
        [8, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 5, 3, 0, 0, 0, 0, 0, 0, 0, 0],
        [11, 7, 11, 7, 5, 0, 8, 0, 0, 0, 0, 0],
        [11, 11, 11, 11, 7, 3, 0, 0, 0, 0, 0, 0],
    ],
}


@pytest.mark.parametrize("name", ["greedy", "sample"])
def test_guard_off_by_default_leaves_output_unchanged(name):
    params = toy_params(11)
    ids, mask = left_padded_prompts(11, batch=4, width=5)
    kw = dict(greedy=True) if name == "greedy" else dict(temperature=0.9, top_k=6)
    cfg = sampling.SamplingConfig(max_new_tokens=12, eos_id=3, pad_id=0, **kw)
    assert (cfg.repetition_penalty, cfg.no_repeat_ngram_size, cfg.guarded) == (1.0, 0, False)
    out = sampling.make_sampler(toy_step, toy_init_cache, cfg)(params, ids, mask, jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(out.tokens), GOLDEN_TOKENS[name])
    # no trace of the guard in the program (its scatter into a [B, V] mask) unless asked
    run = lambda c: str(  # noqa: E731
        jax.make_jaxpr(lambda p, i, m, r: sampling.sample(toy_step, toy_init_cache, p, i, m, r, c))(
            params, ids, mask, jax.random.key(5)
        )
    )
    assert "scatter" not in run(cfg)
    assert "scatter" in run(dataclasses.replace(cfg, no_repeat_ngram_size=2))


def test_guard_config_validation():
    base = dict(max_new_tokens=4, eos_id=None, pad_id=0)
    for bad in (dict(repetition_penalty=0.0), dict(repetition_penalty=-1.0)):
        with pytest.raises(ConfigError, match="repetition_penalty"):
            sampling.SamplingConfig(**base, **bad)
    for bad in (dict(no_repeat_ngram_size=-1), dict(no_repeat_ngram_size=2.0)):
        with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
            sampling.SamplingConfig(**base, **bad)
    assert sampling.SamplingConfig(**base, repetition_penalty=1.2).guarded


# The copy bias (`encoder_repetition_penalty`), against NumPy and Hugging Face's processor.


def np_bias_to_prompt(logits, prompt_ids, prompt_mask, penalty):
    """Hugging Face's EncoderRepetitionPenaltyLogitsProcessor, written plainly (padding skipped)."""
    out = np.array(logits, np.float32, copy=True)
    for b in range(out.shape[0]):
        for t in {int(t) for t, m in zip(prompt_ids[b], prompt_mask[b]) if m}:
            out[b, t] = out[b, t] * penalty if out[b, t] > 0 else out[b, t] / penalty
    return out


@pytest.mark.parametrize("penalty", [1.5, 0.6])
def test_bias_to_prompt_matches_numpy_and_hugging_face(penalty):
    rng = np.random.default_rng(int(penalty * 10))
    B, P, V = 4, 7, 10
    ids = rng.integers(0, V, size=(B, P)).astype(np.int32)
    ids[0] = [2, 2, 2, 5, 5, 9, 9]  # repeats count once
    mask = np.ones((B, P), np.int32)
    mask[1, :3] = 0  # left padding: those ids are not the prompt's
    logits = rng.normal(size=(B, V)).astype(np.float32) * 2
    seen = sampling.prompt_tokens(jnp.asarray(ids), jnp.asarray(mask), V)
    got = np.asarray(jax.jit(sampling.bias_to_prompt)(logits, seen, penalty))
    np.testing.assert_allclose(got, np_bias_to_prompt(logits, ids, mask, penalty), rtol=1e-6)
    ids[1, :3] = [1, 3, 4]  # padding ids that the rest of row 1 does not hold
    ids[1, 3:] = [6, 7, 8, 6]
    seen = np.asarray(sampling.prompt_tokens(jnp.asarray(ids), jnp.asarray(mask), V))
    np.testing.assert_array_equal(np.flatnonzero(seen[1]), [6, 7, 8])
    np.testing.assert_array_equal(np.flatnonzero(seen[0]), [2, 5, 9])
    torch = pytest.importorskip("torch")
    generation = pytest.importorskip("transformers.generation.logits_process")
    unpadded = [0, 2, 3]  # Hugging Face has no prompt mask: the rows without padding
    hf = generation.EncoderRepetitionPenaltyLogitsProcessor(
        penalty=penalty, encoder_input_ids=torch.tensor(ids[unpadded], dtype=torch.long)
    )
    want = hf(None, torch.tensor(logits[unpadded])).numpy()
    np.testing.assert_allclose(got[unpadded], want, rtol=1e-6)


@pytest.mark.parametrize("copy_bias,penalty", [(2.0, 1.0), (1.6, 1.3)])
def test_copy_biased_greedy_equals_reference_rollout(copy_bias, penalty):
    params = toy_params(11)
    ids, mask = left_padded_prompts(11, batch=4, width=5)
    cfg = sampling.SamplingConfig(
        max_new_tokens=12,
        eos_id=None,
        pad_id=0,
        greedy=True,
        repetition_penalty=penalty,
        encoder_repetition_penalty=copy_bias,
        cache_chunks=2,
    )
    assert cfg.prompt_biased
    out = sampling.make_sampler(toy_step, toy_init_cache, cfg)(params, ids, mask, jax.random.key(0))
    want = guarded_greedy_rollout(params, ids, mask, 12, penalty, 0, copy_bias=copy_bias)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    plain = guarded_greedy_rollout(params, ids, mask, 12, penalty, 0)
    assert not np.array_equal(want, plain)  # the bias changed something
    in_prompt = [np.isin(row, p[m > 0]).mean() for row, p, m in zip(want, ids, mask)]
    in_prompt_plain = [np.isin(row, p[m > 0]).mean() for row, p, m in zip(plain, ids, mask)]
    assert np.mean(in_prompt) > np.mean(in_prompt_plain)  # ... towards the prompt's tokens


def test_copy_bias_config_validation_and_off_by_default():
    base = dict(max_new_tokens=4, eos_id=None, pad_id=0)
    assert not sampling.SamplingConfig(**base).prompt_biased
    for bad in (0.0, -1.5, True, "2"):
        with pytest.raises(ConfigError, match="encoder_repetition_penalty"):
            sampling.SamplingConfig(**base, encoder_repetition_penalty=bad)


# Decoding a batch in passes (`rows_per_pass`): pass c is a one-pass `sample` of rows c::C.


@pytest.mark.parametrize("greedy", [True, False])
def test_rows_per_pass_equals_one_pass_of_each_strided_group(greedy):
    params = toy_params(7)
    ids, mask = left_padded_prompts(7, batch=8)
    base = dict(max_new_tokens=9, pad_id=0, greedy=greedy, temperature=0.8)
    base["eos_id"] = common_eos(params, ids, mask, 9)  # early stop differs per pass
    rng = jax.random.key(3)
    out = sampling.make_sampler(
        toy_step, toy_init_cache, sampling.SamplingConfig(**base, rows_per_pass=2)
    )(params, ids, mask, rng)
    one = sampling.make_sampler(toy_step, toy_init_cache, sampling.SamplingConfig(**base))
    C = 4
    for c, key in enumerate(jax.random.split(rng, C)):
        ref = one(params, ids[c::C], mask[c::C], key)
        for got, want in zip(out, ref):
            np.testing.assert_allclose(np.asarray(got)[c::C], want, atol=1e-6)
    if greedy:  # greedy tokens do not depend on the split at all
        ref, _ = reference_greedy(params, ids, mask, 9, eos_id=base["eos_id"], pad_id=0)
        np.testing.assert_array_equal(out.tokens, ref)
    # a pass as big as the batch is one pass
    same = sampling.make_sampler(
        toy_step, toy_init_cache, sampling.SamplingConfig(**base, rows_per_pass=8)
    )(params, ids, mask, rng)
    np.testing.assert_array_equal(same.tokens, one(params, ids, mask, rng).tokens)


def test_rows_per_pass_validation():
    with pytest.raises(ConfigError, match="rows_per_pass"):
        sampling.SamplingConfig(max_new_tokens=3, eos_id=1, pad_id=0, rows_per_pass=-1)
    cfg = sampling.SamplingConfig(max_new_tokens=3, eos_id=1, pad_id=0, rows_per_pass=3)
    ids, mask = left_padded_prompts(0, batch=8)
    with pytest.raises(ConfigError, match="rows_per_pass=3 must divide the batch of 8"):
        sampling.make_sampler(toy_step, toy_init_cache, cfg)(
            toy_params(), ids, mask, jax.random.key(0)
        )


def test_rows_per_pass_sharded_equals_single_device():
    """A batch laid out over 8 devices, decoded in passes: the single-device tokens."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs 8 devices")
    params = toy_params(8)
    ids, mask = left_padded_prompts(8, batch=32)
    cfg = sampling.SamplingConfig(
        max_new_tokens=6, eos_id=None, pad_id=0, temperature=0.9, rows_per_pass=8
    )
    rng = jax.random.key(5)
    want = sampling.make_sampler(toy_step, toy_init_cache, cfg)(params, ids, mask, rng)
    rows = NamedSharding(Mesh(np.array(devices[:8]), ("data",)), PartitionSpec("data"))
    sharded = sampling.make_sampler(
        toy_step, toy_init_cache, cfg, in_shardings=(None, rows, rows, None)
    )
    got = sharded(params, jax.device_put(ids, rows), jax.device_put(mask, rows), rng)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
