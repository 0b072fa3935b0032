"""The streamed first pass: read → validate → clean → PII → measure → sign, one row at a time.

A kept row is written at once, already in its output form, to a spill file; what the later stages
need (content key, label id, length, MinHash signature) is held in compact arrays, about 280 bytes
a row. A rejected row goes straight to rejects.jsonl. Memory therefore does not grow with the text.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TextIO

import numpy as np

from tuneloop.config import RunConfig
from tuneloop.data import pii
from tuneloop.data.clean import clean_text
from tuneloop.data.dedup import content_id, id_key
from tuneloop.data.lengths import LengthMeter
from tuneloop.data.load import RawRow, read_rows, sha256_file
from tuneloop.data.lsh import Signer, shingles
from tuneloop.data.validate import GENERATE_FORMATS, Example, Invalid, detect_format, to_example
from tuneloop.errors import TuneloopError

CHUNK = 4096  # rows measured and signed together (tokenizers and numpy like batches)
_EMPTIED = "is empty after cleaning (it held only HTML, control characters or spaces)"
_UNKNOWN_FORMAT = (
    "no known record format: expected 'messages', 'conversations' (ShareGPT), "
    "'instruction' + 'output' (alpaca) or 'prompt' + 'completion'"
)


class Laps:
    """Seconds spent per stage, accumulated over interleaved per-row work."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._t = perf_counter()

    def start(self) -> None:
        """Start timing the next stage from now."""
        self._t = perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the last lap to `stage`."""
        now = perf_counter()
        self.seconds[stage] += now - self._t
        self._t = now


@dataclass
class Rows:
    """Compact state of the kept rows, in input order (row i is line i of the spill file).

    Attributes:
        keys: Content key (uint64); equal keys are exact duplicates.
        labels: Label id (int32; -1 for generate).
        lengths: Length in tokens (int32).
        groups: 0 for rows of the inputs, 1 for rows of the test file (int8).
        sig: MinHash signatures, `(rows, num_perm)` uint32.
        label_names: Label id → label string.
    """

    keys: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    groups: np.ndarray
    sig: np.ndarray
    label_names: list[str]


class Ingest:
    """Runs the first pass over input files, writing rejects and the spill as it goes.

    Args:
        cfg: The run config (`task` and the `prepare` section are read).
        rejects: Open text file for rejects.jsonl.
        spill: Open text file for the kept rows in output form.
        advance: Called with a byte count as rows are read (progress bars); may be None.
    """

    def __init__(self, cfg: RunConfig, rejects: TextIO, spill: TextIO, advance: Callable[[int], None] | None = None) -> None:
        self.task = cfg.task
        self.p = cfg.prepare
        self.rejects, self.spill, self.advance = rejects, spill, advance
        self.laps = Laps()
        self.meter = LengthMeter(self.p.tokenizer, cfg.task, cfg.train.classify_as)
        self.signer = Signer(self.p.near_dup_num_perm)
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.pii: Counter[str] = Counter()
        self.first_reject: dict[str, str] = {}  # kind -> "file:line: reason" of its first row, for error messages
        self.files: list[dict[str, Any]] = []
        self._label_ids: dict[str, int] = {}
        self._cols = {"keys": array("Q"), "labels": array("i"), "lengths": array("i"), "groups": array("b")}
        self._sigs: list[np.ndarray] = []
        self._chunk: list[tuple[RawRow, Example | Invalid]] = []

    def add_file(self, path: str, group: int = 0) -> None:
        """Read, check and keep every row of one file.

        Args:
            path: The file.
            group: 0 for training data, 1 for a user-given test file.
        """
        fixed = self.fixed_format()
        formats: Counter[str] = Counter()  # of the rows that passed validation
        read_before, kept_before = self.counts["read"], self.counts["valid"]
        self.laps.start()
        for raw in read_rows(path):
            self.laps.lap("read")
            self.counts["read"] += 1
            # Detected per row: one file may mix formats (messages rows appended to an alpaca set).
            fmt = fixed or (detect_format(raw.obj) if raw.obj is not None else None)
            ex = self._row(raw, fmt)
            if isinstance(ex, Example):
                formats[fmt] += 1
            self._chunk.append((raw, ex))
            if len(self._chunk) >= CHUNK:
                self._flush(group)
        self._flush(group)
        self.files.append({
            "path": path, "sha256": sha256_file(path), "role": "test" if group else "data",
            "format": fixed or "+".join(f for f in GENERATE_FORMATS if formats[f]) or "unknown",
            "rows": self.counts["read"] - read_before, "valid": self.counts["valid"] - kept_before,
        })

    def fixed_format(self) -> str | None:
        """The record format fixed by the task or config, or None when each row's fields decide it.

        Raises:
            TuneloopError: the configured format does not fit the task.
        """
        fmt = self.p.format
        if self.task == "classify":
            if fmt not in ("auto", "text_label"):
                raise TuneloopError(f"format '{fmt}' is chat data, but task 'classify' reads text + label rows; "
                                    "use --task generate, or --format text_label")
            return "text_label"
        if fmt == "text_label":
            raise TuneloopError("format 'text_label' is classification data; use --task classify")
        return None if fmt == "auto" else fmt

    def _row(self, raw: RawRow, fmt: str | None) -> Example | Invalid:
        if raw.error is not None:
            return raw.error
        try:
            if fmt is None:
                raise self._unknown_format(raw.obj or {})
            ex = to_example(raw.obj or {}, fmt, self.p.text_field, self.p.label_field)
            self.laps.lap("validate")
            self._clean(ex)
            self.laps.lap("clean")
            self._redact(ex, raw)
            self.laps.lap("pii")
            self._check_chars(ex)
        except Invalid as e:
            return e
        return ex

    def _unknown_format(self, obj: dict[str, Any]) -> Invalid:
        hint = "; it looks like text + label data: use --task classify" if self.p.text_field in obj else ""
        return Invalid("unknown format", _UNKNOWN_FORMAT + hint)

    def _clean(self, ex: Example) -> None:
        html_tags = self.p.strip_html
        if self.task == "classify":
            ex.text = clean_text(ex.text, html_tags=html_tags)
            if not ex.text:
                raise Invalid("empty after cleaning", f"text {_EMPTIED}")
            ex.label = clean_text(ex.label or "", html_tags=False)
            if not ex.label:
                raise Invalid(f"empty field '{self.p.label_field}'", "label is empty after removing control characters")
            return
        for i, m in enumerate(ex.messages, 1):
            m["content"] = clean_text(m["content"], html_tags=html_tags, keep_lines=True)
            if not m["content"]:
                raise Invalid("empty after cleaning", f"message {i} {_EMPTIED}")

    def _redact(self, ex: Example, raw: RawRow) -> None:
        if self.p.pii == "off":
            return
        found: Counter[str] = Counter()

        def scrub(text: str) -> str:
            hits = pii.find_pii(text, self.p.pii_region)
            if not hits:
                return text
            found.update(pii.count(hits))
            return pii.redact(text, hits)

        if self.task == "classify":
            ex.text = scrub(ex.text)
        for m in ex.messages:
            m["content"] = scrub(m["content"])
        ex.meta = {k: scrub(v) if isinstance(v, str) else v for k, v in ex.meta.items()}
        self.pii.update(found)
        if found:
            self.counts["pii_rows"] += 1
            if self.p.pii == "drop":
                kinds = ", ".join(sorted(found))
                raise Invalid("contains PII", f"contains personal data ({kinds}) and pii is 'drop' (shown redacted)",
                              raw=self._record(ex, "", raw))

    def _check_chars(self, ex: Example) -> None:
        n = len(ex.text) + sum(len(m["content"]) for m in ex.messages)
        if n > self.p.max_chars:
            raise Invalid("too long", f"text has {n:,} characters, over the limit of {self.p.max_chars:,} (--max-chars)")

    def _flush(self, group: int) -> None:
        chunk, self._chunk = self._chunk, []
        if self.advance is not None:  # once a chunk: a progress update per row would cost more than the row
            self.advance(sum(raw.nbytes for raw, _ in chunk))
        good = [ex for _, ex in chunk if isinstance(ex, Example)]
        lengths = iter(self._measure(good))
        self.laps.lap("measure")
        kept: list[tuple[RawRow, Example, int]] = []
        for raw, ex in chunk:
            if isinstance(ex, Example):
                n = next(lengths)
                if self.p.max_tokens is not None and n > self.p.max_tokens:
                    limit = f"over the limit of {self.p.max_tokens:,} (--max-tokens)"
                    ex = Invalid("too many tokens", f"text has {n:,} {self.meter.unit}, {limit}")
                else:
                    kept.append((raw, ex, n))
                    continue
            self._reject(raw, ex)
        self.laps.lap("write")
        if kept:
            self._keep(kept, group)

    def _measure(self, examples: list[Example]) -> list[int]:
        if self.task == "classify":
            return self.meter.measure([ex.text for ex in examples])
        per_message = iter(self.meter.measure([m["content"] for ex in examples for m in ex.messages]))
        return [sum(next(per_message) for _ in ex.messages) for ex in examples]

    def _keep(self, kept: list[tuple[RawRow, Example, int]], group: int) -> None:
        n_gram = self.p.near_dup_ngram
        self._sigs.append(self.signer.sign(shingles(_dedup_text(ex), n_gram) for _, ex, _ in kept))
        self.laps.lap("minhash")
        cols = self._cols
        for raw, ex, n in kept:
            ident = content_id(messages=ex.messages) if ex.messages else content_id(text=ex.text)
            self.spill.write(json.dumps(self._record(ex, ident, raw), sort_keys=True, ensure_ascii=False) + "\n")
            cols["keys"].append(id_key(ident))
            cols["labels"].append(self._label_ids.setdefault(ex.label, len(self._label_ids)) if ex.label is not None else -1)
            cols["lengths"].append(n)
            cols["groups"].append(group)
            self.counts["trimmed_turns"] += ex.trimmed
        self.counts["valid"] += len(kept)
        self.laps.lap("write")

    def _record(self, ex: Example, ident: str, raw: RawRow) -> dict[str, Any]:
        meta = {**ex.meta, "source": raw.source, "line": raw.line}
        if self.task == "classify":
            return {"id": ident, "text": ex.text, "label": ex.label, "meta": meta}
        return {"id": ident, "messages": ex.messages, "meta": meta}

    def _reject(self, raw: RawRow, err: Invalid) -> None:
        self.rejected[err.kind] += 1
        self.first_reject.setdefault(err.kind, f"{raw.source}:{raw.line}: {err.reason}")
        shown = err.raw if err.raw is not None else raw.raw
        rec = {"kind": err.kind, "line": raw.line, "raw": shown, "reason": err.reason, "source": raw.source}
        # default=str: Parquet rows can hold dates and decimals, which JSON has no type for
        self.rejects.write(json.dumps(rec, sort_keys=True, ensure_ascii=False, default=str) + "\n")

    def rows(self) -> Rows:
        """The compact state of all kept rows (call once, after the last `add_file`)."""
        sig = np.empty((sum(len(s) for s in self._sigs), self.p.near_dup_num_perm), dtype=np.uint32)
        pos = len(sig)
        while self._sigs:  # free each chunk once copied (np.concatenate would hold two full copies)
            chunk = self._sigs.pop()
            pos -= len(chunk)
            sig[pos : pos + len(chunk)] = chunk
        c = self._cols
        return Rows(
            keys=np.frombuffer(c["keys"], dtype=np.uint64).copy(),
            labels=np.frombuffer(c["labels"], dtype=np.int32).copy(),
            lengths=np.frombuffer(c["lengths"], dtype=np.int32).copy(),
            groups=np.frombuffer(c["groups"], dtype=np.int8).copy(),
            sig=sig,
            label_names=list(self._label_ids),
        )


def _dedup_text(ex: Example) -> str:
    return ex.text if not ex.messages else "\n".join(m["content"] for m in ex.messages)

