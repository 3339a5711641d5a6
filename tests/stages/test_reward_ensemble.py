"""Reward-model ensembles: K heads on the frozen trunk's cached features, stored stacked,
scored with one trunk pass; the main reward model is unchanged by them."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from stage_workdirs import untrained_sft_workdir  # tests/stages/stage_workdirs.py

from girl_jax.configuration import load_config
from girl_jax.errors import ConfigError
from girl_jax.stages import reward
from girl_jax.stages.reward import probe

K = 3


def _config(ensemble_size=0):
    config = load_config("configs/default.py:smoke")
    config.data.update(num_seekers=120, num_jobs=30)
    config.model.update(d_model=32, num_layers=1, num_heads=2, max_len=128)
    config.sft.update(max_prompt_len=64, max_response_len=48, num_eval_samples=8)
    config.reward.update(steps=0, probe_epochs=3, probe_batch_size=128, head_hidden=16)
    config.reward.update(batch_size=128, ensemble_size=ensemble_size)
    return config


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
    """Prepared data and a final (untrained: its quality does not matter here) SFT model."""
    workdir = str(tmp_path_factory.mktemp("ens") / "base")
    return workdir, untrained_sft_workdir(_config(), workdir)


def _run(base, tmp_path, name, ensemble_size):
    workdir = str(tmp_path / name)
    shutil.copytree(base, workdir)
    config = _config(ensemble_size)
    return config, workdir, reward.train_and_evaluate(config, workdir)


def test_ensemble_end_to_end(base_workdir, tmp_path, monkeypatch):
    base, vocab = base_workdir
    # the RM-vs-oracle check on sampled JDs (a sampler compile) is not what this file tests
    monkeypatch.setattr(reward.driver, "_oracle_tracking", lambda *a, **k: {})
    _, plain_dir, plain = _run(base, tmp_path, "plain", 0)
    config, workdir, result = _run(base, tmp_path, "ens", K)

    # ensemble_size 0: no ensemble anywhere; the main model is the same with one
    assert "ensemble" not in plain
    assert not os.path.exists(os.path.join(plain_dir, "reward", "ensemble"))
    main = {k: v for k, v in result.items() if k != "ensemble"}
    assert json.dumps(main, sort_keys=True) == json.dumps(plain, sort_keys=True)

    # stored: stacked heads, marked final
    ens_dir = os.path.join(workdir, "reward", "ensemble")
    info = json.load(open(os.path.join(ens_dir, "final.json")))
    assert info["size"] == K and info["seeds"] == [1000, 1001, 1002] and info["bootstrap"]
    graphdef, params, stacked = reward.load_final_ensemble(workdir, config, vocab)
    main_head = nnx.split(nnx.merge(graphdef, params).reward_head)[1]
    for a, m in zip(jax.tree.leaves(stacked), jax.tree.leaves(main_head)):
        assert a.shape == (K, *m.shape)
    kernels = np.asarray(stacked["out"]["kernel"][...])  # the zero-initialised output layer
    assert all(not np.allclose(kernels[i], kernels[j]) for i in range(K) for j in range(i))

    # eval.json: member AUCs and the aggregations, on validation and test
    ens = json.load(open(os.path.join(workdir, "reward", "eval.json")))["ensemble"]
    assert ens["size"] == K and len(ens["members"]) == K
    for split in ("validation", "test"):
        aucs = ens[split]["member_auc"]
        assert len(aucs) == K and all(0.0 <= a <= 1.0 for a in aucs)
        assert [m[f"{split}_auc"] for m in ens["members"]] == aucs
        for how in ("mean", "min", "mean_minus_std"):
            assert 0.0 <= ens[split][how]["auc"] <= 1.0

    # one trunk pass + vmapped heads == each member merged into a full RewardModel
    from girl_jax.data import prepare

    data = prepare.load(workdir)
    max_len = config.sft.max_prompt_len + config.sft.max_response_len
    val = reward.pointwise_arrays(data.tokenizer, data.split("validation"), max_len)
    rows = [np.asarray(val[k][:32]) for k in ("input_ids", "attention_mask", "response_mask")]
    got = jax.jit(reward.ensemble_scores, static_argnums=0)(graphdef, params, stacked, *rows)
    assert got.shape == (K, 32) and got.dtype == np.float32
    one = jax.jit(reward.scores, static_argnums=1)
    for k in range(K):
        member = reward.ensemble_member_params(graphdef, params, stacked, k)
        want = one(member, graphdef, *rows)
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(got[0]), np.asarray(got[1]))

    # the stored heads score validation as eval.json says
    fn = jax.jit(lambda p, i, m, r: reward.ensemble_scores(graphdef, p, stacked, i, m, r).T)
    s = reward.score_dataset(fn, params, val, len(val["label"])).T  # one batch: one compile
    from girl_jax import metrics

    for k in range(K):
        assert metrics.auc(val["label"], s[k]) == pytest.approx(ens["members"][k]["validation_auc"])


def test_fit_ensemble_bootstraps_and_stacks():
    from girl_jax.models.heads import RewardHead

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(np.float32)
    feats = probe.Features(x[:200], y[:200], x[200:], y[200:])
    c = load_config("configs/default.py:smoke").reward
    c.update(
        steps=0,
        head="last",
        match_features=False,
        probe_epochs=8,
        probe_batch_size=50,
        probe_learning_rate=5e-2,
    )
    cfg = reward.RewardConfig.from_config(c)
    g, _ = nnx.split(RewardHead(8, "last", 4, rngs=nnx.Rngs(0)))

    def init(seed):
        return nnx.split(RewardHead(8, "last", 4, rngs=nnx.Rngs(seed)))[1]

    seen = []
    for bootstrap in (True, False):
        stacked, members = probe.fit_ensemble(
            cfg, g, init, feats, [5, 6], bootstrap=bootstrap, on_member=lambda k, m: seen.append(k)
        )
        assert stacked["out"]["kernel"][...].shape == (2, 8, 1)
        assert [m["seed"] for m in members] == [5, 6]
        assert all(m["probe_val_auc"] > 0.8 for m in members), members
        w = np.asarray(stacked["out"]["kernel"][...])
        assert not np.allclose(w[0], w[1])
    assert seen == [0, 1, 0, 1]
    b = probe.bootstrap_rows(200, 5)
    assert len(b) == 200 and len(np.unique(b)) < 200
    np.testing.assert_array_equal(b, probe.bootstrap_rows(200, 5))


def test_ensemble_options_are_checked():
    c = load_config("configs/default.py:smoke").reward
    assert reward.RewardConfig.from_config(c).ensemble_size == 0
    c.update(ensemble_size=3)  # smoke fine-tunes (steps 30): the trunk is not frozen
    with pytest.raises(ConfigError, match=r"ensemble_size=3 needs a frozen trunk.*steps=0"):
        reward.RewardConfig.from_config(c)
    c.update(steps=0, ensemble_size=1)
    with pytest.raises(ConfigError, match="ensemble_size must be 0"):
        reward.RewardConfig.from_config(c)
    c.ensemble_size = 2
    assert reward.RewardConfig.from_config(c).ensemble_bootstrap is True
    del c["ensemble_size"], c["ensemble_bootstrap"]  # configs written before the option
    assert reward.RewardConfig.from_config(c).ensemble_size == 0
