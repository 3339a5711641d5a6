"""Reward model: both objectives train; the score is read at the last valid token."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from flax import nnx

from girl_jax.configuration import load_config
from girl_jax.errors import ModelError
from girl_jax.models.decoder import DecoderConfig
from girl_jax.models.heads import ScoreModel
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import reward

CFG = DecoderConfig(family="gpt2", vocab_size=24, max_len=16, d_model=32, num_layers=1, num_heads=2)


def _data(n=64, L=10, seed=0):
    """Label 1 iff token 7 appears; right padding of random length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(8, 24, (n, L)).astype(np.int32)
    label = rng.integers(0, 2, n)
    pos = rng.integers(0, 6, n)
    ids[label == 1, pos[label == 1]] = 7
    lengths = np.maximum(pos + 1, rng.integers(6, L + 1, n))
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, 0), mask, label.astype(np.float32)


def _train(objective, steps=60, head=None):
    """head None: a per-token ScoreModel read at the last token; else a RewardModel head."""
    c = load_config("configs/default.py:smoke").reward
    c.update(objective=objective, learning_rate=3e-3, warmup_steps=1, steps=steps)
    cfg = reward.RewardConfig.from_config(c)
    mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    tx = reward.make_tx(cfg)
    from girl_jax.models.heads import RewardModel

    if head is None:
        model_fn = lambda r: ScoreModel(CFG, rngs=r)  # noqa: E731
    else:
        model_fn = lambda r: RewardModel(CFG, rngs=r, head=head, head_hidden=32)  # noqa: E731
    g, st, sh = state_mod.create_train_state(model_fn, tx, mesh, None)
    ids, mask, label = _data()
    if objective == "pointwise":
        batch = {"input_ids": ids, "attention_mask": mask, "response_mask": mask, "label": label}
    else:
        pos, neg = label == 1, label == 0
        k = min(pos.sum(), neg.sum())
        batch = {
            "chosen_ids": ids[pos][:k],
            "chosen_mask": mask[pos][:k],
            "chosen_response_mask": mask[pos][:k],
            "rejected_ids": ids[neg][:k],
            "rejected_mask": mask[neg][:k],
            "rejected_response_mask": mask[neg][:k],
        }
    # out_shardings: the state keeps its shardings, one compilation (not a second one for the
    # shardings XLA would pick for the updated state)
    step = jax.jit(
        functools.partial(reward.train_step, graphdef=g, tx=tx, cfg=cfg), out_shardings=(sh, None)
    )
    losses = []
    for _ in range(steps):
        st, m = step(st, batch, None)
        losses.append(float(m["loss"]))
    return losses, m, g, st


@pytest.mark.parametrize("head", [None, "last", "mean", "pooled_mlp", "attn_mlp"])
@pytest.mark.parametrize("objective", ["pointwise", "pairwise"])
def test_both_objectives_train(objective, head):
    losses, m, _, _ = _train(objective, head=head)
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert float(m["accuracy"]) > 0.9


def test_score_reads_last_valid_token_and_ignores_padding():
    _, _, g, st = _train("pointwise", steps=5)
    ids, mask, _ = _data(n=8)
    s = reward.scores(st.params, g, ids, mask)
    padded_ids = np.where(mask == 1, ids, 13)  # other pad content, same mask
    np.testing.assert_allclose(
        np.asarray(reward.scores(st.params, g, padded_ids, mask)), np.asarray(s), atol=1e-5
    )
    values, _ = nnx.merge(g, st.params)(ids, mask)
    last = mask.sum(1) - 1
    np.testing.assert_allclose(np.asarray(s), np.asarray(values)[np.arange(8), last], atol=1e-6)


@pytest.mark.parametrize("head", ["last", "mean", "pooled_mlp"])
def test_reward_model_heads_pool_the_right_tokens(head):
    from flax import nnx

    from girl_jax.models.heads import RewardModel, pool_features

    model = RewardModel(CFG, rngs=nnx.Rngs(0), head=head, head_hidden=16)
    ids, mask, _ = _data(n=8)
    resp = mask * (np.arange(mask.shape[1]) >= 3)  # a 3-token "prompt" on every row
    h = np.asarray(model.hidden(ids, mask)[0])
    last = h[np.arange(8), mask.sum(1) - 1]
    mean_jd = np.stack([h[i][resp[i] == 1].mean(0) for i in range(8)])
    mean_cv = np.stack([h[i][(mask[i] == 1) & (resp[i] == 0)].mean(0) for i in range(8)])
    want = {
        "last": last,
        "mean": mean_jd,
        "pooled_mlp": np.concatenate([last, mean_jd, mean_cv, mean_jd * mean_cv], -1),
    }[head]
    got = pool_features(model.hidden(ids, mask)[0], mask, resp, head)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # the score ignores the content of padding
    s = model(ids, mask, resp)[0]
    s2 = model(np.where(mask == 1, ids, 13), mask, resp)[0]
    np.testing.assert_allclose(np.asarray(s2), np.asarray(s), atol=1e-5)
    if head != "last":
        with pytest.raises(Exception, match="response mask"):
            model(ids, mask, None)


@pytest.mark.parametrize("objective", ["pointwise", "pairwise"])
def test_probe_fits_the_head_on_cached_features(objective):
    """A head fitted on fixed features separates labels that are linear in them."""
    from flax import nnx

    from girl_jax.models.heads import RewardHead
    from girl_jax.stages.reward import probe

    rng = np.random.default_rng(0)
    d = 8
    w = rng.normal(size=4 * d)
    x = rng.normal(size=(2000, 4 * d)).astype(np.float32)
    y = (x @ w + 0.5 * rng.normal(size=2000) > 0).astype(np.float32)
    head = RewardHead(d, "pooled_mlp", 32, rngs=nnx.Rngs(0))
    g, p = nnx.split(head)
    if objective == "pointwise":
        tx, ty = x[:1500], y[:1500]
    else:
        pos, neg = x[:1500][y[:1500] == 1], x[:1500][y[:1500] == 0]
        k = min(len(pos), len(neg))
        tx, ty = np.stack([pos[:k], neg[:k]]), None
    seen = []
    best, hist = probe.fit_head(
        g,
        p,
        tx,
        ty,
        x[1500:],
        y[1500:],
        objective=objective,
        epochs=30,
        batch_size=128,
        learning_rate=3e-3,
        weight_decay=0.0,
        patience=3,
        seed=0,
        on_epoch=lambda e, r: seen.append(e),
    )
    aucs = [h["probe_val_auc"] for h in hist]
    assert aucs[0] < max(aucs) and max(aucs) > 0.9, aucs
    assert seen == list(range(1, len(hist) + 1))
    s = np.asarray(nnx.merge(g, best)(x[1500:]))
    assert probe._auc(y[1500:], s) == pytest.approx(max(aucs))


def test_score_dataset_sorts_trims_and_restores_order():
    """Length-sorted, trimmed batches give the same per-row outputs, in the input order."""
    from girl_jax.models.heads import RewardModel

    model = RewardModel(CFG, rngs=nnx.Rngs(0), head="pooled_mlp", head_hidden=8)
    g, p = nnx.split(model)
    rng = np.random.default_rng(0)
    n, L = 37, 16
    ids = rng.integers(1, 24, (n, L)).astype(np.int32)
    lengths = rng.integers(3, L + 1, n)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    resp = mask * (np.arange(L)[None] >= 2)
    arrays = {"input_ids": ids * mask, "attention_mask": mask, "response_mask": resp}
    widths = []

    jitted = jax.jit(lambda params, i, m, r: nnx.merge(g, params).features(i, m, r))

    def feats(params, i, m, r):
        widths.append(i.shape[1])
        return jitted(params, i, m, r)

    out = reward.score_dataset(feats, p, arrays, batch_size=8, multiple=4)
    full = np.asarray(feats(p, arrays["input_ids"], mask, resp))
    np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
    assert min(widths[:-1]) < L  # short rows ran on trimmed batches
    # two batches in flight (host_threads), each width compiled first alone: the same rows
    two = reward.score_dataset(feats, p, arrays, batch_size=8, multiple=4, workers=2)
    np.testing.assert_array_equal(two, out)

    # a pytree with per-token outputs: each row's valid positions as in one full batch, the
    # columns past its batch's width zero, every output at the width the longest row needs
    @jax.jit
    def tokens(params, i, m, r):
        h, _ = nnx.merge(g, params).hidden(i, m)
        return {"pooled": h[:, 0], "states": h}

    short = {k: v[:, : L - 2] * (lengths[:, None] <= L - 3) for k, v in arrays.items()}
    out = reward.score_dataset(tokens, p, short, batch_size=8, multiple=4)
    two = reward.score_dataset(tokens, p, short, batch_size=8, multiple=4, workers=2)
    jax.tree.map(np.testing.assert_array_equal, two, out)
    want = jax.tree.map(np.asarray, tokens(p, short["input_ids"], short["attention_mask"], None))
    assert out["states"].shape == (n, reward.trimmed_width(short, 4), CFG.d_model)
    np.testing.assert_allclose(out["pooled"], want["pooled"], rtol=1e-5, atol=1e-5)
    valid = short["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        out["states"][valid], want["states"][valid[:, : out["states"].shape[1]]], atol=1e-5
    )
    # past its batch's width (its longest row, rounded up to 4) a row's states are zero: the
    # table is zeroed before the batches land in it
    ends = np.where(valid.any(1), valid.shape[1] - np.argmax(valid[:, ::-1], 1), 0)
    order = np.argsort(ends, kind="stable")
    cols = np.arange(out["states"].shape[1])
    for b in range(0, n, 8):
        rows = order[b : b + 8]
        width = -(-max(int(ends[rows].max()), 1) // 4) * 4
        assert not out["states"][rows][:, cols >= width].any()
        assert ends[rows].max() == 0 or out["states"][rows][:, : ends[rows].max()].any()
    assert reward.score_dataset(tokens, p, {k: v[:0] for k, v in short.items()}, 8).size == 0


def test_attention_head_reads_cached_states_as_the_states_and_flags():
    """The probe's cache ({"states": hidden and match flags concatenated, "pooled"}) gives the
    attention head bit for bit the scores of the separate, float16 hidden and flags."""
    from girl_jax.models.heads import RewardHead, match_flags, pool_features

    rng = np.random.default_rng(4)
    ids, mask, _ = _data(n=16)
    resp = mask * (np.arange(mask.shape[1]) >= 3)
    head = RewardHead(CFG.d_model, "attn_mlp", 16, rngs=nnx.Rngs(2), match=True)
    nnx.update(head, jax.tree.map(lambda a: a + 0.1, nnx.state(head, nnx.Param)))  # non-zero
    hidden = rng.normal(size=(*ids.shape, CFG.d_model)).astype(np.float16)
    flags = np.asarray(match_flags(ids, mask, resp), np.float16)
    pooled = pool_features(hidden, mask, resp, "pooled_mlp")
    common = {"pooled": pooled, "mask": mask, "response_mask": resp}
    apart = head({**common, "hidden": hidden, "match": flags})
    states = np.concatenate([hidden.astype(np.float32), flags.astype(np.float32)], -1)
    together = head({**common, "states": states})
    np.testing.assert_array_equal(np.asarray(together), np.asarray(apart))
    with pytest.raises(ModelError, match="token states have 32 features per token"):
        head({**common, "states": states[..., :-2]})  # a cache without the flags


def test_attention_pool_matches_numpy_and_ignores_padding():
    from girl_jax.models.heads import RewardModel, attention_pool

    rng = np.random.default_rng(1)
    h = rng.normal(size=(3, 6, 4)).astype(np.float32)
    logits = rng.normal(size=(3, 6, 2)).astype(np.float32)
    sel = np.array([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1]], bool)
    want = np.zeros((3, 2, 4), np.float32)
    for b in range(3):
        for q in range(2):
            if sel[b].any():
                e = np.exp(logits[b, sel[b], q] - logits[b, sel[b], q].max())
                want[b, q] = (e / e.sum()) @ h[b, sel[b]]
    got = attention_pool(h, logits, sel)
    np.testing.assert_allclose(np.asarray(got), want.reshape(3, -1), rtol=1e-5, atol=1e-6)

    model = RewardModel(CFG, rngs=nnx.Rngs(0), head="attn_mlp", head_hidden=16)
    ids, mask, _ = _data(n=8)
    resp = mask * (np.arange(mask.shape[1]) >= 3)
    s = model(ids, mask, resp)[0]
    s2 = model(np.where(mask == 1, ids, 13), mask, resp)[0]
    np.testing.assert_allclose(np.asarray(s2), np.asarray(s), atol=1e-5)
    with pytest.raises(Exception, match="response mask"):
        model(ids, mask, None)


@pytest.mark.parametrize("objective", ["pointwise", "pairwise"])
def test_probe_on_token_states_fits_the_attention_head(objective):
    """reward.probe.probe with the token head: cached states in, a head that separates out."""
    from girl_jax.models.heads import RewardModel
    from girl_jax.stages.reward import probe

    c = load_config("configs/default.py:smoke").reward
    c.update(objective=objective, head="attn_mlp", probe_epochs=25, probe_batch_size=32)
    c.update(probe_learning_rate=1e-2, probe_patience=25, head_hidden=32)
    cfg = reward.RewardConfig.from_config(c)
    model = RewardModel(CFG, rngs=nnx.Rngs(0), head="attn_mlp", head_hidden=32)
    g, p = nnx.split(model)
    ids, mask, label = _data(n=256)
    resp = mask.copy()
    ids, mask, resp = (np.pad(a, ((0, 0), (0, 6))) for a in (ids, mask, resp))  # spare width
    rows = {"input_ids": ids, "attention_mask": mask, "response_mask": resp, "label": label}
    tr = {k: v[:192] for k, v in rows.items()}
    val = {k: v[192:] for k, v in rows.items()}
    if objective == "pairwise":
        pos, neg = tr["label"] == 1, tr["label"] == 0
        k = min(pos.sum(), neg.sum())
        tr = {
            **{f"chosen_{n}": tr[f"input_{n}" if n == "ids" else n][pos][:k] for n in ("ids",)},
            "chosen_mask": tr["attention_mask"][pos][:k],
            "chosen_response_mask": tr["response_mask"][pos][:k],
            "rejected_ids": tr["input_ids"][neg][:k],
            "rejected_mask": tr["attention_mask"][neg][:k],
            "rejected_response_mask": tr["response_mask"][neg][:k],
        }
    params, history = probe.probe(cfg, g, p, tr, val, seed=0)
    assert max(h["probe_val_auc"] for h in history) > 0.9, history
    s = nnx.merge(g, params)(val["input_ids"], val["attention_mask"], val["response_mask"])[0]
    assert probe._auc(val["label"], np.asarray(s)) > 0.9


def test_probe_with_match_flags_learns_an_exact_lookup():
    """Label 1 iff the JD's one token occurs in the CV: with match flags (and the head on the
    residual after block 1 of 2) the probe separates it; the merged model scores the same."""
    from girl_jax.models.heads import RewardModel
    from girl_jax.stages.reward import probe

    rng = np.random.default_rng(0)
    n, cv_len = 320, 6
    cv = np.stack([rng.choice(np.arange(8, 24), cv_len, replace=False) for _ in range(n)])
    label = rng.integers(0, 2, n)
    absent = [rng.choice(np.setdiff1d(np.arange(8, 24), row)) for row in cv]
    jd = np.where(label == 1, cv[np.arange(n), rng.integers(0, cv_len, n)], absent)
    ids = np.concatenate([cv, jd[:, None], np.zeros((n, 3), int)], 1).astype(np.int32)
    mask = (np.arange(10)[None] < cv_len + 1).astype(np.int32).repeat(n, 0)
    resp = (np.arange(10)[None] == cv_len).astype(np.int32).repeat(n, 0)
    rows = {"input_ids": ids, "attention_mask": mask, "response_mask": resp}
    rows["label"] = label.astype(np.float32)
    tr = {k: v[:256] for k, v in rows.items()}
    val = {k: v[256:] for k, v in rows.items()}
    c = load_config("configs/default.py:smoke").reward
    c.update(head="attn_mlp", probe_epochs=20, probe_batch_size=32, probe_learning_rate=1e-2)
    c.update(probe_patience=20, head_hidden=16, feature_layer=1, match_features=True)
    cfg = reward.RewardConfig.from_config(c)
    two = dataclasses.replace(CFG, num_layers=2)
    model = RewardModel(
        two, rngs=nnx.Rngs(0), head="attn_mlp", head_hidden=16, feature_layer=1, match_features=True
    )
    g, p = nnx.split(model)
    params, history = probe.probe(cfg, g, p, tr, val, seed=0)
    assert max(h["probe_val_auc"] for h in history) > 0.97, history
    s = nnx.merge(g, params)(val["input_ids"], val["attention_mask"], val["response_mask"])[0]
    assert probe._auc(val["label"], np.asarray(s)) > 0.97


def test_reward_feature_options_are_checked_against_the_head_and_model():
    from girl_jax.errors import ConfigError

    config = load_config("configs/default.py:smoke")
    c = config.reward
    c.update(head="last", match_features=True)
    with pytest.raises(ConfigError, match="config.reward.match_features"):
        reward.RewardConfig.from_config(c)
    c.update(head="attn_mlp", match_features=False, feature_layer=-1)
    with pytest.raises(ConfigError, match="config.reward.feature_layer"):
        reward.RewardConfig.from_config(c)
    c.feature_layer = config.model.num_layers + 1
    with pytest.raises(ConfigError, match="config.reward.feature_layer=3 but the model has 2"):
        reward.build_model_fn(config, 40, 0)
