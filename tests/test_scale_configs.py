"""The scale configs: composed from configs/_base.py, and their `:smoke` variants run on a CPU."""

import contextlib
import importlib.util
import io
import json
import os
import signal

import pytest

from girl_jax.configuration import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE_CONFIGS = ["gpt2_xl_ppo", "llama2_7b_ppo"]
# The 70B config composes from the same preamble; its :smoke keeps tensor parallelism (2 ways) and
# grouped-query attention, a code path of its own, so it runs through `girl run` too.
SMOKE_SHAPED = [*SCALE_CONFIGS, "llama2_70b_ppo"]


def _path(name):
    return os.path.join(ROOT, "configs", f"{name}.py")


def _default():
    spec = importlib.util.spec_from_file_location("_test_default", _path("default"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accelerator(c):
    # Added with the CPU's 32-row passes (configs/default.py, 2026-12-05): a scale config
    # decodes every rollout row in one pass and generates in batches of 128.
    c.ppo.update(rollout_rows_per_pass=0)
    c.generate.batch_size = 128


def _gpt2_xl_before(d):
    # configs/gpt2_xl_ppo.py's get_config before configs/_base.py, verbatim (+ `accelerator`).
    c = d.get_config(None)
    c.name = "gpt2_xl_ppo"
    c.tokenizer.vocab_size = 50257
    c.model = d.model_config(d_model=1600, num_layers=48, num_heads=25, max_len=1024)
    c.model.update(vocab_size=50257, dtype="bfloat16", remat=True, scan_layers=True)
    c.mesh.update(data=4, fsdp=-1, tensor=1)
    c.sft.update(batch_size=64, max_prompt_len=256, max_response_len=256)
    c.reward.update(batch_size=64, feature_layer=0, match_features=False)
    accelerator(c)
    c.ppo.update(batch_size=64, minibatches=2, max_new_tokens=256)
    return c


def _llama2_7b_before(d):
    # configs/llama2_7b_ppo.py's get_config before configs/_base.py, verbatim (+ `accelerator`).
    c = d.get_config(None)
    c.name = "llama2_7b_ppo"
    c.tokenizer.vocab_size = 32000
    c.model = d.model_config(
        d_model=4096, num_layers=32, num_heads=32, max_len=4096, family="llama"
    )
    c.model.update(vocab_size=32000, mlp_dim=11008, dtype="bfloat16", remat=True, scan_layers=True)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.sft.update(
        batch_size=256, max_prompt_len=512, max_response_len=512, grad_accum=1, learning_rate=2e-5
    )
    c.reward.update(batch_size=256, learning_rate=1e-5, feature_layer=0, match_features=False)
    accelerator(c)
    c.ppo.update(
        batch_size=256,
        minibatches=4,
        epochs=2,
        max_new_tokens=256,
        learning_rate=1e-6,
        critic_learning_rate=5e-6,
    )
    c.sft.max_prompt_len = 512
    return c


@pytest.mark.parametrize(
    "name, before", [("gpt2_xl_ppo", _gpt2_xl_before), ("llama2_7b_ppo", _llama2_7b_before)]
)
def test_composed_config_resolves_as_before(name, before):
    now = load_config(_path(name)).to_dict()
    assert now == before(_default()).to_dict()
    # spot checks, so that a change to both sides of the comparison is seen too
    assert now["model"]["dtype"] == "bfloat16" and now["model"]["scan_layers"] is True
    assert now["reward"]["feature_layer"] == 0 and now["reward"]["match_features"] is False
    assert now["ppo"]["rollout_rows_per_pass"] == 0 and now["generate"]["batch_size"] == 128


@pytest.mark.parametrize("name", SMOKE_SHAPED)
def test_smoke_variant_keeps_the_code_path_with_tiny_shapes(name):
    full, smoke = load_config(_path(name)), load_config(_path(name) + ":smoke")
    assert smoke.name == f"{name}:smoke"
    for key in ("family", "dtype", "remat", "scan_layers", "lora_rank"):
        assert smoke.model[key] == full.model[key], key
    assert bool(smoke.model.mlp_dim) == bool(full.model.mlp_dim)
    assert (smoke.reward.feature_layer, smoke.reward.match_features) == (0, False)
    assert smoke.reward.head == full.reward.head and smoke.reward.steps == full.reward.steps
    assert smoke.ppo.advantage == full.ppo.advantage and smoke.data.source == "market"
    assert smoke.mesh.fsdp == -1  # FSDP over every local device
    assert smoke.model.d_model <= 64 and smoke.model.num_layers <= 2
    assert smoke.model.vocab_size <= 1024 and smoke.tokenizer.vocab_size <= 1024
    assert smoke.sft.steps <= 8 and smoke.ppo.iterations <= 2
    with pytest.raises(Exception, match="unknown variant"):
        load_config(_path(name) + ":huge")


def _girl(argv):
    from girl_jax import cli, preemption

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        preemption._installed = False
        preemption.reset()
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOKE_SHAPED)
def test_smoke_variant_runs_the_whole_pipeline(name, tmp_path):
    workdir = str(tmp_path / "run")
    code, _, err = _girl(["run", "--config", _path(name) + ":smoke", "--workdir", workdir])
    assert code == 0, err[-3000:]
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    for stage in ("sft", "reward", "ppo", "generated", "recommender"):
        assert stage in results, stage
    assert set(results["recommender"]) == {"Base", "GIRL-SFT", "GIRL"}
    assert 0.0 <= results["reward"]["auc"] <= 1.0
    with open(os.path.join(workdir, "config.json")) as f:
        used = json.load(f)
    assert used["name"] == f"{name}:smoke" and used["model"]["scan_layers"] is True
