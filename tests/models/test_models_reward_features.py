"""What the reward head reads: exact-match flags (vs a NumPy loop) and a middle layer's states."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from girl_jax.errors import ModelError
from girl_jax.models.decoder import DecoderConfig, Transformer
from girl_jax.models.heads import RewardModel, match_flags, match_means

CFG = DecoderConfig(family="gpt2", vocab_size=24, max_len=32, d_model=32, num_layers=3, num_heads=2)


def _reference_flags(ids, mask, resp):
    """Loop version: per token, is its unigram / bigram (within its segment) in the other one."""
    out = np.zeros(ids.shape + (2,), np.float32)
    for i in range(len(ids)):
        valid = mask[i].astype(bool)
        segs = {"jd": resp[i].astype(bool) & valid}
        segs["cv"] = valid & ~segs["jd"]
        grams = {}
        for name, seg in segs.items():
            pos = np.where(seg)[0]
            uni = {ids[i, t] for t in pos}
            bi = {(ids[i, t - 1], ids[i, t]) for t in pos if t > 0 and seg[t - 1]}
            grams[name] = (uni, bi)
        for name, other in (("jd", "cv"), ("cv", "jd")):
            seg = segs[name]
            for t in np.where(seg)[0]:
                out[i, t, 0] = ids[i, t] in grams[other][0]
                if t > 0 and seg[t - 1]:
                    out[i, t, 1] = (ids[i, t - 1], ids[i, t]) in grams[other][1]
    return out


@pytest.mark.parametrize("left_pad", [False, True])
def test_match_flags_equal_a_numpy_loop(left_pad):
    rng = np.random.default_rng(0)
    B, T = 16, 20
    ids = rng.integers(1, 7, (B, T)).astype(np.int32)  # a small vocabulary: many matches
    lengths = rng.integers(4, T + 1, B)
    cv_len = rng.integers(1, 4, B)
    pos = np.arange(T)[None]
    if left_pad:  # [pad .. CV .. JD]
        start = T - lengths[:, None]
        mask = pos >= start
        resp = pos >= start + cv_len[:, None]
    else:  # [CV .. JD .. pad]
        mask = pos < lengths[:, None]
        resp = (pos >= cv_len[:, None]) & mask
    ids = np.where(mask, ids, 0)  # pad id 0 also never matches: padding is not a segment
    mask, resp = mask.astype(np.int32), resp.astype(np.int32)
    got = np.asarray(jax.jit(match_flags)(ids, mask, resp))
    want = _reference_flags(ids, mask, resp)
    np.testing.assert_array_equal(got, want)
    assert want[..., 0].sum() > 20 and want[..., 1].sum() > 5  # the case is not vacuous
    # the shares: JD (unigram, bigram) then CV, over each segment's tokens
    means = np.asarray(match_means(got, mask, resp))
    jd = resp.astype(bool)
    cv = mask.astype(bool) & ~jd
    np.testing.assert_allclose(means[:, 0], [want[b, jd[b], 0].mean() for b in range(B)])
    np.testing.assert_allclose(means[:, 3], [want[b, cv[b], 1].mean() for b in range(B)])


def test_hidden_depth_is_the_residual_after_k_blocks():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 24, (2, 9)), jnp.int32)
    mask = jnp.ones((2, 9), jnp.int32).at[1, 7:].set(0)
    full, _ = model.hidden(ids, mask)
    np.testing.assert_allclose(model.hidden(ids, mask, depth=3)[0], full)  # depth = all: normed
    # depth k ignores every later block: scrambling block 2 changes depth 3, not depth 2
    before = np.asarray(model.hidden(ids, mask, depth=2)[0])
    layer = model.layers[2]
    for _, var in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
        var.set_value(var[...] + 1.0)
    nnx.update(layer, nnx.state(layer, nnx.Param))
    np.testing.assert_allclose(model.hidden(ids, mask, depth=2)[0], before)
    assert np.abs(np.asarray(model.hidden(ids, mask)[0]) - np.asarray(full)).max() > 1e-3
    # the residual after 1 block is not normed (its per-token scale is not 1)
    h1 = np.asarray(model.hidden(ids, mask, depth=1)[0])
    assert not np.allclose(h1.std(-1), 1.0, atol=0.05)
    for bad in (0, -1):
        with pytest.raises(ModelError, match="depth"):
            model.hidden(ids, mask, depth=bad)


def test_hidden_depth_with_scanned_layers_matches_the_loop():
    looped = Transformer(CFG, rngs=nnx.Rngs(0))
    scanned = Transformer(dataclasses.replace(CFG, scan_layers=True), rngs=nnx.Rngs(0))
    # same weights: copy each looped block into the scanned stack
    stacked = jax.tree.map(
        lambda *a: jnp.stack(a), *[nnx.state(b, nnx.Param) for b in looped.layers]
    )
    nnx.update(scanned.layers, stacked)
    for name in ("embed", "pos_embed", "final_norm"):
        nnx.update(getattr(scanned, name), nnx.state(getattr(looped, name), nnx.Param))
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 24, (2, 7)), jnp.int32)
    for depth in (1, 2, None):
        np.testing.assert_allclose(
            scanned.hidden(ids, depth=depth)[0],
            looped.hidden(ids, depth=depth)[0],
            rtol=1e-5,
            atol=1e-5,
        )


def test_reward_model_reads_its_feature_layer_and_match_flags():
    model = RewardModel(
        CFG, rngs=nnx.Rngs(0), head="attn_mlp", head_hidden=8, feature_layer=1, match_features=True
    )
    ids = jnp.asarray(np.random.default_rng(3).integers(1, 24, (3, 10)), jnp.int32)
    mask = jnp.ones((3, 10), jnp.int32)
    resp = (jnp.arange(10)[None] >= 4).astype(jnp.int32).repeat(3, 0)
    f = model.features(ids, mask, resp)
    np.testing.assert_allclose(f["hidden"], model.hidden(ids, mask, depth=1)[0])
    np.testing.assert_array_equal(f["match"], match_flags(ids, mask, resp))
    assert model(ids, mask, resp)[0].shape == (3,)
    pooled = RewardModel(CFG, rngs=nnx.Rngs(0), head="pooled_mlp", match_features=True)
    assert pooled.features(ids, mask, resp).shape == (3, 4 * CFG.d_model + 4)
    with pytest.raises(ModelError, match="match features"):
        RewardModel(CFG, rngs=nnx.Rngs(0), head="last", match_features=True)
    with pytest.raises(ModelError, match="feature_layer"):
        RewardModel(CFG, rngs=nnx.Rngs(0), head="attn_mlp", feature_layer=4)
