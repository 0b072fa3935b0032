"""`tuneloop loop --once / --watch`: alarms start the loop.

One check: run the monitor on the promoted model; if an alarm fires, enough new feedback has
arrived since the last triggered round, the cool-down has passed and today's budget of rounds is
not spent, start a round (`tuneloop.loop.run`). Every started round is a `monitor_trigger` registry
event with its evidence (the alarms, the window, the feedback counts) and a `monitor_round_done`
event when it ends; an alarm that starts nothing is a `monitor_alarm` event with the reason (at most
one per cool-down). A watcher killed mid-round finds a trigger without its `done` event and
resumes that round first (the loop's rounds resume where they stopped).

After a promotion, each check also compares the promoted model's realized accuracy on live
feedback with its predecessor's (each over its own newest `monitor.last` predictions); when it is
lower by more than `monitor.max_realized_drop` with a one-sided Fisher exact test below
`monitor.rollback_alpha`, both having `monitor.min_feedback` ratings, the predecessor is promoted
back (`rollback` event) and a `monitor_rollback` event keeps the evidence.
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
    """What one check did: `round` (a round ran), `quiet`, `skipped` (an alarm, no round), `rollback` or `no_model`."""

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
    if (rolled := _rollback(cfg, reg, promoted, history)) is not None:
        return rolled
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


def _rollback(cfg: RunConfig, reg: Any, promoted: Any, history: list[dict[str, Any]]) -> Check | None:
    """Roll back a promoted model whose realized accuracy fell significantly below its predecessor's (None: keep it)."""
    from scipy.stats import fisher_exact

    from tuneloop.monitor.stage import realized_of

    m = cfg.monitor
    promotions = [e for e in history if e["action"] == "promote" and e["name"] == promoted.name and e.get("previous")]
    if m.rollback_alpha is None or not promotions:
        return None
    previous = reg.get(promotions[-1]["previous"])
    try:
        new = realized_of(Path(promoted.path), promoted.name, m, cfg.feedback.db)
        old = realized_of(Path(previous.path), previous.name, m, cfg.feedback.db)
    except Exception:  # noqa: BLE001 (no reference or log for one of them: no evidence, no rollback)
        return None
    if min(new["n_rated"], old["n_rated"]) < m.min_feedback or new["accuracy"] >= old["accuracy"] - m.max_realized_drop:
        return None
    right = lambda r: round(r["accuracy"] * r["n_rated"])  # noqa: E731
    p = float(fisher_exact([[right(new), new["n_rated"] - right(new)], [right(old), old["n_rated"] - right(old)]],
                           alternative="less").pvalue)
    if p >= m.rollback_alpha:
        return None
    reason = (f"realized accuracy {new['accuracy']:.3f} on {new['n_rated']} rated answers vs {old['accuracy']:.3f} on "
              f"{old['n_rated']} for {previous.name} (Fisher p = {p:.2g})")
    reg.rollback(f"monitor: {reason}")
    reg.record_event("monitor_rollback", promoted.name, reason, {"new": new, "previous": {**old, "name": previous.name}, "pvalue": p})
    return Check("rollback", f"rolled back {promoted.name} to {previous.name}: {reason}", [])


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
