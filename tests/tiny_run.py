"""One completed tiny `girl run`, made once per test session (in-process, offline) and shared by
the reliability tests and tests/test_observability.py (registered by tests/conftest.py)."""

from __future__ import annotations

import ipaddress
import json
import os
import pickle
import shutil
import socket
import sys
from dataclasses import dataclass, field

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reliability"))

from helpers import CONFIG, TINY, CliResult, run_cli  # noqa: E402


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already be network use


@dataclass
class NetworkGuard:
    """Records every outgoing connection; refuses those to non-loopback addresses."""

    attempts: list = field(default_factory=list)

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        real_create = socket.create_connection
        real_getaddrinfo = socket.getaddrinfo

        def check(address):
            self.attempts.append(address)
            if not _is_loopback(address):
                raise OSError(f"reliability test: network access to {address!r} refused")

        def connect(sock, address):
            check(address)
            return real_connect(sock, address)

        def connect_ex(sock, address):
            check(address)
            return real_connect_ex(sock, address)

        def create_connection(address, *args, **kwargs):
            check(address)
            return real_create(address, *args, **kwargs)

        def getaddrinfo(host, *args, **kwargs):
            if host not in (None, "localhost") and not _is_loopback((str(host), 0)):
                check((str(host), args[0] if args else None))
            return real_getaddrinfo(host, *args, **kwargs)

        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "create_connection", create_connection)
        mp.setattr(socket, "getaddrinfo", getaddrinfo)

    @property
    def remote(self) -> list:
        return [a for a in self.attempts if not _is_loopback(a)]


@dataclass
class TinyRun:
    workdir: str
    result: CliResult
    network: NetworkGuard
    overrides: tuple = TINY

    @property
    def results(self) -> dict:
        with open(os.path.join(self.workdir, "results.json")) as f:
            return json.load(f)

    def copy(self, dest: str, stages=None) -> str:
        """A copy of the finished workdir (only `stages` and config.json when given)."""
        if stages is None:
            shutil.copytree(self.workdir, dest)
            return dest
        os.makedirs(dest)
        for name in stages:
            shutil.copytree(os.path.join(self.workdir, name), os.path.join(dest, name))
        shutil.copy(os.path.join(self.workdir, "config.json"), dest)
        return dest


def _shared_dir(tmp_path_factory):
    """A directory every pytest-xdist worker of this session sees (the base temp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _make_tiny_run(workdir: str) -> tuple[CliResult, NetworkGuard]:
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            mp.delenv(var, raising=False)  # the code itself must not need these to stay offline
        res = run_cli(["run", "--config", CONFIG, "--workdir", workdir, *TINY])
    return res, guard


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The whole pipeline on the tiny config, once per test run, with the network refused.

    Under pytest-xdist the first worker that needs it makes it in a directory the workers share,
    holding a file lock; the others wait for the lock and reuse the finished workdir and the
    recorded CLI result and connection attempts (the run is deterministic: it is the run each
    worker used to make for itself). Tests copy it (`TinyRun.copy`) before changing anything.
    """
    from filelock import FileLock

    root = _shared_dir(tmp_path_factory) / "reliability_tiny_run"
    root.mkdir(exist_ok=True)
    workdir, record = str(root / "run"), root / "made.pickle"
    with FileLock(str(root / "lock")):
        if record.exists():
            code, stdout, stderr, error, attempts = pickle.loads(record.read_bytes())
            res = CliResult(code, stdout, stderr, None if error is None else RuntimeError(error))
            guard = NetworkGuard(attempts)
        else:
            res, guard = _make_tiny_run(workdir)
            error = None if res.error is None else f"{type(res.error).__name__}: {res.error}"
            made = (res.code, res.stdout, res.stderr, error, guard.attempts)
            record.write_bytes(pickle.dumps(made))
    if res.code != 0 or res.error is not None:
        pytest.fail(
            f"tiny run failed: code {res.code}, {res.error!r}\n{res.stderr[-3000:]}", pytrace=False
        )
    return TinyRun(workdir, res, guard)
