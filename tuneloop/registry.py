"""The model registry: which runs exist, what they scored, and which one is served.

A run is registered as a `candidate` with its config, data hash, test metrics and fairness
result; `promote` makes it the one `tuneloop serve --model promoted` serves (the previous one is
retired), `rollback` re-promotes the model that was served before. Every change is an event with
its reason and evidence, so "why is this model live?" always has an answer.

Storage (`tuneloop.store.db`): SQLite by default (one file, no server), PostgreSQL across machines
(`postgresql://user:password@host/db`, driver psycopg 3: `pip install 'tuneloop[postgres]'`).
The schema is versioned and created under a lock, so processes opening a new database at once
do not race. Promotion runs in one transaction and a unique index allows one promoted model: two
processes promoting at once leave exactly one promoted, and the other is told so in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from tuneloop.errors import TuneloopError
from tuneloop.store import db

STATUSES = ("candidate", "promoted", "retired")
#: PostgreSQL advisory-lock key that promotions and rollbacks hold in turn (b"promotes" as an int).
PROMOTION_LOCK_KEY = int.from_bytes(b"promotes", "big")


def default_url() -> str:
    """`$TUNELOOP_REGISTRY`, else a SQLite file `runs/registry.db` under the current folder."""
    return os.environ.get("TUNELOOP_REGISTRY") or "sqlite:///runs/registry.db"


_meta = sa.MetaData()
_models = sa.Table(
    "models", _meta,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("task", sa.String(20), nullable=False),
    sa.Column("base", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("data_hash", sa.String(64), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("fairness", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("promoted_at", sa.String(32)),
    # At most one promoted model, enforced by the database even if two processes promote at once.
    sa.Index("one_promoted", "status", unique=True, sqlite_where=sa.text("status = 'promoted'"),
             postgresql_where=sa.text("status = 'promoted'")),
)
_events = sa.Table(
    "events", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("previous", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("evidence", sa.JSON, nullable=False),
)


@dataclass
class ModelRecord:
    """One registered run."""

    name: str
    path: Path
    task: str
    base: str
    status: str
    data_hash: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    fairness: dict[str, Any]
    created_at: str
    promoted_at: str | None

    def headline(self) -> dict[str, Any]:
        """The few numbers a listing shows: the task's headline metric (`tuneloop eval`'s, with its
        interval and the p-value against the strongest baseline), accuracy/macro-F1, loss, the judge's
        win rate against the strongest baseline (generation, when judged) and the fairness verdict."""
        tuned = (self.metrics.get("systems") or {}).get("tuned") or {}
        cls = tuned.get("classification") or {}
        out = {"accuracy": cls.get("accuracy"), "macro_f1": (cls.get("macro") or {}).get("f1"), "loss": tuned.get("loss")}
        head = self.metrics.get("headline") or {}
        strongest = (head.get("vs") or {}).get(head.get("strongest") or "") or {}
        out.update(metric=head.get("metric"), value=head.get("value"), ci=head.get("ci"), pvalue=strongest.get("pvalue"))
        judge = self.metrics.get("judge") or {}
        out["judge_win_rate"] = ((judge.get("vs") or {}).get(head.get("strongest") or "") or {}).get("win_rate")
        out["fair"] = self.fairness.get("passed") if self.fairness else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (path as a string)."""
        return {**asdict(self), "path": str(self.path)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def data_hash(data_dir: Path | None) -> str:
    """SHA-256 over a prepared folder's train/val/test files (what the model learned from and was scored on)."""
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        f = Path(data_dir) / f"{split}.jsonl" if data_dir else None
        h.update(split.encode())
        if f is not None and f.is_file():
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _record(row: Any) -> ModelRecord:
    d = dict(row._mapping)
    return ModelRecord(**{**d, "path": Path(d["path"])})


#: The schema's versions (see `tuneloop.store.db.ensure_schema`); 1: the tables as first released.
MIGRATIONS: list[db.Migration] = [lambda c: _meta.create_all(c, checkfirst=True)]


class Registry:
    """Runs, their metrics and status, and the promotion history, in a SQL database.

    Attributes:
        url: The database URL with its password masked (safe to print).
        engine: The SQLAlchemy engine (holds the real URL).
    """

    def __init__(self, url: str | None = None) -> None:
        """Open (and create, if new) the registry at `url`: a SQLAlchemy URL or a SQLite path (default: `default_url()`).

        Raises:
            TuneloopError: an unsupported URL, a missing driver, a database that cannot be opened.
        """
        self.engine = db.engine(url or default_url(), "the registry")
        self.url = db.mask(self.engine.url)
        self._writer = db.writer(self.engine)  # SQLite: write transactions lock at BEGIN
        db.ensure_schema(self.engine, "registry", MIGRATIONS, "the registry")

    def register(self, run_dir: Path, name: str | None = None) -> ModelRecord:
        """Record a trained run as a candidate, or refresh its metrics/fairness if it is known.

        Args:
            run_dir: Folder written by `tuneloop train` (evaluated or not).
            name: Registry name (default: the folder's name; must be unique).
        """
        run_dir = Path(run_dir).resolve()
        cfg_path = run_dir / "config.yaml"
        if not (run_dir / "model").is_dir() or not cfg_path.is_file():
            raise TuneloopError(f"{run_dir} is not a finished run (no model/ or config.yaml); train it first")
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        name = name or run_dir.name
        data_dir = (cfg.get("train") or {}).get("data")
        values = {
            "path": str(run_dir), "task": cfg.get("task", "generate"), "base": str(cfg.get("base", "")),
            "data_hash": data_hash(Path(data_dir) if data_dir else None), "config": cfg,
            "metrics": _read_json(run_dir / "eval" / "metrics.json"),
            "fairness": _read_json(run_dir / "fairness" / "result.json"),
        }
        with self._writing(f"{name} was registered by another process a moment ago; run the command again"), \
                self._writer.begin() as c:
            old = c.execute(sa.select(_models.c.path).where(_models.c.name == name)).first()
            if old is not None and Path(old.path) != run_dir:
                raise TuneloopError(f"a model named {name!r} is already registered from {old.path}; pass another name")
            if old is None:
                c.execute(_models.insert().values(name=name, status="candidate", created_at=_now(), promoted_at=None, **values))
                self._event(c, "register", name, None, "registered", {})
            else:
                c.execute(_models.update().where(_models.c.name == name).values(**values))
        return self.get(name)

    def get(self, name: str) -> ModelRecord:
        """The record named `name`; a TuneloopError listing the known names if there is none."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(_models).where(_models.c.name == name)).first()
            if row is None:
                raise self._unknown(c, name)
        return _record(row)

    def _unknown(self, c: sa.Connection, name: str) -> TuneloopError:
        known = [r.name for r in c.execute(sa.select(_models.c.name).order_by(_models.c.created_at))]
        return TuneloopError(f"no model named {name!r} in the registry {self.url} (known: {', '.join(known) or 'none'})")

    def list(self) -> list[ModelRecord]:
        """All records, oldest first."""
        with self.engine.connect() as c:
            return [_record(r) for r in c.execute(sa.select(_models).order_by(_models.c.created_at, _models.c.name))]

    def find_by_path(self, run_dir: Path) -> ModelRecord | None:
        """The record registered from `run_dir`, if any."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(_models).where(_models.c.path == str(Path(run_dir).resolve()))).first()
        return None if row is None else _record(row)

    def promoted(self) -> ModelRecord | None:
        """The model being served, or None before the first promotion."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(_models).where(_models.c.status == "promoted")).first()
        return None if row is None else _record(row)

    def promote(self, name: str, reason: str = "", evidence: dict[str, Any] | None = None) -> ModelRecord:
        """Make `name` the served model and retire the one served before, in one transaction.

        Raises:
            TuneloopError: unknown name, or another process promoted a model between this call's
                start and its turn (the message names it; `name` was not promoted).
        """
        seen = self._promoted_name(None)  # the state this promotion was decided on
        lost = lambda: (f"{self._promoted_name()} was promoted by another process a moment ago; "  # noqa: E731
                        f"{name} was not promoted (run the command again to promote it anyway)")
        with self._writing(lost), self._writer.begin() as c:
            _serialise(c)
            if c.execute(sa.select(_models.c.name).where(_models.c.name == name)).first() is None:
                raise self._unknown(c, name)
            prev = c.execute(sa.select(_models.c.name).where(_models.c.status == "promoted")).scalar()
            if prev != seen and prev != name:
                raise TuneloopError(lost())
            if prev is not None and prev != name:
                c.execute(_models.update().where(_models.c.name == prev).values(status="retired"))
            if prev != name:
                c.execute(_models.update().where(_models.c.name == name).values(status="promoted", promoted_at=_now()))
                self._event(c, "promote", name, prev, reason or "promoted by hand", evidence or {})
        return self.get(name)

    def rollback(self, reason: str = "") -> ModelRecord:
        """Re-promote the model that was served before the current one; the current one is retired."""
        with self._writing(lambda: f"{self._promoted_name()} was promoted by another process a moment ago; "
                                   "nothing was rolled back (look at `tuneloop models list`, then run it again)"), \
                self._writer.begin() as c:
            _serialise(c)
            current = c.execute(sa.select(_models.c.name).where(_models.c.status == "promoted")).scalar()
            if current is None:
                raise TuneloopError("nothing is promoted, so there is nothing to roll back")
            # Replay the promotions as a stack: promote pushes, rollback pops; the one below the top was served before.
            stack: list[str] = []
            for r in c.execute(sa.select(_events.c.action, _events.c.name).order_by(_events.c.id)):
                if r.action == "promote":
                    stack.append(r.name)
                elif r.action == "rollback" and stack:
                    stack.pop()
            previous = stack[-2] if len(stack) >= 2 else None
            if previous is None:
                raise TuneloopError(f"{current!r} is the first model ever promoted; there is no earlier one to roll back to")
            c.execute(_models.update().where(_models.c.name == current).values(status="retired"))
            c.execute(_models.update().where(_models.c.name == previous).values(status="promoted", promoted_at=_now()))
            self._event(c, "rollback", previous, current, reason or "rolled back by hand", {})
        return self.get(previous)

    def history(self) -> list[dict[str, Any]]:
        """Every registration, promotion and rollback, oldest first."""
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(_events).order_by(_events.c.id))]

    def record_event(self, action: str, name: str, reason: str, evidence: dict[str, Any] | None = None) -> None:
        """Record a decision that changed no status (e.g. a loop that kept the served model), with its evidence."""
        with self._writer.begin() as c:
            self._event(c, action, name, None, reason, evidence or {})

    def _promoted_name(self, default: str | None = "another model") -> str | None:
        rec = self.promoted()
        return rec.name if rec else default

    @contextmanager
    def _writing(self, lost: str | Callable[[], str]) -> Iterator[None]:
        """Turn a write that lost a race to another process (a unique-constraint violation) into one line."""
        try:
            yield
        except sa.exc.IntegrityError:
            raise TuneloopError(lost() if callable(lost) else lost) from None
        except sa.exc.SQLAlchemyError as e:
            raise db.db_error(e, self.engine.url, "cannot write to the registry") from None

    @staticmethod
    def _event(c: sa.Connection, action: str, name: str, previous: str | None, reason: str, evidence: dict[str, Any]) -> None:
        c.execute(_events.insert().values(at=_now(), action=action, name=name, previous=previous, reason=reason,
                                          evidence=json.loads(json.dumps(evidence, default=str))))


def _serialise(c: sa.Connection) -> None:
    """Make promotions and rollbacks take turns (until commit): on PostgreSQL an advisory lock, since
    two concurrent ones would otherwise deadlock on each other's rows; SQLite's BEGIN IMMEDIATE already does."""
    if c.dialect.name == "postgresql":
        c.execute(sa.select(sa.func.pg_advisory_xact_lock(PROMOTION_LOCK_KEY)))
