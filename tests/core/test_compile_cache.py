"""The persistent compilation cache: where it goes, the off switch, and a hit across processes."""

import json
import os
import subprocess
import sys

import jax
import pytest

from girl_jax import cli, compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def restore_cache():
    """enable() switches the process-wide JAX cache; put the suite's own back afterwards."""
    names = (
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
        "jax_compilation_cache_max_size",
    )
    saved_dir = jax.config.jax_compilation_cache_dir
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    compile_cache.enable(saved_dir or "off")
    for n, v in saved.items():
        jax.config.update(n, v)


def test_resolve_reads_the_variable_the_off_switch_and_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GIRL_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache.resolve() == str(tmp_path / "c")
    assert compile_cache.resolve(str(tmp_path / "d")) == str(tmp_path / "d")  # path wins
    for off in ("off", "OFF", "0", "none", "false", "no", "", " "):
        monkeypatch.setenv("GIRL_COMPILE_CACHE", off)
        assert compile_cache.resolve() is None, off
        assert compile_cache.resolve(off) is None, off
    monkeypatch.delenv("GIRL_COMPILE_CACHE")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.resolve() == str(tmp_path / "xdg" / "girl_jax" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.resolve() == str(tmp_path / "home" / ".cache" / "girl_jax" / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jaxdir"))
    assert compile_cache.resolve() == str(tmp_path / "jaxdir")


def test_enable_sets_jax_config_and_off_unsets_it(monkeypatch, tmp_path, restore_cache):
    for name in ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_COMPILATION_CACHE_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIRL_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache.enable() == str(tmp_path / "c")
    assert os.path.isdir(tmp_path / "c")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_TIME_S
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == compile_cache.MIN_ENTRY_BYTES
    monkeypatch.setenv("GIRL_COMPILE_CACHE", "off")
    assert compile_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_unwritable_directory_warns_once_and_leaves_the_cache_off(tmp_path, capsys, restore_cache):
    (tmp_path / "file").write_text("not a directory")
    bad = str(tmp_path / "file" / "cache")
    assert compile_cache.enable(bad) is None
    assert jax.config.jax_compilation_cache_dir is None
    assert compile_cache.enable(bad) is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("girl: warning: compilation cache off"), lines
    assert bad in lines[0]
    assert float(jax.jit(lambda x: x + 1)(1.0)) == 2.0  # and JAX still works


def test_cli_main_enables_the_cache_before_dispatching(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(compile_cache, "enable", lambda path=None: calls.append(path))
    monkeypatch.setattr(cli, "_dispatch", lambda args, overrides: calls.append("dispatch") or 0)
    assert cli.main(["report", str(tmp_path)]) == 0
    assert calls == [None, "dispatch"]


# Jits one function; prints the cache hit / miss events of this process as JSON. The size
# threshold of JAX (1 s of compile time; ours is 0.5 s) is lowered to 0 so that a small program
# is written too: what is tested is the mechanism, not the threshold.
CHILD = """
import json, sys
from jax._src import monitoring
events = []
monitoring.register_event_listener(lambda name, **kw: events.append(name))
from girl_jax import compile_cache
import jax, jax.numpy as jnp
where = compile_cache.enable()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0)
value = float(f(jnp.arange(12.0).reshape(3, 4)))
print(json.dumps({
    "dir": where, "value": value,
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "misses": events.count("/jax/compilation_cache/cache_misses"),
}))
"""


def _child(cache):
    env = dict(os.environ, GIRL_COMPILE_CACHE=cache, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_program_from_the_cache(tmp_path):
    cache = str(tmp_path / "cache")
    first = _child(cache)
    assert first["dir"] == cache
    assert first["misses"] >= 1 and first["hits"] == 0, first
    entries = [n for n in os.listdir(cache) if n.endswith("-cache")]
    assert any(n.startswith("jit__lambda") for n in entries), entries
    second = _child(cache)
    assert second["hits"] >= 1 and second["misses"] == 0, second
    assert second["value"] == first["value"]
    assert sorted(n for n in os.listdir(cache) if n.endswith("-cache")) == sorted(entries)
