"""Load, check and write interaction files (JSONL / CSV / TSV / Parquet) as HF `datasets`.

Every problem in a user's file becomes one `DataError` line naming the file, the 1-based
`line N` (JSONL / CSV: the physical line where the record starts; the CSV header is line 1) or
`record N` (Parquet), and the field. Files are parsed here, before `datasets` sees them, because
its own errors name neither line nor field. Nothing touches the network or the `datasets` cache:
the result is an in-memory `datasets.Dataset`.
"""

import csv
import hashlib
import io
import json
import logging
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from girl_jax import atomic
from girl_jax.data.schema import ALLOWED_FIELDS, OPTIONAL_FIELDS, fail, validate_record
from girl_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {key!r} in one object")
        out[key] = value
    return out


def _file_format(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl / .csv / .parquet file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise DataError(f"{path}: unknown file extension {path.suffix!r}; expected one of {known}")
    return fmt


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte-order mark written by spreadsheets
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        bad = data[e.start : e.start + 1].hex()
        raise fail(
            f"{path}: line {line}", None, f"not valid UTF-8 (byte 0x{bad} at column {column})"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: line 1: empty file, no records")
    return text


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            obj = json.loads(line, object_pairs_hook=_object_without_duplicate_keys)
        except _DuplicateKey as e:
            raise fail(where, None, str(e)) from None
        except (ValueError, RecursionError) as e:
            raise fail(where, None, f"malformed JSON ({str(e)[:80]})") from None
        yield f"line {number}", validate_record(obj, where)


def _csv_records(path: Path, text: str, delimiter: str) -> Iterator[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header = None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise fail(f"{path}: line {reader.line_num}", None, f"CSV error: {e}") from None
        if not row or (len(row) == 1 and not row[0].strip() and header is not None):
            continue
        where = f"{path}: line {start}"
        if header is None:
            header = [name.strip() for name in row]
            _check_header(header, where)
            continue
        if len(row) != len(header):
            raise fail(
                where,
                None,
                f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}; "
                "check the quoting and the delimiter",
            )
        yield f"line {start}", validate_record(dict(zip(header, row)), where, from_text=True)


def _check_header(header: list[str], where: str) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise fail(where, name, "column appears twice in the header")
        seen.add(name)
        if name not in ALLOWED_FIELDS:
            allowed = ", ".join(ALLOWED_FIELDS)
            raise fail(where, None, f"unknown column {name[:40]!r}; allowed: {allowed}")
    for name in ("cv", "jd", "label"):
        if name not in seen:
            raise fail(where, name, "missing required column in the header")


def _parquet_records(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa  # heavy: pyarrow, only for Parquet files
    import pyarrow.parquet as pq  # heavy: pyarrow, only for Parquet files

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e)[:120]})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: record 1: empty file, no records")
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"record {number}", validate_record(record, f"{path}: record {number}")


def _check_options(max_chars, on_long, on_duplicate) -> None:
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ConfigError(f"max_chars: expected a positive integer or None, got {max_chars!r}")
    if on_long not in ("truncate", "error"):
        raise ConfigError(f"on_long: expected 'truncate' or 'error', got {on_long!r}")
    if on_duplicate not in ("drop", "error"):
        raise ConfigError(f"on_duplicate: expected 'drop' or 'error', got {on_duplicate!r}")


def read_records(path, *, max_chars=None, on_long="truncate", on_duplicate="drop") -> list[dict]:
    """Parses and validates a file into normalised record dicts (see `load_interactions`)."""
    _check_options(max_chars, on_long, on_duplicate)
    path = Path(path)
    fmt = _file_format(path)
    if fmt == "parquet":
        located = _parquet_records(path)
    elif fmt == "jsonl":
        located = _jsonl_records(path, _read_text(path))
    else:
        delimiter = "\t" if fmt == "tsv" else ","
        located = _csv_records(path, _read_text(path), delimiter)

    records, first_seen, dropped, truncated = [], {}, 0, 0
    field_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # CVs can exceed the csv module's 128 KiB default
    try:
        for where, record in located:
            key = tuple(record[name] for name in ALLOWED_FIELDS)
            if key in first_seen:
                if on_duplicate == "error":
                    raise fail(f"{path}: {where}", None, f"duplicate of {first_seen[key]}")
                dropped += 1
                continue
            first_seen[key] = where
            if max_chars is not None:
                for name in ("cv", "jd"):
                    if len(record[name]) > max_chars:
                        if on_long == "error":
                            raise fail(
                                f"{path}: {where}",
                                name,
                                f"{len(record[name])} characters, more than max_chars={max_chars}",
                            )
                        record[name] = record[name][:max_chars]
                        truncated += 1
            records.append(record)
    finally:
        csv.field_size_limit(field_limit)
    if not records:
        unit = "record" if fmt == "parquet" else "line"
        raise DataError(f"{path}: {unit} 1: no records")
    if dropped:
        log.warning("%s: dropped %d duplicate rows (kept the first of each)", path, dropped)
    if truncated:
        log.warning("%s: truncated %d texts to max_chars=%d", path, truncated, max_chars)
    return records


def records_to_dataset(records: list[dict], fingerprint: str | None = None):
    """Builds an in-memory `datasets.Dataset`; optional columns only where some record has them.

    The Arrow table is built directly (`Dataset.from_dict` encodes row by row and hashes all the
    data for a fingerprint: 5x slower on 100k rows); `fingerprint` names this content for the
    `datasets` transform cache, a random one is used when None.
    """
    import datasets  # heavy: datasets, only when a Dataset is asked for
    import pyarrow as pa  # heavy: pyarrow, only for Parquet files

    columns = ["cv", "jd", "label"] + [
        name for name in OPTIONAL_FIELDS if any(r.get(name) is not None for r in records)
    ]
    schema = pa.schema(
        [pa.field(name, pa.int64() if name == "label" else pa.string()) for name in columns]
    )
    table = pa.table({name: [r.get(name) for r in records] for name in columns}, schema=schema)
    fingerprint = fingerprint or uuid.uuid4().hex
    return datasets.Dataset(datasets.table.InMemoryTable(table), fingerprint=fingerprint)


def _fingerprint(path: Path, *options) -> str:
    stat = path.stat()
    key = repr((str(path.resolve()), stat.st_size, stat.st_mtime_ns, options))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def load_interactions(path, *, max_chars=None, on_long="truncate", on_duplicate="drop"):
    """Loads a JSONL / CSV / TSV / Parquet interaction file into a validated `datasets.Dataset`.

    Args:
      path: the file; its extension picks the format (.jsonl/.ndjson, .csv, .tsv, .parquet/.pq).
      max_chars: longest `cv` / `jd` in characters; None keeps every text whole.
      on_long: "truncate" (cut the end, log a counted warning) or "error".
      on_duplicate: "drop" (keep the first of identical records, log a counted warning) or
        "error" (name both lines).

    Returns:
      A `datasets.Dataset` with columns cv, jd (str), label (int64 0/1) and whichever of
      seeker_id, job_id, split (str, None where absent) the file has.

    Raises:
      DataError: naming the file, `line N` / `record N` and the field.
    """
    records = read_records(path, max_chars=max_chars, on_long=on_long, on_duplicate=on_duplicate)
    return records_to_dataset(records, _fingerprint(Path(path), max_chars, on_long, on_duplicate))


def _percentiles(values: list[int]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _column(ds, name) -> list:
    with_format = getattr(ds, "with_format", None)
    if with_format is not None:  # datasets.Dataset: one Arrow read, not one row at a time
        return with_format("arrow")[name].to_pylist()
    return list(ds[name])


def summarize(ds) -> dict:
    """Rows, positive rate and cv / jd length percentiles (characters and words) of a dataset."""
    labels = np.asarray(_column(ds, "label"), dtype=np.float64)
    if labels.size == 0:
        raise DataError("summarize: the dataset has no rows")
    out = {
        "rows": int(labels.size),
        "positives": int(labels.sum()),
        "positive_rate": float(labels.mean()),
    }
    for name in ("cv", "jd"):
        texts = _column(ds, name)
        out[name] = {
            "chars": _percentiles([len(t) for t in texts]),
            "words": _percentiles([len(t.split()) for t in texts]),
        }
    columns = set(ds.column_names)
    for name, key in (("seeker_id", "seekers"), ("job_id", "jobs")):
        if name in columns:
            out[key] = len({v for v in _column(ds, name) if v is not None})
    if "split" in columns:
        splits: dict[str, int] = {}
        for value in _column(ds, "split"):
            splits[str(value)] = splits.get(str(value), 0) + 1
        out["splits"] = splits
    return out


def _to_arrow(data):
    import pyarrow as pa  # heavy: pyarrow, only for Parquet files

    if isinstance(data, pa.Table):
        return data
    if isinstance(data, Mapping):
        return pa.table(dict(data))
    if type(data).__module__.startswith("pandas"):  # a DataFrame; its index is not data
        return pa.Table.from_pandas(data, preserve_index=False)
    if type(data).__name__ == "DataFrame":  # pandas
        return pa.Table.from_pandas(data, preserve_index=False)
    with_format = getattr(data, "with_format", None)
    if with_format is not None:  # a datasets.Dataset, indices mapping (select/shuffle) applied
        return with_format("arrow")[:]
    raise TypeError(f"write_parquet_atomic: cannot write a {type(data).__name__}")


def write_parquet_atomic(data, path) -> Path:
    """Writes a Dataset / pyarrow Table / pandas DataFrame / dict of columns to Parquet, atomically.

    The table goes to a temporary file in the target directory, is fsynced, then renamed over
    `path` (`girl_jax.atomic`), so a reader sees the old file or the new one.
    """
    import pyarrow.parquet as pq  # heavy: pyarrow, only for Parquet files

    table = _to_arrow(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_open(path, "wb") as f:
        pq.write_table(table, f)
    return path


__all__ = [
    "FORMATS",
    "load_interactions",
    "read_records",
    "records_to_dataset",
    "summarize",
    "write_parquet_atomic",
]
