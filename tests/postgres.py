"""A real, throwaway PostgreSQL server for the storage tests: started once per test session.

`initdb` makes a cluster in a temporary folder (password authentication, a free port on
127.0.0.1), `pg_ctl` starts it and stops it at the end. As root, the server runs as the
`postgres` user (PostgreSQL refuses to run as root). Tests that need it are skipped, with the
reason, only when the server binaries or the psycopg driver are not installed (`make test`
installs both). Use `pg_url`: a new, empty database per test.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

USER, PASSWORD = "tuneloop", "s3cret-pw"


def _bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The server's URL (database `postgres`, with a password) while the session runs."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql (make test does)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg 3 is not installed: pip install 'psycopg[binary]'")
    folder = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    (folder / "pw").write_text(PASSWORD)
    if as_user:
        os.chown(folder / "pw", pw.pw_uid, pw.pw_gid)
    data, port = folder / "data", _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(initdb, "-D", str(data), "-U", USER, "--pwfile", str(folder / "pw"), "-A", "scram-sha-256", "-E", "UTF8")
    run(pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60", "start",
        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200")
    try:
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """A new empty database on the session's server, as a `postgresql://USER:PASSWORD@…` URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return pg_server.rsplit("/", 1)[0] + f"/{name}"
