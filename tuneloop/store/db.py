"""Database URLs, engines and versioned schemas shared by the registry and the feedback store.

A *target* is what a user types: a file path (`runs/feedback.db`) or a URL. Paths and
`sqlite:///PATH` open SQLite (WAL, `synchronous=FULL`); `postgresql://…` opens PostgreSQL through
psycopg 3 (`pip install 'tuneloop[postgres]'`). Anything else is refused with one clear line —
never turned into a local file named after the URL. Passwords are masked wherever a URL is shown.

Schemas are versioned per component (`registry`, `feedback`) in a `tuneloop_schema` table and
created or upgraded under a lock that every process takes (a transaction-scoped advisory lock on
PostgreSQL, the write lock on SQLite), so two processes opening an empty database at once never
race. Why not Alembic: it needs a migration folder and `env.py` shipped in the wheel, and it does
not lock either — two `alembic upgrade` runs on an empty PostgreSQL race the same way. Our schema
is a few tables whose upgrades are a list of functions; the lock + version table is what makes
them safe, and a later release can move the same versions under Alembic if the schema grows.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneloop.errors import TuneloopError

#: How long a SQLite writer waits for another process's write lock (seconds).
BUSY_TIMEOUT_S = 30
#: PostgreSQL advisory-lock key held while a schema is created or upgraded (b"tuneloop" as an int).
SCHEMA_LOCK_KEY = int.from_bytes(b"tuneloop", "big")
#: Extras that install a database driver, by dialect.
DRIVER_HINT = {"postgresql": "pip install 'tuneloop[postgres]' (psycopg 3; or: pip install 'psycopg[binary]')"}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # two letters at least: C:\ is a Windows path
_meta = sa.MetaData()
_versions = sa.Table(
    "tuneloop_schema", _meta,
    sa.Column("component", sa.String(40), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

#: One step of a schema: upgrades it from version i to i + 1 inside the locked transaction.
Migration = Callable[[sa.Connection], None]


def mask(url: sa.URL | str) -> str:
    """The URL as text with its password replaced by `***` (safe to print or log).

    >>> mask("postgresql://ann:s3cret@db.example/tl")
    'postgresql://ann:***@db.example/tl'
    """
    if isinstance(url, str):
        try:
            url = sa.make_url(url)
        except sa.exc.ArgumentError:
            return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return url.render_as_string(hide_password=True)


def scrub(text: str, url: sa.URL) -> str:
    """`text` (an error message) with the URL's password masked wherever it appears."""
    return text.replace(url.password, "***") if url.password else text


def resolve(target: str | Path, what: str) -> sa.URL:
    """The SQLAlchemy URL a path or URL means.

    Args:
        target: A file path (SQLite), `sqlite:///PATH`, or `postgresql://USER:PASSWORD@HOST/DB`
            (`postgres://` and `postgresql+psycopg://` too).
        what: What the database is for, for error messages (`the feedback store`).

    Returns:
        The URL; a bare `postgresql://` gets the psycopg 3 driver (SQLAlchemy's default is psycopg2).

    Raises:
        TuneloopError: an empty target, something that looks like a URL but is not a supported one.
    """
    text = str(target).strip()
    if not text:
        raise TuneloopError(f"{what}: the database is empty; give a file path or a postgresql:// URL")
    scheme = _SCHEME.match(text)
    if scheme is None:  # a plain path: SQLite
        return sa.URL.create("sqlite", database=str(Path(text).expanduser()))
    hint = "give a file path (SQLite), sqlite:///PATH, or postgresql://USER:PASSWORD@HOST:PORT/DB"
    if "://" not in text:
        raise TuneloopError(f"{what}: {mask(text)!r} is neither a file path nor a database URL; {hint}")
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError:
        raise TuneloopError(f"{what}: {mask(text)!r} is not a valid database URL; {hint}") from None
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql") and "+" not in url.drivername:
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise TuneloopError(f"{what}: {backend} databases are not supported ({mask(url)}); {hint}")
    return url


def check_driver(url: sa.URL, what: str) -> None:
    """Import the URL's database driver now, so a missing one is one line saying what to install.

    Raises:
        TuneloopError: the driver is not installed (the message names the package).
    """
    try:
        url.get_dialect().import_dbapi()
    except ImportError as e:
        install = DRIVER_HINT.get(url.get_backend_name(), f"install the Python driver for {url.drivername}")
        raise TuneloopError(f"{what} {mask(url)} needs a database driver that is not installed ({e.name}): {install}") from None


def engine(target: str | Path, what: str) -> sa.Engine:
    """An engine for a path or URL, with the settings tuneloop relies on.

    SQLite: the folder is created, WAL + `synchronous=FULL` (a committed write survives a crash or
    power loss), foreign keys on, a 30 s busy timeout, and transactions that write take the write
    lock when they begin (`BEGIN IMMEDIATE`; open them on `writer(engine)`), so a read-then-write
    transaction never deadlocks with another process. PostgreSQL: connections checked before use.

    Raises:
        TuneloopError: unsupported URL or missing driver (see `resolve`, `check_driver`).
    """
    url = resolve(target, what)
    check_driver(url, what)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        eng = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        sa.event.listen(eng, "connect", _sqlite_connect)
        sa.event.listen(eng, "begin", _sqlite_begin)
    else:
        eng = sa.create_engine(url, pool_pre_ping=True)
    # A forked child must not share its parent's pooled connections (SQLAlchemy's advice).
    ref = weakref.ref(eng)
    os.register_at_fork(after_in_child=lambda: (e := ref()) is not None and e.dispose(close=False))
    return eng


def writer(eng: sa.Engine) -> sa.Engine:
    """The same engine whose transactions take SQLite's write lock at BEGIN (no-op on PostgreSQL)."""
    return eng.execution_options(tuneloop_write=True)


def ensure_schema(eng: sa.Engine, component: str, migrations: Sequence[Migration], what: str) -> None:
    """Create or upgrade one component's tables to `len(migrations)`, once, under a lock.

    Args:
        eng: From `engine`.
        component: Its row in `tuneloop_schema` (`registry`, `feedback`).
        migrations: Step i upgrades version i to i + 1; step 0 creates the tables (it must tolerate
            tables that already exist: databases from before versioning have them but no version row).
        what: For error messages.

    Raises:
        TuneloopError: the database holds a newer schema than this tuneloop knows, or cannot be opened.
    """
    target = len(migrations)
    try:
        if _version(eng, component) == target:  # the common case: no lock needed
            return
        with writer(eng).begin() as c:
            _lock_schema(c)  # held until commit: a second process waits here, then finds the schema made
            _versions.create(c, checkfirst=True)
            have = c.execute(sa.select(_versions.c.version).where(_versions.c.component == component)).scalar()
            if have is not None and have > target:
                raise TuneloopError(f"{what} {mask(eng.url)} has schema version {have} of {component!r}; this tuneloop "
                                    f"knows up to {target}: upgrade tuneloop (pip install -U tuneloop)")
            for step in migrations[have or 0:]:
                step(c)
            if have is None:
                c.execute(_versions.insert().values(component=component, version=target))
            elif have < target:
                c.execute(_versions.update().where(_versions.c.component == component).values(version=target))
    except sa.exc.SQLAlchemyError as e:
        raise db_error(e, eng.url, f"cannot open {what}") from None


@contextmanager
def schema_lock(eng: sa.Engine) -> Iterator[None]:
    """Hold the schema lock while the body creates tables that another library owns (Optuna's).

    PostgreSQL: the advisory lock `ensure_schema` takes, on a connection of its own, so that
    processes creating the same tables at once take turns. SQLite: nothing (a held write lock
    would block the library's own connection; SQLite serialises DDL itself).
    """
    if eng.dialect.name != "postgresql":
        yield
        return
    with eng.begin() as c:
        _lock_schema(c)
        yield


def _lock_schema(c: sa.Connection) -> None:
    if c.dialect.name == "postgresql":
        c.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))


def db_error(e: BaseException, url: sa.URL, doing: str) -> TuneloopError:
    """A one-line TuneloopError for a database exception, password masked, SQL and parameters left out."""
    orig = getattr(e, "orig", None) or e
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return TuneloopError(f"{doing} {mask(url)}: {scrub(first, url)}")


def _version(eng: sa.Engine, component: str) -> int | None:
    with eng.connect() as c:
        if not sa.inspect(c).has_table(_versions.name):
            return None
        return c.execute(sa.select(_versions.c.version).where(_versions.c.component == component)).scalar()


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, start transactions (see `_sqlite_begin`).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # a property of the file: the first opener sets it
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    # FULL: a commit is fsynced to the WAL before it returns (NORMAL may lose the last commits on
    # power loss; the API promises that acknowledged feedback is committed).
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # A writing transaction takes the write lock when it starts, not at its first write: a
    # promotion reads which model is promoted and then changes it, and no other process may slip
    # in between. Readers begin deferred: in WAL mode they never block writers.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("tuneloop_write") else "BEGIN")

