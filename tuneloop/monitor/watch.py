"""`tuneloop loop --once / --watch`: alarms start the loop.

One check: run the monitor on the promoted model; if an alarm fires, enough new feedback has
arrived since the last triggered round, the cool-down has passed and today's budget of rounds is
not spent, start a round (`tuneloop.loop.run`). Every started round is a `monitor_trigger` registry
event with its evidence (the alarms, the window, the feedback counts) and a `monitor_round_done`
event when it ends; an alarm that starts nothing is a `monitor_alarm` event with the reason (at most
one per cool-down). A watcher killed mid-round finds a trigger without its `done` event and
resumes that round first (the loop's rounds resume where they stopped).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tuneloop.config import RunConfig

TRIGGER, DONE, ALARM = "monitor_trigger", "monitor_round_done", "monitor_alarm"


@dataclass
class Check:
    """What one check did: `action` is `round` (a round ran), `quiet`, `skipped` (an alarm, no round) or `no_model`."""

    action: str
    reason: str
    alarms: list[dict[str, Any]]
    loop: Any = None  # tuneloop.loop.LoopResult when a round ran

    def summary(self) -> str:
        """One line per alarm and the decision."""
        lines = [f"ALARM {a['kind']}: {a['metric']} = {a['value']:.4g} (threshold {a['threshold']:.4g})" for a in self.alarms]
        lines.append(f"{self.action}: {self.reason}")
        if self.loop is not None:
            lines.append(f"round {self.loop.round_dir.name}: {self.loop.decision.decision}")
        return "\n".join(lines)


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(event["at"])).astimezone(timezone.utc)


def _feedback_count(cfg: RunConfig) -> int:
    from tuneloop.store import FeedbackStore, exists

    if not exists(cfg.feedback.db):
        return 0
    store = FeedbackStore(cfg.feedback.db, retention_days=None)
    try:
        return store.count()
    finally:
        store.close()


def _why_not(cfg: RunConfig, triggers: list[dict[str, Any]], new_feedback: int, now: datetime) -> str | None:
    """Why an alarm may not start a round now (None: it may)."""
    m = cfg.monitor
    if new_feedback < m.min_new_feedback:
        return f"only {new_feedback} new feedback records since the last triggered round; {m.min_new_feedback} needed (monitor.min_new_feedback)"
    if triggers and now - _at(triggers[-1]) < timedelta(minutes=m.cooldown_minutes):
        return f"cool-down: the last triggered round started at {triggers[-1]['at']} (monitor.cooldown_minutes {m.cooldown_minutes:g})"
    today = [t for t in triggers if now - _at(t) < timedelta(days=1)]
    if len(today) >= m.max_rounds_per_day:
        return f"{len(today)} rounds started in the last 24 hours (monitor.max_rounds_per_day {m.max_rounds_per_day})"
    return None


def check(cfg: RunConfig, *, now: datetime | None = None, run_round: Callable[[RunConfig], Any] | None = None) -> Check:
    """Monitor the promoted model once and start a round if an alarm allows it (see the module docstring).

    Args:
        cfg: The loop's config (`loop`, `feedback`, `monitor` sections and what a round needs).
        now: The current time (tests).
        run_round: What runs a round (default: `tuneloop.loop.run`).

    Raises:
        TuneloopError: the monitor could not run (e.g. no reference) or the round failed (rerun resumes it).
    """
    from tuneloop.loop import run as loop_run
    from tuneloop.monitor.stage import run as monitor
    from tuneloop.registry import Registry

    now = now or datetime.now(timezone.utc)
    loop = run_round or loop_run
    reg = Registry(cfg.loop.registry)
    history = reg.history()
    triggers = [e for e in history if e["action"] == TRIGGER]
    done = {(e.get("evidence") or {}).get("trigger_id") for e in history if e["action"] == DONE}
    last = (triggers[-1].get("evidence") or {}) if triggers else {}
    if triggers and last.get("trigger_id") not in done:  # a round started and never finished: resume it first
        return _round(cfg, reg, last.get("alarms", []), last.get("trigger_id"), "resumed the round a killed watcher had started", loop)
    promoted = reg.promoted()
    if promoted is None:
        return Check("no_model", "the registry has no promoted model to watch", [])
    result = monitor(Path(promoted.path), model=promoted.name, feedback_db=cfg.feedback.db, settings=cfg.monitor)
    if not result.alarms:
        return Check("quiet", result.report.get("message") or "no alarm", [])
    count = _feedback_count(cfg)
    since = last.get("feedback_count", 0)
    evidence = {"trigger_id": uuid.uuid4().hex, "model": promoted.name, "alarms": result.alarms, "window": {k: v for k, v in result.report["window"].items()
                                                                             if k != "series"},
                "estimated": result.report["estimated"], "realized": result.report["realized"],
                "feedback_count": count, "new_feedback": count - since}
    reason = _why_not(cfg, triggers, count - since, now)
    if reason is not None:
        alarms = [e for e in history if e["action"] == ALARM]
        if not alarms or now - _at(alarms[-1]) >= timedelta(minutes=cfg.monitor.cooldown_minutes):
            reg.record_event(ALARM, promoted.name, f"alarm, no round: {reason}", evidence)
        return Check("skipped", reason, result.alarms)
    reg.record_event(TRIGGER, promoted.name, "; ".join(f"{a['metric']} {a['value']:.4g} > {a['threshold']:.4g}"
                                                       for a in result.alarms), evidence)
    return _round(cfg, reg, result.alarms, evidence["trigger_id"], f"{len(result.alarms)} alarm(s) and {count - since} new feedback records", loop)


def _round(cfg: RunConfig, reg: Any, alarms: list[dict[str, Any]], trigger_id: str | None, reason: str,
           loop: Callable[[RunConfig], Any]) -> Check:
    out = loop(cfg)
    reg.record_event(DONE, out.decision.candidate or out.round_dir.name, f"{out.decision.decision}: {'; '.join(out.decision.reasons)}",
                     {"trigger_id": trigger_id, "round": str(out.round_dir), "decision": out.decision.decision})
    return Check("round", reason, alarms, out)


def watch(cfg: RunConfig, say: Callable[[str], None] = print, *, checks: int | None = None) -> None:
    """Run `check` every `monitor.interval_minutes` until stopped (Ctrl-C), or `checks` times.

    A check that fails is reported and the watcher goes on: the next check retries (and resumes
    an unfinished round).
    """
    from tuneloop.errors import TuneloopError

    n = 0
    while checks is None or n < checks:
        try:
            say(check(cfg).summary())
        except TuneloopError as e:
            say(f"check failed: {e}")
        n += 1
        if checks is None or n < checks:
            time.sleep(cfg.monitor.interval_minutes * 60)
