"""Malformed user files and overrides through the CLI: exit 2, one line naming where, no traceback.

Hypothesis builds files that are valid except for one injected defect, so each message can be
checked for the file name and the exact line / record of the defect; `girl data check` and the
`girl data make --config.data.source=files` path are both driven, in-process, >= 300 examples.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import CONFIG, assert_one_line_error, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# Safe texts: no newlines (line numbers stay simple), not blank.
WORDS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() and s == s.strip())
GOOD = st.fixed_dictionaries(
    {"cv": WORDS, "jd": WORDS, "label": st.sampled_from([0, 1])},
    optional={"seeker_id": st.integers(0, 99).map(str), "split": st.just("train")},
)

# (field, bad value, word expected in the message) for JSON-typed sources.
JSON_DEFECTS = st.one_of(
    st.tuples(st.just("label"), st.sampled_from([2, -1, 0.5, "yes", True, None, [1], {}])),
    st.tuples(
        st.sampled_from(["cv", "jd"]), st.sampled_from(["", "   ", None, 5, ["a"], "a\x00b"])
    ),
    st.tuples(
        st.sampled_from(["seeker_id", "job_id"]), st.sampled_from([1.5, [1], {"a": 1}, True])
    ),
    st.tuples(st.sampled_from(["salary", "Label", "cv "]), WORDS),
    st.tuples(st.sampled_from(["-cv", "-jd", "-label"]), st.none()),  # a required field removed
)


def _apply(record: dict, defect) -> tuple[dict, str]:
    field, value = defect
    record = dict(record)
    if field.startswith("-"):
        del record[field[1:]]
        return record, field[1:]
    record[field] = value
    return record, field


def _expect_jsonl(records, index, defect):
    bad, field = _apply(records[index], defect)
    lines = [json.dumps(r) for r in records]
    lines[index] = json.dumps(bad)
    return "\n".join(lines) + "\n", f"line {index + 1}", field


RAW_LINES = st.sampled_from(
    [
        '{"cv": "a", "jd": "b", "label": 1',
        "[1, 2, 3]",
        '"just a string"',
        "42",
        "{cv: 1}",
        '{"cv": "a", "cv": "b", "jd": "c", "label": 0}',
        "null",
        "{'cv': 'a'}",
    ]
)


@st.composite
def jsonl_case(draw):
    records = draw(st.lists(GOOD, min_size=1, max_size=6))
    index = draw(st.integers(0, len(records) - 1))
    if draw(st.booleans()):
        text, where, field = _expect_jsonl(records, index, draw(JSON_DEFECTS))
        return ".jsonl", text.encode(), where, field
    lines = [json.dumps(r) for r in records]
    lines[index] = draw(RAW_LINES)
    return ".jsonl", ("\n".join(lines) + "\n").encode(), f"line {index + 1}", None


CSV_DEFECTS = st.one_of(
    st.tuples(st.just("label"), st.sampled_from(["2", "yes", "-1", "0.5", "", "true", "1e0"])),
    st.tuples(st.sampled_from(["cv", "jd"]), st.sampled_from(["", "   "])),
    st.tuples(st.just("columns"), st.integers(-2, 2).filter(bool)),
)


@st.composite
def csv_case(draw):
    records = [
        {k: r[k] for k in ("cv", "jd", "label")}
        for r in draw(st.lists(GOOD, min_size=1, max_size=6))
    ]
    delimiter = draw(st.sampled_from([",", "\t"]))
    ext = ".csv" if delimiter == "," else ".tsv"
    kind = draw(st.sampled_from(["row", "header"]))
    if kind == "header":
        header = draw(
            st.sampled_from(
                [
                    ["cv", "jd"],
                    ["cv", "jd", "label", "cv"],
                    ["cv", "jd", "label", "salary"],
                    ["CV", "jd", "label"],
                    ["cv", "jd", "labels"],
                ]
            )
        )
        rows = [header] + [[str(r.get(h, "x")) for h in header] for r in records]
        where, field = "line 1", None
    else:
        index = draw(st.integers(0, len(records) - 1))
        field, value = draw(CSV_DEFECTS)
        rows = [["cv", "jd", "label"]] + [[r["cv"], r["jd"], str(r["label"])] for r in records]
        row = rows[index + 1]
        if field == "columns":
            rows[index + 1] = row + ["extra"] * value if value > 0 else row[:value]
            field = None
        else:
            row[["cv", "jd", "label"].index(field)] = value
        where = f"line {index + 2}"
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return ext, buf.getvalue().encode(), where, field


@st.composite
def parquet_case(draw):
    records = draw(st.lists(GOOD, min_size=1, max_size=6))
    index = draw(st.integers(0, len(records) - 1))
    field, value = draw(
        st.one_of(
            st.tuples(st.just("label"), st.sampled_from([2, -1, 7])),
            st.tuples(st.sampled_from(["cv", "jd"]), st.sampled_from(["", "  "])),
        )
    )
    columns = {k: [r[k] for r in records] for k in ("cv", "jd", "label")}
    columns[field][index] = value
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return ".parquet", buf.getvalue(), f"record {index + 1}", field


@st.composite
def garbage_case(draw):
    ext = draw(st.sampled_from([".jsonl", ".csv", ".tsv", ".parquet"]))
    body = draw(st.binary(min_size=0, max_size=200))
    if ext != ".parquet" and body.strip():
        body = b"\xff" + body  # never valid UTF-8, so never accidentally a valid file
    return ext, body, None, None


CASES = st.one_of(jsonl_case(), csv_case(), parquet_case(), garbage_case())


def _check(res, path, where, field):
    pieces = [os.path.basename(path)] + ([where] if where else [])
    line = assert_one_line_error(res, *pieces)
    if field:
        assert field in line, (field, line)


@settings(max_examples=220, **SETTINGS)
@given(case=CASES)
def test_data_check_rejects_malformed_files(case):
    ext, body, where, field = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "user" + ext)
        with open(path, "wb") as f:
            f.write(body)
        _check(run_cli(["data", "check", path]), path, where, field)


@settings(max_examples=60, **SETTINGS)
@given(case=CASES)
def test_data_make_from_files_rejects_malformed_files(case):
    ext, body, where, field = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "user" + ext)
        with open(path, "wb") as f:
            f.write(body)
        workdir = os.path.join(tmp, "w")
        res = run_cli(
            [
                "data",
                "make",
                "--config",
                CONFIG,
                "--workdir",
                workdir,
                "--config.data.source=files",
                f"--config.data.path={path}",
            ]
        )
        _check(res, path, where, field)
        assert not os.path.exists(os.path.join(workdir, "data", "final.json"))


# Overrides: every one is wrong (unknown key, wrong type, out of range); each must name its key.
SECTIONS = {
    "sft": ["steps", "batch_size", "learning_rate", "max_prompt_len"],
    "reward": ["probe_batch_size", "batch_size", "learning_rate"],  # steps=0: probe only
    "ppo": ["iterations", "batch_size", "epochs", "learning_rate", "max_new_tokens"],
    "data": ["num_seekers", "num_jobs"],
    "model": ["d_model", "num_layers", "num_heads"],
}
NAME = st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True)


@st.composite
def bad_override(draw):
    kind = draw(st.sampled_from(["unknown", "type", "range"]))
    section = draw(st.sampled_from(sorted(SECTIONS)))
    if kind == "unknown":
        leaf = draw(NAME.filter(lambda n: n not in _known(section)))
        return f"--config.{section}.{leaf}=1", f"config.{section}.{leaf}"
    leaf = draw(st.sampled_from(SECTIONS[section]))
    if kind == "type":
        value = draw(st.sampled_from(["abc", "[1, 2]", "{'a': 1}", "None+1", "1.5.2", "true"]))
    else:
        value = draw(st.sampled_from(["0", "-1", "-100", "-0.5", "-1e9"]))
    return f"--config.{section}.{leaf}={value}", f"config.{section}.{leaf}"


def _known(section):
    from girl_jax.configuration import load_config

    if not hasattr(_known, "config"):
        _known.config = load_config(CONFIG)
    return set(_known.config[section].keys())


@settings(max_examples=120, **SETTINGS)
@given(item=bad_override())
def test_bad_overrides_fail_naming_the_key(item):
    override, key = item
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "w")
        res = run_cli(["run", "--config", CONFIG, "--workdir", workdir, override])
        assert_one_line_error(res, key)
        assert not os.path.exists(workdir)


def test_unknown_split_value_names_the_line(tmp_path):
    """A user file whose `split` holds an unknown value: the message names the line too."""
    rows = [
        {"cv": "a b", "jd": "c d", "label": 1, "split": "train", "seeker_id": 1, "job_id": 1},
        {"cv": "e f", "jd": "g h", "label": 0, "split": "holdout", "seeker_id": 2, "job_id": 2},
    ]
    path = tmp_path / "user.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli(
        [
            "data",
            "make",
            "--config",
            CONFIG,
            "--workdir",
            str(tmp_path / "w"),
            "--config.data.source=files",
            f"--config.data.path={path}",
        ]
    )
    assert_one_line_error(res, "user.jsonl", "line 2", "split")


def test_valid_file_with_split_but_no_ids_is_prepared(tmp_path):
    """seeker_id / job_id are optional even when the file brings its own split column."""
    rows = [
        {"cv": f"cv {i % 7}", "jd": f"jd {i % 5}", "label": i % 2, "split": split}
        for i, split in enumerate(["train"] * 8 + ["validation", "test", "cold_start"])
    ]
    path = tmp_path / "user.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli(
        [
            "data",
            "make",
            "--config",
            CONFIG,
            "--workdir",
            str(tmp_path / "w"),
            "--config.data.source=files",
            f"--config.data.path={path}",
            "--config.tokenizer.vocab_size=300",
        ]
    )
    assert res.error is None, f"traceback: {type(res.error).__name__}: {res.error}"
    assert res.code == 0, res.stderr[-2000:]
    assert os.path.isfile(tmp_path / "w" / "data" / "final.json")
