"""MLP / Dot predictors and the Recommender: shapes, similarity bounds, and that they can learn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from girl_jax.errors import ConfigError
from girl_jax.models.bert import BertConfig, BertEncoder
from girl_jax.models.predictors import (
    DotPredictor,
    MLPPredictor,
    Recommender,
    interaction_features,
    num_interaction_features,
)

DIM = 8


def embeddings(n, batch=5, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return [jax.random.normal(k, (batch, DIM)) for k in keys]


@pytest.mark.parametrize("num_inputs", [2, 3])
def test_shapes(num_inputs):
    embs = embeddings(num_inputs)
    feats = interaction_features(embs)
    assert feats.shape == (5, num_interaction_features(DIM, num_inputs))
    mlp = MLPPredictor(DIM, num_inputs, (16, 8), rngs=nnx.Rngs(0))
    dot = DotPredictor(DIM, num_inputs, 6, rngs=nnx.Rngs(0))
    for model in (mlp, dot):
        logits = model(embs)
        assert logits.shape == (5,) and logits.dtype == jnp.float32
        assert np.isfinite(np.asarray(logits)).all()


def test_interaction_features_content():
    cv, jd, gen = embeddings(3)
    feats = interaction_features([cv, jd, gen])
    want = [cv, jd, gen, cv * jd, jnp.abs(cv - jd), cv * gen, jnp.abs(cv - gen)]
    want += [gen * jd, jnp.abs(gen - jd)]
    np.testing.assert_allclose(feats, jnp.concatenate(want, -1), atol=0)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="num_inputs"):
        MLPPredictor(DIM, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="similarity"):
        DotPredictor(DIM, 2, 4, rngs=nnx.Rngs(0), similarity="l2")
    with pytest.raises(ConfigError, match="dropout"):
        MLPPredictor(DIM, 2, rngs=nnx.Rngs(0), dropout=1.0)
    with pytest.raises(ValueError, match="expected 3 embeddings"):
        MLPPredictor(DIM, 3, rngs=nnx.Rngs(0))(embeddings(2))
    with pytest.raises(ValueError, match=r"expected \[B, 8\]"):
        DotPredictor(DIM, 2, 4, rngs=nnx.Rngs(0))([jnp.ones((5, DIM)), jnp.ones((5, 7))])


@pytest.mark.parametrize("num_inputs", [2, 3])
def test_cosine_similarity_is_bounded_and_scaled(num_inputs):
    model = DotPredictor(DIM, num_inputs, 6, rngs=nnx.Rngs(1), similarity="cosine")
    embs = [10.0 * e for e in embeddings(num_inputs, batch=64, seed=1)]
    sim = model.similarity(embs)
    assert float(jnp.abs(sim).max()) <= 1.0 + 1e-5
    assert float(jnp.abs(sim).max()) > 0.05  # not trivially zero
    logits = model(embs)
    np.testing.assert_allclose(logits, model.scale() * sim + model.bias[...], rtol=1e-6)
    model.log_scale[...] = jnp.asarray(10.0)  # e^10: the clamp must hold
    assert float(jnp.abs(model(embs) - model.bias[...]).max()) <= 100.0 + 1e-3


def test_dropout_active_in_training_only():
    model = MLPPredictor(DIM, 2, (32,), rngs=nnx.Rngs(2), dropout=0.5)
    embs = embeddings(2)
    a, b = model(embs), model(embs)
    assert float(jnp.abs(a - b).max()) > 0
    frozen = nnx.view(model, deterministic=True)
    np.testing.assert_allclose(frozen(embs), frozen(embs), atol=0)


def synthetic_task(num_inputs, which, n=256, seed=0):
    """Labels from a bilinear score of CV and candidate JD, or of generated and candidate JD."""
    embs = embeddings(num_inputs, batch=n, seed=seed)
    w = jax.random.normal(jax.random.key(seed + 100), (DIM, DIM))
    left = embs[0] if which == "cv" else embs[2]
    labels = (jnp.einsum("bi,ij,bj->b", left, w, embs[1]) > 0).astype(jnp.float32)
    return embs, labels


def fit(model, inputs, labels, steps=100, lr=1e-2):
    """Adam on BCE; `inputs` is the model's one argument or a tuple of arguments."""
    opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
    args = inputs if isinstance(inputs, tuple) else (inputs,)

    def loss_fn(m):
        return optax.sigmoid_binary_cross_entropy(m(*args), labels).mean()

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    first = float(loss_fn(model))
    for _ in range(steps):
        step(model, opt)
    return first, float(loss_fn(model))


@pytest.mark.parametrize(
    "make",
    [
        lambda n: MLPPredictor(DIM, n, (64,), rngs=nnx.Rngs(3)),
        lambda n: DotPredictor(DIM, n, 32, rngs=nnx.Rngs(3)),
        lambda n: DotPredictor(DIM, n, 32, rngs=nnx.Rngs(3), similarity="cosine"),
    ],
    ids=["mlp", "dot", "cosine"],
)
def test_predictors_learn_a_synthetic_task(make):
    embs, labels = synthetic_task(2, "cv")
    first, last = fit(make(2), embs, labels)
    assert first > 0.6 and last < 0.3, (first, last)


def test_mlp_uses_the_generated_jd():
    """When only (generated JD, candidate JD) decides the label, 3 inputs generalise, 2 cannot."""
    v = jax.random.normal(jax.random.key(100), (DIM,))

    def task(seed, n=512):
        embs = embeddings(3, batch=n, seed=seed)
        return embs, ((embs[2] * embs[1] * v).sum(-1) > 0).astype(jnp.float32)

    (embs, labels), (test_embs, test_labels) = task(0), task(1)

    def held_out_accuracy(model, inputs):
        return float(((model(inputs) > 0) == (test_labels > 0.5)).mean())

    mlp3 = MLPPredictor(DIM, 3, (64,), rngs=nnx.Rngs(4))
    mlp2 = MLPPredictor(DIM, 2, (64,), rngs=nnx.Rngs(4))
    fit(mlp3, embs, labels)
    fit(mlp2, embs[:2], labels)
    acc3, acc2 = held_out_accuracy(mlp3, test_embs), held_out_accuracy(mlp2, test_embs[:2])
    assert acc3 > 0.85 and acc2 < 0.65, (acc3, acc2)


TINY_BERT = BertConfig(vocab_size=40, max_len=12, d_model=16, num_layers=1, num_heads=2, mlp_dim=32)


@pytest.mark.parametrize("predictor,num_inputs", [("mlp", 2), ("dot", 3)])
def test_recommender_shares_one_encoder_and_trains(predictor, num_inputs):
    model = Recommender(TINY_BERT, predictor, num_inputs, rngs=nnx.Rngs(5), hidden_dims=(16,))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 40, size=(num_inputs, 6, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, :, 5:] = 0
    logits = model(ids, mask)
    assert logits.shape == (6,)
    embs = model.encode(ids, mask)
    np.testing.assert_allclose(embs[1], model.encoder.embed(ids[1], mask[1]), atol=1e-5)
    labels = jnp.asarray([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])

    kernel_before = np.array(model.encoder.layers[0].mlp_in.kernel[...])
    first, last = fit(model, (ids, mask), labels, steps=20)
    assert last < 0.5 * first, (first, last)
    # The encoder is trained end to end, not only the predictor.
    assert np.abs(model.encoder.layers[0].mlp_in.kernel[...] - kernel_before).max() > 1e-4
    with pytest.raises(ValueError, match=f"expected \\[{num_inputs}, B, T\\]"):
        model(ids[:1], mask[:1])


def test_recommender_accepts_a_pretrained_encoder():
    encoder = BertEncoder(TINY_BERT, rngs=nnx.Rngs(7))
    model = Recommender(TINY_BERT, "mlp", 2, rngs=nnx.Rngs(8), encoder=encoder)
    assert model.encoder is encoder
    with pytest.raises(ConfigError, match="d_model"):
        other = BertConfig(**{**TINY_BERT.to_dict(), "d_model": 32, "num_heads": 2})
        Recommender(other, "mlp", 2, rngs=nnx.Rngs(8), encoder=encoder)
    with pytest.raises(ConfigError, match="predictor"):
        Recommender(TINY_BERT, "gbdt", 2, rngs=nnx.Rngs(8))
