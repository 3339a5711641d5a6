"""SIGTERM to a running `girl sft`: finish the step, save, exit 143, say so; a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from helpers import CONFIG, TINY, start_girl

LONG = (
    *TINY,
    "--config.sft.steps=400",
    "--config.sft.eval_every=400",
    "--config.sft.checkpoint_every=400",
    "--config.sft.log_every=2",
)


def _metric_steps(workdir):
    path = os.path.join(workdir, "sft", "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def _wait_for_step(proc, workdir, above, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = _metric_steps(workdir)
        if steps and steps[-1] > above:
            return steps[-1]
        if proc.poll() is not None:
            pytest.fail(f"girl exited early with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("no training progress")


def _stop(proc, log):
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("girl did not exit within 30 s of SIGTERM")
    with open(log) as f:
        text = f.read()
    return rc, time.time() - t0, text


def _latest(workdir):
    from girl_jax.checkpoint import StageCheckpointer

    ckpt = StageCheckpointer(os.path.join(workdir, "sft"))
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


@pytest.mark.slow
def test_sigterm_saves_and_rerun_resumes(tiny_run, tmp_path):
    import re

    workdir = tiny_run.copy(str(tmp_path / "w"), ["data"])
    args = ["sft", "--config", CONFIG, "--workdir", workdir, *LONG]
    log1 = str(tmp_path / "first.log")
    proc = start_girl(args, log1)
    _wait_for_step(proc, workdir, 0)
    rc, took, text = _stop(proc, log1)
    assert rc == 143, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    found = re.findall(r"girl: stage sft stopped at step (\d+)", text)
    assert len(found) == 1, text[-2000:]
    stopped = int(found[0])
    assert _latest(workdir) == stopped  # the saved checkpoint is the reported step
    assert _metric_steps(workdir)[-1] <= stopped

    # Rerun the same command: it must continue after `stopped`, not start again from 0.
    log2 = str(tmp_path / "second.log")
    proc = start_girl(args, log2)
    _wait_for_step(proc, workdir, stopped)
    rc, _, text2 = _stop(proc, log2)
    assert rc == 143, text2[-2000:]
    steps = _metric_steps(workdir)
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    second = int(re.findall(r"stopped at step (\d+)", text2)[0])
    assert second > stopped and _latest(workdir) == second
    print(f"SIGTERM -> exit in {took:.1f}s; stopped at {stopped}, resumed to {second}")
