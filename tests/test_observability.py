"""What a finished run leaves: TensorBoard events, metrics.jsonl, plots, report, results.json.

One tiny end-to-end `girl run` (both predictors, all three feature sets; tests/tiny_run.py,
also the reliability tests') is shared by every test;
results.json is checked against the schema the report and the README promise (issue 7).
"""

import glob
import json
import math
import os
import shutil
import struct
import sys
import types

import ml_collections
import numpy as np
import pandas as pd
import pytest

from girl_jax.errors import ConfigError

slow = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURES = ("Base", "GIRL-SFT", "GIRL")
PREDICTORS = ("mlp", "dot")
TRAINING_STAGES = ("sft", "reward", "ppo")
# Tags each stage must log (besides everything in its metrics.jsonl, checked separately).
REQUIRED_TAGS = {
    "sft": {"loss", "grad_norm", "eval_loss", "true_match_rate"},
    "reward": {"loss", "eval_auc", "eval_logloss"},
    "ppo": {
        "proxy_reward",
        "kl",
        "kl_coef",
        "policy_loss",
        "eval_proxy_reward",
        "eval_true_match_rate",
    },
    "recommend": {"train_loss", "val_auc", "val_logloss"},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def run_dir(tiny_run):
    """The session's tiny run (tests/tiny_run.py: made once, shared with the reliability tests;
    both predictors, all three feature sets). Read only: tests that change it copy it first."""
    return tiny_run.workdir


def used(run_dir, key: str):
    """A setting of the config the run used (its config.json), e.g. "sft.steps"."""
    with open(os.path.join(run_dir, "config.json")) as f:
        value = json.load(f)
    for part in key.split("."):
        value = value[part]
    return value


def _stage_dirs(workdir):
    """(kind, directory) for every directory with its own MetricWriter."""
    out = [(s, os.path.join(workdir, s)) for s in TRAINING_STAGES]
    for feat in FEATURES:
        for pred in PREDICTORS:
            out.append(("recommend", os.path.join(workdir, "recommend", f"{feat}_{pred}_s0")))
    return out


# ---------------------------------------------------------------- TensorBoard


def read_tfrecords(path):
    """Records of a TFRecord file, CRCs checked (TensorBoard itself is not installed)."""
    from tensorboardX.record_writer import masked_crc32c

    records = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert header_crc == masked_crc32c(header), f"{path}: bad length CRC at byte {pos}"
        body = data[pos + 12 : pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert len(body) == length and body_crc == masked_crc32c(body), f"{path}: bad record"
        records.append(body)
        pos += 16 + length
    return records


def read_events(tb_dir):
    """{tag: {step: value}} for scalars and the set of all tags, from every event file."""
    from tensorboardX.proto import event_pb2

    files = sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*")))
    scalars, tags = {}, set()
    for path in files:
        for raw in read_tfrecords(path):
            event = event_pb2.Event.FromString(raw)
            for v in event.summary.value:
                tags.add(v.tag)
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, {})[event.step] = v.simple_value
    return files, scalars, tags


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@slow
def test_tensorboard_events_hold_every_logged_scalar(run_dir):
    for kind, d in _stage_dirs(run_dir):
        files, scalars, _ = read_events(os.path.join(d, "tensorboard"))
        assert files, f"no TensorBoard event file in {d}/tensorboard"
        missing = REQUIRED_TAGS[kind] - set(scalars)
        assert not missing, f"{d}: TensorBoard lacks scalar tags {sorted(missing)}"
        for rec in _jsonl(os.path.join(d, "metrics.jsonl")):
            for key, value in rec.items():
                if key == "step" or not isinstance(value, float | int) or not math.isfinite(value):
                    continue
                logged = scalars.get(key, {}).get(rec["step"])
                assert logged is not None, f"{d}: {key}@{rec['step']} not in TensorBoard"
                assert logged == pytest.approx(value, rel=1e-5, abs=1e-6), (d, key, rec["step"])


@slow
def test_tensorboard_has_generated_samples_as_text(run_dir):
    for stage in ("sft", "ppo"):
        _, _, tags = read_events(os.path.join(run_dir, stage, "tensorboard"))
        assert any(t.startswith("samples") for t in tags), f"{stage}: no text samples, tags {tags}"


# ---------------------------------------------------------------- metrics.jsonl


def _train_steps(total, every):
    return {s for s in range(1, total + 1) if s % every == 0 or s == total}


@slow
def test_metrics_jsonl_is_one_object_per_logged_step(run_dir):
    for _, d in _stage_dirs(run_dir):
        path = os.path.join(d, "metrics.jsonl")
        with open(path) as f:
            lines = f.read().splitlines()
        assert lines, f"{path} is empty"
        for n, line in enumerate(lines, 1):
            rec = json.loads(line)
            assert isinstance(rec, dict), f"{path}:{n} is not a JSON object"
            assert isinstance(rec.get("step"), int) and rec["step"] >= 0, f"{path}:{n}: step"
    sft = _jsonl(os.path.join(run_dir, "sft", "metrics.jsonl"))
    assert {r["step"] for r in sft if "loss" in r} == _train_steps(
        used(run_dir, "sft.steps"), used(run_dir, "sft.log_every")
    )
    assert {r["step"] for r in sft if "eval_loss" in r} == _train_steps(
        used(run_dir, "sft.steps"), used(run_dir, "sft.eval_every")
    )
    reward = _jsonl(os.path.join(run_dir, "reward", "metrics.jsonl"))
    assert {r["step"] for r in reward if "loss" in r} == _train_steps(
        used(run_dir, "reward.steps"), used(run_dir, "reward.log_every")
    )
    ppo = _jsonl(os.path.join(run_dir, "ppo", "metrics.jsonl"))
    assert [r["step"] for r in ppo if "proxy_reward" in r] == list(
        range(1, used(run_dir, "ppo.iterations") + 1)
    )
    assert ppo[0]["step"] == 0 and "eval_true_match_rate" in ppo[0], "PPO start evaluation"
    for r in ppo[1:]:  # each iteration's wall time and throughput
        assert r["iteration_seconds"] > 0
        assert r["samples_per_second"] * r["iteration_seconds"] == pytest.approx(
            used(run_dir, "ppo.batch_size")
        )


# ---------------------------------------------------------------- plots and report


def _check_png(path):
    from PIL import Image

    assert os.path.isfile(path), f"{path} missing"
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= 100, (path, im.size)


@slow
def test_png_plots_exist_and_are_valid(run_dir):
    for name in ("training_curves.png", "roc_test.png", os.path.join("ppo", "proxy_vs_true.png")):
        _check_png(os.path.join(run_dir, name))


@slow
def test_girl_report_rerenders_report_and_plots(run_dir, tmp_path):
    from girl_jax import cli

    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    gone = (
        "report.md",
        "results.json",
        "training_curves.png",
        "roc_test.png",
        os.path.join("ppo", "proxy_vs_true.png"),
    )
    for name in gone:
        os.remove(os.path.join(copy, name))
    assert cli.main(["report", copy]) == 0
    for name in gone:
        assert os.path.isfile(os.path.join(copy, name)), f"girl report did not rewrite {name}"
    with open(os.path.join(run_dir, "results.json")) as f:
        original = json.load(f)
    with open(os.path.join(copy, "results.json")) as f:
        rerendered = json.load(f)
    # NaN != NaN: compare the serialised forms.
    assert json.dumps(rerendered, sort_keys=True) == json.dumps(original, sort_keys=True)
    with open(os.path.join(copy, "report.md")) as f:
        report = f.read()
    with open(os.path.join(run_dir, "report.md")) as f:
        assert report == f.read().replace(run_dir, copy)
    assert "## Recommender (test split)" in report
    for feat in FEATURES:
        assert f"| {feat} |" in report
    for png in ("training_curves.png", "roc_test.png", "ppo/proxy_vs_true.png"):
        assert f"]({png})" in report
    _check_png(os.path.join(copy, "training_curves.png"))


# ---------------------------------------------------------------- results.json (issue 7)


def _finite(x, where):
    assert isinstance(x, float | int) and not isinstance(x, bool), f"{where}: {x!r} not a number"
    assert math.isfinite(x), f"{where}: {x!r} not finite"
    return x


def _rate(x, where):
    assert 0.0 <= _finite(x, where) <= 1.0, f"{where}: {x} outside [0, 1]"


def _recommender_table(table, where):
    assert set(table) == set(FEATURES), f"{where}: feature sets {sorted(table)}"
    for feat, row in table.items():
        assert set(row) == set(PREDICTORS), f"{where}.{feat}: predictors {sorted(row)}"
        for pred, cell in row.items():
            assert {"auc", "logloss"} <= set(cell), f"{where}.{feat}.{pred}: {sorted(cell)}"
            _rate(cell["auc"], f"{where}.{feat}.{pred}.auc")
            assert _finite(cell["logloss"], f"{where}.{feat}.{pred}.logloss") > 0


@slow
def test_oracle_generator_script_adds_an_upper_bound_row(run_dir, tmp_path):
    """scripts/oracle_generator.py trains the GIRL heads on the oracle's best real JD."""
    import importlib.util

    copy = str(tmp_path / "copy")
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    path = os.path.join(ROOT, "scripts", "oracle_generator.py")
    spec = importlib.util.spec_from_file_location("oracle_generator", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = os.path.join(ROOT, "configs", "default.py") + ":smoke"
    assert mod.main(["--workdir", copy, "--config", config]) == 0
    summary = json.load(open(os.path.join(copy, "oracle_generator", "summary.json")))
    own = json.load(open(os.path.join(copy, "recommend", "eval.json")))
    from sklearn.metrics import roc_auc_score

    from girl_jax.configuration import load_config
    from girl_jax.data import prepare
    from girl_jax.stages import generate, recommend

    cfg = load_config(config).recommend
    _, _, splits = recommend.interaction_index(prepare.load(copy).interactions, generate.load(copy))
    for split in ("test", "cold_start"):
        rows = summary[split]
        assert {"Base", "GIRL-SFT", "GIRL", "oracle-best JD"} <= set(rows)
        for feature in ("Base", "GIRL-SFT", "GIRL"):  # the run's own rows, unchanged
            assert rows[feature] == own[split][feature]
        oracle = rows["oracle-best JD"]
        assert set(oracle) == set(cfg.predictors)
        assert oracle != rows["GIRL"]  # other JD embeddings in the GIRL slot: other heads
        labels = np.asarray(splits[split]["label"])
        for pred, cell in oracle.items():
            # the reported AUC is the mean over seeds of the saved predictions' AUC
            aucs = []
            for seed in cfg.seeds:
                run = os.path.join(copy, "oracle_generator", f"GIRL_{pred}_s{seed}")
                logits = np.load(os.path.join(run, f"{split}_logits.npy"))
                assert logits.shape == labels.shape
                aucs.append(roc_auc_score(labels, logits))
            assert cell["auc"] == pytest.approx(np.mean(aucs), abs=1e-9)
            assert 0.0 <= cell["auc"] <= 1.0 and math.isfinite(cell["logloss"])


def test_results_json_schema(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        res = json.load(f)
    required = {
        "market",
        "sft",
        "reward",
        "ppo",
        "recommender",
        "recommender_cold_start",
        "timings_s",
    }
    assert required <= set(res), f"results.json lacks {sorted(required - set(res))}"

    m = res["market"]
    assert {"seekers", "jobs", "interactions", "positive_rate"} <= set(m)
    assert m["seekers"] == used(run_dir, "data.num_seekers") and m["jobs"] == used(
        run_dir, "data.num_jobs"
    )
    assert isinstance(m["interactions"], int) and m["interactions"] > 0
    assert 0.0 < _finite(m["positive_rate"], "market.positive_rate") < 1.0

    s = res["sft"]
    assert {"eval_loss", "true_match_rate", "parse_rate"} <= set(s)
    assert _finite(s["eval_loss"], "sft.eval_loss") > 0
    _rate(s["true_match_rate"], "sft.true_match_rate")
    _rate(s["parse_rate"], "sft.parse_rate")

    r = res["reward"]
    assert {"auc", "accuracy", "logloss"} <= set(r)
    _rate(r["auc"], "reward.auc")
    _rate(r["accuracy"], "reward.accuracy")
    assert _finite(r["logloss"], "reward.logloss") > 0

    p = res["ppo"]
    keys = {
        "proxy_reward_start",
        "proxy_reward_end",
        "true_match_rate_start",
        "true_match_rate_end",
        "kl_end",
    }
    assert keys <= set(p), f"ppo lacks {sorted(keys - set(p))}"
    for k in ("proxy_reward_start", "proxy_reward_end", "kl_end"):
        _finite(p[k], f"ppo.{k}")
    _rate(p["true_match_rate_start"], "ppo.true_match_rate_start")
    _rate(p["true_match_rate_end"], "ppo.true_match_rate_end")

    _recommender_table(res["recommender"], "recommender")
    _recommender_table(res["recommender_cold_start"], "recommender_cold_start")

    # the default decodes with the copy bias and the guard, so the generated stage also scores
    # plain greedy JDs (generate.policy_eval): both pairs in results.json, both rows in report.md
    g = res["generated"]
    names = [f"true_match_{n}{s}" for n in ("sft", "ppo") for s in ("", "_greedy")]
    assert set(names) <= set(g), f"generated lacks {sorted(set(names) - set(g))}"
    df = pd.read_parquet(os.path.join(run_dir, "generated", "generated.parquet"))
    for name in names:
        assert g[name] == pytest.approx(float(df[name].mean()))
    for n in ("sft", "ppo"):
        assert (df[f"jd_{n}"] != df[f"jd_{n}_greedy"]).any()  # two decodings, two texts
    report = open(os.path.join(run_dir, "report.md")).read()
    assert "SFT -> PPO (as decoded)" in report and "SFT -> PPO (greedy policy)" in report

    t = res["timings_s"]
    assert {"data", "sft", "reward", "ppo", "generated", "recommend"} <= set(t)
    for k, v in t.items():
        assert _finite(v, f"timings_s.{k}") >= 0


# ---------------------------------------------------------------- optional W&B mirror


class _FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, data, step=None):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def _fake_wandb():
    mod = types.ModuleType("wandb")
    mod.runs = []

    def init(**kwargs):
        mod.runs.append(_FakeRun(**kwargs))
        return mod.runs[-1]

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    mod.init, mod.Table = init, Table
    return mod


def _config(**wandb):
    c = ml_collections.ConfigDict({"seed": 0})
    if wandb:
        c.wandb = wandb
    return c


def test_wandb_writer_is_off_unless_enabled(monkeypatch, tmp_path):
    from girl_jax import wandb_writer

    monkeypatch.setitem(sys.modules, "wandb", None)  # any import attempt would raise
    assert wandb_writer.from_config(_config(), "sft", str(tmp_path)) is None
    assert wandb_writer.from_config(_config(enabled=False), "sft", str(tmp_path)) is None
    with pytest.raises(ConfigError, match="config.wandb.enabled"):
        wandb_writer.from_config(_config(enabled=True), "sft", str(tmp_path))


def test_wandb_writer_mirrors_metric_writer_calls(monkeypatch, tmp_path):
    from girl_jax import wandb_writer

    fake = _fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    workdir = tmp_path / "myrun"
    w = wandb_writer.from_config(
        _config(enabled=True, project="p", mode="offline"), "ppo", str(workdir)
    )
    w.write(3, {"kl": 0.25, "loss": float("nan"), "name": "text", "n": 2})
    w.write(4, {"skipped": None})  # nothing loggable: no call
    w.text(4, "samples", "a generated JD")
    w.close()
    (run,) = fake.runs
    assert run.kwargs["project"] == "p" and run.kwargs["mode"] == "offline"
    assert run.kwargs["name"] == "ppo" and run.kwargs["group"] == "myrun"
    assert run.kwargs["dir"] == str(workdir / "ppo") and run.kwargs["config"]["seed"] == 0
    assert run.logged[0] == (3, {"ppo/kl": 0.25, "ppo/n": 2.0})
    step, data = run.logged[1]
    assert step == 4 and data["ppo/samples"].data == [[4, "a generated JD"]]
    assert len(run.logged) == 2 and run.finished


def test_ppo_iteration_profile_script(run_dir, tmp_path, capsys):
    """scripts/ppo_iteration_profile.py times an iteration's pieces at both prompt widths."""
    import importlib.util

    path = os.path.join(ROOT, "scripts", "ppo_iteration_profile.py")
    spec = importlib.util.spec_from_file_location("ppo_iteration_profile", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = os.path.join(ROOT, "configs", "default.py") + ":smoke"
    out = str(tmp_path / "profile.json")
    args = ["--workdir", run_dir, "--config", config, "--iterations", "1", "--json-out", out]
    assert mod.main(args) == 0
    res = json.load(open(out))
    from girl_jax.configuration import load_config

    P = load_config(config).sft.max_prompt_len
    assert res["widths"]["full"] == P
    assert 8 <= res["widths"]["trimmed"] <= P and res["widths"]["trimmed"] % 8 == 0
    for width in ("full", "trimmed"):
        for piece in ("sample", "score", "update", "fused"):
            assert res["median_s"][width][piece] > 0 and res["first_call_s"][width][piece] > 0
    assert "fused iteration, full width / trimmed" in capsys.readouterr().out
