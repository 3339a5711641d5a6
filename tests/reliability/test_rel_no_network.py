"""No network at run time; an unreachable coordinator is a clean one-line error."""

from __future__ import annotations

import os
import socket
import time

from helpers import CONFIG, girl_lines, run_cli


def test_tiny_run_made_no_remote_connection(tiny_run):
    assert tiny_run.result.code == 0
    assert tiny_run.network.remote == [], tiny_run.network.remote


def test_unreachable_coordinator_stops_girl_run_with_one_line(tmp_path):
    # A multi-host fault seen from the CLI: process 1 of 2 whose coordinator never comes up
    # gets a one-line error naming the address within init_timeout_s (no hang, no traceback,
    # no stage started); the two-process kill / peer-death cases are in tests/parallel.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nobody listens there
    workdir = str(tmp_path / "w")
    start = time.monotonic()
    res = run_cli(
        [
            "run",
            "--config",
            CONFIG,
            "--workdir",
            workdir,
            f"--config.distributed.coordinator_address={address}",
            "--config.distributed.num_processes=2",
            "--config.distributed.process_id=1",
            "--config.distributed.init_timeout_s=2",
        ]
    )
    elapsed = time.monotonic() - start
    assert res.error is None and res.code == 2, (res.code, res.error, res.stderr[-2000:])
    lines = girl_lines(res.stderr)
    assert len(lines) == 1 and address in lines[0] and "not reachable" in lines[0], lines
    assert "Traceback" not in res.stderr
    assert 2 <= elapsed < 60, elapsed
    assert not os.path.exists(os.path.join(workdir, "sft"))


def test_network_guard_would_have_seen_a_connection():
    import socket

    import pytest
    from tiny_run import NetworkGuard

    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        with pytest.raises(OSError, match="refused"):
            socket.create_connection(("198.51.100.7", 443), timeout=0.1)
    assert guard.remote == [("198.51.100.7", 443)]
