"""Read data files row by row: JSONL, JSON (array), CSV/TSV and Parquet, one file or a glob.

Every row comes out as a `RawRow` with its file and 1-based line (or row) number. A row that
cannot be parsed (bad JSON, bytes that are not UTF-8, a lone surrogate, nesting deeper than
`MAX_DEPTH`, broken CSV quoting, a CSV row with the wrong number of fields) comes out too, with
`error` set, so that the caller can reject it and carry on: one bad row never stops a file.
A UTF-8 byte-order mark at the start of a file is skipped.
"""

from __future__ import annotations

import codecs
import csv
import glob
import hashlib
import json
import re
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
MAX_DEPTH = 64  # arrays/objects nested deeper than this are no training record, and later stages recurse
_BOM = codecs.BOM_UTF8  # Windows tools start UTF-8 files with it
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # JSON escapes can spell them; UTF-8 (and so our files) cannot
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how JSON spells one (a valid pair matches too)
_WS = re.compile(r"[ \t\n\r]*")
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped whole) and brackets
_DECODER = json.JSONDecoder()


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
    if kind != "parquet" and (wide := _utf16_or_32(path)):
        reason = f"the file is {wide} (it starts with a {wide} byte-order mark); re-save it as UTF-8"
        yield RawRow(path, 1, None, None, Invalid("not UTF-8", reason), Path(path).stat().st_size)
        return
    if kind == "jsonl":
        yield from _read_jsonl(path)
    elif kind == "json":
        yield from _read_json(path)
    elif kind == "parquet":
        yield from _read_parquet(path)
    else:
        yield from _read_csv(path, delimiter="\t" if kind == "tsv" else ",")


def _utf16_or_32(path: str) -> str | None:
    """The wide encoding (`UTF-16` or `UTF-32`) whose byte-order mark starts the file, else None."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: FF FE starts both
        return "UTF-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16"
    return None


def _utf8_error(err: UnicodeDecodeError, where: str = "") -> Invalid:
    bad = err.object[err.start : err.start + 1].hex()
    reason = f"{where}bytes are not valid UTF-8 (byte 0x{bad} at position {err.start}); re-save the file as UTF-8"
    return Invalid("not UTF-8", reason)


def _as_object(source: str, line: int, value: Any, nbytes: int = 0, text: str = "") -> RawRow:
    """A parsed value as a row: an object that later stages can handle, else an error row.

    `text` is the value as written in the file: it decides whether the value needs checking, and is
    shown in the rejects file when the value is refused.
    """
    suspect = _might_break(text)
    if not isinstance(value, dict):
        error = Invalid("not an object", f"expected a JSON object, got {_json_type(value)}")
        # a suspect value is shown as written: writing it out again could recurse too deep
        return RawRow(source, line, None, text.rstrip("\r\n") if suspect else value, error, nbytes)
    error = _check_value(value) if suspect else None
    if error is not None:
        return RawRow(source, line, None, text.rstrip("\r\n"), error, nbytes)
    return RawRow(source, line, value, value, None, nbytes)


def _might_break(text: str) -> bool:
    """Whether JSON text can hold a lone surrogate or deep nesting: a cheap test that spares most rows the walk."""
    return text.count("[") + text.count("{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(text) is not None


def _check_value(value: Any) -> Invalid | None:
    """What in a parsed record would break a later stage: a lone surrogate, or deep nesting.

    Walks the record without recursion (the nesting is what is being checked).
    """
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return _surrogate_error()
        elif isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                return _too_deep()
            if isinstance(v, dict):
                if any(_SURROGATE.search(k) for k in v):
                    return _surrogate_error()
                v = v.values()
            stack.extend((x, depth + 1) for x in v)
    return None


def _surrogate_error() -> Invalid:
    reason = "holds an unpaired surrogate (a broken \\ud800-\\udfff escape) in a key or value; fix the source text"
    return Invalid("invalid Unicode", reason)


def _too_deep() -> Invalid:
    return Invalid("too deeply nested", f"arrays or objects are nested more than {MAX_DEPTH} levels deep; flatten the record")


def _unparseable(err: Exception) -> Invalid:
    """Why valid JSON could not be parsed: too deep for the parser, or an integer too long for Python."""
    if isinstance(err, RecursionError):
        return _too_deep()
    # Python refuses to convert integers of more than 4,300 digits (CVE-2020-10735)
    return Invalid("invalid JSON", "a number has more than 4,300 digits, more than Python reads; write it as a string")


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
    except (RecursionError, ValueError) as e:  # nesting deeper than the parser's stack, a huge integer
        return RawRow(source, line, None, text.rstrip("\r\n"), _unparseable(e), len(data))
    return _as_object(source, line, value, len(data), text)


def _read_jsonl(path: str) -> Iterator[RawRow]:
    with open(path, "rb") as f:
        for line, data in enumerate(f, 1):
            if line == 1 and data.startswith(_BOM):
                data = data[len(_BOM) :]
            if data.strip():  # blank lines separate nothing in JSONL; skipping them is not an error
                yield _parse_json_line(path, line, data)


def _read_json(path: str) -> Iterator[RawRow]:
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")  # -sig: skip a byte-order mark
    except UnicodeDecodeError as e:
        # One undecodable byte makes the whole array unreadable as text; say so as one row.
        yield RawRow(path, data.count(b"\n", 0, e.start) + 1, None, None, _utf8_error(e), len(data))
        return
    start = _WS.match(text).end()
    if text.startswith("[", start):
        yield from _read_json_array(path, text, start + 1)
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a `.json` file that is really JSON Lines: read it as such
            yield from _read_jsonl(path)
            return
        yield _json_file_error(path, e, len(data))
        return
    except (RecursionError, ValueError) as e:
        yield RawRow(path, 1, None, None, _unparseable(e), len(data))
        return
    if isinstance(value, dict):
        yield _as_object(path, 1, value, len(data), text)
        return
    error = Invalid("not an object", f"expected a JSON array of objects, got {_json_type(value)}")
    yield RawRow(path, 1, None, value, error, len(data))


def _json_file_error(path: str, e: json.JSONDecodeError, nbytes: int) -> RawRow:
    reason = f"file is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    return RawRow(path, e.lineno, None, None, Invalid("invalid JSON", reason), nbytes)


def _read_json_array(path: str, text: str, pos: int) -> Iterator[RawRow]:
    """The elements of the JSON array that opens just before `pos`, one row each (row = element number).

    Parsing element by element means one element nested too deep to parse loses only itself.
    """
    row = 0
    while True:
        pos = _WS.match(text, pos).end()
        if row == 0 and text.startswith("]", pos):
            return  # an empty array
        row += 1
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield _json_file_error(path, e, len(text) - pos)  # no way to find where the next element starts
            return
        except (RecursionError, ValueError) as e:
            end = _skip_value(text, pos)
            yield RawRow(path, row, None, text[pos:end] if end else None, _unparseable(e), (end or len(text)) - pos)
            if end is None:
                return
        else:
            yield _as_object(path, row, value, end - pos, text[pos:end])
        pos = _WS.match(text, end).end()
        if text.startswith(",", pos):
            pos += 1
            continue
        if not text.startswith("]", pos):
            yield _json_file_error(path, json.JSONDecodeError("Expecting ',' delimiter", text, pos), 0)
        elif text[pos + 1 :].strip():
            yield _json_file_error(path, json.JSONDecodeError("Extra data after the array", text, pos + 1), 0)
        return


def _skip_value(text: str, pos: int) -> int | None:
    """The index just past the array or object that starts at `pos`, found without recursion."""
    depth = 0
    for m in _JSON_TOKEN.finditer(text, pos):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
            if depth == 0:
                return m.end()
    return None


def _has_surrogates(values: list[str]) -> bool:
    # surrogateescape turns each undecodable byte into a lone surrogate U+DC80..U+DCFF
    return any(any("\udc80" <= ch <= "\udcff" for ch in v) for v in values if v)


def _printable(text: str) -> str:
    """Text read with surrogateescape, its undecodable bytes shown as `\\xNN` (safe to write as UTF-8)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _LineFeed:
    """Feeds a file's lines to `csv.reader`, keeping those of the record being read.

    When a record turns out malformed (a quote that never closes, or closes mid-field), only its
    first line is rejected: the lines it swallowed go back to be read again as records.
    """

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._back: list[str] = []  # lines to read again, last first
        self.taken: list[str] = []  # lines of the current record
        self.line = 0  # lines before the current record

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        text = self._back.pop() if self._back else next(self._lines)
        self.taken.append(text)
        return text

    def next_record(self) -> None:
        """Start a new record after the current one."""
        self.line += len(self.taken)
        self.taken = []

    def reject_first(self) -> str:
        """Give up the current record: return its first line, re-read the others."""
        first, rest = self.taken[0] if self.taken else "", self.taken[1:]
        self._back.extend(reversed(rest))
        self.line += 1
        self.taken = []
        return first


def _csv_records(f: Iterator[str], delimiter: str) -> Iterator[tuple[int, list[str] | None, str]]:
    """(first line, fields, "") per record, or (line, None, why) for a line that starts a malformed one."""
    feed = _LineFeed(f)
    # strict: a quote must close right before a delimiter or line end; else the non-strict reader
    # silently glues the following lines, good rows included, into one field.
    reader = csv.reader(feed, delimiter=delimiter, strict=True)
    while True:
        feed.next_record()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            line = feed.line + 1
            first = feed.reject_first()
            yield line, [first.rstrip("\r\n")], str(e)
            reader = csv.reader(feed, delimiter=delimiter, strict=True)  # the old one is mid-record
            continue
        yield feed.line + 1, fields, ""


def _read_csv(path: str, delimiter: str) -> Iterator[RawRow]:
    csv.field_size_limit(sys.maxsize)  # long documents are rejected by max_chars, with a reason, not by csv
    # utf-8-sig skips the byte-order mark Excel writes
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        records = _csv_records(f, delimiter)
        line, header, problem = next(records, (1, None, ""))
        if header is None:
            return
        if problem:
            yield _bad_quoting(path, line, header[0], problem, header=True)
            return
        header = [h.strip() for h in header]
        for line, fields, problem in records:
            if problem:
                yield _bad_quoting(path, line, fields[0], problem)
            elif fields:  # a blank line holds no record, as in JSONL
                yield _csv_row(path, line, header, fields)


def _bad_quoting(path: str, line: int, text: str, problem: str, header: bool = False) -> RawRow:
    what = "the header line" if header else "a quoted field that starts on this line"
    then = "no row of the file was read; fix the header" if header else "the lines after it were read as rows of their own"
    reason = f"malformed CSV quoting: {what} does not end where a field should ({problem}); {then}"
    return RawRow(path, line, None, _printable(text), Invalid("malformed CSV", reason), len(text))


def _csv_row(path: str, line: int, header: list[str], fields: list[str]) -> RawRow:
    nbytes = sum(len(v) for v in fields) + len(fields)
    if _has_surrogates(fields):
        raw = [_printable(v) for v in fields]
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
