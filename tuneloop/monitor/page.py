"""The monitor report as one self-contained HTML page: alarms, time series, drift, estimates, groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.report import esc, figure, page, plt, section, table, write


def _series_figure(report: dict[str, Any]) -> str:
    series = report["window"].get("series") or []
    if not series:
        return ""
    fig, ax = plt.subplots(figsize=(7, 3))
    x = list(range(len(series)))
    ax.plot(x, [s["mean_confidence"] for s in series], "o-", label="window: mean calibrated confidence")
    if (ref := (report.get("reference") or {}).get("estimated_accuracy")) is not None:
        ax.axhline(ref, ls=":", color="grey", label="reference (test split)")
    ax.set_xticks(x, [s["time"][11:19] for s in series], rotation=60, fontsize=7)
    ax.set(ylabel="confidence ≈ estimated accuracy", ylim=(0, 1), title="Over the window (UTC)")
    ax.legend(fontsize=8, loc="lower left")
    return figure(fig, "mean confidence over time")


def _flat(obj: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    rows: list[list[Any]] = []
    for k, v in obj.items():
        if isinstance(v, dict) and k not in ("reference", "window"):
            rows += _flat(v, f"{prefix}{k}.")
        elif not isinstance(v, (dict, list)) or k.endswith("_ci"):
            rows.append([f"{prefix}{k}", json.dumps(v) if isinstance(v, list) else v])
    return rows


def render(report: dict[str, Any]) -> str:
    """The report as HTML (every number of `--json`, grouped, plus the time-series plot)."""
    alarms = report["alarms"]
    head = (table(["kind", "metric", "value", "threshold"], [[a["kind"], a["metric"], a["value"], a["threshold"]] for a in alarms])
            if alarms else f"<p>{esc(report.get('message') or 'No alarm.')}</p>")
    sections = [section(f"Alarms ({len(alarms)})", head, "alarms"), section("Time series", _series_figure(report), "series")]
    for key, title in (("drift", "Drift"), ("estimated", "Estimated (CBPE)"), ("realized", "Realized (feedback)"),
                       ("fairness", "Groups")):
        if report.get(key):
            sections.append(section(title, table(["metric", "value"], _flat(report[key])), key))
    return page(f"tuneloop monitor — {report['model']}", sections,
                subtitle=f"window of {report['window']['n']} predictions, {report['window'].get('first')} → {report['window'].get('last')}")


def write_page(path: Path, report: dict[str, Any]) -> Path:
    """Write the page atomically; returns its path."""
    return write(Path(path), render(report))
