"""Config and missing-checkpoint errors: exit 2, one line naming the key / stage, workdir intact."""

from __future__ import annotations

import os

import pytest
from helpers import CONFIG, TINY, assert_one_line_error, run_cli, tree_hashes


def _girl(cmd: str, workdir: str, *extra: str):
    return run_cli([cmd, "--config", CONFIG, "--workdir", workdir, *TINY, *extra])


# ---------------------------------------------------------------- rejected while loading


LOAD_ERRORS = [
    (["--config.sft.nope=1"], "config.sft.nope"),
    (["--config.nosuchsection.steps=1"], "config.nosuchsection"),
    (["--config.sft.steps=-3"], "config.sft.steps"),
    (["--config.sft.batch_size=0"], "config.sft.batch_size"),
    (["--config.data.num_seekers=-1"], "config.data.num_seekers"),
    (["--config.ppo.learning_rate=-0.1"], "config.ppo.learning_rate"),
    (["--config.sft.steps=abc"], "config.sft.steps"),
    (["--config.sft.steps=1.5"], "config.sft.steps"),
    (["--config.sft.steps=[1,2]"], "config.sft.steps"),
    (["--config.model.remat=maybe"], "config.model.remat"),
    (["--config.ppo.kl_coef=fast"], "config.ppo.kl_coef"),
    (["--config.mesh.data=0"], "mesh.data"),
    (["--config.mesh.fsdp=-2"], "mesh.fsdp"),
    (["--config.ppo.minibatches=3"], "config.ppo.minibatches"),
    (["--config.sft.steps"], "--config.sft.steps"),
]


@pytest.mark.parametrize("extra,key", LOAD_ERRORS, ids=[e[0][0] for e in LOAD_ERRORS])
def test_bad_override_is_one_line_naming_the_key(tmp_path, extra, key):
    workdir = str(tmp_path / "w")
    res = _girl("run", workdir, *extra)
    assert_one_line_error(res, key)
    assert not os.path.exists(workdir), "a rejected config must not create the workdir"


def test_missing_config_file_and_unknown_variant(tmp_path):
    res = run_cli(["run", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")])
    assert_one_line_error(res, "nope.py")
    bad = CONFIG.replace(":smoke", ":huge")
    res = run_cli(["run", "--config", bad, "--workdir", str(tmp_path / "w")])
    assert_one_line_error(res, "default.py", "huge")


def test_config_file_with_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def get_config(arg=None):\n    return {'a': 1\n")
    res = run_cli(["run", "--config", str(path), "--workdir", str(tmp_path / "w")])
    assert_one_line_error(res, "broken.py")


# ---------------------------------------------------------------- rejected at the stage


STAGE_ERRORS = [
    ("sft", ["--config.mesh.data=3"], "mesh.data"),
    ("sft", ["--config.mesh.data=8", "--config.sft.batch_size=12"], "sft.batch_size"),
    ("sft", ["--config.sft.keep=0"], "config.sft.keep"),
    (
        "reward",
        ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.reward.batch_size=12"],
        "reward.batch_size",
    ),
    ("reward", ["--config.reward.objective=listwise"], "config.reward.objective"),
    ("ppo", ["--config.ppo.advantage=nope"], "config.ppo.advantage"),
    ("ppo", ["--config.ppo.on_nonfinite=maybe"], "config.ppo.on_nonfinite"),
]


@pytest.mark.parametrize(
    "stage,extra,key", STAGE_ERRORS, ids=[f"{s}:{e[-1]}" for s, e, _ in STAGE_ERRORS]
)
def test_stage_config_error_leaves_workdir_intact(tiny_run, tmp_path, stage, extra, key):
    before_stage = {"sft": ["data"], "reward": ["data", "sft"], "ppo": ["data", "sft", "reward"]}
    workdir = tiny_run.copy(str(tmp_path / "w"), before_stage[stage])
    before = tree_hashes(workdir)
    res = _girl(stage, workdir, *extra)
    assert_one_line_error(res, key)
    after = tree_hashes(workdir)
    before.pop("config.json"), after.pop("config.json", None)  # see the test below
    assert after == before, "a failed command changed files already in the workdir"


def test_failed_command_does_not_overwrite_saved_config(tiny_run, tmp_path):
    """config.json is what `girl generate` reads: a command that fails must not replace it."""
    workdir = tiny_run.copy(str(tmp_path / "w"), ["data"])
    before = tree_hashes(workdir)
    res = _girl("sft", workdir, "--config.mesh.data=3")
    assert_one_line_error(res, "mesh.data")
    assert tree_hashes(workdir) == before


@pytest.mark.parametrize(
    "extra,key",
    [
        (["--config.mesh.data=3"], "mesh.data"),
        (["--config.ppo.advantage=nope"], "config.ppo.advantage"),
        (["--config.reward.objective=listwise"], "config.reward.objective"),
        (["--config.reward.steps=-1"], "config.reward.steps"),
        (["--config.reward.head=attention"], "config.reward.head"),
        (["--config.recommend.predictors=['nope']"], "config.recommend.predictors"),
        (["--config.mesh.data=8", "--config.ppo.batch_size=12"], "ppo.batch_size"),
    ],
    ids=[
        "mesh",
        "ppo.advantage",
        "reward.objective",
        "reward.steps",
        "reward.head",
        "recommend.predictors",
        "ppo.batch",
    ],
)
def test_run_rejects_a_late_stage_config_before_training(tmp_path, monkeypatch, extra, key):
    """`girl run` must not train SFT for an hour and then fail on a PPO / mesh setting."""
    from girl_jax import pipeline

    def must_not_run(name):
        def stage(config, workdir):
            raise AssertionError(f"stage {name} started although the config is invalid")

        return stage

    monkeypatch.setattr(pipeline, "_stage_fn", must_not_run)
    res = _girl("run", str(tmp_path / "w"), *extra)
    assert_one_line_error(res, key)


# ---------------------------------------------------------------- missing inputs


@pytest.mark.parametrize(
    "stage,have,first",
    [
        ("reward", [], "sft"),
        ("ppo", ["data", "sft"], "reward"),
        ("recommend", ["data", "sft", "reward", "ppo"], "generated"),
    ],
)
def test_stage_without_its_input_says_what_to_run_first(tiny_run, tmp_path, stage, have, first):
    if have:
        workdir = tiny_run.copy(str(tmp_path / "w"), have)
    else:
        workdir = str(tmp_path / "w")
        os.makedirs(workdir)
    before = tree_hashes(workdir)
    res = _girl(stage, workdir)
    line = assert_one_line_error(res, f"'{first}'")
    assert f"girl {first}" in line or "girl run" in line, line
    after = tree_hashes(workdir)
    for path, digest in before.items():
        if path != "config.json":
            assert after.get(path) == digest, f"{path} changed"
