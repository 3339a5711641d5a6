"""PPO's host reward sources end to end on the tiny run: a gold (oracle) run is marked as such,
a user's reward function is called, and a bad one stops the run with one line, corrupting
nothing (the last checkpoint stays restorable; a rerun with a good function finishes)."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
from helpers import CONFIG, TINY, assert_one_line_error, run_cli

STAGES = ["data", "sft", "reward"]


def _ppo(workdir, *extra):
    return run_cli(["ppo", "--config", CONFIG, "--workdir", workdir, *TINY, *extra])


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    (tmp_path / "tiny_user_rewards.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            CALLS = []

            def words(cvs, jds, seeker_ids):
                CALLS.append(len(jds))
                return np.array([len(j.split()) / 10 for j in jds])

            def late_nan(cvs, jds, seeker_ids):
                CALLS.append(len(jds))
                out = np.zeros(len(jds))
                if len(CALLS) >= 2:  # the second iteration: after a checkpoint at 1
                    out[0] = np.nan
                return out

            def raises(cvs, jds, seeker_ids):
                raise KeyError("cv")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tiny_user_rewards"
    sys.modules.pop("tiny_user_rewards", None)


@pytest.mark.slow
def test_gold_reward_run_is_marked(tiny_run, tmp_path):
    workdir = tiny_run.copy(str(tmp_path / "w"), STAGES)
    res = _ppo(
        workdir,
        "--config.ppo.reward=oracle",
        "--config.ppo.advantage=rloo",
        "--config.ppo.group_size=2",
    )
    assert res.code == 0, res.stderr[-2000:]
    ev = json.load(open(os.path.join(workdir, "ppo", "eval.json")))
    assert ev["gold_reward"] is True and ev["reward"] == "oracle"
    rows = [json.loads(x) for x in open(os.path.join(workdir, "ppo", "metrics.jsonl"))]
    assert any("reward_oracle" in r for r in rows)
    assert os.path.isfile(os.path.join(workdir, "ppo", "overoptimisation.png"))


@pytest.mark.slow
def test_user_function_is_called_and_bad_ones_stop_cleanly(tiny_run, tmp_path, user_rewards):
    mod = sys.modules.get(user_rewards) or __import__(user_rewards)
    workdir = tiny_run.copy(str(tmp_path / "w"), STAGES)
    res = _ppo(workdir, f"--config.ppo.reward=model,python:{user_rewards}:raises:0.5")
    assert_one_line_error(res, f"python:{user_rewards}:raises", "iteration 1", "KeyError")
    assert not os.path.exists(os.path.join(workdir, "ppo", "final.json"))

    res = _ppo(workdir, f"--config.ppo.reward=python:{user_rewards}:late_nan")
    assert_one_line_error(res, f"python:{user_rewards}:late_nan", "iteration 2", "non-finite")
    ckpts = os.listdir(os.path.join(workdir, "ppo", "checkpoints"))
    assert "1" in ckpts and "2" not in ckpts, ckpts  # iteration 1 saved, nothing after

    mod.CALLS.clear()
    res = _ppo(workdir, f"--config.ppo.reward=python:{user_rewards}:words")
    assert res.code == 0, res.stderr[-2000:]
    assert len(mod.CALLS) == 1  # resumed from iteration 1: one iteration left
    assert json.load(open(os.path.join(workdir, "ppo", "eval.json")))["gold_reward"] is False
