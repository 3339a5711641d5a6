"""Reward model: both objectives train; the score is read at the last valid token."""

import functools

import jax
import numpy as np
import pytest

from girl_jax.configuration import load_config
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


def _train(objective, steps=60, pooling="last"):
    c = load_config("configs/default.py:smoke").reward
    c.update(objective=objective, pooling=pooling, learning_rate=3e-3, warmup_steps=1, steps=steps)
    cfg = reward.RewardConfig.from_config(c)
    mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    tx = reward.make_tx(cfg)
    g, st, _ = state_mod.create_train_state(lambda r: ScoreModel(CFG, rngs=r), tx, mesh, None)
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
    step = jax.jit(functools.partial(reward.train_step, graphdef=g, tx=tx, cfg=cfg))
    losses = []
    for _ in range(steps):
        st, m = step(st, batch, None)
        losses.append(float(m["loss"]))
    return losses, m, g, st


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("objective", ["pointwise", "pairwise"])
def test_both_objectives_train(objective, pooling):
    losses, m, _, _ = _train(objective, pooling=pooling)
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
    values, _ = __import__("flax").nnx.merge(g, st.params)(ids, mask)
    last = mask.sum(1) - 1
    np.testing.assert_allclose(np.asarray(s), np.asarray(values)[np.arange(8), last], atol=1e-6)


def test_mean_pooling_averages_the_response_tokens_only():
    _, _, g, st = _train("pointwise", steps=5)
    ids, mask, _ = _data(n=8)
    resp = mask * (np.arange(mask.shape[1]) >= 3)  # a 3-token "prompt" on every row
    s = reward.scores(st.params, g, ids, mask, resp, pooling="mean")
    values, _ = __import__("flax").nnx.merge(g, st.params)(ids, mask)
    v = np.asarray(values)
    want = [v[i][resp[i] == 1].mean() for i in range(8)]
    np.testing.assert_allclose(np.asarray(s), want, rtol=1e-5, atol=1e-6)
    # padding content does not move the score
    np.testing.assert_allclose(
        np.asarray(
            reward.scores(st.params, g, np.where(mask == 1, ids, 13), mask, resp, pooling="mean")
        ),
        np.asarray(s),
        atol=1e-5,
    )
    with pytest.raises(Exception, match="response mask"):
        reward.scores(st.params, g, ids, mask, None, pooling="mean")
