"""girl_jax.atomic: one helper for every atomic write; a failure mid-write keeps the old file."""

import json
import os
import stat

import pytest

from girl_jax import atomic


def _listing(directory):
    return sorted(os.listdir(directory))


def test_text_bytes_json_round_trip_and_permissions(tmp_path):
    text = atomic.write_text(tmp_path / "a.txt", "héllo\n")
    assert open(text, encoding="utf-8").read() == "héllo\n"
    data = atomic.write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert open(data, "rb").read() == b"\x00\xff"
    obj = atomic.write_json(tmp_path / "sub" / "c.json", {"x": [1, 2.5]}, indent=1)
    assert json.load(open(obj)) == {"x": [1, 2.5]}
    assert open(obj).read().endswith("}\n")
    for path in (text, data, obj):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0600
    assert _listing(tmp_path) == ["a.txt", "b.bin", "sub"]
    assert _listing(tmp_path / "sub") == ["c.json"]


def test_replace_overwrites(tmp_path):
    path = tmp_path / "f.txt"
    atomic.write_text(path, "old")
    atomic.write_text(path, "new")
    assert path.read_text() == "new"
    assert _listing(tmp_path) == ["f.txt"]


def test_failure_mid_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old contents")

    with pytest.raises(RuntimeError, match="disk died"):
        with atomic.atomic_open(path, "wb") as f:
            f.write(b"new half")
            f.flush()
            # the half-written temp file really exists beside the target at this point
            assert len(_listing(tmp_path)) == 2
            raise RuntimeError("disk died")
    assert path.read_bytes() == b"old contents"
    assert _listing(tmp_path) == ["f.bin"]

    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_open(path, "wb") as f:
            f.write(b"new")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old contents"
    assert _listing(tmp_path) == ["f.bin"]


def test_unserialisable_json_keeps_the_old_file(tmp_path):
    path = tmp_path / "c.json"
    atomic.write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        atomic.write_json(path, {"bad": object()})
    assert json.load(open(path)) == {"ok": 1}
    assert _listing(tmp_path) == ["c.json"]


def test_write_with_a_path_taking_writer(tmp_path):
    path = tmp_path / "lib.out"
    path.write_text("old")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise OSError("writer failed")

    with pytest.raises(OSError, match="writer failed"):
        atomic.write_with(path, broken)
    assert path.read_text() == "old"
    assert _listing(tmp_path) == ["lib.out"]

    def good(tmp):
        with open(tmp, "w") as f:
            f.write("new")

    atomic.write_with(path, good)
    assert path.read_text() == "new"
    assert _listing(tmp_path) == ["lib.out"]


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def no_rename(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(atomic.os, "replace", no_rename)
    with pytest.raises(OSError, match="rename refused"):
        atomic.write_text(path, "new")
    assert path.read_text() == "old"
    assert _listing(tmp_path) == ["f.txt"]


def test_the_repeated_copies_use_the_helper():
    # The modules that each had their own temp-file-and-rename now call girl_jax.atomic.
    import inspect

    from girl_jax import checkpoint, metrics, overopt, report
    from girl_jax.data import io, tokenizer
    from girl_jax.models import hf_bert_export
    from girl_jax.stages import recommend

    for module in (checkpoint, io, tokenizer, hf_bert_export, metrics, report, overopt, recommend):
        source = inspect.getsource(module)
        assert "mkstemp" not in source and "os.replace" not in source, module.__name__
        assert module.atomic is atomic


def test_savefig_and_npz_through_file_objects(tmp_path):
    # writers that would add a suffix to a temp *name* (np.savez) get a file object instead
    import numpy as np

    path = tmp_path / "e.npz"
    with atomic.atomic_open(path, "wb") as f:
        np.savez(f, a=np.arange(3))
    assert _listing(tmp_path) == ["e.npz"]
    assert np.load(path)["a"].tolist() == [0, 1, 2]


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_open(tmp_path / "x", "a"):
            pass
