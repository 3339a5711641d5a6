"""Shared pieces of the reliability tests: tiny-run overrides, in-process CLI calls, hashes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "default.py") + ":smoke"

# The smoke config shrunk until the whole pipeline takes well under a minute of compute, with
# checkpoints every few steps so that kills land between and during saves.
TINY = (
    "--config.data.num_seekers=120",
    "--config.data.num_jobs=40",
    "--config.sft.steps=12",
    "--config.sft.checkpoint_every=4",
    "--config.sft.eval_every=12",
    "--config.sft.log_every=4",
    "--config.sft.max_prompt_len=64",
    "--config.sft.max_response_len=32",
    "--config.sft.num_eval_samples=8",
    "--config.reward.steps=8",
    "--config.reward.checkpoint_every=4",
    "--config.reward.eval_every=8",
    "--config.reward.log_every=4",
    "--config.ppo.iterations=2",
    "--config.ppo.checkpoint_every=1",
    "--config.ppo.eval_every=2",
    "--config.ppo.max_new_tokens=16",
    "--config.ppo.num_eval_prompts=8",
    "--config.generate.batch_size=128",
    "--config.recommend.epochs=1",
    "--config.recommend.seeds=[0]",
    "--config.recommend.predictors=['mlp','dot']",  # both: tests/test_observability.py
)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    error: BaseException | None = None  # an exception that escaped main(): a traceback


def run_cli(argv: list[str]) -> CliResult:
    """`girl_jax.cli.main(argv)` in this process; signal handlers and the stop flag restored."""
    from girl_jax import cli, preemption

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    out, err = io.StringIO(), io.StringIO()
    error = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(argv))
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception as exc:  # noqa: BLE001 - reported by the caller as a traceback
                code, error = -1, exc
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        preemption._installed = False
        preemption.reset()
    return CliResult(code, out.getvalue(), err.getvalue(), error)


def girl_lines(stderr: str) -> list[str]:
    """The lines the CLI itself printed (`girl: ...`), ignoring library logging."""
    return [line for line in stderr.splitlines() if line.startswith("girl:")]


def assert_one_line_error(res: CliResult, *pieces: str) -> str:
    """Exit 2, exactly one `girl: error:` line containing every piece, no traceback."""
    assert res.error is None, f"traceback: {type(res.error).__name__}: {res.error}"
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.code == 2, (res.code, res.stderr[-2000:])
    lines = [line for line in girl_lines(res.stderr) if line.startswith("girl: error:")]
    assert len(lines) == 1, res.stderr[-2000:]
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])
    return lines[0]


def tree_hashes(root: str) -> dict[str, str]:
    """{relative path: sha256} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def subprocess_env(devices: int = 8) -> dict:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=xla_flags(devices),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def girl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "girl_jax.cli", *args]


def start_girl(args: list[str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen(
        girl_command(*args), stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=ROOT
    )
