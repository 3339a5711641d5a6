"""Decoder config, logical axes, padding, dtypes, remat / scan, heads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from girl_jax.errors import ConfigError, ModelError
from girl_jax.models.decoder import Decoder, DecoderConfig, apply
from girl_jax.models.heads import (
    PolicyWithValueHead,
    ScalarHead,
    ScoreModel,
    last_token_score,
    score_model_from_decoder,
    transplant_trunk,
)
from girl_jax.models.layers import AXES_KEY, logical_axes

AXIS_NAMES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", "pos", None}


def _cfg(**kw):
    base = dict(
        family="llama",
        vocab_size=53,
        max_len=32,
        d_model=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
    )
    return DecoderConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(family="t5"), "family"),
        (dict(num_kv_heads=3), "num_kv_heads"),
        (dict(d_model=0), "d_model"),
        (dict(dtype="float16"), "dtype"),
        (dict(activation="tanh"), "activation"),
        (dict(lora_rank=-1), "lora_rank"),
        (dict(lora_targets=("qkv",)), "lora_targets"),
        (dict(family="gpt2", d_model=30, num_heads=4, num_kv_heads=None), "head_dim"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        _cfg(**kw)


def test_config_defaults_and_dict_round_trip():
    gpt2 = DecoderConfig(family="gpt2", d_model=64, num_heads=4)
    assert (gpt2.tie_embeddings, gpt2.attn_bias, gpt2.activation, gpt2.mlp_dim) == (
        True,
        True,
        "gelu_new",
        256,
    )
    llama = _cfg()
    assert (llama.tie_embeddings, llama.attn_bias, llama.activation, llama.head_dim) == (
        False,
        False,
        "silu",
        8,
    )
    assert DecoderConfig.from_dict(llama.to_dict()) == llama
    with pytest.raises(ConfigError, match="bogus"):
        DecoderConfig.from_dict({**llama.to_dict(), "bogus": 1})


# ----------------------------------------------------------------------------- logical axes


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_eval_shape_without_mesh_names_every_param(family, scan):
    cfg = _cfg(
        family=family, scan_layers=scan, lora_rank=2, num_kv_heads=None if family == "gpt2" else 2
    )
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    specs = logical_axes(params)
    leaves = jax.tree.leaves(specs)
    flat = nnx.to_flat_state(params)
    assert len(leaves) == len(flat) > 0
    for (path, var), spec in zip(flat, leaves):
        assert isinstance(spec, PartitionSpec)
        assert len(spec) == var.ndim, (path, spec, var.shape)
        assert set(spec) <= AXIS_NAMES
        assert var.get_metadata()[AXES_KEY] == tuple(spec)
        if path[0] == "layers":
            assert (spec[0] == "layers") == scan, (path, spec)


def test_eval_shape_under_a_mesh():
    mesh = jax.make_mesh(
        (1, 2), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Explicit,) * 2
    )
    with jax.set_mesh(mesh):
        model = nnx.eval_shape(lambda: Decoder(_cfg(scan_layers=True), rngs=nnx.Rngs(0)))
    spec = logical_axes(model)["layers"]["attn"]["q_proj"]["kernel"]
    assert spec.get_value() == PartitionSpec("layers", "embed", "heads")


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_left_padding_does_not_change_valid_logits(family):
    model = Decoder(_cfg(family=family, num_kv_heads=None), rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 53, size=(1, 7)).astype(np.int32)
    alone, _ = model(jnp.asarray(ids))
    padded_ids = np.concatenate([np.zeros((1, 3), np.int32), ids], axis=1)
    mask = np.concatenate([np.zeros((1, 3)), np.ones((1, 7))], axis=1).astype(np.int32)
    padded, aux = model(jnp.asarray(padded_ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(padded)[:, 3:], np.asarray(alone), atol=1e-5)
    assert aux["hidden"].shape == (1, 10, 32)


def test_right_padding_and_causality():
    model = Decoder(_cfg(), rngs=nnx.Rngs(2))
    ids = jnp.asarray(np.random.default_rng(1).integers(1, 53, size=(2, 8)), jnp.int32)
    base, _ = model(ids)
    changed = ids.at[:, 5:].set(7)  # future tokens must not move earlier logits
    after, _ = model(changed, jnp.ones((2, 8), jnp.int32))
    np.testing.assert_allclose(np.asarray(after[:, :5]), np.asarray(base[:, :5]), atol=1e-5)
    assert not np.allclose(np.asarray(after[:, 6:]), np.asarray(base[:, 6:]), atol=1e-3)


@pytest.mark.parametrize("family, T", [("llama", 67), ("gpt2", 64)])
def test_causal_split_equals_full_attention(family, T, monkeypatch):
    """Without a cache, float32, T >= CAUSAL_SPLIT_MIN_LEN: attention in two causal blocks
    (normalised after the value product) gives the full-matrix attention's hidden states and
    gradients; rows right- and left-padded, one all padding, grouped KV heads (llama)."""
    from girl_jax.models import decoder_blocks

    cfg = _cfg(family=family, max_len=80, num_kv_heads=2 if family == "llama" else None)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(3)))
    rng = np.random.default_rng(4)
    ids = jnp.asarray(rng.integers(1, 53, size=(4, T)), jnp.int32)
    mask = np.ones((4, T), np.int32)
    mask[1, T // 2 + 3 :] = 0  # right padding past the split
    mask[2, : T // 2 + 5] = 0  # left padding over the whole first block
    mask[3] = 0  # no valid token at all
    mask = jnp.asarray(mask)

    def run():  # fresh closures: jit traces again under the threshold in force
        def loss(p):
            h, _ = nnx.merge(graphdef, p).hidden(ids, mask)
            return (h * mask[..., None]).sum(), h

        (_, h), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return h, g

    assert T >= decoder_blocks.CAUSAL_SPLIT_MIN_LEN
    split_h, split_g = run()
    monkeypatch.setattr(decoder_blocks, "CAUSAL_SPLIT_MIN_LEN", 10**9)
    full_h, full_g = run()
    valid = np.asarray(mask).astype(bool)  # a padding query's state is never read
    np.testing.assert_allclose(
        np.asarray(split_h)[valid], np.asarray(full_h)[valid], rtol=1e-5, atol=1e-5
    )
    for a, b in zip(jax.tree.leaves(split_g), jax.tree.leaves(full_g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    assert not np.array_equal(np.asarray(split_h), np.asarray(full_h))  # another code path


def test_bf16_compute_runs_and_is_close():
    cfg = _cfg()
    f32 = Decoder(cfg, rngs=nnx.Rngs(3))
    bf16 = Decoder(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(3))
    ids = jnp.asarray(np.random.default_rng(2).integers(1, 53, size=(2, 6)), jnp.int32)
    a, _ = f32(ids)
    b, aux = bf16(ids)
    assert b.dtype == jnp.float32 and aux["hidden"].dtype == jnp.bfloat16
    assert float(jnp.abs(a - b).max()) < 0.05


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_scan_remat_match_unrolled_forward_and_grad(family):
    cfg = _cfg(family=family, num_kv_heads=None)
    plain = Decoder(cfg, rngs=nnx.Rngs(4))
    scanned = Decoder(dataclasses.replace(cfg, scan_layers=True, remat=True), rngs=nnx.Rngs(4))
    # same weights: stack the unrolled layers into the scanned model
    from girl_jax.models.hf_decoder import flat_params, load_params

    load_params(scanned, flat_params(plain))
    ids = jnp.asarray(np.random.default_rng(3).integers(1, 53, size=(2, 6)), jnp.int32)

    def loss(model):
        logits, _ = model(ids)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    la, ga = nnx.value_and_grad(loss)(plain)
    lb, gb = nnx.value_and_grad(loss)(scanned)
    np.testing.assert_allclose(float(la), float(lb), atol=1e-5)
    gq_a = ga["layers"][1]["attn"]["q_proj"]["kernel"][...]
    gq_b = gb["layers"]["attn"]["q_proj"]["kernel"][...][1]
    np.testing.assert_allclose(np.asarray(gq_a), np.asarray(gq_b), atol=1e-5)
    assert float(jnp.abs(gq_a).max()) > 0


def test_functional_apply_under_jit():
    model = Decoder(_cfg(), rngs=nnx.Rngs(5))
    graphdef, params = nnx.split(model)
    ids = jnp.ones((2, 4), jnp.int32)
    eager, _ = model(ids)
    jitted, aux = jax.jit(lambda p, x: apply(graphdef, p, x))(params, ids)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)


# ----------------------------------------------------------------------------- heads


def test_last_token_score_left_and_right_padding():
    values = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
    mask = jnp.asarray([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0]])
    np.testing.assert_array_equal(np.asarray(last_token_score(values, mask)), [1.0, 7.0, 10.0])


def test_score_model_zero_init_and_trunk_transplant():
    cfg = _cfg()
    sft = Decoder(cfg, rngs=nnx.Rngs(6))
    rm = score_model_from_decoder(sft, rngs=nnx.Rngs(7))
    ids = jnp.asarray(np.random.default_rng(4).integers(1, 53, size=(2, 5)), jnp.int32)
    mask = jnp.ones((2, 5), jnp.int32)
    values, aux = rm(ids, mask)
    assert values.shape == (2, 5) and float(jnp.abs(values).max()) == 0.0
    _, sft_aux = sft(ids, mask)
    np.testing.assert_allclose(np.asarray(aux["hidden"]), np.asarray(sft_aux["hidden"]), atol=1e-6)
    fresh = ScoreModel(cfg, rngs=nnx.Rngs(8), zero_init_head=False)
    assert float(jnp.abs(fresh(ids, mask)[0]).max()) > 0
    with pytest.raises(ModelError, match="shape"):
        transplant_trunk(sft, ScoreModel(dataclasses.replace(cfg, d_model=16), rngs=nnx.Rngs(0)))


def test_policy_with_value_head():
    cfg = _cfg()
    policy = PolicyWithValueHead(cfg, rngs=nnx.Rngs(9), zero_init_head=False)
    ids = jnp.ones((2, 5), jnp.int32)
    logits, values, aux = policy(ids, jnp.ones((2, 5), jnp.int32))
    assert logits.shape == (2, 5, 53) and values.shape == (2, 5)
    lm_logits, _ = policy.lm(ids)
    np.testing.assert_allclose(np.asarray(lm_logits), np.asarray(logits), atol=1e-6)
    head = ScalarHead(32, rngs=nnx.Rngs(0))
    assert head(aux["hidden"]).shape == (2, 5)
