"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every writer goes to a temporary file in the target's directory (same filesystem, so the
rename is atomic on POSIX), which is flushed and fsynced, made world-readable (mkstemp makes
0600; outputs are meant to be shared), then renamed over the target with `os.replace`. On any
error, including KeyboardInterrupt, the temporary file is removed and the target is untouched.

    write_text(path, text)          write_bytes(path, data)        write_json(path, obj)
    with atomic_open(path, "wb") as f: pq.write_table(table, f)    # a library writing a file
    write_with(path, lambda tmp: save_file(tensors, tmp))         # a library taking a path
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

MODE = 0o644


def _temp_in(path: str) -> tuple[int, str]:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.chmod(tmp, MODE)
    return fd, tmp


def _fsync_dir(path: str) -> None:
    # Makes the rename itself durable; not every filesystem / OS allows opening a directory.
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = None
) -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on a clean exit it replaces `path`."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    fd, tmp = _temp_in(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(path)


def write_with(path: str | os.PathLike, write: Callable[[str], Any]) -> str:
    """`write(tmp_path)` (a library that takes a file name), then fsync and replace `path`."""
    path = os.fspath(path)
    fd, tmp = _temp_in(path)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, MODE)  # some writers recreate the file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(path)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> str:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return os.fspath(path)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> str:
    """`json.dump(obj, **dump_kwargs)` plus a final newline, atomically.

    The object is serialised before the file is opened, so an unserialisable value leaves
    no temporary file and the old `path` intact.
    """
    return write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


__all__ = ["atomic_open", "write_bytes", "write_json", "write_text", "write_with"]
