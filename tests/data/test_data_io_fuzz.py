"""Fuzzing the loader: every malformed JSONL / CSV file gives a DataError naming file and line.

Three generators, 350 examples in all: targeted JSONL mutations (the line and field are known,
so the message is checked exactly), targeted CSV mutations, and free byte-level damage
(truncation, random bytes, deleted / duplicated spans) where the file may stay valid.
"""

import csv
import io as stdio
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from girl_jax.data import io
from girl_jax.errors import DataError

SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

texts = st.text(min_size=1, max_size=30).filter(lambda t: t.strip() and "\x00" not in t)
record = st.fixed_dictionaries(
    {"cv": texts, "jd": texts, "label": st.sampled_from([0, 1])},
    optional={
        "seeker_id": st.integers(0, 99).map(str),
        "split": st.sampled_from(["train", "test"]),
    },
)
records = st.lists(record, min_size=1, max_size=5)

wrong_json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5).filter(lambda v: v not in (0, 1)),
    st.floats(allow_nan=True).filter(lambda v: v not in (0.0, 1.0)),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["", "  ", "\n\t", "yes", "1 ", "true"]),
)

MUTATIONS = ["wrong_type", "drop_key", "extra_key", "not_object", "truncate"]


def check_message(error: DataError, path) -> str:
    message = str(error)
    assert path.name in message, message
    assert re.search(r"\b(line|record) \d+", message), message
    assert "\n" not in message
    return message


@settings(max_examples=150, **SETTINGS)
@given(rows=records, data=st.data())
def test_jsonl_mutations_name_the_line(tmp_path_factory, rows, data):
    path = tmp_path_factory.getbasetemp() / "fuzz.jsonl"
    lines = [json.dumps(r) for r in rows]
    target = data.draw(st.integers(0, len(lines) - 1), label="target")
    mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    row = dict(rows[target])
    field = None
    if mutation == "wrong_type":
        field = data.draw(st.sampled_from(["cv", "jd", "label"]), label="field")
        value = data.draw(wrong_json_values, label="value")
        if field != "label" and isinstance(value, str) and value.strip():
            value = 42  # a non-blank string is a valid text
        row[field] = value
        lines[target] = json.dumps(row)
    elif mutation == "drop_key":
        field = data.draw(st.sampled_from(["cv", "jd", "label"]), label="field")
        del row[field]
        lines[target] = json.dumps(row)
    elif mutation == "extra_key":
        field = data.draw(st.text(min_size=1, max_size=8), label="extra")
        if field in row or field in ("seeker_id", "job_id", "split"):
            field = "extra_" + field
        row[field] = 1
        lines[target] = json.dumps(row)
        field = None  # the key may need escaping in the message; the line is what we check
    elif mutation == "not_object":
        lines[target] = json.dumps(data.draw(st.one_of(st.integers(), st.lists(st.integers()))))
    else:
        cut = data.draw(st.integers(1, len(lines[target]) - 1), label="cut")
        lines[target] = lines[target][:cut]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        io.load_interactions(path)
    message = check_message(info.value, path)
    assert f"line {target + 1}:" in message
    if field is not None:
        assert f"'{field}'" in message


@settings(max_examples=100, **SETTINGS)
@given(rows=records, data=st.data())
def test_csv_mutations_name_the_line(tmp_path_factory, rows, data):
    path = tmp_path_factory.getbasetemp() / "fuzz.csv"
    out = stdio.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cv", "jd", "label"])
    for r in rows:
        writer.writerow([r["cv"], r["jd"], r["label"]])
    text = out.getvalue()
    mutation = data.draw(
        st.sampled_from(["label", "blank_text", "extra_cell", "missing_cell", "bad_quote"]),
        label="mutation",
    )
    target = data.draw(st.integers(0, len(rows) - 1), label="target")
    cells = [rows[target]["cv"], rows[target]["jd"], str(rows[target]["label"])]
    if mutation == "label":
        cells[2] = data.draw(st.sampled_from(["2", "-1", "yes", "0.5", "", "1e0x"]), label="v")
    elif mutation == "blank_text":
        cells[data.draw(st.integers(0, 1), label="col")] = " "
    elif mutation == "extra_cell":
        cells.append("x")
    elif mutation == "missing_cell":
        cells.pop()
    # Rewrite the whole file so the target row's first physical line is known.
    out = stdio.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cv", "jd", "label"])
    start_line = 2
    for i, r in enumerate(rows):
        row_cells = cells if i == target else [r["cv"], r["jd"], r["label"]]
        if i < target:
            before = out.tell()
            writer.writerow(row_cells)
            start_line += out.getvalue()[before:].count("\n")
        elif i == target and mutation == "bad_quote":
            out.write('"' + row_cells[0].replace('"', "") + '" tail,b,1\n')
        else:
            writer.writerow(row_cells)
    text = out.getvalue()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        io.load_interactions(path)
    message = check_message(info.value, path)
    if mutation != "bad_quote":  # a quoting error is reported where the parser noticed it
        assert f"line {start_line}:" in message, (message, text)


damage = st.sampled_from(["truncate", "insert_bytes", "delete_span", "duplicate_span", "flip"])


@settings(max_examples=100, **SETTINGS)
@given(rows=records, fmt=st.sampled_from(["jsonl", "csv"]), data=st.data())
def test_random_byte_damage_is_valid_or_a_data_error(tmp_path_factory, rows, fmt, data):
    path = tmp_path_factory.getbasetemp() / f"damaged.{fmt}"
    if fmt == "jsonl":
        raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    else:
        out = stdio.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["cv", "jd", "label"])
        writer.writerows([r["cv"], r["jd"], r["label"]] for r in rows)
        raw = out.getvalue().encode()
    for _ in range(data.draw(st.integers(1, 3), label="hits")):
        kind = data.draw(damage, label="kind")
        at = data.draw(st.integers(0, len(raw)), label="at")
        if kind == "truncate":
            raw = raw[:at]
        elif kind == "insert_bytes":
            raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=6), label="bytes") + raw[at:]
        elif kind == "delete_span":
            raw = raw[:at] + raw[at + data.draw(st.integers(1, 10), label="n") :]
        elif kind == "duplicate_span":
            raw = raw[:at] + raw[at : at + 12] + raw[at:]
        elif raw:
            i = min(at, len(raw) - 1)
            raw = raw[:i] + bytes([raw[i] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[i + 1 :]
    path.write_bytes(raw)
    try:
        ds = io.load_interactions(path)
    except DataError as e:
        check_message(e, path)
    else:
        assert ds.num_rows >= 1 and set(ds.column_names) >= {"cv", "jd", "label"}
        assert set(ds["label"]) <= {0, 1}
