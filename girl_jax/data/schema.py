"""The interaction schema (`cv`, `jd`, `label`, optional ids) and per-record validation.

One record is one (CV, JD) pair with recruiter feedback. Decisions a user can rely on:

- `cv`, `jd`: non-empty strings (not whitespace-only), valid Unicode (no lone surrogates),
  no NUL characters.
- `label`: int 0 / 1, or a float exactly 0.0 / 1.0; booleans, other numbers and strings are
  rejected. Text sources (CSV) give strings: "0", "1", "0.0", "1.0" are accepted there.
- `seeker_id`, `job_id`: optional; strings or integers, stored as strings. `split`: optional
  string. An optional field that is null / empty counts as absent.
- Any other field is an error that lists the allowed fields.
"""

import math
from collections.abc import Mapping

from girl_jax.errors import DataError

REQUIRED_FIELDS = ("cv", "jd", "label")
OPTIONAL_FIELDS = ("seeker_id", "job_id", "split")
SPLITS = ("train", "validation", "test", "cold_start")
ALLOWED_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
TEXT_FIELDS = ("cv", "jd")
ID_FIELDS = ("seeker_id", "job_id")


def fail(where: str, field: str | None, problem: str) -> DataError:
    """Builds the one-line error every loader raises: `where: field 'x': problem`."""
    field_part = f"field '{field}': " if field else ""
    message = f"{where}: {field_part}{problem}"
    return DataError(" ".join(message.splitlines()))


def short_repr(value, limit: int = 60) -> str:
    """repr() cut to `limit` characters, so an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_unicode(value: str, where: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise fail(
            where, field, f"invalid Unicode at character {e.start} (lone surrogate)"
        ) from None


def _text(value, where: str, field: str) -> str:
    if value is None:
        raise fail(where, field, "required field is null")
    if not isinstance(value, str):
        raise fail(
            where, field, f"expected a string, got {type(value).__name__} {short_repr(value)}"
        )
    if not value.strip():
        raise fail(where, field, "empty or whitespace-only text")
    if "\x00" in value:  # a NUL inside text means a binary or corrupted file, not a CV
        raise fail(where, field, f"NUL character at position {value.index(chr(0))}")
    _check_unicode(value, where, field)
    return value


def _label(value, where: str, *, from_text: bool) -> int:
    if from_text and isinstance(value, str):
        stripped = value.strip()
        if stripped in ("0", "1", "0.0", "1.0"):
            return int(float(stripped))
        raise fail(where, "label", f"expected 0 or 1, got {short_repr(value)}")
    if value is None:
        raise fail(where, "label", "required field is null")
    if isinstance(value, bool):
        raise fail(where, "label", f"expected 0 or 1, got boolean {value} (write 0 or 1)")
    if isinstance(value, int) and value in (0, 1):
        return int(value)
    if isinstance(value, float) and not math.isnan(value) and value in (0.0, 1.0):
        return int(value)
    raise fail(where, "label", f"expected 0 or 1, got {type(value).__name__} {short_repr(value)}")


def _optional(value, where: str, field: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if field in ID_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        allowed = "a string or an integer" if field in ID_FIELDS else "a string"
        raise fail(
            where, field, f"expected {allowed}, got {type(value).__name__} {short_repr(value)}"
        )
    _check_unicode(value, where, field)
    return value


def validate_record(record, where: str, *, from_text: bool = False) -> dict:
    """Checks one raw record and returns it normalised (label int, ids str, absent = None).

    `where` locates the record in messages, e.g. "data.jsonl: line 3". `from_text` relaxes the
    label rule for sources that only hold strings (CSV).
    """
    if not isinstance(record, Mapping):
        raise fail(where, None, f"expected a JSON object, got {type(record).__name__}")
    unknown = [k for k in record if k not in ALLOWED_FIELDS]
    if unknown:
        allowed = ", ".join(ALLOWED_FIELDS)
        raise fail(where, None, f"unknown field {short_repr(unknown[0], 40)}; allowed: {allowed}")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise fail(where, name, "missing required field")
    out = {name: _text(record[name], where, name) for name in TEXT_FIELDS}
    out["label"] = _label(record["label"], where, from_text=from_text)
    for name in OPTIONAL_FIELDS:
        out[name] = _optional(record.get(name), where, name)
    if out["split"] is not None and out["split"] not in SPLITS:
        raise fail(
            where,
            "split",
            f"unknown value {short_repr(out['split'])}; allowed: {', '.join(SPLITS)}",
        )
    return out
