"""A persistent JAX compilation cache, on by default for `girl` commands.

XLA compiles every jitted step (SFT, reward, PPO rollout and update, sampling, recommender heads)
afresh in each process: on a CPU that is tens of seconds per stage before the first step runs, and
it is paid again by every rerun, resume after preemption and stage command. `enable()` points
JAX's persistent cache at a directory so that a later process with the same program, shapes,
devices and JAX version loads the executable instead of compiling it.

Where the cache lives (first that applies):

    GIRL_COMPILE_CACHE=DIR            that directory
    GIRL_COMPILE_CACHE=off            no cache (also 0, none, false, no or empty)
    JAX_COMPILATION_CACHE_DIR=DIR     that directory, when GIRL_COMPILE_CACHE is not set
    $XDG_CACHE_HOME/girl_jax/jax      otherwise, or ~/.cache/girl_jax/jax

The cache is trusted code: do not point it at a directory others can write to. A directory that
cannot be created or written prints one warning and the run goes on without the cache. The cache
is bounded (`MAX_BYTES`, least recently used entries evicted first, under a file lock so that
concurrent processes, e.g. pytest-xdist workers, can share one directory). JAX's own variables
(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES,
JAX_COMPILATION_CACHE_MAX_SIZE) override the thresholds below.

Entries are keyed by the program, compile options, devices and JAX/XLA versions, so a stale or
foreign entry is never used; delete the directory to reclaim space.
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cc

ENV = "GIRL_COMPILE_CACHE"
OFF = frozenset({"off", "0", "none", "false", "no", ""})
# Cache programs that took at least this long to compile. JAX's default (1 s) skips most CPU
# programs of the small configs, whose steps compile in 0.3-3 s; below ~0.5 s reading an entry
# saves little and the directory fills with tiny helper programs.
MIN_COMPILE_TIME_S = 0.5
# -1: no minimum entry size (and JAX does not override it per platform).
MIN_ENTRY_BYTES = -1
MAX_BYTES = 2 << 30

_warned: set[str] = set()


def default_dir() -> str:
    """$XDG_CACHE_HOME/girl_jax/jax, or ~/.cache/girl_jax/jax."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "girl_jax", "jax")


def resolve(path: str | None = None) -> str | None:
    """The directory `enable(path)` would use, or None when the cache is switched off."""
    value = os.environ.get(ENV) if path is None else path
    if value is None:
        value = os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()
    if value.strip().lower() in OFF:
        return None
    return os.path.abspath(os.path.expanduser(value))


def _writable(directory: str) -> str | None:
    """None if `directory` can be created and written, else why not."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def _has_filelock() -> bool:
    """JAX bounds the cache (and locks it across processes) only with `filelock` installed."""
    try:
        import filelock  # noqa: F401 (optional: filelock)
    except ImportError:
        return False
    return True


def enable(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache; returns the directory, or None when off.

    path: a directory, or an off value ("off", "0", "none", ...); None: $GIRL_COMPILE_CACHE, else
    $JAX_COMPILATION_CACHE_DIR, else `default_dir()` (see `resolve`). Call it before the first
    jitted computation of the process; calling it again with another directory (or off) switches
    the cache over. Never raises for an unusable directory: it warns once on stderr and leaves the
    cache off.
    """
    directory = resolve(path)
    if directory is not None:
        problem = _writable(directory)
        if problem is not None:
            if directory not in _warned:
                _warned.add(directory)
                print(
                    f"girl: warning: compilation cache off, cannot write {directory} ({problem}); "
                    f"set {ENV}=DIR or {ENV}=off",
                    file=sys.stderr,
                )
            directory = None
    if jax.config.jax_compilation_cache_dir != directory:
        jax_cc.reset_cache()  # the next compile opens the new directory (or none)
        jax.config.update("jax_compilation_cache_dir", directory)
    if directory is not None:
        jax.config.update("jax_enable_compilation_cache", True)
        # Our defaults, unless the JAX_... environment variable of the option is set.
        for name, value in (
            ("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S),
            ("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_BYTES),
            ("jax_compilation_cache_max_size", MAX_BYTES if _has_filelock() else -1),
        ):
            if name.upper() not in os.environ:
                jax.config.update(name, value)
    return directory
