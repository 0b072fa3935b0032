"""The feedback store: every response the server returned and every rating users gave on one, in SQLite.

Durability: the database runs in WAL mode with `synchronous=FULL`, so when a write returns, its
transaction is fsynced to the WAL. (`NORMAL` is safe against a crashed process but can lose the last
commits on power loss; the API promises that an acknowledged feedback is committed.)

Concurrency: one connection per thread (and per process: a forked child opens its own); every
write is a `BEGIN IMMEDIATE` transaction, and `busy_timeout` makes writers from many processes
queue for the lock instead of failing. WAL lets readers (`tuneloop feedback export`) run while the
server writes.

Ratings: thumbs are words, `"up"` / `"down"` (also `"thumbs_up"` / `"thumbs_down"`, any case);
numbers are always stars, 1 to 5 (an int or a digit string). `+1`/`-1` are not accepted: `1` would
mean both "thumbs up" and "one star". Every rating is also stored as a score in 0..1: up = 1,
down = 0, n stars = (n - 1) / 4.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.feedback.items import KINDS, n_items

#: Most characters a `corrected` answer or a `comment` may have.
MAX_TEXT_CHARS = 8_000
#: Most characters of a response id or an idempotency key.
MAX_ID_CHARS = 200
#: How long a writer waits for another process's write lock before giving up (milliseconds).
BUSY_TIMEOUT_MS = 30_000

_THUMBS = {"up": 1.0, "thumbs_up": 1.0, "down": 0.0, "thumbs_down": 0.0}
_PREFIX = {"chat": "chatcmpl", "classify": "cls"}
_FEEDBACK_COLUMNS = "id, response_id, idx, rating, score, corrected, comment, idempotency_key, created"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    n_items INTEGER NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order: "latest" means highest seq
    id TEXT NOT NULL UNIQUE,
    response_id TEXT NOT NULL REFERENCES responses(id),
    idx INTEGER NOT NULL,
    rating NOT NULL,                        -- "up" / "down" or stars 1..5, as given
    score REAL NOT NULL,
    corrected TEXT,
    comment TEXT,
    idempotency_key TEXT UNIQUE,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_response ON feedback(response_id);
"""


class FeedbackError(TuneloopError):
    """Feedback that cannot be stored; the message says why and goes verbatim to the API client."""


def parse_rating(rating: Any) -> tuple[str | int, float]:
    """The canonical rating and its score in 0..1.

    Args:
        rating: `"up"`/`"down"` (or `"thumbs_up"`/`"thumbs_down"`), or stars 1..5 as an int or
            a digit string.

    Raises:
        FeedbackError: anything else (including booleans, fractions, 0 and -1).

    >>> parse_rating("Up"), parse_rating(4), parse_rating("1")
    (('up', 1.0), (4, 0.75), (1, 0.0))
    """
    if isinstance(rating, str):
        word = rating.strip().lower()
        if word in _THUMBS:
            return word.removeprefix("thumbs_"), _THUMBS[word]
        if word.isdigit():
            rating = int(word)
    if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
        return rating, (rating - 1) / 4
    raise FeedbackError(f"rating {rating!r} is not valid: use 'up' or 'down' (thumbs) or a whole number of stars from 1 to 5")


class FeedbackStore:
    """Served responses and the feedback on them, in one SQLite file many processes may share.

    Args:
        path: The database file; created (with its folder) if missing.

    Raises:
        TuneloopError: the file exists but is not a SQLite database.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        try:
            con = self._con()
            # WAL is a property of the file: the first opener switches it, later ones find it set.
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise TuneloopError(f"cannot open the feedback store {self.path}: {e} (is it a SQLite file?)") from None

    def _con(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                  check_same_thread=False)
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            con.row_factory = sqlite3.Row
            local.con, local.pid = con, os.getpid()
            with self._lock:
                self._connections.append(con)
        return local.con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a read-then-write transaction never has to
        # upgrade its lock, which is where concurrent SQLite writers deadlock. Threads of one
        # process queue on a Python lock first: SQLite's busy handler polls with sleeps of up to
        # 100 ms, which would add latency where a plain queue suffices.
        con = self._con()
        with self._write_lock:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def record_response(self, *, model: str, kind: str, request: dict[str, Any], response: dict[str, Any],
                        response_id: str | None = None) -> str:
        """Store a response the server returned, so that feedback can refer to it.

        Args:
            model: The name of the model that answered.
            kind: `chat` or `classify`.
            request: The request body as received.
            response: The response body as returned.
            response_id: The id the client was given (default: a new `chatcmpl-<hex>` / `cls-<hex>`).

        Returns:
            The response id; the row is committed when this returns.

        Raises:
            FeedbackError: unknown kind, or the id is already recorded.
        """
        if kind not in KINDS:
            raise FeedbackError(f"response kind {kind!r} is not one of {', '.join(KINDS)}")
        rid = response_id or f"{_PREFIX[kind]}-{uuid.uuid4().hex}"
        _check_id("response_id", rid)
        row = (rid, _now(), model, kind, n_items(kind, request, response),
               json.dumps(request, ensure_ascii=False), json.dumps(response, ensure_ascii=False))
        with self._write() as con:
            try:
                con.execute("INSERT INTO responses (id, created, model, kind, n_items, request, response) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise FeedbackError(f"response id {rid!r} is already recorded; response ids must be unique") from None
        return rid

    def get_response(self, response_id: str) -> dict[str, Any] | None:
        """The stored response (`id`, `created`, `model`, `kind`, `n_items`, `request`, `response`), or None."""
        row = self._con().execute("SELECT * FROM responses WHERE id = ?", (response_id,)).fetchone()
        return None if row is None else _row_dict(row)

    def add_feedback(self, *, response_id: str, rating: int | str, index: int | None = None,
                     corrected: str | None = None, comment: str | None = None,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """Store a user's feedback on a response; committed (fsynced) before it returns.

        Args:
            response_id: An id `record_response` returned.
            rating: `"up"`/`"down"` or stars 1..5 (see `parse_rating`).
            index: Which item of a classify batch (required when the response has several).
            corrected: The right answer (chat) or label (classify).
            comment: Free text.
            idempotency_key: A client's key for this feedback; sending it again stores nothing
                and returns the first record.

        Returns:
            The stored record: `id`, `response_id`, `index`, `rating`, `score` (0..1),
            `corrected`, `comment`, `idempotency_key`, `created`.

        Raises:
            FeedbackError: unknown response id, bad rating or index, oversize or empty fields.
        """
        rating, score = parse_rating(rating)
        _check_id("response_id", response_id)
        if idempotency_key is not None:
            _check_id("idempotency_key", idempotency_key)
        corrected, comment = _check_text("corrected", corrected), _check_text("comment", comment)
        with self._write() as con:
            if idempotency_key is not None:
                first = _feedback_where(con, "idempotency_key", idempotency_key)
                if first is not None:
                    return first
            found = con.execute("SELECT n_items FROM responses WHERE id = ?", (response_id,)).fetchone()
            if found is None:
                raise FeedbackError(f"unknown response id {response_id!r}: feedback must refer to an id this server returned")
            idx = _check_index(response_id, index, found["n_items"])
            fid = f"fb-{uuid.uuid4().hex}"
            con.execute(f"INSERT INTO feedback ({_FEEDBACK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (fid, response_id, idx, rating, score, corrected, comment, idempotency_key, _now()))
            return _feedback_where(con, "id", fid)  # type: ignore[return-value]

    def count(self) -> int:
        """How many feedback records are stored."""
        return self._con().execute("SELECT count(*) FROM feedback").fetchone()[0]

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """Every feedback record joined with its response, in commit order, from one consistent read.

        Returns:
            The number of stored responses, and one dict per feedback: the fields `add_feedback`
            returns plus `seq` (commit order), `model`, `kind`, `request`, `response`.
        """
        con = self._con()
        con.execute("BEGIN")  # one read transaction: the server may be writing meanwhile
        try:
            n = con.execute("SELECT count(*) FROM responses").fetchone()[0]
            rows = con.execute(
                "SELECT f.seq, f.id, f.response_id, f.idx, f.rating, f.score, f.corrected, f.comment, "
                "f.idempotency_key, f.created, r.model, r.kind, r.request, r.response "
                "FROM feedback f JOIN responses r ON r.id = f.response_id ORDER BY f.seq").fetchall()
        finally:
            con.execute("COMMIT")
        return n, [_row_dict(row) for row in rows]

    def close(self) -> None:
        """Close every connection this store opened (call when no thread is using it any more)."""
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
        self._local = threading.local()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _check_id(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise FeedbackError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_CHARS:
        raise FeedbackError(f"{name} has {len(value):,} characters, over the limit of {MAX_ID_CHARS:,}")


def _check_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise FeedbackError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise FeedbackError(f"{name} is empty: leave it out or give the text")
    if len(value) > MAX_TEXT_CHARS:
        raise FeedbackError(f"{name} has {len(value):,} characters, over the limit of {MAX_TEXT_CHARS:,}")
    return value


def _check_index(response_id: str, index: Any, n: int) -> int:
    if index is None:
        if n > 1:
            raise FeedbackError(f"index is required: response {response_id!r} holds {n} answers; "
                                f"say which one (0 to {n - 1})")
        return 0
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        which = "0" if n == 1 else f"0 to {n - 1}"
        raise FeedbackError(f"index {index!r} is out of range: response {response_id!r} holds {n} answer"
                            f"{'s' if n > 1 else ''} ({which})")
    return index


def _feedback_where(con: sqlite3.Connection, column: str, value: str) -> dict[str, Any] | None:
    row = con.execute(f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE {column} = ?", (value,)).fetchone()
    return None if row is None else _row_dict(row)


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    # The column is `idx` (INDEX is an SQL keyword); callers see `index`. JSON columns are decoded.
    rec = dict(row)
    if "idx" in rec:
        rec["index"] = rec.pop("idx")
    for key in ("request", "response"):
        if key in rec:
            rec[key] = json.loads(rec[key])
    return rec
