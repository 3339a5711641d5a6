"""Two OS processes on loopback (4 CPU devices each) train like one process with 8 devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from xla_env import xla_flags

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=xla_flags(devices),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    return env


def _spawn(port, proc_id, num_procs, mode, devices):
    return subprocess.Popen(
        [sys.executable, WORKER, str(port), str(proc_id), str(num_procs), mode],
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _losses(stdout: str) -> list[float]:
    lines = [line for line in stdout.splitlines() if line.startswith("LOSSES ")]
    assert lines, stdout
    return json.loads(lines[-1].removeprefix("LOSSES "))


def _finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker timed out\n{err[-3000:]}")
    return proc.returncode, out, err


@pytest.mark.slow
def test_two_processes_match_one_process():
    port = _free_port()
    procs = [_spawn(port, i, 2, "train", devices=4) for i in range(2)]
    results = [_finish(p) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    two = _losses(results[0][1])
    rc, out, err = _finish(_spawn(_free_port(), 0, 1, "train", devices=8))
    assert rc == 0, err[-3000:]
    one = _losses(out)
    assert len(two) == len(one) == 3
    np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_killed_peer_makes_the_other_exit():
    port = _free_port()
    main = _spawn(port, 0, 2, "hang", devices=4)
    peer = _spawn(port, 1, 2, "hang", devices=4)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while "READY" not in line:
            assert time.monotonic() < deadline and main.poll() is None, "worker never got ready"
            line = main.stdout.readline()
        peer.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        rc, _, err = _finish(main, timeout=90)
        assert time.monotonic() - killed_at < 60
        assert rc != 0
        assert "another task died" in err or "DistributedError" in err, err[-3000:]
    finally:
        for p in (main, peer):
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_single_process_initialize_is_a_no_op_and_barrier_returns():
    from girl_jax.parallel import distributed

    joined = distributed.initialize(dict(coordinator_address="", num_processes=0), environ={})
    assert joined is False
    assert distributed.is_main()
    distributed.barrier("noop", timeout_s=1)


def test_cluster_detection_and_bad_config():
    from girl_jax.errors import DistributedError
    from girl_jax.parallel import distributed

    assert distributed.detected_cluster({}) is None
    assert distributed.detected_cluster({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is None
    assert distributed.detected_cluster({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "16"}) == "slurm"
    assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == "tpu"
    with pytest.raises(DistributedError, match="num_processes"):
        distributed.initialize(dict(coordinator_address="127.0.0.1:1"), environ={})


def test_unreachable_coordinator_is_a_distributed_error():
    env = _env(1)
    env["GIRL_TEST_INIT_TIMEOUT"] = "3"
    proc = subprocess.Popen(
        [sys.executable, WORKER, str(_free_port()), "1", "2", "train"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rc, _, err = _finish(proc, timeout=120)
    assert rc == 3 and "DistributedError" in err and "127.0.0.1" in err, err[-2000:]
