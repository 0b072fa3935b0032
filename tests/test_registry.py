"""The registry: register runs, promote exactly one, roll back through the history, across processes."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import yaml

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


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path}/reg.db")


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
    with pytest.raises(TuneloopError, match="cannot open the registry"):
        Registry("nosuchdb://x")


def _promote_many(url: str, names: list[str]) -> None:
    reg = Registry(url)
    for n in names:
        reg.promote(n)


def test_concurrent_promotions_leave_exactly_one_promoted(reg: Registry, tmp_path: Path) -> None:
    names = [f"m{i}" for i in range(6)]
    for n in names:
        reg.register(_run(tmp_path, n, 0.5))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_promote_many, args=(reg.url, names[i::2] * 5)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    assert sum(r.status == "promoted" for r in reg.list()) == 1
