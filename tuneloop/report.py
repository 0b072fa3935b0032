"""Self-contained HTML reports: one file, plots embedded as PNG data URIs, no external assets.

The building blocks here are shared by the data report (`tuneloop prepare`) and the run report
(`tuneloop eval`): a page, sections, tables and matplotlib figures. The run report is built only
from files the stages wrote (this module imports no stage; the stages import it).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tuneloop.errors import TuneloopError  # noqa: E402
from tuneloop.runs import read_curves  # noqa: E402

#: The HTML section `tuneloop fairness` writes into the run folder for the run report.
FAIRNESS_SECTION = Path("fairness") / "section.html"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;border-bottom:2px solid #3b6ea5;padding-bottom:.3rem}
h2{font-size:1.25rem;margin-top:2rem;color:#3b6ea5}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#eef3f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto}
.muted{color:#777;font-size:.85rem}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4rem .8rem}
.ok{background:#e9f7ee;border-left:4px solid #2e8b57;padding:.4rem .8rem}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.8rem}
"""


def esc(value: Any) -> str:
    """HTML-escape any value's string form."""
    return html.escape(str(value))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{esc(value)}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; floats are shown with 4 significant digits, ints with thousands separators.

    >>> table(["a", "b"], [[1, 0.5]])
    '<table><tr><th>a</th><th>b</th></tr><tr><td class="num">1</td><td class="num">0.5</td></tr></table>'
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(fig: Figure, alt: str) -> str:
    """Render a matplotlib figure as an embedded PNG `<img>` and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def section(title: str, body: str, anchor: str | None = None) -> str:
    """A titled report section; `anchor` gives it an id to link to."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>\n{body}\n</section>"


def page(title: str, sections: Iterable[str], subtitle: str = "") -> str:
    """A complete, self-contained HTML document."""
    sub = f'<p class="muted">{esc(subtitle)}</p>' if subtitle else ""
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{sub}\n{body}\n</body></html>\n"
    )


def write(path: Path, html_text: str) -> Path:
    """Write a report atomically (temp file + rename) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)
    return path


# --- The run report (`tuneloop eval`): RUN/report.html ---------------------------------------

#: Display names and colours of the compared systems, in table order.
SYSTEMS = {"tuned": ("tuned", "#3b6ea5"), "base": ("base (zero-shot)", "#9a9a9a"), "base_kshot": ("base (k-shot)", "#6a9955"),
           "baseline": ("TF-IDF + LogReg", "#e69500")}
#: Display names of the metrics a headline or a paired test can name.
METRICS = {"macro_f1": "macro-F1", "accuracy": "accuracy", "token_f1": "token F1", "rouge_l": "ROUGE-L",
           "semantic": "semantic similarity", "exact_match": "exact match", "loss": "loss per answer token"}
_SIDE_BY_SIDE_CHARS = 600  # an answer shown side by side is cut here; predictions.jsonl has it whole
RUN_SECTIONS = ("summary", "data", "training", "metrics", "confusion", "per-class", "examples", "config", "environment")
_MAX_EXAMPLES = 25  # per fixed/broken table; the full lists are in RUN/eval/fixed_broken.json


def system_name(system: str) -> str:
    """Display name of a compared system ("base" → "base (zero-shot)")."""
    return SYSTEMS.get(system, (system, ""))[0]


def _fmt(value: Any, ci: Sequence[float] | None = None) -> str:
    """A metric with its interval: `0.912 [0.887, 0.934]`; `—` when absent."""
    if value is None:
        return "—"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _short(value: Any, limit: int = 300) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dict_table(data: dict[str, Any]) -> str:
    """A (nested) mapping as tables: scalars as key/value rows, a mapping of mappings as a matrix
    (rows are whichever side has more keys), other nested mappings as titled tables side by side.

    >>> dict_table({"read": 3, "splits": {"train": 2, "test": 1}}).count("<table>")
    2
    >>> dict_table({"train": {"a": 1}, "test": {"a": 2, "b": 3}}).count("<tr>")
    3
    """
    if data and all(isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values()) for v in data.values()):
        return _matrix(data)
    scalars = [[k, _scalar(data[k])] for k in _ordered(data) if not isinstance(data[k], dict)]
    blocks = {"": table(["field", "value"], scalars)} if scalars else {}
    blocks.update({k: dict_table(v) for k, v in data.items() if isinstance(v, dict) and v})
    return _side_by_side(blocks)


def _side_by_side(blocks: dict[str, str]) -> str:
    """Titled HTML blocks laid out in a row (wrapping), each under an `<h4>` title if it has one."""
    return "".join(f'<div style="display:inline-block;vertical-align:top;margin-right:1.5rem">'
                   f'{f"<h4>{esc(t)}</h4>" if t else ""}{b}</div>' for t, b in blocks.items())


_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def _ordered(keys: Iterable[str]) -> list[str]:
    # Splits read best in pipeline order; other keys keep theirs.
    keys = list(dict.fromkeys(keys))
    return sorted(keys, key=lambda k: _SPLIT_ORDER[k]) if keys and set(keys) <= set(_SPLIT_ORDER) else keys


def _matrix(data: dict[str, dict[str, Any]]) -> str:
    data = {k: data[k] for k in _ordered(data)}
    inner = _ordered(k for v in data.values() for k in v)
    if len(inner) > len(data):  # long side down: e.g. labels as rows, splits as columns
        return table(["", *data], [[k, *(_scalar(v.get(k, "")) for v in data.values())] for k in inner])
    return table(["", *inner], [[k, *(_scalar(v.get(c, "")) for c in inner)] for k, v in data.items()])


def _scalar(v: Any) -> Any:
    return v if isinstance(v, (int, float, str)) else json.dumps(v, ensure_ascii=False, default=str)


def verdict_word(diff: float, pvalue: float, higher_is_better: bool = True, alpha: float = 0.05) -> str:
    """"better", "worse" or "no significant difference" for tuned minus another system.

    >>> verdict_word(0.04, 0.003), verdict_word(0.04, 0.2), verdict_word(0.3, 0.01, higher_is_better=False)
    ('better', 'no significant difference', 'worse')
    """
    if pvalue >= alpha or diff == 0:
        return "no significant difference"
    return "better" if (diff > 0) == higher_is_better else "worse"


def _headline_html(m: dict[str, Any]) -> str:
    """The one paragraph a reader needs: the task's metric with its interval, vs each baseline with a p-value."""
    h = m.get("headline")
    if not h or h.get("value") is None:
        return ""
    name = METRICS.get(h["metric"], h["metric"])
    parts, worst = [], "better"
    for other, vs in h.get("vs", {}).items():
        if vs.get("value") is None:
            continue
        diff = h["value"] - vs["value"]
        text = f"{system_name(other)}{' (strongest)' if other == h.get('strongest') else ''} {vs['value']:.3f}, difference {diff:+.3f}"
        if vs.get("ci"):
            text += f" [{vs['ci'][0]:+.3f}, {vs['ci'][1]:+.3f}]"
        if vs.get("pvalue") is not None:
            word = verdict_word(diff, vs["pvalue"], h["higher_is_better"])
            text += f", {vs['test']} p = {vs['pvalue']:.3g}: {word}"
            worst = word if word != "better" and worst == "better" or word == "worse" else worst
        parts.append(text)
    lead = f"<b>Tuned {esc(name)}: {_fmt(h['value'], h.get('ci'))}</b>"
    detail = ("; vs " + "; vs ".join(esc(p) for p in parts)) if parts else " (no baseline was evaluated)"
    return f'<p class="{"ok" if worst == "better" and parts else "warn"}">{lead}{detail}.</p>'


def _summary_section(m: dict[str, Any]) -> str:
    systems, lines = m["systems"], []
    key = "classification" if any("classification" in s for s in systems.values()) else "generation"
    for name, s in systems.items():
        part = s.get(key, {})
        ci = part.get("ci", {})
        if key == "classification":
            line = (f"{system_name(name)}: accuracy {_fmt(part.get('accuracy'), ci.get('accuracy'))}, "
                    f"macro-F1 {_fmt(part['macro']['f1'], ci.get('macro_f1'))}")
        else:
            line = (f"{system_name(name)}: token F1 {_fmt(part.get('token_f1'), ci.get('token_f1'))}, "
                    f"ROUGE-L {_fmt(part.get('rouge_l'), ci.get('rouge_l'))}"
                    + (f", semantic similarity {_fmt(part['semantic'], ci.get('semantic'))}" if "semantic" in part else ""))
        lines.append(line + (f" — {s['note']}" if s.get("note") else ""))
    overfit = m.get("curves", {}).get("overfitting")
    warn = (f'<p class="warn">Validation loss rose for the last {m["curves"]["overfit_window"]} evaluations: '
            "the run is overfitting (see Training).</p>") if overfit else ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return section("Summary", _headline_html(m) + f"<p>{m['n']:,} test examples; 95% bootstrap intervals.</p><ul>{items}</ul>"
                   + _judge_html(m.get("judge")) + warn, "summary")


def _judge_html(judge: dict[str, Any] | None) -> str:
    """The pairwise judge's verdict, or why there is none (never a made-up number)."""
    if not judge:
        return ""
    if judge.get("status") != "done":
        return f'<p class="muted">Pairwise judge: {esc(judge.get("status", "skipped"))} — {esc(judge.get("reason", ""))}</p>'
    rows = [[system_name(other), _fmt(r["win_rate"], r.get("ci")), r["wins"], r["ties"], r["losses"]]
            for other, r in judge.get("vs", {}).items()]
    agree = judge.get("agreement") or {}
    trust = (f"agreement with people: Cohen's κ {agree['kappa']:.2f} on {agree['n']} rated answers"
             if agree.get("kappa") is not None else f"agreement with people: not measured ({agree.get('reason', 'no ratings')})")
    trusted = "trusted" if judge.get("trusted") else "NOT trusted (below eval.judge_min_kappa or unmeasured)"
    return (f"<h3>Pairwise judge ({esc(judge.get('model', ''))})</h3>"
            + table(["tuned vs", "win rate [95% CI]", "wins", "ties", "losses"], rows)
            + f'<p class="muted">Both orders asked per pair (a win needs both); ties count ½. {esc(trust)}; verdict {trusted}.</p>')


def _verdict(c: dict[str, Any], alpha: float = 0.05) -> str:
    """Plain words for a McNemar result of tuned (A) vs another system (B)."""
    p = f"McNemar p = {c['pvalue']:.3g}, {c['only_a']} fixed vs {c['only_b']} lost"
    if c["pvalue"] >= alpha:
        return f"no significant difference ({p})"
    return ("better" if c["only_a"] > c["only_b"] else "worse") + f" ({p})"


def _data_section(manifest: dict[str, Any]) -> str:
    if not manifest:
        return section("Data", '<p class="muted">No manifest.json in the data folder.</p>', "data")
    parts = [f"<p>task: <b>{esc(manifest.get('task', '?'))}</b>"
             + (f"; {len(manifest['labels'])} labels: {esc(', '.join(map(str, manifest['labels'])))}" if manifest.get("labels") else "")
             + "</p>"]
    counts = manifest.get("counts")
    if isinstance(counts, dict) and counts:
        parts.append("<h3>Counts</h3>" + dict_table(counts))
    lengths = dict(manifest.get("length_stats") or {})
    if lengths:
        unit = lengths.pop("unit", "")
        parts.append(f"<h3>Lengths{f' ({esc(unit)})' if unit else ''}</h3>" + dict_table(lengths))
    inputs = [i for i in manifest.get("inputs") or [] if isinstance(i, dict)]
    if inputs:
        cols = list(dict.fromkeys(k for i in inputs for k in i))
        parts.append("<h3>Inputs</h3>" + table(cols, [[_scalar(i.get(c, "")) for c in cols] for i in inputs]))
    return section("Data", "\n".join(parts), "data")


def _curves_figure(train: list[tuple[int, float]], val: list[tuple[int, float]]) -> str:
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if train:
        ax.plot(*zip(*train), color="#3b6ea5", lw=1, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", color="#c0392b", ms=4, label="validation loss")
        best = min(val, key=lambda sv: sv[1])
        ax.plot(*best, "*", color="#2e8b57", ms=14, label=f"best validation (step {best[0]})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per token")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure(fig, "training and validation loss by step")


def _training_section(run_dir: Path, m: dict[str, Any]) -> str:
    curves, summary = read_curves(run_dir / "metrics.jsonl"), m.get("curves", {})
    if not curves.train and not curves.val:
        return section("Training", '<p class="muted">No training curves (RUN/metrics.jsonl is missing or empty).</p>', "training")
    flag = (f'<p class="warn">Overfitting: validation loss rose for the last {summary.get("overfit_window")} evaluations.</p>'
            if summary.get("overfitting") else
            f'<p class="ok">No overfitting: validation loss did not rise for the last {summary.get("overfit_window")} evaluations.</p>')
    tables = {"validation": summary, "train_summary.json": m.get("train_summary") or {}}
    return section("Training", _curves_figure(curves.train, curves.val) + flag + _side_by_side(
        {title: dict_table(d) for title, d in tables.items() if d}), "training")


def _metric_rows(systems: dict[str, Any]) -> list[list[str]]:
    def row(label: str, get: Any) -> list[str]:
        return [label, *(get(s) for s in systems.values())]

    rows = []
    if any("classification" in s for s in systems.values()):
        c = lambda s: s.get("classification", {})  # noqa: E731
        rows += [
            row("accuracy", lambda s: _fmt(c(s).get("accuracy"), c(s).get("ci", {}).get("accuracy"))),
            row("macro-F1", lambda s: _fmt(c(s).get("macro", {}).get("f1"), c(s).get("ci", {}).get("macro_f1"))),
            *(row(f"{avg} {'F1' if k == 'f1' else k}", lambda s, a=avg, k=k: _fmt(c(s).get(a, {}).get(k)))
              for avg in ("macro", "micro", "weighted") for k in ("precision", "recall", "f1") if (avg, k) != ("macro", "f1")),
            row("unparseable answers", lambda s: f"{c(s)['unparseable_rate']:.1%}" if c(s) else "—"),
        ]
    if any("generation" in s for s in systems.values()):
        g = lambda s: s.get("generation", {})  # noqa: E731
        scores = [k for k in ("token_f1", "rouge_l", "semantic", "exact_match") if any(k in g(s) for s in systems.values())]
        rows += [row(METRICS[k], lambda s, k=k: _fmt(g(s).get(k), g(s).get("ci", {}).get(k))) for k in scores]
        rows.append(row("answer length (words)", lambda s: _fmt(g(s).get("avg_words"))))
        if any("loss" in g(s) for s in systems.values()):
            rows.append(row("loss per answer token (mean over examples)", lambda s: _fmt(g(s).get("loss"), g(s).get("ci", {}).get("loss"))))
            rows.append(row("perplexity", lambda s: _fmt(s.get("perplexity"))))
            return rows
    rows += [row("test loss per token", lambda s: _fmt(s.get("loss"))), row("perplexity", lambda s: _fmt(s.get("perplexity")))]
    return rows


def _metrics_section(m: dict[str, Any]) -> str:
    systems = m["systems"]
    heads = ["metric", *(system_name(n) + (f" ({s['note']})" if s.get("note") else "") for n, s in systems.items())]
    body = table(heads, _metric_rows(systems))
    comps = m.get("comparisons", {})
    if comps:
        body += "<h3>Paired test (McNemar)</h3>" + table(
            ["tuned vs", "only tuned right", "only other right", "test", "p-value", "verdict"],
            [[system_name(k.split("_vs_")[1]), c["only_a"], c["only_b"], c["method"], f"{c['pvalue']:.3g}", _verdict(c).split(" (")[0]]
             for k, c in comps.items()],
        )
    paired = [[system_name(k.split("_vs_")[1]), METRICS.get(name, name), _fmt(t["mean_b"]), _fmt(t["mean_a"]),
               f"{t['diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]", t["method"], f"{t['pvalue']:.3g}",
               verdict_word(t["diff"], t["pvalue"], name != "loss")]
              for k, tests in m.get("paired", {}).items() for name, t in tests.items()]
    if paired:
        body += "<h3>Paired tests on per-example scores</h3>" + table(
            ["tuned vs", "metric", "tuned", "other", "difference [95% CI]", "test", "p-value", "verdict"], paired)
    note = f'<p class="muted">Correct means: {esc(m.get("correct_means", ""))}. Intervals: 95% percentile bootstrap.</p>'
    return section("Metrics", body + note, "metrics")


def _confusion_figure(name: str, cm: list[list[int]], labels: list[str]) -> str:
    cols = labels + (["unparseable"] if any(r[-1] for r in cm) else [])
    data = np.array([r[: len(cols)] for r in cm], dtype=float)
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(cols), 1.0 + 0.5 * k))
    rows = data.sum(axis=1, keepdims=True)
    ax.imshow(np.divide(data, rows, out=np.zeros_like(data), where=rows > 0), cmap="Blues", vmin=0, vmax=1)
    if k <= 20:  # counts stay readable up to about 20 labels
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=8,
                    color="white" if rows[i, 0] and v / rows[i, 0] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(system_name(name), fontsize=10)
    return figure(fig, f"confusion matrix of {system_name(name)}")


def _classification(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s["classification"] for n, s in m["systems"].items() if "classification" in s}


def _confusion_section(m: dict[str, Any]) -> str:
    cls = _classification(m)
    if not cls:
        return section("Confusion matrices", '<p class="muted">Open-ended generation: no labels.</p>', "confusion")
    figs = "".join(f'<div style="display:inline-block;margin:0 1rem 1rem 0;vertical-align:top">'
                   f'{_confusion_figure(n, c["confusion_matrix"], c["labels"])}</div>' for n, c in cls.items())
    note = "Rows: true label; colour: share of the row."
    if any(c.get("unparseable") for c in cls.values()):
        note += " The last column counts unparseable answers (no label or several)."
    return section("Confusion matrices", figs + f'<p class="muted">{note}</p>', "confusion")


def _per_class_section(m: dict[str, Any]) -> str:
    cls = _classification(m)
    if not cls:
        return section("Per-class F1", '<p class="muted">Open-ended generation: no labels.</p>', "per-class")
    labels = next(iter(cls.values()))["labels"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(labels) * len(cls)), 3.6))
    width = 0.8 / len(cls)
    for i, (n, c) in enumerate(cls.items()):
        ax.bar(np.arange(len(labels)) + (i - (len(cls) - 1) / 2) * width, [c["per_class"][str(lb)]["f1"] for lb in labels],
               width, label=system_name(n), color=SYSTEMS.get(n, ("", "#555"))[1])
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(cls))
    rows = [[lb, next(iter(cls.values()))["per_class"][str(lb)]["support"],
             *(_fmt(c["per_class"][str(lb)][k]) for c in cls.values() for k in ("precision", "recall", "f1"))] for lb in labels]
    heads = ["label", "support", *(f"{system_name(n)} {k}" for n in cls for k in ("P", "R", "F1"))]
    return section("Per-class F1", figure(fig, "per-class F1 by system") + table(heads, rows), "per-class")


def _examples_table(examples: list[dict[str, Any]], systems: list[str], metric: str | None = None) -> str:
    def answer(ex: dict[str, Any], n: str) -> str:
        out = ex.get(f"{n}_output")
        if f"{n}_label" not in ex:
            text = _short(out, _SIDE_BY_SIDE_CHARS)
            score = (ex.get(f"{n}_scores") or {}).get(metric) if metric else None
            return text if score is None else f"{text} [{METRICS.get(metric, metric)} {score:.2f}]"
        if ex[f"{n}_label"] is None and not (out or "").strip():
            return "unparseable (empty answer)"
        shown = "unparseable" if ex[f"{n}_label"] is None else str(ex[f"{n}_label"])
        # Show the raw answer too when it is more than the bare label.
        return shown if out is None or out.strip() == shown else f"{shown} ← “{_short(out, 120)}”"

    cols = [n for n in SYSTEMS if n in systems and n != "tuned"] + ["tuned"]
    cols = [n for n in cols if any(f"{n}_output" in ex or f"{n}_label" in ex for ex in examples)]
    rows = [[ex["id"], _short(ex["input"]), _short(ex["reference"], _SIDE_BY_SIDE_CHARS), *(answer(ex, n) for n in cols)]
            for ex in examples[:_MAX_EXAMPLES]]
    more = f'<p class="muted">{len(examples) - _MAX_EXAMPLES} more in eval/fixed_broken.json.</p>' if len(examples) > _MAX_EXAMPLES else ""
    return table(["id", "input", "reference", *(system_name(n) for n in cols)], rows) + more


def _examples_section(m: dict[str, Any], examples: dict[str, Any]) -> str:
    against = examples.get("against") or m.get("examples_against") or ("base" if "base" in m["systems"] else None)
    if against is None:
        return section("Examples", '<p class="muted">No other system was evaluated (--no-base-too, --no-baseline).</p>', "examples")
    systems, other = list(m["systems"]), system_name(against)
    if examples.get("side_by_side") or examples.get("most_improved") or examples.get("most_worsened"):
        metric = (m.get("headline") or {}).get("metric", "token_f1")
        name = METRICS.get(metric, metric)
        body = (f"<h3>Answers side by side ({len(examples.get('side_by_side', []))} test questions, in test order)</h3>"
                + _examples_table(examples.get("side_by_side", []), systems, metric))
        for key, what in (("most_improved", "most improved"), ("most_worsened", "most worsened")):
            items = examples.get(key, [])
            body += (f"<h3>{len(items):,} {what} by {esc(name)}, tuned vs {esc(other)}</h3>"
                     + (_examples_table(items, systems, metric) if items else '<p class="muted">none</p>'))
        return section("Examples", body, "examples")
    body = ""
    for key, what in (("fixed", f"fixed by tuning ({other} wrong, tuned right)"), ("broken", f"broken by tuning ({other} right, tuned wrong)")):
        items = examples.get(key, [])
        body += f"<h3>{len(items):,} {esc(what)}</h3>" + (_examples_table(items, systems) if items else "<p class=\"muted\">none</p>")
    return section("Examples fixed and broken", body, "examples")


def _environment_section(m: dict[str, Any]) -> str:
    env = table(["", "version"], [[k, str(v)] for k, v in m.get("environment", {}).items()])
    hashes = [["evaluation", path, digest] for path, digest in m.get("data_hashes", {}).items()]
    hashes += [["prepare input", i.get("path"), i.get("sha256")] for i in m.get("manifest", {}).get("inputs", [])]
    return section("Environment", env + "<h3>Data hashes (sha256)</h3>" + table(["used by", "file", "sha256"], hashes), "environment")


def _fairness_section(run_dir: Path) -> list[str]:
    # Present once `tuneloop fairness RUN` has audited the run: the section it wrote.
    path = run_dir / FAIRNESS_SECTION
    return [path.read_text(encoding="utf-8")] if path.is_file() else []


def _decision_section(run_dir: Path) -> list[str]:
    # Present when `tuneloop loop` gated this run against the served model (RUN/gate.json).
    from tuneloop.gate import EVIDENCE_COLUMNS, GateDecision, report_rows

    path = run_dir / "gate.json"
    if not path.is_file():
        return []
    rows, evidence = report_rows(GateDecision.model_validate_json(path.read_text(encoding="utf-8")))
    body = table(["", ""], rows)
    if evidence:
        body += "<h3>Evidence: candidate vs served model on the same test rows</h3>" + table(EVIDENCE_COLUMNS, evidence)
    return [section("Promotion decision", body, "decision")]


def _calibration_section(metrics: dict[str, Any]) -> list[str]:
    # Present for classifiers evaluated with a validation split (tuneloop.evaluate.calibration).
    cal = metrics.get("calibration")
    if not cal or not cal.get("reliability"):
        return []
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for key, style in (("before", "o--"), ("after", "s-")):
        bins = cal["reliability"][key]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style,
                label=f"{key} (ECE {cal[f'ece_{key}']:.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability on the test split")
    ax.legend(loc="upper left", fontsize=8)
    rows = [["temperature (fitted on validation)", cal["temperature"]], ["ECE before", cal["ece_before"]],
            ["ECE after", cal["ece_after"]], ["validation / test examples", f"{cal['n_val']} / {cal['n_test']}"]]
    return [section("Calibrated confidence", table(["", ""], rows) + figure(fig, "reliability diagram"), "calibration")]


def render_run_report(run_dir: Path, metrics: dict[str, Any], fixed_broken: dict[str, list[dict[str, Any]]]) -> str:
    """The run report as one self-contained HTML document (sections in `RUN_SECTIONS` order).

    Args:
        run_dir: The run folder (its `metrics.jsonl` gives the training curves).
        metrics: The content of `RUN/eval/metrics.json`.
        fixed_broken: The content of `RUN/eval/fixed_broken.json`.
    """
    config = yaml.safe_dump(metrics.get("config", {}), sort_keys=False)
    return page(
        f"tuneloop run report — {run_dir.name}",
        [
            _summary_section(metrics),
            *_decision_section(run_dir),
            _data_section(metrics.get("manifest", {})),
            _training_section(run_dir, metrics),
            _metrics_section(metrics),
            _confusion_section(metrics),
            _per_class_section(metrics),
            *_calibration_section(metrics),
            _examples_section(metrics, fixed_broken),
            *_fairness_section(run_dir),
            section("Run config", f'<pre style="columns:3">{esc(config)}</pre>', "config"),
            _environment_section(metrics),
        ],
        subtitle=f"{metrics.get('run', run_dir)} · task {metrics.get('task', '?')} · test file {metrics.get('test_file', '?')}",
    )


def write_run_report(run_dir: Path) -> Path:
    """Build `RUN/report.html` from `RUN/eval/metrics.json`, `fixed_broken.json` and `RUN/metrics.jsonl`.

    Raises:
        TuneloopError: the run has not been evaluated yet (no eval/metrics.json).
    """
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        raise TuneloopError(f"{path} is missing: run `tuneloop eval {run_dir}` first")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    fb_path = run_dir / "eval" / "fixed_broken.json"
    fixed_broken = json.loads(fb_path.read_text(encoding="utf-8")) if fb_path.is_file() else {}
    return write(run_dir / "report.html", render_run_report(run_dir, metrics, fixed_broken))
