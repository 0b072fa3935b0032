"""The feedback store: the responses the server returned and the ratings users gave on them.

Any target `tuneloop.store.db.resolve` accepts: a SQLite file (the default, `runs/feedback.db`) or
a PostgreSQL URL that several `tuneloop serve` replicas share.

Durability: a write returns only after its transaction committed — SQLite in WAL mode with
`synchronous=FULL`, PostgreSQL with its default `synchronous_commit=on` — so an acknowledged
feedback survives a killed server. Concurrency: SQLite writers take the write lock at BEGIN and
queue on a 30 s busy timeout (threads of one process queue on a Python lock first); PostgreSQL
writers run side by side, and the unique idempotency key settles two posts of the same key.

What is kept of a response: only what `tuneloop feedback export` reads — the classified texts and
labels, or the chat messages (role and content) and the answer — with personal data replaced by
placeholders (`[EMAIL]`, `[PHONE]`, …) by the same redactor as `tuneloop prepare`. Sampling
settings, user ids and the rest of the request are not stored. Responses nobody rated are
deleted after `retention_days` (when the store opens and then hourly as it writes); rated ones
are the feedback data set and stay until exported data no longer needs them.

Ratings: thumbs are words, `"up"` / `"down"` (also `"thumbs_up"` / `"thumbs_down"`, any case);
numbers are always stars, 1 to 5 (an int or a digit string). `+1`/`-1` are not accepted: `1` would
mean both "thumbs up" and "one star". Every rating is also stored as a score in 0..1: up = 1,
down = 0, n stars = (n - 1) / 4.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneloop.errors import TuneloopError
from tuneloop.store import db
from tuneloop.store.items import KINDS, Unreadable, chat_answer, classify_labels, classify_texts, n_items

#: Most characters a `corrected` answer or a `comment` may have.
MAX_TEXT_CHARS = 8_000
#: Most characters of a response id or an idempotency key.
MAX_ID_CHARS = 200
#: Seconds between purges of expired responses while the store is in use.
PURGE_EVERY_S = 3600.0

_THUMBS = {"up": 1.0, "thumbs_up": 1.0, "down": 0.0, "thumbs_down": 0.0}
_PREFIX = {"chat": "chatcmpl", "classify": "cls"}
_WHAT = "the feedback store"

_meta = sa.MetaData()
_responses = sa.Table(
    "responses", _meta,
    sa.Column("id", sa.String(MAX_ID_CHARS), primary_key=True),
    sa.Column("created", sa.String(40), nullable=False),  # ISO 8601 UTC: sorts as time does
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("n_items", sa.Integer, nullable=False),
    sa.Column("request", sa.Text, nullable=False),  # JSON: what export reads, redacted
    sa.Column("response", sa.Text, nullable=False),
)
_feedback = sa.Table(
    "feedback", _meta,
    # Commit order ("latest" = highest seq). On PostgreSQL a sequence: insertion order.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("response_id", sa.String(MAX_ID_CHARS), sa.ForeignKey("responses.id"), nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),  # INDEX is an SQL keyword; callers see `index`
    sa.Column("rating", sa.String(16), nullable=False),  # "up" / "down" or stars "1".."5", as given
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("corrected", sa.Text),
    sa.Column("comment", sa.Text),
    sa.Column("idempotency_key", sa.String(MAX_ID_CHARS), unique=True),
    sa.Column("created", sa.String(40), nullable=False),
    sa.Index("feedback_response", "response_id"),
    sqlite_autoincrement=True,
)
_by_created = sa.Index("responses_created", _responses.c.created)
_FEEDBACK_COLUMNS = [_feedback.c[n] for n in ("id", "response_id", "idx", "rating", "score", "corrected", "comment",
                                               "idempotency_key", "created")]

#: The schema's versions (see `tuneloop.store.db.ensure_schema`): 1 the tables (the same as the
#: SQLite-only store before versioning), 2 the index retention purges by.
MIGRATIONS: list[db.Migration] = [
    lambda c: _meta.create_all(c, checkfirst=True),
    lambda c: _by_created.create(c, checkfirst=True),
]


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


def exists(target: str | Path) -> bool:
    """Whether a feedback store may be there to read: a database URL, or a SQLite file that exists."""
    url = db.resolve(target, _WHAT)
    return url.get_backend_name() != "sqlite" or Path(url.database or "").is_file()


class FeedbackStore:
    """Served responses and the feedback on them, in one database many processes may share.

    Args:
        target: A SQLite file (created with its folder if missing) or a `postgresql://` URL.
        retention_days: Delete responses nobody rated once they are this many days old (None: keep).
        redact_pii: Replace personal data in stored texts with placeholders (as `prepare` does).
        pii_region: Country for phone numbers written without a `+` country code.

    Raises:
        TuneloopError: not a database, an unsupported URL, a missing driver, a server that refuses.
    """

    def __init__(self, target: Path | str, *, retention_days: float | None = None, redact_pii: bool = True,
                 pii_region: str = "US") -> None:
        self.engine = db.engine(target, _WHAT)
        self.url = db.mask(self.engine.url)
        self.retention_days, self.redact_pii, self.pii_region = retention_days, redact_pii, pii_region
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._writer = db.writer(self.engine)
        self._write_lock = threading.Lock() if self._sqlite else None
        self._next_purge = 0.0
        try:
            db.ensure_schema(self.engine, "feedback", MIGRATIONS, _WHAT)
        except TuneloopError as e:
            hint = " (is it a SQLite file?)" if self._sqlite else ""
            raise TuneloopError(f"{e}{hint}") from None
        self.purge()

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._write_lock or nullcontext(), self._writer.begin() as c:
            yield c

    def record_response(self, *, model: str, kind: str, request: dict[str, Any], response: dict[str, Any],
                        response_id: str | None = None) -> str:
        """Store what feedback on a response needs (see the module docstring), committed before it returns.

        Args:
            model: The name of the model that answered.
            kind: `chat` or `classify`.
            request: The request body as received (only its texts / messages are kept, redacted).
            response: The response body as returned (only its labels / answer are kept, redacted).
            response_id: The id the client was given (default: a new `chatcmpl-<hex>` / `cls-<hex>`).

        Returns:
            The response id.

        Raises:
            FeedbackError: unknown kind, or the id is already recorded.
        """
        if kind not in KINDS:
            raise FeedbackError(f"response kind {kind!r} is not one of {', '.join(KINDS)}")
        rid = response_id or f"{_PREFIX[kind]}-{uuid.uuid4().hex}"
        _check_id("response_id", rid)
        kept_request, kept_response = self._kept(kind, request, response)
        row = {"id": rid, "created": _now(), "model": model, "kind": kind, "n_items": n_items(kind, request, response),
               "request": json.dumps(kept_request, ensure_ascii=False), "response": json.dumps(kept_response, ensure_ascii=False)}
        try:
            with self._write() as c:
                c.execute(_responses.insert().values(**row))
        except sa.exc.IntegrityError:
            raise FeedbackError(f"response id {rid!r} is already recorded; response ids must be unique") from None
        if time.monotonic() >= self._next_purge:
            self.purge()
        return rid

    def get_response(self, response_id: str) -> dict[str, Any] | None:
        """The stored response (`id`, `created`, `model`, `kind`, `n_items`, `request`, `response`), or None."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(_responses).where(_responses.c.id == response_id)).first()
        return None if row is None else _row_dict(row)

    def add_feedback(self, *, response_id: str, rating: int | str, index: int | None = None,
                     corrected: str | None = None, comment: str | None = None,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """Store a user's feedback on a response; committed before it returns.

        Args:
            response_id: An id `record_response` returned.
            rating: `"up"`/`"down"` or stars 1..5 (see `parse_rating`).
            index: Which item of a classify batch (required when the response has several).
            corrected: The right answer (chat) or label (classify); personal data redacted.
            comment: Free text; personal data redacted.
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
        values = {"response_id": response_id, "rating": str(rating), "score": score,
                  "corrected": self._redact(corrected), "comment": self._redact(comment), "idempotency_key": idempotency_key}
        try:
            with self._write() as c:
                return self._insert_feedback(c, index, values)
        except sa.exc.IntegrityError:
            # PostgreSQL: another replica stored the same key between our check and our insert.
            first = self._feedback_where("idempotency_key", idempotency_key) if idempotency_key else None
            if first is None:
                raise
            return first

    def _insert_feedback(self, c: sa.Connection, index: int | None, values: dict[str, Any]) -> dict[str, Any]:
        key = values["idempotency_key"]
        if key is not None and (first := _feedback_where(c, "idempotency_key", key)) is not None:
            return first
        rid = values["response_id"]
        found = c.execute(sa.select(_responses.c.n_items).where(_responses.c.id == rid)).first()
        if found is None:
            raise FeedbackError(f"unknown response id {rid!r}: feedback must refer to an id this server returned")
        fid = f"fb-{uuid.uuid4().hex}"
        c.execute(_feedback.insert().values(id=fid, idx=_check_index(rid, index, found.n_items), created=_now(), **values))
        return _feedback_where(c, "id", fid)  # type: ignore[return-value]

    def _feedback_where(self, column: str, value: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _feedback_where(c, column, value)

    def count(self) -> int:
        """How many feedback records are stored."""
        with self.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(_feedback)).scalar_one()

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """Every feedback record joined with its response, in commit order, from one consistent read.

        Returns:
            The number of stored responses, and one dict per feedback: the fields `add_feedback`
            returns plus `seq` (commit order), `model`, `kind`, `request`, `response`.
        """
        f, r = _feedback, _responses
        query = (sa.select(f.c.seq, *_FEEDBACK_COLUMNS, r.c.model, r.c.kind, r.c.request, r.c.response)
                 .join(r, r.c.id == f.c.response_id).order_by(f.c.seq))
        # One transaction that sees one state while the server goes on writing (SQLite WAL gives
        # each read transaction a snapshot; PostgreSQL needs REPEATABLE READ for that).
        options = {} if self._sqlite else {"isolation_level": "REPEATABLE READ"}
        with self.engine.connect().execution_options(**options) as c, c.begin():
            n = c.execute(sa.select(sa.func.count()).select_from(r)).scalar_one()
            rows = c.execute(query).all()
        return n, [_row_dict(row) for row in rows]

    def purge(self) -> int:
        """Delete the responses older than `retention_days` that nobody rated; how many were deleted."""
        self._next_purge = time.monotonic() + PURGE_EVERY_S
        if self.retention_days is None:
            return 0
        cutoff = (datetime.now(timezone.utc) - timedelta(days=self.retention_days)).isoformat(timespec="microseconds")
        rated = sa.select(_feedback.c.response_id).where(_feedback.c.response_id == _responses.c.id)
        with self._write() as c:
            return c.execute(_responses.delete().where(_responses.c.created < cutoff, ~rated.exists())).rowcount

    def close(self) -> None:
        """Close every pooled connection (call when no thread is using the store any more)."""
        self.engine.dispose()

    def _redact(self, text: str | None) -> str | None:
        if not self.redact_pii or not text:
            return text
        from tuneloop.data.pii import find_pii, redact  # phonenumbers loads its metadata on first use

        return redact(text, find_pii(text, self.pii_region))

    def _kept(self, kind: str, request: Any, response: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """What export reads of a request and response (the shapes `tuneloop.store.items` reads), redacted.

        A part that has not the expected shape is stored empty: curation counts it as unreadable.
        """
        if kind == "classify":
            try:
                kept_request: dict[str, Any] = {"input": [self._redact(t) for t in classify_texts(request)]}
            except Unreadable:
                kept_request = {}
            try:
                kept_response: dict[str, Any] = {"labels": classify_labels(response)}
            except Unreadable:
                kept_response = {}
            return kept_request, kept_response
        messages = request.get("messages") if isinstance(request, dict) else None
        kept_request = {} if not isinstance(messages, list) else {"messages": [
            {"role": m.get("role"), "content": self._redact(m["content"]) if isinstance(m.get("content"), str) else None}
            if isinstance(m, dict) else None for m in messages]}
        try:
            answer = self._redact(chat_answer(response))
            kept_response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
        except Unreadable:
            kept_response = {}
        return kept_request, kept_response


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


def _feedback_where(c: sa.Connection, column: str, value: str) -> dict[str, Any] | None:
    row = c.execute(sa.select(*_FEEDBACK_COLUMNS).where(_feedback.c[column] == value)).first()
    return None if row is None else _row_dict(row)


def _row_dict(row: sa.Row) -> dict[str, Any]:
    # `idx` → `index`; stars back to ints (SQLite files from before kept them as numbers); JSON decoded.
    rec = dict(row._mapping)
    if "idx" in rec:
        rec["index"] = rec.pop("idx")
    if "rating" in rec:
        rating = str(rec["rating"])
        rec["rating"] = int(rating) if rating.isdigit() else rating
    for key in ("request", "response"):
        if key in rec:
            rec[key] = json.loads(rec[key])
    return rec
