"""No pickle, no remote code, no hub downloads in package code; half-written checkpoints unused."""

from __future__ import annotations

import os
import re
import shutil

from helpers import CONFIG as CONFIG_SPEC
from helpers import ROOT

PACKAGE = os.path.join(ROOT, "girl_jax")
FORBIDDEN = {
    "pickle": re.compile(
        r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b|pickle\.loads?\("
    ),
    "torch.load": re.compile(r"torch\.load\("),
    "trust_remote_code": re.compile(r"trust_remote_code"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "transformers from_pretrained": re.compile(r"(Auto\w+|transformers\.\w+)\.from_pretrained\("),
    "hub download": re.compile(r"hf_hub_download|snapshot_download|urllib\.request|requests\.get"),
}


def _sources():
    for dirpath, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def test_scanner_catches_each_pattern():
    samples = {
        "pickle": "import pickle",
        "torch.load": "w = torch.load(path)",
        "trust_remote_code": "AutoModel.x(p, trust_remote_code=True)",
        "allow_pickle=True": "np.load(p, allow_pickle=True)",
        "transformers from_pretrained": "AutoModel.from_pretrained('gpt2')",
        "hub download": "hf_hub_download('gpt2', 'x')",
    }
    for name, text in samples.items():
        assert FORBIDDEN[name].search(text), name


def test_package_code_has_no_unsafe_loading():
    hits = []
    for path in _sources():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                code = line.split("#", 1)[0]
                for name, pattern in FORBIDDEN.items():
                    if pattern.search(code):
                        hits.append(
                            f"{os.path.relpath(path, ROOT)}:{number}: {name}: {line.strip()}"
                        )
    assert not hits, "\n".join(hits)


def _steps_copy(tiny_run, tmp_path):
    src = os.path.join(tiny_run.workdir, "sft", "checkpoints")
    dst = tmp_path / "sft" / "checkpoints"
    shutil.copytree(src, dst)
    steps = sorted(int(s) for s in os.listdir(dst) if s.isdigit())
    return dst, steps


def test_orbax_temporary_directory_is_never_used(tiny_run, tmp_path):
    from girl_jax.checkpoint import StageCheckpointer

    dst, steps = _steps_copy(tiny_run, tmp_path)
    newest = steps[-1]
    # What a kill during a save leaves: the step being written, under Orbax's temporary name.
    shutil.copytree(dst / str(newest), dst / f"{newest + 4}.orbax-checkpoint-tmp-1700000000")
    ckpt = StageCheckpointer(str(tmp_path / "sft"))
    try:
        assert ckpt.latest_step() == newest
    finally:
        ckpt.close()


def test_step_directory_without_commit_marker_is_not_used(tiny_run, tmp_path):
    """checkpoint.py promises a step dir without its commit marker is never listed."""
    from girl_jax.checkpoint import StageCheckpointer

    dst, steps = _steps_copy(tiny_run, tmp_path)
    newest = steps[-1]
    half = dst / str(newest + 4)
    shutil.copytree(dst / str(newest), half)
    os.remove(half / "commit_success.txt")
    shutil.rmtree(half / "state" / "d")  # the array data never landed
    ckpt = StageCheckpointer(str(tmp_path / "sft"))
    try:
        assert ckpt.latest_step() == newest
    finally:
        ckpt.close()


def test_final_ppo_actor_loads_without_building_the_other_roles(tiny_run, monkeypatch):
    """`load_final_actor` reads only the actor's parameters: no critic, reward model or
    reference is built, and the parameters equal the actor of the full PPO state."""
    import jax
    import numpy as np

    from girl_jax import checkpoint as ckpt_mod
    from girl_jax.configuration import load_config
    from girl_jax.data import prepare
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import rules as rules_mod
    from girl_jax.stages import common, ppo

    config = load_config(CONFIG_SPEC, [o.removeprefix("--config.") for o in tiny_run.overrides])
    data = prepare.load(tiny_run.workdir)
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    with common.activate_rules(config):
        _, _, state, _, _, _ = ppo.build(config, tiny_run.workdir, data, mesh, rules)
        full, _, _ = ckpt_mod.restore_final_state(
            os.path.join(tiny_run.workdir, "ppo"), "ppo", ckpt_mod.abstract_like(state)
        )

        def no_build(*a, **k):
            raise AssertionError("load_final_actor built the whole PPO state")

        monkeypatch.setattr(ppo.driver, "build", no_build)
        _, params = ppo.load_final_actor(tiny_run.workdir, config, data, mesh, rules)
    want, got = jax.tree.leaves(full.actor.params), jax.tree.leaves(params)
    assert len(want) == len(got)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
