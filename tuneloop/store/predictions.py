"""The prediction log: every answer the server gave, for `tuneloop monitor` (drift, live quality, fairness).

One row per answer (a classify request of n texts writes n rows, `idx` 0..n-1, like feedback's
`index`): response id, time, model name and version, the input (redacted text, or only its hash),
the output label or text, per-label probabilities and confidence, latency, token counts and the
client's `metadata` object (e.g. `{"group": {"gender": "f"}}` for live fairness).

Writing is off the request path: the server puts rows on a bounded queue and returns; one writer
thread redacts them and inserts them in batches. A database that is down or full never fails a
request: the rows of a failed batch are counted as lost and the error is kept for `/health`; a full
queue drops new rows the same way. Retention: rows older than `retention_days` and the oldest rows
beyond `max_rows` are deleted by the writer every few minutes.

Inputs are kept as `inputs` says: `redacted` (the text with personal data replaced by placeholders,
by the same redactor as `tuneloop prepare`), `hash` (only the SHA-256 of the text: drift by length
and hash still works, embedding drift does not), or `none`. The length in characters is always kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from tuneloop.store import db

log = logging.getLogger("tuneloop.store")

InputMode = Literal["redacted", "hash", "none"]
INPUT_MODES: tuple[str, ...] = ("redacted", "hash", "none")
#: Rows the writer inserts in one transaction at most.
BATCH_ROWS = 500
#: Seconds between retention purges while the log is written.
PURGE_EVERY_S = 300.0
#: Longest stored input or output text (characters); longer ones are cut (their hash is of the whole).
MAX_TEXT_CHARS = 8_000
_WHAT = "the prediction log"

_meta = sa.MetaData()
predictions = sa.Table(
    "predictions", _meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("response_id", sa.String(200), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("created", sa.String(40), nullable=False),  # ISO 8601 UTC: sorts as time does
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("version", sa.Text),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("input", sa.Text),
    sa.Column("input_hash", sa.String(64)),
    sa.Column("input_chars", sa.Integer),
    sa.Column("output", sa.Text),
    sa.Column("confidence", sa.Float),
    sa.Column("probabilities", sa.Text),  # JSON {label: p}
    sa.Column("latency_ms", sa.Float),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("meta", sa.Text),  # JSON: the client's metadata object
    sa.Index("predictions_created", "created"),
    sa.Index("predictions_response", "response_id", "idx"),
    sqlite_autoincrement=True,
)

#: Schema versions (see `tuneloop.store.db.ensure_schema`): 1 the table.
MIGRATIONS: list[db.Migration] = [lambda c: _meta.create_all(c, checkfirst=True)]


def now() -> str:
    """The current UTC time as the log stores it (ISO 8601, microseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def classify_rows(*, response_id: str, model: str, version: str | None, texts: Sequence[str],
                  results: Sequence[dict[str, Any]], latency_ms: float, metadata: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The log rows of one /v1/classify answer: one per text, with its label, probabilities and confidence."""
    created = now()
    return [{"response_id": response_id, "idx": i, "created": created, "model": model, "version": version,
             "kind": "classify", "input": text, "output": r.get("label"), "probabilities": r.get("probabilities"),
             "confidence": max(r["probabilities"].values()) if r.get("probabilities") else None,
             "latency_ms": latency_ms, "metadata": metadata} for i, (text, r) in enumerate(zip(texts, results))]


def chat_row(*, response_id: str, model: str, version: str | None, messages: Sequence[dict[str, Any]], answer: str,
             usage: dict[str, int], latency_ms: float, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The log row of one chat answer: the last user message as the input, the answer as the output."""
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    text = users[-1] if users else None
    if isinstance(text, list):  # content parts: keep their text
        text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
    return {"response_id": response_id, "idx": 0, "created": now(), "model": model, "version": version, "kind": "chat",
            "input": text if isinstance(text, str) else None, "output": answer, "latency_ms": latency_ms,
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "metadata": metadata}


class PredictionLog:
    """A queue and a batch-writer thread that store prediction rows without ever blocking a request.

    Args:
        target: A SQLite file or a `postgresql://` URL (see `tuneloop.store.db.resolve`).
        inputs: `redacted`, `hash` or `none` (see the module docstring).
        retention_days: Delete rows older than this (None: keep).
        max_rows: Keep at most this many rows, deleting the oldest (None: no bound).
        queue_size: Rows waiting to be written at most; more are dropped (and counted).
        pii_region: Country for phone numbers written without a `+` country code.

    Raises:
        TuneloopError: the target is not a supported database (a server that is down is not an
            error here: the writer retries with every batch and reports in `status()`).
    """

    def __init__(self, target: str | Path, *, inputs: InputMode = "redacted", retention_days: float | None = 30.0,
                 max_rows: int | None = 1_000_000, queue_size: int = 100_000, pii_region: str = "US") -> None:
        if inputs not in INPUT_MODES:
            raise ValueError(f"inputs must be one of {', '.join(INPUT_MODES)}, got {inputs!r}")
        self.engine = db.engine(target, _WHAT)
        self.url = db.mask(self.engine.url)
        self.inputs, self.retention_days, self.max_rows, self.pii_region = inputs, retention_days, max_rows, pii_region
        self.written = self.dropped = self.failed = 0
        self.last_error: str | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._ready = False
        self._next_purge = 0.0
        self._thread = threading.Thread(target=self._run, name="tuneloop-prediction-log", daemon=True)
        self._thread.start()

    def log(self, rows: Sequence[dict[str, Any]]) -> None:
        """Queue rows for writing; never blocks and never raises (a full queue drops and counts them)."""
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self.dropped += 1

    def status(self) -> dict[str, Any]:
        """What /health shows: rows written, dropped (queue full), lost to errors, waiting, the last error."""
        return {"db": self.url, "inputs": self.inputs, "written": self.written, "dropped": self.dropped,
                "failed": self.failed, "queued": self._queue.qsize(), "last_error": self.last_error,
                "ok": self.last_error is None}

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued row is written or given up; True if the queue emptied in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (up to `timeout` s), stop the writer and close the connections."""
        self._queue.put(None)
        self._thread.join(timeout)
        self.engine.dispose()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while first is not None and len(batch) < BATCH_ROWS:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows = [r for r in batch if r is not None]
            if rows:
                self._write(rows)
            for _ in batch:
                self._queue.task_done()
            if len(rows) < len(batch):  # the stop mark from close()
                return

    def _write(self, rows: list[dict[str, Any]]) -> None:
        try:
            if not self._ready:
                db.ensure_schema(self.engine, "predictions", MIGRATIONS, _WHAT)
                self._ready = True
            values = [self._stored(r) for r in rows]
            with db.writer(self.engine).begin() as c:
                c.execute(predictions.insert(), values)
            self.written += len(rows)
            self.last_error = None
            if time.monotonic() >= self._next_purge:
                self.purge()
        except Exception as e:  # noqa: BLE001 (a database problem must never reach a request)
            self.failed += len(rows)
            self.last_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {db.db_error(e, self.engine.url, 'writing to')}"
            log.error("prediction log: %d rows lost: %s", len(rows), self.last_error)

    def _stored(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {c: row.get(c) for c in predictions.c.keys() if c not in ("seq", "meta")}
        text = row.get("input")
        if isinstance(text, str):
            out["input_chars"] = len(text)
            out["input_hash"] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            out["input"] = self._redact(text)[:MAX_TEXT_CHARS] if self.inputs == "redacted" else None
        if isinstance(out.get("output"), str):
            out["output"] = self._redact(out["output"])[:MAX_TEXT_CHARS] if row.get("kind") == "chat" else out["output"]
        if out.get("probabilities") is not None:
            out["probabilities"] = json.dumps(out["probabilities"], ensure_ascii=False)
        out["meta"] = None if row.get("metadata") is None else json.dumps(row["metadata"], ensure_ascii=False)
        return out

    def _redact(self, text: str) -> str:
        from tuneloop.data.pii import find_pii, redact  # phonenumbers loads its metadata on first use

        return redact(text, find_pii(text, self.pii_region))

    def purge(self) -> int:
        """Delete rows past `retention_days` and the oldest beyond `max_rows`; how many were deleted."""
        self._next_purge = time.monotonic() + PURGE_EVERY_S
        deleted = 0
        with db.writer(self.engine).begin() as c:
            if self.retention_days is not None:
                cutoff = (datetime.now(timezone.utc) - timedelta(days=self.retention_days)).isoformat(timespec="microseconds")
                deleted += c.execute(predictions.delete().where(predictions.c.created < cutoff)).rowcount
            if self.max_rows is not None:
                top = c.execute(sa.select(sa.func.max(predictions.c.seq))).scalar()
                if top is not None and top > self.max_rows:
                    deleted += c.execute(predictions.delete().where(predictions.c.seq <= top - self.max_rows)).rowcount
        return deleted


def read_window(target: str | Path, *, model: str | None = None, last: int | None = None, since: str | None = None,
                kind: str | None = None) -> list[dict[str, Any]]:
    """Logged predictions, oldest first: the last `last` rows and/or those created at or after `since`.

    Args:
        target: The log's database.
        model: Only this model's rows (None: every model's).
        last: At most this many of the newest rows.
        since: ISO 8601 time (UTC when it has no offset).
        kind: `classify` or `chat` (None: both).

    Returns:
        One dict per row: the table's columns, `probabilities` and `metadata` decoded from JSON.

    Raises:
        TuneloopError: the database cannot be opened.
    """
    eng = db.engine(target, _WHAT)
    try:
        db.ensure_schema(eng, "predictions", MIGRATIONS, _WHAT)
        p = predictions
        query = sa.select(p).order_by(p.c.seq.desc())
        if model is not None:
            query = query.where(p.c.model == model)
        if kind is not None:
            query = query.where(p.c.kind == kind)
        if since is not None:
            query = query.where(p.c.created >= since)
        if last is not None:
            query = query.limit(last)
        with eng.connect() as c:
            rows = [dict(r._mapping) for r in c.execute(query)]
    finally:
        eng.dispose()
    for r in rows:
        r["probabilities"] = json.loads(r["probabilities"]) if r["probabilities"] else None
        r["metadata"] = json.loads(r.pop("meta")) if r.get("meta") else None
    return rows[::-1]


def models_in(target: str | Path) -> dict[str, int]:
    """How many rows each model has in the log (for messages when a window is empty)."""
    eng = db.engine(target, _WHAT)
    try:
        db.ensure_schema(eng, "predictions", MIGRATIONS, _WHAT)
        with eng.connect() as c:
            return {m: n for m, n in c.execute(sa.select(predictions.c.model, sa.func.count()).group_by(predictions.c.model))}
    finally:
        eng.dispose()
