"""The per-layer head-major KV cache (``init_cache(layout="per_layer")``, the sampler's).

It must give the same logits as the stacked cache and as a full forward pass, grow by
copying into a bigger cache (what the sampler does between decode chunks), and refuse
scanned layers.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from girl_jax.errors import ConfigError
from girl_jax.models.decoder import Decoder, DecoderConfig, apply

STEPS = 12


def _cfg(**kw):
    base = dict(vocab_size=61, max_len=64, d_model=32, num_layers=2, num_heads=4)
    return DecoderConfig(**{**base, **kw})


CONFIGS = {
    "gpt2": _cfg(family="gpt2"),
    "llama_gqa": _cfg(family="llama", num_kv_heads=2),
    "llama_mqa_remat": _cfg(family="llama", num_kv_heads=1, remat=True),
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


def _decode(step, params, cache, ids, prompt_mask, full_mask, S, grow_at=None, grow=None):
    """Prefill, then one token per step; returns [B, P + STEPS, V] logits (prompt + steps)."""
    B, P = prompt_mask.shape
    cache_mask = np.zeros((B, S), np.int32)
    cache_mask[:, : P + STEPS] = full_mask
    positions = np.maximum(np.cumsum(prompt_mask, -1) - 1, 0)
    size = cache["k"][0].shape[2] if isinstance(cache["k"], tuple) else cache["k"].shape[2]
    logits, aux = step(params, ids[:, :P], cache_mask[:, :size], positions=positions, cache=cache)
    out = [np.asarray(logits)]
    cache = aux["cache"]
    next_pos = prompt_mask.sum(-1)
    for t in range(STEPS):
        if grow_at is not None and t == grow_at:
            cache, size = grow(cache), S
        pos = (next_pos + t)[:, None]
        tok = ids[:, P + t : P + t + 1]
        logits, aux = step(params, tok, cache_mask[:, :size], positions=pos, cache=cache)
        cache = aux["cache"]
        out.append(np.asarray(logits))
    assert int(cache["index"]) == P + STEPS
    return np.concatenate(out, axis=1), cache


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_per_layer_cache_matches_stacked_and_full_forward(name):
    cfg = CONFIGS[name]
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    ids, prompt_mask, full_mask = _inputs()
    B, P = prompt_mask.shape
    full_logits, _ = model(jnp.asarray(ids), jnp.asarray(full_mask))
    graphdef, params = nnx.split(model)
    step = jax.jit(lambda p, *a, **k: apply(graphdef, p, *a, **k))
    S = P + STEPS + 3  # a few slots never written: the mask keeps them out

    per_layer = model.init_cache(B, S, layout="per_layer")
    assert isinstance(per_layer["k"], tuple) and len(per_layer["k"]) == cfg.num_layers
    assert per_layer["k"][0].shape == (B, cfg.num_kv_heads, S, cfg.head_dim)
    ours, cache = _decode(step, params, per_layer, ids, prompt_mask, full_mask, S)
    stacked, ref_cache = _decode(
        step, params, model.init_cache(B, S), ids, prompt_mask, full_mask, S
    )
    valid = np.concatenate([prompt_mask, np.ones((B, STEPS), np.int32)], 1).astype(bool)
    np.testing.assert_allclose(ours[valid], stacked[valid], atol=1e-5)
    np.testing.assert_allclose(ours[valid], np.asarray(full_logits)[valid], atol=1e-4)
    # Same keys / values, only the layout differs: [B, G, S, K] per layer vs [L, B, S, G, K].
    for i in range(cfg.num_layers):
        np.testing.assert_allclose(
            np.asarray(cache["k"][i]), np.swapaxes(np.asarray(ref_cache["k"][i]), 1, 2), atol=1e-5
        )
        np.testing.assert_allclose(
            np.asarray(cache["v"][i]), np.swapaxes(np.asarray(ref_cache["v"][i]), 1, 2), atol=1e-5
        )


def test_per_layer_cache_grows_by_copying_into_a_bigger_one():
    cfg = CONFIGS["llama_gqa"]
    model = Decoder(cfg, rngs=nnx.Rngs(2))
    ids, prompt_mask, full_mask = _inputs(2)
    B, P = prompt_mask.shape
    graphdef, params = nnx.split(model)
    step = jax.jit(lambda p, *a, **k: apply(graphdef, p, *a, **k))
    S = P + STEPS

    def grow(cache):
        big = model.init_cache(B, S, layout="per_layer")
        return jax.tree.map(
            lambda new, old: (
                old
                if new.shape == old.shape
                else jax.lax.dynamic_update_slice(new, old, (0,) * new.ndim)
            ),
            big,
            cache,
        )

    small = model.init_cache(B, P + 5, layout="per_layer")
    grown, _ = _decode(step, params, small, ids, prompt_mask, full_mask, S, grow_at=5, grow=grow)
    whole, _ = _decode(
        step, params, model.init_cache(B, S, layout="per_layer"), ids, prompt_mask, full_mask, S
    )
    np.testing.assert_allclose(grown[:, P:], whole[:, P:], atol=1e-5)


def test_per_layer_cache_layout_errors():
    model = nnx.eval_shape(lambda: Decoder(_cfg(scan_layers=True), rngs=nnx.Rngs(0)))
    with pytest.raises(ConfigError, match="scan_layers"):
        model.init_cache(2, 8, layout="per_layer")
    flat = Decoder(_cfg(), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="layout"):
        flat.init_cache(2, 8, layout="heads")
    # The default is unchanged: one stacked [L, B, S, G, K] array each for keys and values.
    assert flat.init_cache(2, 8)["k"].shape == (2, 2, 8, 4, 8)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_bfloat16_per_layer_cache_runs_on_cpu_and_follows_float32(name):
    # The prefill's attention over a head-major bf16 cache once compiled, on XLA:CPU, to a dot
    # it cannot run ("Unsupported element type for DotThunk: BF16 x BF16 = F32"): every bf16
    # model crashed in the sampler on a CPU. Same weights, bf16 compute against float32.
    cfg = CONFIGS[name]
    model = Decoder(cfg, rngs=nnx.Rngs(3))
    bf16 = Decoder(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(3))
    ids, prompt_mask, full_mask = _inputs(3)
    B, P = prompt_mask.shape
    S = P + STEPS
    out = {}
    for key, m in (("f32", model), ("bf16", bf16)):
        graphdef, params = nnx.split(m)
        step = jax.jit(lambda p, *a, graphdef=graphdef, **k: apply(graphdef, p, *a, **k))
        cache = m.init_cache(B, S, layout="per_layer")
        out[key], _ = _decode(step, params, cache, ids, prompt_mask, full_mask, S)
    valid = full_mask.astype(bool)
    assert np.isfinite(out["bf16"][valid]).all()
    np.testing.assert_allclose(out["bf16"][valid], out["f32"][valid], atol=0.05)
