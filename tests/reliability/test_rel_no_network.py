"""No network at run time; multi-host faults live in tests/parallel (checked here to exist)."""

from __future__ import annotations

import os

from helpers import ROOT


def test_tiny_run_made_no_remote_connection(tiny_run):
    assert tiny_run.result.code == 0
    assert tiny_run.network.remote == [], tiny_run.network.remote


def test_multihost_fault_tests_exist():
    path = os.path.join(ROOT, "tests", "parallel", "test_parallel_multihost.py")
    assert os.path.isfile(path)
    with open(path) as f:
        text = f.read()
    assert "def test_" in text and ("kill" in text.lower() or "SIGKILL" in text or "dies" in text)


def test_network_guard_would_have_seen_a_connection():
    import socket

    import pytest
    from conftest import NetworkGuard

    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        with pytest.raises(OSError, match="refused"):
            socket.create_connection(("198.51.100.7", 443), timeout=0.1)
    assert guard.remote == [("198.51.100.7", 443)]
