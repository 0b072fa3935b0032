"""`tuneloop loop --once`: an alarm with enough new feedback starts a round; cool-down, daily budget, events, resume."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from test_monitor import _log, _traffic, served  # noqa: F401 (the fixture)
from tuneloop.config import RunConfig
from tuneloop.gate import GateDecision
from tuneloop.loop import LoopResult
from tuneloop.monitor.watch import check
from tuneloop.registry import Registry
from tuneloop.store import FeedbackStore


class Rounds:
    """Stands in for `tuneloop.loop.run` (its own tests train for real): counts calls, can fail once."""

    def __init__(self, tmp: Path) -> None:
        self.calls, self.fail, self.tmp = 0, False, tmp

    def __call__(self, cfg: RunConfig) -> LoopResult:
        self.calls += 1
        if self.fail:
            self.fail = False
            raise RuntimeError("killed mid-round")
        return LoopResult(self.tmp / f"round-{self.calls}", GateDecision(decision="keep", metric="macro_f1", margin=0.0, alpha=0.05,
                                                                         reasons=["no gain"], candidate=f"c{self.calls}"))


def _feedback(db: Path, n: int) -> None:
    store = FeedbackStore(db)
    for i in range(n):
        rid = store.record_response(model="run", kind="classify", request={"input": ["x"]}, response={"labels": ["positive"]})
        store.add_feedback(response_id=rid, rating="down", index=0, corrected="negative")
    store.close()


@pytest.fixture
def setup(served: Path, tmp_path: Path) -> tuple[RunConfig, Registry, Path]:  # noqa: F811
    (served / "model").mkdir()
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    reg.register(served, "run")
    reg.promote("run", "first")
    cfg = RunConfig(task="classify", loop={"registry": f"sqlite:///{tmp_path / 'reg.db'}"}, feedback={"db": tmp_path / "fb.db"},
                    monitor={"embedding_model": None, "permutations": 200, "min_new_feedback": 5, "cooldown_minutes": 60,
                             "max_rounds_per_day": 2})
    return cfg, reg, tmp_path / "fb.db"


def _actions(reg: Registry) -> list[str]:
    return [e["action"] for e in reg.history() if e["action"].startswith("monitor_")]


def test_alarms_start_rounds_within_the_limits_and_every_trigger_is_an_event(setup: Any, tmp_path: Path) -> None:
    cfg, reg, db = setup
    rounds, t0 = Rounds(tmp_path), datetime.now(timezone.utc)
    _log(db, _traffic(300, 3))
    assert check(cfg, run_round=rounds).action == "quiet"
    _log(db, _traffic(300, 4, shifted=True))
    skipped = check(cfg, run_round=rounds)
    assert skipped.action == "skipped" and "new feedback" in skipped.reason and skipped.alarms
    assert check(cfg, run_round=rounds).action == "skipped" and _actions(reg) == ["monitor_alarm"]  # one per cool-down
    _feedback(db, 5)
    first = check(cfg, run_round=rounds)
    assert first.action == "round" and rounds.calls == 1
    trigger = [e for e in reg.history() if e["action"] == "monitor_trigger"][-1]
    assert trigger["evidence"]["alarms"] and trigger["evidence"]["new_feedback"] == 5 and trigger["name"] == "run"
    _feedback(db, 5)
    assert "cool-down" in check(cfg, run_round=rounds).reason
    assert check(cfg, now=t0 + timedelta(hours=2), run_round=rounds).action == "round"
    _feedback(db, 5)
    late = check(cfg, now=t0 + timedelta(hours=4), run_round=rounds)
    assert late.action == "skipped" and "max_rounds_per_day" in late.reason and rounds.calls == 2
    assert _actions(reg).count("monitor_trigger") == 2 and _actions(reg).count("monitor_round_done") == 2


def test_a_round_killed_mid_way_is_resumed_by_the_next_check(setup: Any, tmp_path: Path) -> None:
    cfg, reg, db = setup
    rounds = Rounds(tmp_path)
    _log(db, _traffic(300, 5, shifted=True))
    _feedback(db, 5)
    rounds.fail = True
    with pytest.raises(RuntimeError):
        check(cfg, run_round=rounds)
    resumed = check(cfg, run_round=rounds)
    assert resumed.action == "round" and "resumed" in resumed.reason and rounds.calls == 2
    assert _actions(reg) == ["monitor_trigger", "monitor_round_done"]


def _rate(db: Path, ids: list[str], model: str, right: int) -> None:
    store = FeedbackStore(db)
    for i, rid in enumerate(ids):
        store.record_response(model=model, kind="classify", request={"input": ["x"]}, response={"labels": ["positive"]},
                              response_id=rid)
        store.add_feedback(response_id=rid, rating="up" if i < right else "down", index=0)
    store.close()


def test_a_promoted_model_worse_on_live_feedback_is_rolled_back(setup: Any, tmp_path: Path) -> None:
    import shutil

    cfg, reg, db = setup
    newer = tmp_path / "run2"
    shutil.copytree(tmp_path / "run", newer)
    reg.register(newer, "run2")
    reg.promote("run2", "round 2")
    _rate(db, _log(db, _traffic(60, 20)), "run", right=57)
    ids = _log(db, _traffic(60, 21), model="run2")
    _rate(db, ids[:30], "run2", right=29)  # too few ratings yet: no rollback
    assert check(cfg, run_round=Rounds(tmp_path)).action != "rollback" and reg.promoted().name == "run2"
    _rate(db, ids[30:], "run2", right=5)  # 34 of 60 right vs 57 of 60
    rolled = check(cfg, run_round=Rounds(tmp_path))
    assert rolled.action == "rollback" and reg.promoted().name == "run"
    event = [e for e in reg.history() if e["action"] == "monitor_rollback"][-1]
    assert event["evidence"]["new"]["n_rated"] == 60 and event["evidence"]["pvalue"] < 0.01
