"""`girl sweep`: grid parsing and its one-line errors, the table / resume logic with a stand-in
PPO, and one end-to-end sweep of real PPO cells on a tiny workdir (slow)."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reliability"))

from helpers import CONFIG, assert_one_line_error, run_cli  # noqa: E402

from girl_jax import sweep  # noqa: E402
from girl_jax.errors import ConfigError  # noqa: E402
from girl_jax.metrics import read_metrics  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- parsing


def test_parse_grid_and_seeds():
    grid = sweep.parse_grid(
        ["ppo.advantage=grpo,rloo", "--config.ppo.kl_coef=0.05, 0.2", "ppo.x=[1,2],(3, 4),'a,b'"]
    )
    assert grid == [
        ("ppo.advantage", ["grpo", "rloo"]),
        ("ppo.kl_coef", ["0.05", "0.2"]),
        ("ppo.x", ["[1,2]", "(3, 4)", "'a,b'"]),
    ]
    assert sweep.parse_seeds("0, 1,2", 7) == [0, 1, 2]
    assert sweep.parse_seeds(None, 7) == [7]
    name = sweep.default_name(grid[:2])
    assert name.startswith("advantage-kl_coef-") and name == sweep.default_name(grid[:2])
    assert name != sweep.default_name([("ppo.advantage", ["grpo"]), grid[1]])
    params = (("ppo.advantage", "grpo"), ("ppo.kl_coef", "0.05"))
    assert sweep.cell_id(params, 1) == "ppo.advantage=grpo,ppo.kl_coef=0.05,seed=1"
    assert sweep.cell_id((("ppo.x", "[1, 2]"),), 0) == "ppo.x=_1,_2_,seed=0"
    assert len(sweep.cell_id((("ppo.x", "v" * 400),), 0)) < 200


@pytest.mark.parametrize(
    "items,piece",
    [
        (["foo"], "expected KEY=V1,V2"),
        (["=1,2"], "expected KEY=V1,V2"),
        (["ppo.kl_coef="], "empty value"),
        (["ppo.kl_coef=0.1,,0.2"], "empty value"),
        (["ppo.kl_coef=0.1,0.1"], "repeated"),
        (["ppo.kl_coef=0.1", "ppo.kl_coef=0.2"], "given twice"),
        (["sft.steps=1,2"], "PPO settings only"),
        (["seed=1,2"], "--seeds"),
    ],
)
def test_parse_grid_errors(items, piece):
    with pytest.raises(ConfigError, match=piece):
        sweep.parse_grid(items)


@pytest.mark.parametrize(
    "args,pieces",
    [
        (["--grid", "foo"], ["--grid 'foo'", "KEY=V1,V2"]),
        (["--grid", "ppo.kl_coef="], ["empty value"]),
        (["--grid", "ppo.nope=1,2"], ["unknown config key config.ppo.nope"]),
        (["--grid", "ppo.kl_coef=abc"], ["config.ppo.kl_coef", "expected float"]),
        (["--grid", "ppo.advantage=gae,bogus"], ["advantage=bogus", "config.ppo.advantage"]),
        (["--grid", "ppo.group_size=1"], ["group_size"]),  # smoke's advantage is grpo
        (["--seeds", "0,x"], ["--seeds"]),
        (["--name", "a/b"], ["--name"]),
        ([], ["final.json is missing", "girl run"]),  # the empty workdir has no finished stages
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, pieces):
    res = run_cli(["sweep", "--config", CONFIG, "--workdir", str(tmp_path / "w"), *args])
    assert_one_line_error(res, *pieces)
    assert not os.path.exists(tmp_path / "w" / "sweeps")


# ---------------------------------------------------------------- table and resume


def _fake_workdir(root) -> str:
    w = os.path.join(root, "w")
    for stage in sweep.SHARED_STAGES:
        os.makedirs(os.path.join(w, stage))
        with open(os.path.join(w, stage, "final.json"), "w") as f:
            json.dump({"step": 1}, f)
    return w


def _fake_ppo(calls, *, fail_on=None):
    """Writes what the real PPO stage writes (metrics, eval.json, final.json), numbers made up."""

    def train_and_evaluate(config, workdir):
        calls.append((config.ppo.advantage, config.ppo.kl_coef, config.seed))
        for stage in sweep.SHARED_STAGES:  # the finished stages are reachable from the cell
            assert os.path.isfile(os.path.join(workdir, stage, "final.json"))
            assert os.path.islink(os.path.join(workdir, stage))
        if fail_on == (config.ppo.kl_coef, config.seed):
            raise KeyboardInterrupt  # killed mid-cell
        out = os.path.join(workdir, "ppo")
        os.makedirs(out, exist_ok=True)
        k, s = config.ppo.kl_coef, config.seed
        true = {0: 0.2, 2: 0.2 + 0.1 / (1 + k), 4: 0.2 + 0.05 / (1 + k) + 0.01 * s}
        proxy = {0: 0.0, 2: 0.5, 4: 1.0 + s}
        rows = [{"step": 0, "eval_proxy_reward": 0.0, "eval_true_match_rate": 0.2}]
        for it in (1, 2, 3, 4):
            rows.append({"step": it, "kl": it / k / 10, "proxy_reward": 0.1 * it})
            if it in true:
                rows[-1].update(eval_proxy_reward=proxy[it], eval_true_match_rate=true[it])
        with open(os.path.join(out, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        result = dict(
            proxy_reward_start=proxy[0],
            proxy_reward_end=proxy[4],
            true_match_rate_start=true[0],
            true_match_rate_end=true[4],
            parse_rate_end=1.0,
            kl_end=rows[-1]["kl"],
        )
        with open(os.path.join(out, "eval.json"), "w") as f:
            json.dump(result, f)
        with open(os.path.join(out, "final.json"), "w") as f:
            json.dump({"step": 2}, f)
        time.sleep(0.01)
        return result

    return train_and_evaluate


GRID = ["ppo.advantage=grpo,rloo", "ppo.kl_coef=0.05,0.2"]
OVERRIDES = ["ppo.group_size=2"]


def _config(*extra):
    from girl_jax.configuration import load_config

    return load_config(CONFIG, [*OVERRIDES, *extra])


def test_sweep_table_png_and_resume_with_stand_in_ppo(tmp_path, monkeypatch):
    from girl_jax.stages import ppo

    w = _fake_workdir(tmp_path)
    calls = []
    monkeypatch.setattr(ppo, "train_and_evaluate", _fake_ppo(calls, fail_on=(0.2, 1)))
    with pytest.raises(KeyboardInterrupt):  # the 4th cell is killed
        sweep.run(_config(), w, GRID, "0,1", name="t")
    assert len(calls) == 4
    sweep_dir = os.path.join(w, "sweeps", "t")
    partial = json.load(open(os.path.join(sweep_dir, "table.json")))
    assert [r["n_seeds"] for r in partial["rows"]] == [2, 1, 0, 0]

    calls.clear()
    monkeypatch.setattr(ppo, "train_and_evaluate", _fake_ppo(calls))
    table = sweep.run(_config(), w, GRID, "0,1", name="t")
    assert calls == [("grpo", 0.2, 1), ("rloo", 0.05, 0), ("rloo", 0.05, 1), ("rloo", 0.2, 0)] + [
        ("rloo", 0.2, 1)
    ]
    assert table == json.load(open(os.path.join(sweep_dir, "table.json")))
    assert len(table["rows"]) == 4 and len(table["cells"]) == 8
    assert all(r["n_seeds"] == 2 and r["seeds"] == [0, 1] for r in table["rows"])
    row = table["rows"][1]
    assert row["params"] == {"ppo.advantage": "grpo", "ppo.kl_coef": 0.2}
    gains = [0.05 / 1.2 + 0.01 * s for s in (0, 1)]
    assert row["true_match_gain"]["mean"] == pytest.approx(sum(gains) / 2)
    assert row["true_match_gain"]["std"] == pytest.approx(0.01 / 2**0.5)
    assert row["proxy_gain"]["values"] == [1.0, 2.0]
    assert row["wall_time_s"]["n"] == 2 and row["overoptimisation"]["points"] == 3
    over = row["overoptimisation"]  # true reward rises, then falls: a peak inside the run
    assert over["true_peak_within_run"] and over["true"]["beta"] > 0
    cell = os.path.join(sweep_dir, "cells", "ppo.advantage=grpo,ppo.kl_coef=0.2,seed=1")
    assert os.readlink(os.path.join(cell, "sft")) == os.path.join("..", "..", "..", "..", "sft")
    md = open(os.path.join(sweep_dir, "table.md")).read()
    assert "| advantage | kl_coef | true match gain |" in md
    assert "| grpo | 0.2 | 0.0467 ± 0.0071 |" in md
    with open(os.path.join(sweep_dir, "overoptimisation.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC

    # a rerun skips every finished cell and keeps the recorded wall times
    calls.clear()
    again = sweep.run(_config(), w, GRID, "0,1", name="t")
    assert calls == [] and again["rows"] == table["rows"]
    # other settings for the same cells: refused, nothing mixed
    with pytest.raises(ConfigError, match="config.ppo.iterations: 4 then, 5 now"):
        sweep.run(_config("ppo.iterations=5"), w, GRID, "0,1", name="t")
    # a wider seed list reuses the finished seeds
    sweep.run(_config(), w, GRID, "0,1,2", name="t")
    assert len(calls) == 4 and all(c[2] == 2 for c in calls)


# ---------------------------------------------------------------- end to end


# The cells' PPO settings on top of the shared tiny run's (tests/tiny_run.py: its data, sft and
# reward stages are the sweep's starting point, so this test trains no SFT or reward model).
CELL_PPO = (
    "--config.ppo.batch_size=8",
    "--config.ppo.group_size=2",
    "--config.ppo.advantage=grpo",
    "--config.ppo.epochs=1",
    "--config.ppo.checkpoint_every=2",
)


@pytest.mark.slow
def test_sweep_end_to_end(tiny_run, tmp_path, monkeypatch):
    """A 2 x 2 grid x 2 seeds of real PPO cells from the shared tiny run's SFT and reward model
    (tests/tiny_run.py), via the CLI.

    The axes are kl_coef (a value in the KL controller's state) and eval_every (host side
    only), so every cell runs the same XLA programs: with the persistent compilation cache
    that `girl` turns on, only the first cell compiles.
    """
    w = tiny_run.copy(str(tmp_path / "w"), stages=sweep.SHARED_STAGES)
    overrides = [*tiny_run.overrides, *CELL_PPO]
    argv = ["sweep", "--config", CONFIG, "--workdir", w, *overrides, "--seeds", "0,1"]
    # The tiny RM (8 steps) can tie the samples of a group; GRPO's advantages are then float
    # noise that whitening and Adam turn into the update. With `reuse_rollout_forward` the old
    # log-probs come from a linearized forward whose rounding differs from the reference
    # forward's by ~1e-8 (the KL at the first iteration is then noise, not exactly 0), and that
    # noise differs between the batched (vmapped) and the solo program: the cells part ways by
    # chance. The reuse under vmap: tests/test_sweep_vmap.py (non-tied rewards).
    argv += ["--config.ppo.reuse_rollout_forward=False"]
    argv += ["--grid", "ppo.kl_coef=0.05,0.2", "--grid", "ppo.eval_every=1,2", "--name", "e2e"]
    t0 = time.time()
    res = run_cli(argv)
    print(f"sweep of 8 cells: {time.time() - t0:.1f}s")
    print("\n".join(line for line in res.stderr.splitlines() if line.startswith("sweep ")))
    assert res.code == 0 and res.error is None, (res.error, res.stderr[-3000:])
    assert sum("start (sweep elapsed" in line for line in res.stderr.splitlines()) == 8
    sweep_dir = os.path.join(w, "sweeps", "e2e")
    table = json.load(open(os.path.join(sweep_dir, "table.json")))
    assert len(table["rows"]) == 4
    for row in table["rows"]:
        assert row["n_seeds"] == 2 and row["seeds"] == [0, 1]
        assert row["kl_end"]["n"] == 2 and row["parse_rate_end"]["n"] == 2
        assert row["true_match_gain"]["n"] == 2 and row["wall_time_s"]["mean"] > 0
        points = 3 if row["params"]["ppo.eval_every"] == 1 else 2
        assert row["overoptimisation"]["points"] == points
    for cell in table["cells"]:
        ppo_dir = os.path.join(w, cell["dir"], "ppo")
        assert os.path.isfile(os.path.join(ppo_dir, "final.json"))
        assert os.path.isfile(os.path.join(ppo_dir, "overoptimisation.png"))
    with open(os.path.join(sweep_dir, "overoptimisation.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.isfile(os.path.join(sweep_dir, "table.md"))

    # rerun: every cell is skipped, PPO is never called
    from girl_jax.stages import ppo

    calls = []
    monkeypatch.setattr(ppo, "train_and_evaluate", lambda *a: calls.append(a))
    res = run_cli(argv)
    assert res.code == 0 and res.error is None, (res.error, res.stderr[-3000:])
    assert calls == [] and res.stderr.count("done, skipped") == 8
    assert json.load(open(os.path.join(sweep_dir, "table.json")))["rows"] == table["rows"]
    monkeypatch.undo()

    # --vmap: the same 8 cells as 2 programs (eval_every is static: 2 groups of kl_coef x seed),
    # and every vmapped cell follows the trajectory of the same cell run alone
    argv_v = [*argv[:-1], "e2ev", "--vmap"]
    res = run_cli(argv_v)
    assert res.code == 0 and res.error is None, (res.error, res.stderr[-3000:])
    assert res.stderr.count("cells, vmapped): start") == 2
    assert "start (sweep elapsed" not in res.stderr  # no cell ran alone
    vtable = json.load(open(os.path.join(w, "sweeps", "e2ev", "table.json")))
    assert [r["n_seeds"] for r in vtable["rows"]] == [2, 2, 2, 2]
    for solo_cell, v_cell in zip(table["cells"], vtable["cells"]):
        assert solo_cell["id"] == v_cell["id"]
        rows = [read_metrics(os.path.join(w, c["dir"], "ppo")) for c in (solo_cell, v_cell)]
        assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]]
        # The first iteration's rollout (the untouched policy: same samples, same rewards) agrees;
        # after it, the tiny RM's tied groups can make GRPO's update float noise (see above), which
        # Adam amplifies differently in the batched program: the cells may part ways by chance.
        # That vmapped cells follow their solo trajectories is tests/test_sweep_vmap.py's job
        # (non-tied rewards, several iterations).
        for key in ("kl", "reward"):
            a, b = ([r for r in side if key in r][0] for side in rows)  # its first record
            assert a["step"] == b["step"]
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), (v_cell, key)
        for row in rows[1]:
            assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        ev = json.load(open(os.path.join(w, v_cell["dir"], "ppo", "eval.json")))
        assert ev["vmap_group_size"] == 4
    res = run_cli(argv_v)  # rerun: both groups skipped
    assert res.code == 0 and res.stderr.count("done, skipped") == 2
