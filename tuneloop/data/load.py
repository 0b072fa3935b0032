"""Read data files row by row: JSONL, JSON (array), CSV/TSV and Parquet, one file or a glob.

Every row comes out as a `RawRow` with its file and 1-based line (or row) number. A row that
cannot be parsed (bad JSON, bytes that are not UTF-8, a CSV row with the wrong number of fields)
comes out too, with `error` set, so that the caller can reject it and carry on: one bad row
never stops a file.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tuneloop.data.validate import Invalid
from tuneloop.errors import TuneloopError

READERS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_PARQUET_BATCH = 8192


@dataclass(slots=True)
class RawRow:
    """One row as read from a file, before any validation.

    Attributes:
        source: The file it came from (as the user named it, after glob expansion).
        line: 1-based line number (JSONL, CSV/TSV: the line the record starts on) or row number
            (JSON array element, Parquet row).
        obj: The parsed record, or None when the row could not be parsed.
        raw: What to show a person in the rejects file: the record, or the undecodable text.
        error: Why the row could not be parsed, or None.
        nbytes: Bytes this row took in the file, for progress bars (0 where unknown).
    """

    source: str
    line: int
    obj: dict[str, Any] | None
    raw: Any
    error: Invalid | None = None
    nbytes: int = 0


def expand_inputs(patterns: list[str]) -> list[str]:
    """Expand globs into a sorted, de-duplicated list of existing files.

    Args:
        patterns: File paths or glob patterns (`data/*.jsonl`, `data/**/*.csv`).

    Returns:
        The matching files, each pattern's matches sorted, in the order the patterns were given.

    Raises:
        TuneloopError: no pattern was given, a pattern matches nothing, or a file has an unknown extension.
    """
    if not patterns:
        raise TuneloopError("no input files: pass DATA files or globs, or set prepare.inputs in the config")
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise TuneloopError(f"input {pattern!r} matches no file; check the path (relative to {Path.cwd()})")
        for m in matches:
            reader_for(m)  # fail early, before any work, on a file we cannot read
            if m not in files:
                files.append(m)
    return files


def reader_for(path: str) -> str:
    """The reader a file needs, from its extension (`jsonl`, `json`, `csv`, `tsv`, `parquet`).

    Raises:
        TuneloopError: the extension is not one we read.
    """
    kind = READERS.get(Path(path).suffix.lower())
    if kind is None:
        known = ", ".join(sorted(READERS))
        raise TuneloopError(f"cannot read {path}: unknown file type {Path(path).suffix!r} (use one of {known})")
    return kind


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes (recorded in the manifest so a run can be traced to its data)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_rows(path: str) -> Iterator[RawRow]:
    """Yield every row of a file, parsed where possible, bad ones with `error` set.

    Args:
        path: A `.jsonl`/`.ndjson`, `.json` (an array of objects, or JSON Lines), `.csv`, `.tsv`
            or `.parquet` file.
    """
    kind = reader_for(path)
    if kind == "jsonl":
        yield from _read_jsonl(path)
    elif kind == "json":
        yield from _read_json(path)
    elif kind == "parquet":
        yield from _read_parquet(path)
    else:
        yield from _read_csv(path, delimiter="\t" if kind == "tsv" else ",")


def _utf8_error(err: UnicodeDecodeError, where: str = "") -> Invalid:
    bad = err.object[err.start : err.start + 1].hex()
    reason = f"{where}bytes are not valid UTF-8 (byte 0x{bad} at position {err.start}); re-save the file as UTF-8"
    return Invalid("not UTF-8", reason)


def _as_object(source: str, line: int, value: Any, nbytes: int = 0) -> RawRow:
    if isinstance(value, dict):
        return RawRow(source, line, value, value, None, nbytes)
    error = Invalid("not an object", f"expected a JSON object, got {_json_type(value)}")
    return RawRow(source, line, None, value, error, nbytes)


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _parse_json_line(source: str, line: int, data: bytes) -> RawRow:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return RawRow(source, line, None, data.decode("utf-8", "backslashreplace").rstrip("\r\n"), _utf8_error(e), len(data))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        error = Invalid("invalid JSON", f"invalid JSON: {e.msg} (column {e.colno})")
        return RawRow(source, line, None, text.rstrip("\r\n"), error, len(data))
    return _as_object(source, line, value, len(data))


def _read_jsonl(path: str) -> Iterator[RawRow]:
    with open(path, "rb") as f:
        for line, data in enumerate(f, 1):
            if data.strip():  # blank lines separate nothing in JSONL; skipping them is not an error
                yield _parse_json_line(path, line, data)


def _read_json(path: str) -> Iterator[RawRow]:
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # One undecodable byte makes the whole array unreadable as text; say so as one row.
        yield RawRow(path, data.count(b"\n", 0, e.start) + 1, None, None, _utf8_error(e), len(data))
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a `.json` file that is really JSON Lines: read it as such
            yield from _read_jsonl(path)
            return
        reason = f"file is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        yield RawRow(path, e.lineno, None, None, Invalid("invalid JSON", reason), len(data))
        return
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        error = Invalid("not an object", f"expected a JSON array of objects, got {_json_type(value)}")
        yield RawRow(path, 1, None, value, error, len(data))
        return
    per_row = len(data) // max(len(value), 1)
    for i, item in enumerate(value, 1):
        yield _as_object(path, i, item, per_row)


def _has_surrogates(values: list[str]) -> bool:
    # surrogateescape turns each undecodable byte into a lone surrogate U+DC80..U+DCFF
    return any(any("\udc80" <= ch <= "\udcff" for ch in v) for v in values if v)


def _read_csv(path: str, delimiter: str) -> Iterator[RawRow]:
    csv.field_size_limit(sys.maxsize)  # long documents are rejected by max_chars, with a reason, not by csv
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]  # Excel writes a byte-order mark
        header = [h.strip() for h in header]
        start = reader.line_num + 1
        for fields in reader:
            if fields:  # a blank line holds no record, as in JSONL
                yield _csv_row(path, start, header, fields)
            start = reader.line_num + 1


def _csv_row(path: str, line: int, header: list[str], fields: list[str]) -> RawRow:
    nbytes = sum(len(v) for v in fields) + len(fields)
    if _has_surrogates(fields):
        raw = [v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for v in fields]
        error = Invalid("not UTF-8", "bytes are not valid UTF-8; re-save the file as UTF-8")
        return RawRow(path, line, None, raw, error, nbytes)
    if len(fields) != len(header):
        reason = f"row has {len(fields)} fields but the header has {len(header)}"
        return RawRow(path, line, None, fields, Invalid("wrong field count", reason), nbytes)
    # An unnamed first column is the index pandas writes; it is not data.
    obj = {k: v for k, v in zip(header, fields) if k}
    return RawRow(path, line, obj, obj, None, nbytes)


def _read_parquet(path: str) -> Iterator[RawRow]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise TuneloopError(f"cannot read Parquet file {path}: {e}") from None
    nbytes = Path(path).stat().st_size // max(pf.metadata.num_rows, 1)  # for progress bars only
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH):
        for obj in batch.to_pylist():
            row += 1
            yield _parquet_row(path, row, obj, nbytes)


def _parquet_row(path: str, row: int, obj: dict[str, Any], nbytes: int) -> RawRow:
    for key, value in obj.items():
        if isinstance(value, bytes):  # a binary column: text only if it decodes
            try:
                obj[key] = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raw = {k: (v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v) for k, v in obj.items()}
                return RawRow(path, row, None, raw, _utf8_error(e, f"column '{key}': "), nbytes)
    return RawRow(path, row, obj, obj, None, nbytes)
