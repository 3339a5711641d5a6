"""SIGTERM / SIGINT: finish the current step, save a checkpoint, exit with a message.

`install()` (done by the CLI) swaps the default handlers for one that only sets a flag; stage
loops call `requested()` after each step and, when set, save and raise `Preempted`. A second
signal while saving exits at once (the last complete checkpoint is still intact).
"""

from __future__ import annotations

import signal
import sys
import threading

from girl_jax.errors import GirlError


class Preempted(GirlError):
    """The run was asked to stop; the state at the reported step is saved."""

    exit_code = 143


_flag = threading.Event()
_installed = False


def _handler(signum, frame):
    if _flag.is_set():  # second signal: give up now
        print("girl: second signal, exiting without waiting", file=sys.stderr)
        sys.exit(128 + signum)
    _flag.set()
    name = signal.Signals(signum).name
    print(f"girl: {name} received; finishing the current step and saving", file=sys.stderr)


def install() -> None:
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    _installed = True


def requested() -> bool:
    return _flag.is_set()


def request() -> None:
    """Ask for a stop programmatically (tests, notebooks)."""
    _flag.set()


def reset() -> None:
    _flag.clear()


def check(stage: str, step: int, save) -> None:
    """Called after each step: when a stop was requested, save and raise Preempted."""
    if not _flag.is_set():
        return
    save()
    raise Preempted(
        f"stage {stage} stopped at step {step} on request; checkpoint saved — rerun the same "
        "command to resume"
    )
