"""Loader, validation, summary and atomic Parquet writing of `girl_jax.data.io`."""

import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from girl_jax.data import io
from girl_jax.errors import ConfigError, DataError

ROWS = [
    {"cv": "Python developer, 5 years", "jd": "Senior Python engineer", "label": 1},
    {"cv": "Nurse in Lyon", "jd": "Data scientist, Paris", "label": 0, "seeker_id": "s1"},
    {"cv": "Accountant", "jd": "Head of finance", "label": 1, "job_id": 7, "split": "test"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_package_exports_data_error():
    import girl_jax.data as data

    assert data.DataError is DataError
    with pytest.raises(AttributeError):
        data.no_such_module  # noqa: B018


def test_valid_jsonl_loads_with_columns_and_counts(tmp_path):
    ds = io.load_interactions(write_jsonl(tmp_path / "ok.jsonl", ROWS))
    assert ds.num_rows == 3
    assert ds.column_names == ["cv", "jd", "label", "seeker_id", "job_id", "split"]
    assert list(ds["label"]) == [1, 0, 1]
    assert list(ds["seeker_id"]) == [None, "s1", None]
    assert list(ds["job_id"]) == [None, None, "7"]  # integer ids become strings
    assert list(ds["cv"]) == [r["cv"] for r in ROWS]


def test_valid_csv_tsv_and_parquet_load(tmp_path):
    csv_path = tmp_path / "ok.csv"
    csv_path.write_text(
        'cv,jd,label\n"Python, SQL\nand Go",Backend dev,1\nNurse,Data scientist,0.0\n'
    )
    ds = io.load_interactions(csv_path)
    assert ds.num_rows == 2 and ds.column_names == ["cv", "jd", "label"]
    assert list(ds["cv"]) == ["Python, SQL\nand Go", "Nurse"]
    assert list(ds["label"]) == [1, 0]

    tsv_path = tmp_path / "ok.tsv"
    tsv_path.write_text("label\tcv\tjd\n0\ta, b\tc\n")
    assert io.load_interactions(tsv_path)[0] == {"cv": "a, b", "jd": "c", "label": 0}

    pq_path = tmp_path / "ok.parquet"
    pq.write_table(pa.table({"cv": ["a", "b"], "jd": ["c", "d"], "label": [1, 0]}), pq_path)
    ds = io.load_interactions(pq_path)
    assert ds.num_rows == 2 and list(ds["jd"]) == ["c", "d"]


def test_bom_crlf_and_blank_lines_are_tolerated(tmp_path):
    path = tmp_path / "bom.jsonl"
    body = (json.dumps(ROWS[0]) + "\r\n\r\n" + json.dumps(ROWS[1]) + "\r\n  \n").encode()
    path.write_bytes(b"\xef\xbb\xbf" + body)
    assert list(io.load_interactions(path)["label"]) == [1, 0]
    path = tmp_path / "crlf.csv"
    path.write_bytes(b'\xef\xbb\xbfcv,jd,label\r\n"two\r\nlines",b,1\r\n\r\nc,d,0\r\n')
    assert list(io.load_interactions(path)["cv"]) == ["two\r\nlines", "c"]
    path.write_bytes(b"cv,jd,label\r\na,b,1\r\nc,d,2\r\n")
    with pytest.raises(DataError, match=r"line 3: field 'label'"):
        io.load_interactions(path)


CASES = [
    # name, file content, expected pieces of the message
    (
        "bad.jsonl",
        '{"cv":"a","jd":"b","label":1}\n{"cv": "a", "jd": \n',
        ["line 2", "malformed JSON"],
    ),
    ("list.jsonl", '{"cv":"a","jd":"b","label":1}\n[1, 2]\n', ["line 2", "JSON object"]),
    ("missing.jsonl", '{"cv":"a","label":1}\n', ["line 1", "'jd'", "missing"]),
    (
        "label2.jsonl",
        '{"cv":"a","jd":"b","label":1}\n\n{"cv":"a","jd":"c","label":2}\n',
        ["line 3", "'label'"],
    ),
    ("yes.jsonl", '{"cv":"a","jd":"b","label":"yes"}\n', ["line 1", "'label'", "'yes'"]),
    ("bool.jsonl", '{"cv":"a","jd":"b","label":true}\n', ["line 1", "'label'", "boolean"]),
    ("half.jsonl", '{"cv":"a","jd":"b","label":0.5}\n', ["line 1", "'label'"]),
    ("num.jsonl", '{"cv":12,"jd":"b","label":1}\n', ["line 1", "'cv'", "string"]),
    ("empty_text.jsonl", '{"cv":"a","jd":"  \\n ","label":1}\n', ["line 1", "'jd'", "empty"]),
    (
        "extra.jsonl",
        '{"cv":"a","jd":"b","label":1,"salary":3}\n',
        ["line 1", "'salary'", "allowed", "seeker_id"],
    ),
    ("dupkey.jsonl", '{"cv":"a","jd":"b","label":1,"cv":"c"}\n', ["line 1", "duplicate key 'cv'"]),
    ("surrogate.jsonl", '{"cv":"a\\ud800","jd":"b","label":1}\n', ["line 1", "'cv'", "Unicode"]),
    ("deep.jsonl", "[" * 100000 + "]" * 100000 + "\n", ["line 1", "malformed JSON"]),
    (
        "latin1.jsonl",
        b'{"cv":"a","jd":"b","label":1}\n{"cv":"caf\xe9","jd":"b","label":1}\n',
        ["line 2", "UTF-8"],
    ),
    ("empty.jsonl", "", ["line 1", "empty file"]),
    ("blank.jsonl", "\n \n", ["line 1", "empty file"]),
    ("quote.csv", 'cv,jd,label\na,b,1\n"unclosed,jd,1\n', ["line 3", "CSV error"]),
    ("stray.csv", 'cv,jd,label\n"a" x,b,1\n', ["line 2", "CSV error"]),
    ("columns.csv", "cv,jd,label\na,b,1\na,b,1,extra\n", ["line 3", "expected 3 columns"]),
    ("csvlabel.csv", "cv,jd,label\na,b,yes\n", ["line 2", "'label'", "'yes'"]),
    ("csvempty.csv", "cv,jd,label\n   ,b,1\n", ["line 2", "'cv'", "empty"]),
    ("header.csv", "cv,jd,label,salary\na,b,1,3\n", ["line 1", "'salary'", "allowed"]),
    ("nojd.csv", "cv,label\na,1\n", ["line 1", "'jd'", "missing"]),
    ("onlyheader.csv", "cv,jd,label\n", ["line 1", "no records"]),
    ("nul.csv", "cv,jd,label\na\x00b,c,1\n", ["line 2", "'cv'", "NUL"]),
    ("latin1.csv", b"cv,jd,label\na,b,1\nx,caf\xe9,1\n", ["line 3", "UTF-8"]),
]


@pytest.mark.parametrize("name,content,pieces", CASES, ids=[c[0] for c in CASES])
def test_malformed_files_name_file_line_and_field(tmp_path, name, content, pieces):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        io.load_interactions(path)
    message = str(info.value)
    assert name in message and "\n" not in message
    for piece in pieces:
        assert piece in message, (piece, message)


def test_parquet_errors_name_the_record(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"cv": ["a", "b", "c"], "jd": ["x", "y", "z"], "label": [1, 0, 2]}), path
    )
    with pytest.raises(DataError, match=r"bad\.parquet: record 3: field 'label'"):
        io.load_interactions(path)
    pq.write_table(pa.table({"cv": ["a"], "jd": ["x"], "label": ["1"]}), path)
    with pytest.raises(DataError, match=r"record 1: field 'label'"):
        io.load_interactions(path)
    pq.write_table(pa.table({"cv": ["a"], "jd": ["x"], "label": [1], "extra": [1]}), path)
    with pytest.raises(DataError, match=r"record 1: unknown field 'extra'"):
        io.load_interactions(path)
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        io.load_interactions(path)


def test_path_problems(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        io.load_interactions(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        io.load_interactions(tmp_path)
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"data\.xlsx: unknown file extension '\.xlsx'"):
        io.load_interactions(tmp_path / "data.xlsx")


def test_duplicates_dropped_with_count_or_error_naming_both_lines(tmp_path, caplog):
    path = write_jsonl(tmp_path / "dup.jsonl", [ROWS[0], ROWS[1], ROWS[0], ROWS[0]])
    with caplog.at_level(logging.WARNING):
        ds = io.load_interactions(path)
    assert ds.num_rows == 2
    assert "dropped 2 duplicate rows" in caplog.text
    with pytest.raises(DataError, match=r"dup\.jsonl: line 3: duplicate of line 1"):
        io.load_interactions(path, on_duplicate="error")


def test_long_texts_truncated_with_count_or_rejected(tmp_path, caplog):
    rows = [{"cv": "x" * 50, "jd": "y" * 50, "label": 1}, {"cv": "short", "jd": "z", "label": 0}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        ds = io.load_interactions(path, max_chars=10)
    assert list(ds["cv"]) == ["x" * 10, "short"] and list(ds["jd"]) == ["y" * 10, "z"]
    assert "truncated 2 texts to max_chars=10" in caplog.text
    with pytest.raises(DataError, match=r"line 1: field 'cv': 50 characters"):
        io.load_interactions(path, max_chars=10, on_long="error")


def test_bad_options_are_config_errors(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", ROWS)
    with pytest.raises(ConfigError, match="on_long"):
        io.load_interactions(path, on_long="skip")
    with pytest.raises(ConfigError, match="max_chars"):
        io.load_interactions(path, max_chars=0)
    with pytest.raises(ConfigError, match="on_duplicate"):
        io.load_interactions(path, on_duplicate="keep")


def test_summarize_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {"cv": " ".join(["w"] * int(n)), "jd": "j" * int(m), "label": int(l), "split": s}
        for n, m, l, s in zip(
            rng.integers(1, 200, 64),
            rng.integers(1, 50, 64),
            rng.integers(0, 2, 64),
            rng.choice(["train", "test"], 64),
        )
    ]
    ds = io.load_interactions(write_jsonl(tmp_path / "s.jsonl", rows), on_duplicate="error")
    summary = io.summarize(ds)
    assert summary["rows"] == 64
    assert summary["positive_rate"] == pytest.approx(np.mean([r["label"] for r in rows]))
    words = [len(r["cv"].split()) for r in rows]
    assert summary["cv"]["words"]["p90"] == pytest.approx(np.percentile(words, 90))
    assert summary["cv"]["chars"]["p50"] == pytest.approx(np.median([len(r["cv"]) for r in rows]))
    assert summary["jd"]["chars"]["p99"] == pytest.approx(
        np.percentile([len(r["jd"]) for r in rows], 99)
    )
    assert summary["splits"]["train"] == sum(r["split"] == "train" for r in rows)


def test_write_parquet_atomic_roundtrip_and_failure_keeps_old_file(tmp_path, monkeypatch):
    ds = io.load_interactions(write_jsonl(tmp_path / "ok.jsonl", ROWS))
    target = tmp_path / "out" / "data.parquet"
    io.write_parquet_atomic(ds.select([2, 0]), target)
    back = io.load_interactions(target)
    assert list(back["cv"]) == [ROWS[2]["cv"], ROWS[0]["cv"]]
    assert os.listdir(target.parent) == ["data.parquet"]
    frame = ds.to_pandas().iloc[[1]]  # a non-default index must not become a column
    io.write_parquet_atomic(frame, target)
    back = io.load_interactions(target)  # an index column would be an unknown field
    assert back.column_names == ["cv", "jd", "label", "seeker_id"]  # all-null columns dropped
    assert back[0] == {"cv": ROWS[1]["cv"], "jd": ROWS[1]["jd"], "label": 0, "seeker_id": "s1"}
    before = target.read_bytes()

    def broken_write(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        io.write_parquet_atomic({"cv": ["a"], "jd": ["b"], "label": [1]}, target)
    assert target.read_bytes() == before
    assert os.listdir(target.parent) == ["data.parquet"]
