"""The held-out judge (reward.holdout_judge) and PPO's checkpoint selection by it
(ppo.select=judge): a head fitted on labels the reward model never trained on, and the
evaluated PPO step it rates best becomes the stage's final model."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from stage_workdirs import untrained_sft_workdir  # tests/stages/stage_workdirs.py

from girl_jax import checkpoint as ckpt_mod
from girl_jax import metrics
from girl_jax.configuration import load_config
from girl_jax.data import prepare
from girl_jax.errors import CheckpointError, ConfigError
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.stages import ppo, reward
from girl_jax.stages.ppo import evaluation
from girl_jax.stages.reward import judge as judge_mod


def _config(holdout_judge=True, **ppo_kw):
    config = load_config("configs/default.py:smoke")
    config.data.update(num_seekers=120, num_jobs=30)
    config.model.update(d_model=32, num_layers=1, num_heads=2, max_len=128)
    config.sft.update(max_prompt_len=64, max_response_len=48, num_eval_samples=8)
    config.reward.update(steps=0, probe_epochs=3, probe_batch_size=128, head_hidden=16)
    config.reward.update(batch_size=128, holdout_judge=holdout_judge, feature_layer=1)
    config.ppo.update(iterations=3, batch_size=8, group_size=2, epochs=1, max_new_tokens=8)
    config.ppo.update(eval_every=1, checkpoint_every=3, num_eval_prompts=8, keep=1)
    config.ppo.update(learning_rate=3e-3, missing_eos_penalty=None, **ppo_kw)
    return config


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
    """Prepared data and a final (untrained: its quality does not matter here) SFT model."""
    workdir = str(tmp_path_factory.mktemp("judge") / "base")
    return workdir, untrained_sft_workdir(_config(), workdir)


@pytest.fixture(scope="module")
def judged_workdir(base_workdir, tmp_path_factory):
    """The reward stage run twice on the same SFT model: without and with the judge."""
    base, vocab = base_workdir
    out = {}
    for name, flag in (("plain", False), ("judged", True)):
        workdir = str(tmp_path_factory.mktemp("judge") / name)
        shutil.copytree(base, workdir)
        out[name] = (workdir, reward.train_and_evaluate(_config(flag), workdir))
    return out, vocab


def test_judge_is_fitted_on_the_validation_labels_and_leaves_the_rm_alone(judged_workdir):
    runs, vocab = judged_workdir
    (plain_dir, plain), (workdir, result) = runs["plain"], runs["judged"]
    config = _config()
    assert "judge" not in plain and not os.path.exists(os.path.join(plain_dir, "reward", "judge"))
    # the reward model itself is the same with or without its judge
    main = {k: v for k, v in result.items() if k not in ("judge",)}
    assert json.dumps(main, sort_keys=True) == json.dumps(plain, sort_keys=True)

    info = json.load(open(os.path.join(workdir, "reward", "judge", "final.json")))
    data = prepare.load(workdir)
    val_df = data.split("validation")
    assert info["fitted_on"] == "validation" and info["rows"] == len(val_df) > 0
    assert info["size"] == 1 and info["seed"] == config.seed + judge_mod.JUDGE_SEED_OFFSET

    # eval.json's judge AUCs are the stored head's, recomputed here
    graphdef, params, heads = judge_mod.load_final_judge(workdir, config, vocab)
    fn = jax.jit(judge_mod.judge_scorer(graphdef, heads))
    max_len = config.sft.max_prompt_len + config.sft.max_response_len
    rep = result["judge"]
    for split in ("validation", "test"):
        arrs = reward.pointwise_arrays(data.tokenizer, data.split(split), max_len)
        s = reward.score_dataset(fn, params, arrs, 64)
        assert metrics.auc(arrs["label"], s) == pytest.approx(rep[f"{split}_auc"], abs=1e-6)
        rm_fn = jax.jit(lambda p, i, m, r: reward.scores(p, graphdef, i, m, r))
        rm = reward.score_dataset(rm_fn, params, arrs, 64)
        assert not np.allclose(s, rm)  # its own head, not the proxy's
    # the head is fitted to its rows: it ranks them better than chance
    assert rep["validation_auc"] > 0.6
    assert -1.0 <= rep["oracle_spearman_generated"] <= 1.0


def test_ppo_keeps_the_step_the_judge_rates_best(judged_workdir):
    runs, vocab = judged_workdir
    workdir = runs["judged"][0]
    config = _config(select="judge")
    result = ppo.train_and_evaluate(config, workdir)
    out_dir = os.path.join(workdir, "ppo")
    rows = [h for h in metrics.read_metrics(out_dir) if "eval_judge_reward" in h]
    assert [h["step"] for h in rows] == [0, 1, 2, 3]  # the start and every iteration
    judged = {h["step"]: h["eval_judge_reward"] for h in rows if h["step"] > 0}
    best = max(judged, key=lambda s: (judged[s], -s))
    assert result["selected_step"] == best and result["select"] == "judge"
    assert json.load(open(os.path.join(out_dir, "final.json")))["step"] == best
    chosen = next(h for h in rows if h["step"] == best)
    assert result["true_match_rate_end"] == chosen["eval_true_match_rate"]
    assert result["judge_reward_end"] == judged[best]
    assert result["judge_reward_start"] == rows[0]["eval_judge_reward"]

    # the hand-off (generation, the recommender) reads the chosen step's actor
    data = prepare.load(workdir)
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    _, final = ppo.load_final_actor(workdir, config, data, mesh, rules)
    ckpt = ckpt_mod.StageCheckpointer(out_dir)
    assert set(judged) <= set(ckpt.complete_steps())  # every evaluated step was kept (keep 1)
    abstract = {"actor": {"params": ckpt_mod.abstract_like(final)}}
    at = {s: ckpt.restore(s, abstract, partial=True)[0]["actor"]["params"] for s in judged}
    ckpt.close()
    leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]  # noqa: E731
    for a, b in zip(leaves(final), leaves(at[best])):
        np.testing.assert_array_equal(a, b)
    for step in set(judged) - {best}:  # the policy moved: another step is another model
        assert any(not np.array_equal(a, b) for a, b in zip(leaves(final), leaves(at[step])))


def test_select_step_reads_every_evaluation(tmp_path):
    rows = [
        {"step": 0, "eval_judge_reward": 9.0},  # the SFT start is never chosen
        {"step": 5, "eval_judge_reward": 0.5, "eval_true_match_rate": 0.1},
        {"step": 10, "eval_judge_reward": 0.7, "eval_true_match_rate": 0.2},
        {"step": 15, "kl": 1.0},
        {"step": 20, "eval_judge_reward": 0.7, "eval_true_match_rate": 0.3},  # tie: the first
    ]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    step, ev = evaluation.select_step(str(tmp_path), 20, "judge")
    assert step == 10 and ev == {"eval_judge_reward": 0.7, "eval_true_match_rate": 0.2}
    assert evaluation.select_step(str(tmp_path), 20, "last") == (20, None)
    assert evaluation.select_step(str(tmp_path / "none"), 20, "judge") == (20, None)


@pytest.mark.parametrize(
    "section, key, value, match",
    [
        ("reward", "steps", 10, "holdout_judge needs a frozen trunk"),
        ("reward", "objective", "pairwise", "holdout_judge needs config.reward.objective"),
        ("ppo", "select", "best", "config.ppo.select must be last or judge"),
    ],
)
def test_bad_judge_settings_are_config_errors(section, key, value, match):
    config = _config(True)
    config[section][key] = value
    with pytest.raises(ConfigError, match=match):
        if section == "reward":
            reward.RewardConfig.from_config(config.reward)
        else:
            ppo.PPOConfig.from_config(config.ppo)


def test_select_judge_without_a_judge_says_what_to_run(base_workdir, tmp_path):
    base, _ = base_workdir
    workdir = str(tmp_path / "w")
    shutil.copytree(base, workdir)
    config = _config(False)
    reward.train_and_evaluate(config, workdir)
    config = _config(False, select="judge")
    with pytest.raises(CheckpointError, match="reward.holdout_judge"):
        ppo.train_and_evaluate(config, workdir)


def test_sweep_vmap_refuses_select_judge():
    from girl_jax import sweep_vmap

    cell = type("Cell", (), {"config": _config(True, select="judge"), "ppo_dir": "/nonexistent"})
    with pytest.raises(ConfigError, match="--vmap: ppo.select=judge"):
        sweep_vmap.run_group([cell])
