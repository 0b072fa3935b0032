"""The fairness files of a run: `result.json`, `flips.jsonl` and the HTML section / report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config import RunConfig
from tuneloop.report import FAIRNESS_SECTION, esc, figure, page, section, table, write

if TYPE_CHECKING:
    from tuneloop.fairness.stage import FairnessResult

#: Flip examples shown per axis in the HTML (all listed ones are in flips.jsonl).
SHOWN = 10
_DISPARITIES = ("equalized_odds_difference", "demographic_parity_difference", "demographic_parity_ratio")


def write_outputs(result: FairnessResult, cfg: RunConfig, test_file: Path) -> Path:
    """Write `RUN/fairness/{result.json, flips.jsonl, report.html, section.html}`; return the folder.

    `section.html` is the fairness section of the run report (`tuneloop.report` includes it).
    """
    out = result.folder
    doc = {
        "status": result.status,
        "passed": result.passed,
        "failures": result.failures(),
        "not_assessed": result.not_assessed(),
        "thresholds": cfg.fairness.thresholds.model_dump(),
        "checks": [c.to_dict() for c in result.checks],
        "warnings": result.warnings,
        "notes": result.notes,
        "test_file": str(test_file),
        "config": cfg.fairness.model_dump(mode="json"),
        "audits": result.audits,
    }
    write(out / "result.json", json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    flips = [{"model": m, "axis": ax, **ex} for m, a in result.audits.items()
             for ax, rep in a["counterfactual"].items() for ex in rep["flipped"]]
    write(out / "flips.jsonl", "".join(json.dumps(x, ensure_ascii=False, default=str) + "\n" for x in flips))
    body = report_section(out.parent, out.name)
    write(out / FAIRNESS_SECTION.name, body or "")
    write(out / "report.html", page("tuneloop fairness audit", [body or ""], subtitle=str(result.run_dir)))
    return out


def _gate(doc: dict[str, Any]) -> str:
    status = doc.get("status") or ("passed" if doc["passed"] else "failed")
    verdict = "ok" if status == "passed" else "warn"
    words = {"passed": "passed", "failed": "FAILED: " + "; ".join(doc["failures"]),
             "not_assessed": "NOT ASSESSED: no check could be made — " + "; ".join(doc.get("not_assessed") or [])}[status]
    head = f'<p class="{verdict}">Fairness gate {esc(words)}</p>'
    rows = [[c["name"], c["value"], c["threshold"], c["where"], "pass" if c["passed"] else "FAIL"] for c in doc["checks"]]
    warn = "".join(f'<p class="warn">{esc(w)}</p>' for w in doc["warnings"] + doc.get("notes", []))
    return head + table(["check", "value", "threshold", "where", "result"], rows) + warn


def _group_chart(attr: str, audits: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * len(audits["tuned"]["groups"][attr]["groups"])))
    names = list(audits["tuned"]["groups"][attr]["groups"])
    height = 0.8 / len(audits)
    for k, (model, a) in enumerate(audits.items()):
        g = a["groups"][attr]["groups"]
        acc = [g[n]["accuracy"] for n in names]
        err = [[acc[i] - g[n]["accuracy_ci"][0] for i, n in enumerate(names)],
               [g[n]["accuracy_ci"][1] - acc[i] for i, n in enumerate(names)]]
        ax.barh([i + k * height for i in range(len(names))], acc, height, xerr=err, label=model, capsize=2)
    ax.set_yticks([i + height * (len(audits) - 1) / 2 for i in range(len(names))], names)
    ax.set_xlabel("accuracy (95% Wilson interval)")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    return figure(fig, f"accuracy by {attr}")


def _groups(audits: dict[str, Any]) -> str:
    parts = []
    for attr, rep in audits["tuned"]["groups"].items():
        rates = [k for k in next(iter(rep["groups"].values())) if k.startswith("selection_rate")]
        rows = [[name, g["count"], g["accuracy"], f"{g['accuracy_ci'][0]:.2f}–{g['accuracy_ci'][1]:.2f}",
                 g["precision"], g["recall"], g["f1"], *[g[r] for r in rates], "small" if g["small"] else ""]
                for name, g in rep["groups"].items()]
        head = ["group", "n", "accuracy", "95% CI", "precision", "recall", "F1", *rates, ""]
        disp = [[k, *[m["groups"][attr]["disparities"].get(k) if attr in m["groups"] else None for m in audits.values()]]
                for k in _DISPARITIES]
        disp.append(["accuracy gap (best − worst)", *[m["groups"].get(attr, {}).get("accuracy_gap") for m in audits.values()]])
        worst = f'<p>worst group: {esc(rep["worst_group"])}, best: {esc(rep["best_group"])}</p>' if rep["worst_group"] else ""
        parts.append(f"<h3>{esc(attr)}</h3>" + table(head, rows) + _group_chart(attr, audits) + worst
                     + table(["disparity (worst label)", *audits], [[r[0], *["—" if v is None else v for v in r[1:]]] for r in disp]))
    return "".join(parts)


def _counterfactual(audits: dict[str, Any]) -> str:
    axes = list(audits["tuned"]["counterfactual"])
    if not axes:
        return ""
    cols = ["flip_rate", "variant_flip_rate", "output_change"]
    rows = [[ax, audits["tuned"]["counterfactual"][ax]["examples"], audits["tuned"]["counterfactual"][ax]["variants"],
             *[("—" if (v := a["counterfactual"][ax][c]) is None else v) for c in cols for a in audits.values()]]
            for ax in axes]
    head = ["axis", "examples with terms", "variants", *[f"{c} ({m})" for c in cols for m in audits]]
    flips = [[ax, ex["text"], ex["counterfactual"], ex["prediction"], ex["counterfactual_prediction"]]
             for ax in axes for ex in audits["tuned"]["counterfactual"][ax]["flipped"][:SHOWN]]
    shown = table(["axis", "text", "counterfactual", "answer", "counterfactual answer"], flips) if flips else "<p>No flips.</p>"
    return "<h3>Counterfactual identity-term swaps</h3>" + table(head, rows) + "<h4>Flipped examples (tuned)</h4>" + shown


def _stereotype(audits: dict[str, Any]) -> str:
    scores = {m: a.get("stereotype") for m, a in audits.items() if a.get("stereotype")}
    if not scores:
        return ""
    types = sorted({t for s in scores.values() for t in s["by_bias_type"]})
    rows = [["all", *[s["score"] for s in scores.values()]]]
    rows += [[t, *[s["by_bias_type"].get(t, {}).get("score", "—") for s in scores.values()]] for t in types]
    n = next(iter(scores.values()))["pairs"]
    return (f"<h3>CrowS-Pairs stereotype score ({n} pairs; 0.5 = no preference, higher = more stereotyped)</h3>"
            + table(["bias type", *scores], rows))


def report_section(run_dir: Path, folder: str = "fairness") -> str | None:
    """The fairness section of `RUN/report.html`, from `RUN/fairness/result.json`; None if not audited."""
    path = Path(run_dir) / folder / "result.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    body = _gate(doc) + _groups(doc["audits"]) + _counterfactual(doc["audits"]) + _stereotype(doc["audits"])
    return section("Fairness", body, anchor="fairness")
