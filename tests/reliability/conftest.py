"""One completed tiny `girl run`, shared by the reliability tests (made in-process, offline)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The whole pipeline on the tiny config, once per session, with the network refused."""
    workdir = str(tmp_path_factory.mktemp("tiny") / "run")
    guard = NetworkGuard()
    with pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            mp.delenv(var, raising=False)  # the code itself must not need these to stay offline
        res = run_cli(["run", "--config", CONFIG, "--workdir", workdir, *TINY])
    if res.code != 0 or res.error is not None:
        pytest.fail(
            f"tiny run failed: code {res.code}, {res.error!r}\n{res.stderr[-3000:]}", pytrace=False
        )
    return TinyRun(workdir, res, guard)
