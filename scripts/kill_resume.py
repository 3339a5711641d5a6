"""Kill a `girl run` with SIGKILL at random moments, rerun it to completion, compare results.json.

    python scripts/kill_resume.py --workdir /tmp/kr --kills 3 [--reference RESULTS.json] \
        -- --config configs/default.py:smoke --config.sft.steps=12 ...

Without --reference an uninterrupted run is made first in WORKDIR/reference. The first kill lands
while Orbax is writing a checkpoint (a `*.orbax-checkpoint-tmp-*` directory exists), the others
after a random delay. Prints a JSON summary; exits 0 when results.json (minus `timings_s`) equals
the uninterrupted one, 1 when it differs, 2 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("data", "sft", "reward", "ppo", "generated", "recommend")


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(workdir: str, girl_args: list[str], log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "girl_jax.cli", "run", "--workdir", workdir, *girl_args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)


def _writing_checkpoint(workdir: str) -> bool:
    for stage in STAGES:
        path = os.path.join(workdir, stage, "checkpoints")
        if os.path.isdir(path) and any("tmp" in name for name in os.listdir(path)):
            return True
    return False


def _progress(workdir: str) -> dict:
    """Which stages are final and the checkpoint steps on disk: where the kill landed."""
    out = {}
    for stage in STAGES:
        d = os.path.join(workdir, stage)
        if not os.path.isdir(d):
            continue
        if os.path.isfile(os.path.join(d, "final.json")):
            out[stage] = "final"
            continue
        ckpts = os.path.join(d, "checkpoints")
        out[stage] = sorted(os.listdir(ckpts)) if os.path.isdir(ckpts) else "started"
    return out


def run_to_completion(workdir: str, girl_args: list[str], log_path: str, timeout: float) -> None:
    with open(log_path, "ab") as log:
        proc = _start(workdir, girl_args, log)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit(f"kill_resume: run in {workdir} timed out; see {log_path}") from None
    if rc != 0:
        with open(log_path, "rb") as f:
            tail = f.read()[-3000:].decode(errors="replace")
        print(tail, file=sys.stderr)
        print(f"kill_resume: run in {workdir} exited {rc}; see {log_path}", file=sys.stderr)
        raise SystemExit(2)


def kill_once(workdir, girl_args, log_path, delay, on_checkpoint, timeout) -> dict:
    """Start a run, SIGKILL it after `delay` s (or at a checkpoint write); None if it finished."""
    with open(log_path, "ab") as log:
        proc = _start(workdir, girl_args, log)
        t0 = time.time()
        how = "delay"
        while proc.poll() is None and time.time() - t0 < timeout:
            elapsed = time.time() - t0
            if on_checkpoint and _writing_checkpoint(workdir):
                how = "during a checkpoint write"
                break
            if elapsed >= delay:  # with on_checkpoint: a fallback when no write was seen
                break
            time.sleep(0.002 if on_checkpoint else 0.05)
        if proc.poll() is not None:
            return {"finished_before_kill": True, "after_s": round(time.time() - t0, 1)}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return {"killed_after_s": round(time.time() - t0, 1), "how": how, **_where(workdir)}


def _where(workdir: str) -> dict:
    return {"progress": _progress(workdir)}


def comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "timings_s"}


def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}.{k}")
        return out
    return [] if a == b else [f"{path or '.'}: {a!r} != {b!r}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-delay", type=float, default=8.0, help="seconds after start")
    p.add_argument("--max-delay", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=1800.0, help="per run")
    p.add_argument("--reference", default=None, help="results.json of an uninterrupted run")
    p.add_argument("girl_args", nargs=argparse.REMAINDER, help="after --: args of `girl run`")
    args = p.parse_args(argv)
    girl_args = [a for a in args.girl_args if a != "--"]
    os.makedirs(args.workdir, exist_ok=True)
    rng = random.Random(args.seed)
    t_start = time.time()

    if args.reference:
        ref_path = args.reference
    else:
        ref_dir = os.path.join(args.workdir, "reference")
        run_to_completion(
            ref_dir, girl_args, os.path.join(args.workdir, "reference.log"), args.timeout
        )
        ref_path = os.path.join(ref_dir, "results.json")
    with open(ref_path) as f:
        reference = json.load(f)

    killed_dir = os.path.join(args.workdir, "killed")
    log_path = os.path.join(args.workdir, "killed.log")
    kills = []
    for i in range(args.kills):
        delay = rng.uniform(args.min_delay, args.max_delay) if i else args.max_delay
        event = kill_once(killed_dir, girl_args, log_path, delay, i == 0, args.timeout)
        kills.append(event)
        if event.get("finished_before_kill"):
            break
    run_to_completion(killed_dir, girl_args, log_path, args.timeout)
    with open(os.path.join(killed_dir, "results.json")) as f:
        resumed = json.load(f)
    differences = diff(comparable(reference), comparable(resumed))
    summary = {
        "kills": kills,
        "equal": not differences,
        "differences": differences[:50],
        "seconds": round(time.time() - t_start, 1),
    }
    print(json.dumps(summary, indent=2))
    return 0 if not differences else 1


if __name__ == "__main__":
    sys.exit(main())
