"""report.html of `tuneloop prepare`: the manifest made readable, with a label chart and a length histogram."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from tuneloop import report
from tuneloop.data.split import SPLITS

_MAX_BARS = 30  # a chart with more labels than this shows the most frequent ones


def write_report(path: Path, manifest: dict[str, Any], lengths: dict[str, np.ndarray],
                 near: list[tuple[dict[str, Any], dict[str, Any], float]] | None = None) -> Path:
    """Write the data report.

    Args:
        path: Where to write it (`DIR/report.html`).
        manifest: The manifest (see `manifest.build_manifest`).
        lengths: Token lengths per split name, for the histogram.
        near: A sample of near duplicates: (dropped record, kept record, estimated Jaccard).

    Returns:
        The path written.
    """
    c = manifest["counts"]
    sections = [
        report.section("Rows per stage", _stages(c)),
        report.section("Inputs", report.table(["file", "role", "format", "rows", "valid", "sha256"], [
            [f["path"], f["role"], f["format"], f["rows"], f["valid"], f["sha256"]] for f in manifest["inputs"]])),
        report.section("Rejected rows", _rejected(c)),
        report.section("Personal data", _pii(c, manifest["config"]["pii"])),
        report.section("Near duplicates (a sample)", _near(near or [], manifest["near_dup"])),
        report.section("Leakage", _leakage(c, manifest["near_dup"]["threshold"], manifest["task"])),
        report.section("Splits", _splits(manifest)),
        report.section("Lengths", _lengths(manifest["length_stats"], lengths)),
        report.section("Settings", f"<pre>{report.esc(json.dumps(manifest['config'], indent=2, sort_keys=True))}</pre>"),
    ]
    subtitle = f"task {manifest['task']} · seed {manifest['seed']} · {c['read']:,} rows read"
    return report.write(path, report.page("Data report (tuneloop prepare)", sections, subtitle))


def _stages(c: dict[str, Any]) -> str:
    rows = [["read", c["read"]], ["rejected (see rejects.jsonl)", c["rejected"]], ["rows with personal data", c["pii_rows"]],
            ["exact duplicates", c["exact_duplicates"]], ["label conflicts", c["label_conflicts"]],
            ["near duplicates", c["near_duplicates"]], ["leaked into validation/test (removed)", c["leaked"]]]
    rows += [[f"{name} rows", n] for name, n in c["splits"].items()]
    return report.table(["stage", "rows"], rows)


def _leakage(c: dict[str, Any], threshold: float, task: str) -> str:
    prompt = "the user turns of a chat" if task == "generate" else "the text"
    how = (f'<p class="muted">A row is compared with every held-out row by its whole content and by its prompt '
           f'({prompt}), exactly and as a near duplicate (estimated Jaccard ≥ {threshold}). A validation row that '
           'matches a test row leaves validation; a training row that matches a validation or test row leaves '
           'training — whatever the answer.</p>')
    if not c["leaked"]:
        return how + '<p class="ok">No training or validation row repeats a held-out one.</p>'
    rows = [["same content", c["leaked_exact"]], ["same prompt, another answer", c.get("leaked_prompt", 0)],
            ["near duplicate (content or prompt)", c["leaked_near"]],
            ["removed from train", c.get("leaked_from_train", c["leaked"])], ["removed from validation", c.get("leaked_from_val", 0)]]
    return how + report.table(["leak", "rows"], rows)


def _rejected(c: dict[str, Any]) -> str:
    if not c["rejected_by_reason"]:
        return '<p class="ok">No row was rejected.</p>'
    by_count = sorted(c["rejected_by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
    where = '<p class="muted">Each rejected row, with its file, line and a full reason, is in rejects.jsonl.</p>'
    return report.table(["reason", "rows"], by_count) + where


def _pii(c: dict[str, Any], action: str) -> str:
    if action == "off":
        return '<p class="warn">PII detection was off.</p>'
    if not c["pii"]:
        return '<p class="ok">No e-mail address, phone, card, IBAN, IP address or SSN found.</p>'
    verb = "replaced with placeholders like [EMAIL]" if action == "redact" else "rows dropped"
    rows = f"<p>{c['pii_rows']:,} rows held personal data ({verb}).</p>"
    return report.table(["kind", "found"], list(c["pii"].items())) + rows


def _near(pairs: list[tuple[dict[str, Any], dict[str, Any], float]], settings: dict[str, Any]) -> str:
    how = (f'<p class="muted">Word {settings["ngram"]}-grams, MinHash with {settings["num_perm"]} permutations, '
           f'LSH with {settings["bands"]} bands of {settings["rows"]} rows; pairs at estimated Jaccard ≥ '
           f'{settings["threshold"]} are near duplicates and the later row is dropped.</p>')
    if not pairs:
        return how + '<p class="ok">No near duplicates found.</p>'
    rows = [[_where(d), _text(d), _where(k), _text(k), sim] for d, k, sim in pairs]
    return how + report.table(["dropped", "text", "kept", "text", "Jaccard (est.)"], rows)


def _where(rec: dict[str, Any]) -> str:
    return f'{Path(rec["meta"]["source"]).name}:{rec["meta"]["line"]}'


def _text(rec: dict[str, Any], limit: int = 300) -> str:
    text = rec["text"] if "text" in rec else " | ".join(m["content"] for m in rec["messages"])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _splits(manifest: dict[str, Any]) -> str:
    c = manifest["counts"]
    html = report.table(["split", "rows"], list(c["splits"].items()))
    dist = c.get("label_distribution")
    if not dist:
        return html
    labels = manifest["labels"]
    html += report.table(["label", *SPLITS], [[lab, *(dist[s].get(lab, 0) for s in SPLITS)] for lab in labels])
    return html + report.figure(_label_chart(dist, labels), "label distribution per split")


def _label_chart(dist: dict[str, dict[str, int]], labels: list[str]) -> plt.Figure:
    shown = sorted(labels, key=lambda lab: -sum(dist[s].get(lab, 0) for s in SPLITS))[:_MAX_BARS]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(shown) + 2), 3.5))
    x = np.arange(len(shown))
    width = 0.8 / len(SPLITS)
    for i, split in enumerate(SPLITS):
        total = max(sum(dist[split].values()), 1)
        ax.bar(x + i * width, [dist[split].get(lab, 0) / total for lab in shown], width, label=split)
    ax.set_xticks(x + width, shown, rotation=45 if len(shown) > 8 else 0, ha="right" if len(shown) > 8 else "center")
    ax.set_ylabel("share of split")
    ax.set_title("Label distribution per split")
    ax.legend()
    return fig


def _lengths(stats: dict[str, Any], lengths: dict[str, np.ndarray]) -> str:
    keys = ["count", "mean", "min", "p50", "p90", "p99", "max"]
    html = report.table(["split", *keys], [[s, *(stats[s][k] for k in keys)] for s in SPLITS])
    html += f'<p class="muted">Lengths in {report.esc(stats["unit"])}.</p>'
    if not any(len(v) for v in lengths.values()):
        return html
    fig, ax = plt.subplots(figsize=(7, 3.5))
    top = max(int(np.percentile(np.concatenate(list(lengths.values())), 99.5)), 1)
    bins = np.linspace(0, top, 41)
    for split in SPLITS:
        if len(lengths[split]):
            ax.hist(np.clip(lengths[split], 0, top), bins=bins, histtype="step", density=True, label=split)
    ax.set_xlabel(f"length ({stats['unit']}; the last bin holds everything longer)")
    ax.set_ylabel("density")
    ax.set_title("Length histogram")
    ax.legend()
    return html + report.figure(fig, "length histogram per split")
