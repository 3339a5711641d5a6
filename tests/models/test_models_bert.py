"""BertEncoder: config checks, masking and pooling semantics, parity with transformers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from girl_jax.errors import ConfigError, ModelError
from girl_jax.models.bert import BertConfig, BertEncoder, pool
from girl_jax.models.layers import axes_of

TINY = dict(vocab_size=61, max_len=24, type_vocab_size=2, d_model=32, num_layers=2, num_heads=4)


def tiny_cfg(**kw) -> BertConfig:
    return BertConfig(**{**TINY, "mlp_dim": 48, **kw})


def random_batch(seed=0, batch=3, seq=9, vocab=61):
    """Token ids, a right-padded mask with differing lengths, random token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(batch, seq))
    lengths = np.array([seq, max(1, seq - 4), 2][:batch] + [seq] * max(0, batch - 3))
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, 0)
    types = rng.integers(0, 2, size=(batch, seq)) * mask
    return ids.astype(np.int32), mask, types.astype(np.int32)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field,value",
    [
        ("vocab_size", 0),
        ("max_len", -1),
        ("d_model", 30),  # not divisible by num_heads=4
        ("num_layers", 1.5),
        ("num_heads", 0),
        ("mlp_dim", True),
        ("norm_eps", 0.0),
        ("pooling", "max"),
        ("normalize", "yes"),
        ("dtype", "float16"),
    ],
)
def test_config_rejects_bad_field_and_names_it(field, value):
    with pytest.raises(ConfigError, match=field):
        tiny_cfg(**{field: value})


def test_config_dict_round_trip_and_unknown_key():
    cfg = tiny_cfg(pooling="cls", normalize=False, dtype="bfloat16")
    assert BertConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="hidden_size"):
        BertConfig.from_dict({**cfg.to_dict(), "hidden_size": 32})
    assert tiny_cfg(dtype=jnp.bfloat16).dtype == "bfloat16"
    with pytest.raises(ConfigError, match="dtype"):
        tiny_cfg(dtype=jnp.float16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 64


# ----------------------------------------------------------------------------- model


def test_shapes_axes_and_jit():
    cfg = tiny_cfg()
    model = BertEncoder(cfg, rngs=nnx.Rngs(0))
    ids, mask, types = random_batch()
    hidden, aux = nnx.jit(lambda m, *a: m(*a))(model, ids, mask, types)
    assert hidden.shape == (3, 9, cfg.d_model) and hidden.dtype == jnp.float32
    assert aux["pooled"].shape == (3, cfg.d_model)
    names = set()
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = axes_of(var)
        assert axes is not None and len(axes) == var.get_value().ndim, path
        names.update(a for a in axes if a)
    assert {"vocab", "embed", "heads", "head_dim", "mlp", "pos"} <= names


def test_padding_does_not_change_valid_positions():
    model = BertEncoder(tiny_cfg(), rngs=nnx.Rngs(1))
    ids, mask, types = random_batch(seed=1)
    hidden, aux = model(ids, mask, types)
    pad = 5  # more padding on the right: valid tokens must not see it
    ids2, mask2, types2 = (np.pad(a, ((0, 0), (0, pad))) for a in (ids, mask, types))
    hidden2, aux2 = model(ids2, mask2, types2)
    valid = mask[..., None].astype(bool)
    np.testing.assert_allclose(
        np.where(valid, hidden, 0), np.where(valid, hidden2[:, :-pad], 0), atol=1e-5
    )
    np.testing.assert_allclose(aux["pooled"], aux2["pooled"], atol=1e-5)
    # ...while changing a valid token does change the others.
    ids3 = ids.copy()
    ids3[0, 1] = (ids3[0, 1] % 60) + 1
    assert np.abs(np.asarray(model(ids3, mask, types)[0][0, 0] - hidden[0, 0])).max() > 1e-4


def test_token_types_matter_and_default_to_zero():
    model = BertEncoder(tiny_cfg(), rngs=nnx.Rngs(2))
    ids, mask, types = random_batch(seed=2)
    h0, _ = model(ids, mask)
    h_zero, _ = model(ids, mask, np.zeros_like(types))
    h_types, _ = model(ids, mask, types)
    np.testing.assert_allclose(h0, h_zero, atol=0)
    assert np.abs(np.asarray(h_types - h0)).max() > 1e-3


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_matches_numpy(pooling, normalize):
    model = BertEncoder(tiny_cfg(pooling=pooling, normalize=normalize), rngs=nnx.Rngs(3))
    ids, mask, types = random_batch(seed=3)
    hidden, aux = model(ids, mask, types)
    h = np.asarray(hidden, np.float64)
    if pooling == "mean":
        want = np.stack([h[b, mask[b] == 1].mean(0) for b in range(len(h))])
    else:
        want = h[:, 0]
    if normalize:
        want = want / np.linalg.norm(want, axis=-1, keepdims=True)
        np.testing.assert_allclose(np.linalg.norm(aux["pooled"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(aux["pooled"], want, atol=1e-5)
    np.testing.assert_allclose(model.embed(ids, mask, types), aux["pooled"], atol=1e-6)


def test_all_padding_row_is_finite():
    hidden = jnp.ones((2, 4, 8))
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = pool(hidden, mask, "mean", True)
    assert np.isfinite(np.asarray(out)).all()
    model = BertEncoder(tiny_cfg(), rngs=nnx.Rngs(4))
    h, aux = model(jnp.zeros((1, 5), jnp.int32), jnp.zeros((1, 5), jnp.int32))
    assert np.isfinite(np.asarray(h)).all() and np.isfinite(np.asarray(aux["pooled"])).all()


def test_too_long_sequence_raises_model_error():
    model = BertEncoder(tiny_cfg(max_len=8), rngs=nnx.Rngs(0))
    with pytest.raises(ModelError, match="max_len=8"):
        model(jnp.ones((1, 9), jnp.int32))


def test_bfloat16_compute_is_close_to_float32():
    cfg = tiny_cfg()
    model32 = BertEncoder(cfg, rngs=nnx.Rngs(5))
    model16 = BertEncoder(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(5))
    ids, mask, types = random_batch(seed=5)
    h32, aux32 = model32(ids, mask, types)
    h16, aux16 = model16(ids, mask, types)
    assert h16.dtype == jnp.bfloat16 and aux16["pooled"].dtype == jnp.float32
    cos = (aux32["pooled"] * aux16["pooled"]).sum(-1)  # both L2-normalised
    assert float(cos.min()) > 0.99
    assert float(jnp.abs(h16.astype(jnp.float32) - h32).max()) < 0.25


def test_gradients_reach_every_parameter():
    model = BertEncoder(tiny_cfg(), rngs=nnx.Rngs(6))
    ids, mask, types = random_batch(seed=6)

    def loss(m):
        h, aux = m(ids, mask, types)
        return (aux["pooled"] ** 2 * jnp.arange(aux["pooled"].shape[-1])).sum() + h.mean()

    grads = nnx.jit(nnx.grad(loss))(model)
    for path, g in nnx.to_flat_state(grads):
        if path[:2] == ("embeddings", "word"):
            continue  # only the sampled rows get gradient
        assert float(jnp.abs(g.get_value()).max()) > 0, path


# ----------------------------------------------------------------------------- parity


def test_parity_with_transformers_bert_model(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from girl_jax.models.hf_bert import load_bert

    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(
        vocab_size=61,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=24,
        type_vocab_size=2,
        attn_implementation="eager",
    )
    ref = transformers.BertModel(hf_cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases so a mis-mapped tensor shows
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path)
    ours = load_bert(str(tmp_path))
    ids, mask, types = random_batch(seed=7)
    with torch.no_grad():
        want = ref(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types, dtype=torch.long),
        ).last_hidden_state.numpy()
    got, aux = jax.jit(lambda i, m, t: ours(i, m, t))(ids, mask, types)
    valid = mask[..., None].astype(bool)
    diff = np.abs(np.where(valid, np.asarray(got) - want, 0)).max()
    assert diff <= 1e-4, diff
    m = mask[..., None]
    mean = (want * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(aux["pooled"], mean, atol=1e-4)  # no sentence-transformers files


def test_logical_axes_shard_cleanly_on_a_mesh():
    """Params placed by logical names (heads, mlp, vocab on 'tensor') compute the same output."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from girl_jax.models.layers import logical_axes

    devices = np.array(jax.devices()[:4]).reshape(2, 2)
    mesh = Mesh(devices, ("data", "tensor"))
    rules = {"heads": "tensor", "mlp": "tensor", "vocab": "tensor"}
    model = BertEncoder(tiny_cfg(vocab_size=64), rngs=nnx.Rngs(8))  # vocab divisible by 2
    ids, mask, types = random_batch(seed=8, batch=4)
    want, _ = model(ids, mask, types)
    graphdef, state = nnx.split(model)
    specs = logical_axes(state)

    def place(var, spec):
        mesh_spec = PartitionSpec(*(rules.get(a) for a in spec.get_value()))
        return jax.device_put(var.get_value(), NamedSharding(mesh, mesh_spec))

    sharded = jax.tree.map(
        lambda v, s: v.replace(place(v, s)),
        state,
        specs,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    kernel = sharded["layers"][0]["attention"]["query"]["kernel"].get_value()
    assert kernel.sharding.spec == PartitionSpec(None, "tensor", None)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    args = [jax.device_put(a, batch_sharding) for a in (ids, mask, types)]
    got, _ = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(sharded, *args)
    np.testing.assert_allclose(got, want, atol=1e-5)
