"""The registry: register runs, promote exactly one, roll back through the history, across processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from postgres import pg_server, pg_url  # noqa: F401  (fixtures: a real PostgreSQL server)
from tuneloop.errors import TuneloopError
from tuneloop.registry import Registry


def _run(root: Path, name: str, f1: float) -> Path:
    """A run folder as `tuneloop train` + `eval` leave it (the weights themselves are not read)."""
    run = root / name
    (run / "model").mkdir(parents=True)
    (run / "eval").mkdir()
    data = root / "data"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "classify", "base": "default", "train": {"data": str(data)}}))
    metrics = {"systems": {"tuned": {"classification": {"accuracy": f1 + 0.05, "macro": {"f1": f1}}, "loss": 0.3}}}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The registry's URL: a SQLite file, or a database on a real PostgreSQL server (with a password)."""
    return f"sqlite:///{tmp_path}/reg.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def reg(target: str) -> Registry:
    return Registry(target)


def test_register_records_config_data_hash_and_metrics(reg: Registry, tmp_path: Path) -> None:
    rec = reg.register(_run(tmp_path, "r1", 0.8))
    assert (rec.name, rec.status, rec.task) == ("r1", "candidate", "classify")
    assert len(rec.data_hash) == 64 and rec.headline()["macro_f1"] == 0.8
    assert [r.name for r in reg.list()] == ["r1"]
    assert reg.promoted() is None
    # registering again refreshes, a different folder under the same name is refused
    assert reg.register(tmp_path / "r1").name == "r1"
    other = _run(tmp_path / "elsewhere", "r1", 0.1)
    with pytest.raises(TuneloopError, match="already registered"):
        reg.register(other)


def test_promote_retires_the_previous_and_rollback_walks_back(reg: Registry, tmp_path: Path) -> None:
    for i, name in enumerate(["a", "b", "c"]):
        reg.register(_run(tmp_path, name, 0.5 + i / 10))
    reg.promote("a", "first")
    reg.promote("b", "better", {"macro_f1": 0.6})
    reg.promote("c", "better still")
    assert reg.promoted().name == "c"
    assert {r.name: r.status for r in reg.list()} == {"a": "retired", "b": "retired", "c": "promoted"}
    assert reg.rollback("c broke").name == "b"
    assert reg.rollback().name == "a"
    with pytest.raises(TuneloopError, match="first model ever promoted"):
        reg.rollback()
    actions = [(e["action"], e["name"]) for e in reg.history() if e["action"] != "register"]
    assert actions == [("promote", "a"), ("promote", "b"), ("promote", "c"), ("rollback", "b"), ("rollback", "a")]
    assert reg.history()[4]["evidence"] == {"macro_f1": 0.6}


def test_unknown_names_and_bad_urls_are_clear_errors(reg: Registry, tmp_path: Path) -> None:
    reg.register(_run(tmp_path, "r1", 0.8))
    with pytest.raises(TuneloopError, match=r"no model named 'nope'.*known: r1"):
        reg.promote("nope")
    with pytest.raises(TuneloopError, match="nothing is promoted"):
        reg.rollback()
    with pytest.raises(TuneloopError, match="not a finished run"):
        reg.register(tmp_path / "missing")
    with pytest.raises(TuneloopError, match="the registry: nosuchdb databases are not supported"):
        Registry("nosuchdb://x")
    with pytest.raises(TuneloopError, match="neither a file path nor a database URL"):
        Registry("postgresql:/user@host/db")


def _promote_many(url: str, names: list[str]) -> list[str]:
    reg = Registry(url)
    outcomes = []
    for n in names:
        try:
            reg.promote(n)
            outcomes.append("ok")
        except TuneloopError as e:
            outcomes.append(str(e).split(";")[0])
    return outcomes


def test_concurrent_promotions_leave_exactly_one_promoted(target: str, reg: Registry, tmp_path: Path) -> None:
    names = [f"m{i}" for i in range(6)]
    for n in names:
        reg.register(_run(tmp_path, n, 0.5))
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        outcomes = [o for got in pool.starmap(_promote_many, [(target, names[i::2] * 10) for i in range(2)]) for o in got]
    # Each promotion either happened or lost a race and said so in one line; nothing else.
    assert all(o == "ok" or o.endswith("was promoted by another process a moment ago") for o in outcomes), outcomes
    assert "ok" in outcomes
    assert sum(r.status == "promoted" for r in reg.list()) == 1


def test_the_loser_of_a_promotion_race_gets_one_line_and_a_nonzero_exit(pg_url: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    reg = Registry(pg_url)
    for n in ("a", "b"):
        reg.register(_run(tmp_path, n, 0.5))
    # Process 1 promotes `a` and has not committed yet; process 2 (the CLI) promotes `b` meanwhile:
    # it blocks on the unique index until process 1 commits, then loses.
    holder = sa.create_engine(reg.engine.url)
    with holder.begin() as c:
        c.execute(sa.text("UPDATE models SET status = 'promoted' WHERE name = 'a'"))
        cli = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "models", "promote", "b", "--registry", pg_url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "300"})
        with holder.connect() as watch:  # until the CLI waits on our lock
            while not watch.execute(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar():
                assert cli.poll() is None, cli.communicate()
                time.sleep(0.05)
    out, err = cli.communicate(timeout=60)
    holder.dispose()
    assert cli.returncode == 1
    assert [line for line in err.splitlines() if line.startswith("error")] == ["error: a was promoted by another process a moment ago; b was not promoted "
                                        "(run the command again to promote it anyway)"]
    assert reg.promoted().name == "a"


def _open(url: str) -> str:
    Registry(url).engine.dispose()
    return "ok"


def test_processes_opening_an_empty_database_at_once_create_the_schema_once(target: str) -> None:
    with mp.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open, [target] * 8) == ["ok"] * 8
    with Registry(target).engine.connect() as c:
        import sqlalchemy as sa

        assert c.execute(sa.text("SELECT component, version FROM tuneloop_schema")).all() == [("registry", 1)]


def test_the_password_is_masked_wherever_the_url_is_printed(pg_url: str, tmp_path: Path) -> None:
    password = pg_url.split(":")[2].split("@")[0]
    reg = Registry(pg_url)
    reg.register(_run(tmp_path, "r1", 0.8))
    env = {**os.environ, "COLUMNS": "300"}
    listing = subprocess.run([sys.executable, "-m", "tuneloop.cli", "models", "list", "--registry", pg_url],
                             capture_output=True, text=True, env=env)
    assert listing.returncode == 0 and "r1" in listing.stdout and "***" in listing.stdout
    wrong_port = pg_url.replace(pg_url.split("@")[1].split("/")[0], "127.0.0.1:1")
    for args in (["models", "promote", "nope", "--registry", pg_url], ["models", "list", "--registry", wrong_port]):
        failed = subprocess.run([sys.executable, "-m", "tuneloop.cli", *args], capture_output=True, text=True, env=env)
        assert failed.returncode == 1 and "***" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
        assert len([line for line in failed.stderr.splitlines() if line.startswith("error")]) == 1
    for text in (listing.stdout, failed.stderr, reg.url, str(reg.get("r1").to_dict())):
        assert password not in text
