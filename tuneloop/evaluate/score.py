"""Score the systems' predictions on one test set: metrics, intervals, paired tests, diffs.

Pure functions over plain lists — no model — so they are tested on synthetic predictions. A
"system" is the tuned model, the untuned base model, or the TF-IDF baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneloop.evaluate.metrics import accuracy_score, classification_report, f1_score
from tuneloop.evaluate.stats import bootstrap_ci, mcnemar
from tuneloop.evaluate.text import exact_match, generation_report, token_f1

#: Paired comparisons the report states, as (system, other system).
COMPARISONS = (("tuned", "base"), ("tuned", "baseline"))


@dataclass
class SystemOutput:
    """What one system produced for the test rows.

    Attributes:
        texts: Generated answers (language models), or None (class head, TF-IDF baseline).
        labels: Predicted labels (None entries: unparseable), or None for open-ended generation.
        loss: Mean loss per answer token (per example for a head) on the test rows, where the
            system has one.
        note: Caveat shown next to its numbers (e.g. "untrained head (chance)").
    """

    texts: list[str] | None = None
    labels: list[str | None] | None = None
    loss: float | None = None
    note: str = ""


@dataclass
class Scored:
    """Everything `score` computes: metrics.json content, predictions rows, fixed/broken lists."""

    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    fixed: list[dict[str, Any]] = field(default_factory=list)
    broken: list[dict[str, Any]] = field(default_factory=list)


def correct_flags(out: SystemOutput, references: Sequence[str], ref_labels: Sequence[str] | None) -> list[bool]:
    """Per-example correctness: label equality when there are labels, else exact match."""
    if out.labels is not None and ref_labels is not None:
        return [p == t for p, t in zip(out.labels, ref_labels)]
    if out.texts is None:
        raise ValueError("a system without predicted labels must have generated texts")
    return [exact_match(p, r) for p, r in zip(out.texts, references)]


def _classification(out: SystemOutput, ref_labels: Sequence[str], labels: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    assert out.labels is not None  # checked by the caller
    rep = classification_report(ref_labels, out.labels, labels=labels)
    rep["ci"] = {
        "accuracy": bootstrap_ci(accuracy_score, ref_labels, out.labels, n_resamples=n_boot, seed=seed),
        "macro_f1": bootstrap_ci(
            lambda t, p: f1_score(t, p, labels=rep["averaged_over"], average="macro"), ref_labels, out.labels,
            n_resamples=n_boot, seed=seed,
        ),
    }
    return rep


def _generation(out: SystemOutput, references: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    assert out.texts is not None
    rep: dict[str, Any] = generation_report(out.texts, references)
    per_example = [token_f1(p, r) for p, r in zip(out.texts, references)]
    rep["ci"] = {"token_f1": bootstrap_ci(lambda x: sum(x) / len(x), per_example, n_resamples=n_boot, seed=seed)}
    return rep


def system_metrics(
    out: SystemOutput, references: Sequence[str], ref_labels: Sequence[str] | None, labels: list[str] | None,
    *, task: str, n_boot: int, seed: int,
) -> dict[str, Any]:
    """One system's metrics: classification (with labels), generation (generate task), loss, perplexity."""
    m: dict[str, Any] = {"note": out.note}
    if out.labels is not None and ref_labels is not None and labels:
        m["classification"] = _classification(out, ref_labels, labels, n_boot, seed)
    if out.texts is not None and task == "generate":  # a generated class label is scored as a label
        m["generation"] = _generation(out, references, n_boot, seed)
    if out.loss is not None:
        m["loss"] = out.loss
    if out.loss is not None and out.texts is not None:  # perplexity of generated answers (not of a head)
        # exp of a large loss overflows; report it as infinite rather than crash
        m["perplexity"] = math.exp(out.loss) if out.loss < 700 else math.inf
    return m


def _example(i: int, row: dict[str, Any], systems: dict[str, SystemOutput], flags: dict[str, list[bool]]) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": row["id"], "input": row["input"], "reference": row["reference"]}
    for name, out in systems.items():
        if out.texts is not None:
            rec[f"{name}_output"] = out.texts[i]
        if out.labels is not None:
            rec[f"{name}_label"] = out.labels[i]
        rec[f"{name}_correct"] = flags[name][i]
    return rec


def score(
    rows: Sequence[dict[str, Any]],
    systems: dict[str, SystemOutput],
    *,
    task: str,
    labels: list[str] | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Scored:
    """Score every system on the same rows and compare the tuned model with the others.

    Args:
        rows: Test examples as `{"id", "input", "reference", "label" (classify only)}`.
        systems: Outputs by system name; "tuned" is required, "base" and "baseline" optional.
        task: "classify" or "generate" (only generate gets exact match, token F1, ROUGE-L).
        labels: The task's labels (classification), or None for open-ended generation.
        n_boot: Bootstrap resamples for the 95% intervals (0: none).
        seed: Bootstrap seed.

    Returns:
        Metrics per system, McNemar tests tuned vs each other system, per-example predictions, and
        the examples the tuning fixed (base wrong → tuned right) and broke (base right → wrong).
    """
    references = [r["reference"] for r in rows]
    ref_labels = [r["label"] for r in rows] if labels else None
    flags = {name: correct_flags(out, references, ref_labels) for name, out in systems.items()}
    metrics: dict[str, Any] = {
        "task": task,
        "n": len(rows),
        "labels": labels,
        "correct_means": "label equal to the reference" if labels else "exact match with the reference",
        "systems": {
            name: system_metrics(out, references, ref_labels, labels, task=task, n_boot=n_boot, seed=seed)
            for name, out in systems.items()
        },
        "comparisons": {
            f"{a}_vs_{b}": mcnemar(flags[a], flags[b]).to_dict()
            for a, b in COMPARISONS if a in systems and b in systems
        },
    }
    predictions = [_example(i, row, systems, flags) for i, row in enumerate(rows)]
    scored = Scored(metrics, predictions)
    if "base" in systems:
        scored.fixed = [p for p in predictions if p["tuned_correct"] and not p["base_correct"]]
        scored.broken = [p for p in predictions if p["base_correct"] and not p["tuned_correct"]]
    metrics["fixed"], metrics["broken"] = len(scored.fixed), len(scored.broken)
    return scored
