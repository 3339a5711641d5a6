"""Recommender stage: the shared fit loop learns, frozen embeddings match the encoder, config."""

import functools
import json
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from girl_jax.configuration import load_config
from girl_jax.errors import ConfigError
from girl_jax.models.bert import BertConfig, BertEncoder
from girl_jax.models.predictors import DotPredictor, MLPPredictor
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import recommend, recommend_fit


def _mesh():
    return mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def _market(n_cv=200, n_jd=40, dim=8, n=3000, seed=0):
    """Embedding tables and interactions whose label is Bernoulli(sigmoid(4 cv.jd))."""
    rng = np.random.default_rng(seed)
    cv = rng.normal(size=(n_cv, dim)).astype(np.float32) / np.sqrt(dim)
    jd = rng.normal(size=(n_jd, dim)).astype(np.float32)
    tables = {"cv_emb": cv, "jd_emb": jd}

    def split(m):
        c, j = rng.integers(0, n_cv, m), rng.integers(0, n_jd, m)
        p = 1 / (1 + np.exp(-4 * (cv[c] * jd[j]).sum(1)))
        label = (rng.random(m) < p).astype(np.float32)
        return {"cv_idx": c.astype(np.int32), "jd_idx": j.astype(np.int32), "label": label}

    splits = {"train": split(n), "validation": split(600), "test": split(600)}
    splits["cold_start"] = {k: v[:0] for k, v in splits["test"].items()}
    return tables, splits


@pytest.mark.parametrize("predictor", ["mlp", "dot"])
def test_head_on_frozen_embeddings_learns_the_interaction(predictor, tmp_path):
    tables, splits = _market()
    dim = tables["cv_emb"].shape[1]
    if predictor == "mlp":
        model_fn = lambda r: MLPPredictor(dim, 2, (32,), rngs=r)  # noqa: E731
    else:
        model_fn = lambda r: DotPredictor(dim, 2, 16, rngs=r)  # noqa: E731
    spec = recommend_fit.FitSpec(
        epochs=30, batch_size=128, learning_rate=1e-2, weight_decay=0.0, patience=3, seed=0
    )
    forward = functools.partial(recommend_fit.embedding_forward, order=("cv", "jd"))
    result, model = recommend_fit.fit(
        model_fn,
        forward,
        spec,
        {k: jax.numpy.asarray(v) for k, v in tables.items()},
        splits,
        str(tmp_path),
        _mesh(),
        None,
        name="test",
    )
    # The Bayes AUC of these labels is 0.946; a head that learned nothing sits at 0.5. The
    # two-tower Dot model learns a bilinear score more slowly than the MLP.
    assert result["test"]["auc"] > (0.9 if predictor == "mlp" else 0.75), result
    assert "cold_start" not in result  # an empty split is skipped, not a crash
    logits = np.load(tmp_path / "test_logits.npy")
    t = splits["test"]
    again = model([tables["cv_emb"][t["cv_idx"]], tables["jd_emb"][t["jd_idx"]]])
    np.testing.assert_allclose(np.asarray(again), logits, rtol=1e-4, atol=1e-4)
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert rows and all("val_auc" in r for r in rows)


def _params(model):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_epochs_zero_keeps_the_initial_model(tmp_path):
    tables, splits = _market(n=256)
    forward = functools.partial(recommend_fit.embedding_forward, order=("cv", "jd"))

    def model_fn(r):
        return MLPPredictor(8, 2, (8,), rngs=r)

    def fit(epochs, run_dir):
        spec = recommend_fit.FitSpec(epochs, 64, 1e-2, 0.0, 1, seed=0)
        return recommend_fit.fit(
            model_fn, forward, spec, tables, splits, str(run_dir), _mesh(), None, name="test"
        )

    result, model = fit(0, tmp_path / "zero")
    assert result["steps"] == 0 and result["epochs_run"] == 0
    assert np.isfinite(result["test"]["auc"])
    # the model fit returns is the one initialised from the spec's seed, parameter for parameter
    graphdef, initial, _ = state_mod.create_train_state(model_fn, optax.sgd(0.0), _mesh(), seed=0)
    expected = _params(nnx.merge(graphdef, initial.params, initial.rest))
    got = _params(model)
    assert got.keys() == expected.keys() and got
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=str(key))
    # and the saved test logits are the initial model's scores
    logits = np.load(tmp_path / "zero" / "test_logits.npy")
    test = splits["test"]
    direct = np.asarray(forward(model, tables, {k: np.asarray(v) for k, v in test.items()}))
    np.testing.assert_allclose(logits, direct.reshape(logits.shape), rtol=1e-5, atol=1e-5)
    # one epoch moves the parameters: the comparison above could fail
    _, trained = fit(1, tmp_path / "one")
    moved = _params(trained)
    assert any(not np.array_equal(moved[k], expected[k]) for k in expected)


def test_embed_texts_matches_one_full_batch():
    cfg = BertConfig(vocab_size=50, max_len=12, d_model=16, num_layers=1, num_heads=2, mlp_dim=32)
    enc = BertEncoder(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (37, 12)).astype(np.int32)
    lengths = rng.integers(1, 13, 37)
    mask = (np.arange(12)[None] < lengths[:, None]).astype(np.int32)
    out = recommend_fit.embed_texts(enc, ids, mask, batch_size=16)  # 3 batches, last padded
    assert out.shape == (37, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(enc.embed(ids, mask)), rtol=1e-5, atol=1e-5)


def test_recommend_config_rejects_unknown_mode_and_zero_epochs():
    c = load_config("configs/default.py:smoke").recommend
    assert recommend.RecommendConfig.from_config(c).mode == "frozen_encoder"
    c.mode = "sometimes"
    with pytest.raises(ConfigError, match="config.recommend.mode"):
        recommend.RecommendConfig.from_config(c)
    c.mode, c.epochs = "end_to_end", 0
    with pytest.raises(ConfigError, match="config.recommend.epochs"):
        recommend.RecommendConfig.from_config(c)
    c.mode = "frozen_encoder"  # 0 epochs: use the encoder as initialised (e.g. MiniLM)
    assert recommend.RecommendConfig.from_config(c).epochs == 0


def test_both_modes_on_a_tiny_workdir(tmp_path):
    """Stage 4 from a workdir with data + generated JDs: both modes write the table."""
    from girl_jax.checkpoint import write_json_atomic
    from girl_jax.data import prepare
    from girl_jax.stages import generate

    config = load_config("configs/default.py:smoke")
    config.data.update(num_seekers=120, num_jobs=30)
    config.recommend.update(head_epochs=2, batch_size=32)
    for mode in ("frozen_encoder", "end_to_end"):
        workdir = str(tmp_path / mode)
        prepare.prepare(config, workdir)
        seekers = generate.all_seekers(prepare.load(workdir))
        gen = seekers.assign(
            jd_sft=seekers["cv"].str.slice(0, 200),  # stand-ins for the generators' JDs
            jd_ppo=seekers["cv"].str.slice(100, 300),
        )
        os.makedirs(os.path.join(workdir, "generated"))
        gen.to_parquet(os.path.join(workdir, "generated", "generated.parquet"))
        write_json_atomic(os.path.join(workdir, "generated", "final.json"), {"seekers": len(gen)})
        config.recommend.mode = mode
        # end_to_end compiles an encoder per model: two models keep the test short
        feats = ("Base", "GIRL-SFT", "GIRL") if mode == "frozen_encoder" else ("Base", "GIRL")
        preds = ("mlp", "dot") if mode == "frozen_encoder" else ("mlp",)
        config.recommend.update(feature_sets=list(feats), predictors=list(preds))
        summary = recommend.train_and_evaluate(config, workdir)
        for feat in feats:
            for pred in preds:
                cell = summary["test"][feat][pred]
                assert 0.0 <= cell["auc"] <= 1.0 and np.isfinite(cell["logloss"])
        has_encoder = os.path.isfile(
            os.path.join(workdir, "recommend", "encoder", "embeddings.npz")
        )
        assert has_encoder == (mode == "frozen_encoder")


def _fit_tiny(model_fn, forward, spec, tables, splits, run_dir, scan_epochs):
    """`recommend_fit.fit` on the tiny market, one device, under the name "t"."""
    return recommend_fit.fit(
        model_fn,
        forward,
        spec,
        tables,
        splits,
        str(run_dir),
        _mesh(),
        None,
        name="t",
        scan_epochs=scan_epochs,
    )


@pytest.mark.parametrize("predictor", ["mlp", "dot"])
def test_scan_epochs_equals_one_step_at_a_time(predictor, tmp_path):
    """An epoch as one scanned program: the same batches and updates, bit for bit."""
    tables, splits = _market(n=700)  # 5 steps an epoch at batch 128, a ragged tail dropped
    dim = tables["cv_emb"].shape[1]
    if predictor == "mlp":
        model_fn = lambda r: MLPPredictor(dim, 2, (16,), rngs=r)  # noqa: E731
    else:
        model_fn = lambda r: DotPredictor(dim, 2, 8, rngs=r)  # noqa: E731
    spec = recommend_fit.FitSpec(4, 128, 1e-2, 0.01, 10, seed=0)  # no early stop
    forward = functools.partial(recommend_fit.embedding_forward, order=("cv", "jd"))
    out = {}
    for scan in (False, True):
        run_dir = tmp_path / f"scan{scan}"
        result, model = _fit_tiny(model_fn, forward, spec, tables, splits, run_dir, scan)
        out[scan] = result, _params(model), np.load(run_dir / "test_logits.npy")
    assert out[True][0] == out[False][0] and out[True][0]["steps"] == 4 * 5
    for key, value in out[False][1].items():
        np.testing.assert_array_equal(out[True][1][key], value, err_msg=str(key))
    np.testing.assert_array_equal(out[True][2], out[False][2])


def test_fits_of_one_shape_share_their_compiled_programs(tmp_path):
    """The seeds of one feature set x predictor reuse one set of jitted programs (compiled
    once), and a fit through shared programs equals a fit that compiled its own."""
    tables, splits = _market(n=512)
    forward = functools.partial(recommend_fit.embedding_forward, order=("cv", "jd"))

    def fit(seed, forward=forward):
        spec = recommend_fit.FitSpec(2, 128, 1e-2, 0.01, 10, seed=seed)
        model_fn = lambda r: MLPPredictor(8, 2, (16,), rngs=r)  # noqa: E731
        result, model = _fit_tiny(
            model_fn, forward, spec, tables, splits, tmp_path / f"s{seed}", True
        )
        return result, _params(model)

    recommend_fit._compiled_programs.cache_clear()
    fit(0)
    shared = fit(1)
    info = recommend_fit._compiled_programs.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    recommend_fit._compiled_programs.cache_clear()
    recommend_fit._optimizer.cache_clear()
    own = fit(1)  # its own optimizer object and programs
    # a forward that cannot be a cache key (a list argument) gets programs of its own
    unhashable = fit(1, functools.partial(recommend_fit.embedding_forward, order=["cv", "jd"]))
    for other in (shared, unhashable):
        assert other[0] == own[0]
        for key, value in own[1].items():
            np.testing.assert_array_equal(other[1][key], value, err_msg=str(key))
