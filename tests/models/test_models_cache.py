"""KV cache: prefill a left-padded prompt, decode token by token, match a full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from girl_jax.models.decoder import Decoder, DecoderConfig, apply

STEPS = 32


def _cfg(**kw):
    base = dict(vocab_size=61, max_len=64, d_model=32, num_layers=2, num_heads=4)
    return DecoderConfig(**{**base, **kw})


CONFIGS = {
    "gpt2": _cfg(family="gpt2"),
    "gpt2_scan": _cfg(family="gpt2", scan_layers=True),
    "llama_gqa_scan": _cfg(family="llama", num_kv_heads=2, scan_layers=True),
    "llama_remat": _cfg(family="llama", num_kv_heads=1, remat=True),
    "llama_scan_remat": _cfg(family="llama", num_kv_heads=2, scan_layers=True, remat=True),
}


def _inputs(seed=0, B=3, P=6):
    rng = np.random.default_rng(seed)
    prompt_mask = np.ones((B, P), np.int32)
    prompt_mask[1, :2] = 0
    prompt_mask[2, :4] = 0
    ids = rng.integers(1, 61, size=(B, P + STEPS)).astype(np.int32)
    ids[:, :P][prompt_mask == 0] = 0
    full_mask = np.concatenate([prompt_mask, np.ones((B, STEPS), np.int32)], axis=1)
    return ids, prompt_mask, full_mask


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_then_decode_matches_full_forward(name):
    cfg = CONFIGS[name]
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    ids, prompt_mask, full_mask = _inputs()
    B, P = prompt_mask.shape
    full_logits, _ = model(jnp.asarray(ids), jnp.asarray(full_mask))

    graphdef, params = nnx.split(model)
    step = jax.jit(lambda p, *a, **k: apply(graphdef, p, *a, **k))
    S = P + STEPS + 5  # a few slots never written: the mask must keep them out
    cache = model.init_cache(B, S)
    cache_mask = np.zeros((B, S), np.int32)
    cache_mask[:, : P + STEPS] = full_mask
    positions = np.maximum(np.cumsum(prompt_mask, -1) - 1, 0)
    logits, aux = step(params, ids[:, :P], cache_mask, positions=positions, cache=cache)
    valid = prompt_mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(logits)[valid], np.asarray(full_logits)[:, :P][valid], atol=1e-4
    )
    next_pos = prompt_mask.sum(-1)
    for t in range(STEPS):
        pos = (next_pos + t)[:, None]
        logits, aux = step(
            params, ids[:, P + t : P + t + 1], cache_mask, positions=pos, cache=aux["cache"]
        )
        diff = np.abs(np.asarray(logits)[:, 0] - np.asarray(full_logits)[:, P + t]).max()
        assert diff <= 1e-4, (t, diff)
    assert int(aux["cache"]["index"]) == P + STEPS


def test_init_cache_is_pure_and_jittable():
    cfg = CONFIGS["llama_gqa_scan"]
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    cache = jax.jit(lambda: model.init_cache(2, 16, dtype=jnp.bfloat16))()
    assert cache["k"].shape == (2, 2, 16, 2, 8)
    assert cache["v"].dtype == jnp.bfloat16
    assert cache["index"].dtype == jnp.int32 and int(cache["index"]) == 0


def test_stale_cache_slots_are_masked():
    """Garbage in unwritten or masked slots must not change the result."""
    cfg = CONFIGS["gpt2"]
    model = Decoder(cfg, rngs=nnx.Rngs(1))
    ids, prompt_mask, _ = _inputs(1)
    B, P = prompt_mask.shape
    S = P + 4
    mask = np.zeros((B, S), np.int32)
    mask[:, :P] = prompt_mask
    positions = np.maximum(np.cumsum(prompt_mask, -1) - 1, 0)
    clean = model.init_cache(B, S)
    dirty = dict(clean, k=clean["k"] + 3.0, v=clean["v"] - 5.0)
    a, _ = model(jnp.asarray(ids[:, :P]), mask, positions=positions, cache=clean)
    b, _ = model(jnp.asarray(ids[:, :P]), mask, positions=positions, cache=dirty)
    valid = prompt_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(a)[valid], np.asarray(b)[valid], atol=1e-5)


def test_cache_requires_positions():
    model = Decoder(CONFIGS["gpt2"], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="positions"):
        model(jnp.zeros((1, 2), jnp.int32), cache=model.init_cache(1, 4))
