"""SIGKILL at random moments (one during a checkpoint write), rerun: same results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import CONFIG, ROOT, TINY, subprocess_env

SCRIPT = os.path.join(ROOT, "scripts", "kill_resume.py")


def test_diff_ignores_timings_only():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import kill_resume

    a = {"sft": {"eval_loss": 1.0}, "timings_s": {"sft": 3.0}}
    b = {"sft": {"eval_loss": 1.0}, "timings_s": {"sft": 9.0}}
    assert kill_resume.diff(kill_resume.comparable(a), kill_resume.comparable(b)) == []
    b["sft"]["eval_loss"] = 1.5
    assert kill_resume.diff(kill_resume.comparable(a), kill_resume.comparable(b)) == [
        ".sft.eval_loss: 1.0 != 1.5"
    ]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tiny_run, tmp_path):
    reference = os.path.join(tiny_run.workdir, "results.json")
    cmd = [
        sys.executable,
        SCRIPT,
        "--workdir",
        str(tmp_path / "kr"),
        "--kills",
        "2",  # the first during a checkpoint write, the second after a random delay
        "--seed",
        "1",
        "--min-delay",
        "12",
        "--max-delay",
        "45",
        "--timeout",
        "600",
        "--reference",
        reference,
        "--",
        "--config",
        CONFIG,
        *TINY,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=1500)
    assert proc.returncode in (0, 1), proc.stderr[-3000:] + proc.stdout[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    print(json.dumps(summary, indent=1))
    assert any("killed_after_s" in k for k in summary["kills"]), summary
    assert summary["equal"], "\n".join(summary["differences"])
