"""Score the systems' predictions on one test set: metrics, intervals, paired tests, diffs.

Pure functions over plain lists — no model — so they are tested on synthetic predictions. A
"system" is the tuned model, or a baseline a user could have without fine-tuning: the base model
zero-shot (`base`) and with in-context examples (`base_kshot`), and TF-IDF + logistic regression
(`baseline`, classification).

Classification: metrics of the predicted labels, bootstrap intervals, McNemar's test of tuned vs
each other system. Generation: per-example scores (exact match, token F1, ROUGE-L, and where the
stage measured them, semantic similarity and loss), the bootstrap interval of every mean, and a
paired test (Wilcoxon signed-rank or paired bootstrap) of tuned vs each other system on every score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneloop.evaluate.metrics import accuracy_score, classification_report, f1_score
from tuneloop.evaluate.stats import bootstrap_ci, mcnemar, paired_test
from tuneloop.evaluate.text import exact_match, generation_report, rouge_l, token_f1

#: The systems the tuned model is compared with, in report order.
BASELINES = ("base", "base_kshot", "baseline")
#: Per-example generation scores, in report order; all but `LOWER_IS_BETTER` are higher-is-better.
GEN_SCORES = ("token_f1", "rouge_l", "semantic", "exact_match", "loss")
LOWER_IS_BETTER = frozenset({"loss"})
#: The headline metric of each task when `eval.metric` is "auto".
DEFAULT_METRIC = {"classify": "macro_f1", "generate": "token_f1"}
#: How many most improved / most worsened examples are kept, and rows shown side by side.
N_EXTREMES, N_SIDE_BY_SIDE = 25, 12


@dataclass
class SystemOutput:
    """What one system produced for the test rows.

    Attributes:
        texts: Generated answers (language models), or None (class head, TF-IDF baseline).
        labels: Predicted labels (None entries: unparseable), or None for open-ended generation.
        loss: Mean loss per answer token (per example for a head) on the test rows, where the
            system has one.
        note: Caveat shown next to its numbers (e.g. "untrained head (chance)").
        scores: Per-example scores measured with a model, by name ("loss", "semantic"), in row order.
    """

    texts: list[str] | None = None
    labels: list[str | None] | None = None
    loss: float | None = None
    note: str = ""
    scores: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Scored:
    """Everything `score` computes: metrics.json content, predictions rows and the examples to show.

    `fixed`/`broken` (labels: the other system wrong and tuned right, or the reverse) and
    `most_improved`/`most_worsened` (generation: the largest per-example differences in the headline
    metric) are against `metrics["examples_against"]`, the strongest other system.
    """

    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    fixed: list[dict[str, Any]] = field(default_factory=list)
    broken: list[dict[str, Any]] = field(default_factory=list)
    most_improved: list[dict[str, Any]] = field(default_factory=list)
    most_worsened: list[dict[str, Any]] = field(default_factory=list)
    side_by_side: list[dict[str, Any]] = field(default_factory=list)

    def examples(self) -> dict[str, Any]:
        """The examples file's content (`RUN/eval/fixed_broken.json`)."""
        return {"against": self.metrics.get("examples_against"), "fixed": self.fixed, "broken": self.broken,
                "most_improved": self.most_improved, "most_worsened": self.most_worsened, "side_by_side": self.side_by_side}


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


def per_example_scores(out: SystemOutput, references: Sequence[str]) -> dict[str, list[float]]:
    """A generating system's per-example scores: exact match, token F1, ROUGE-L, plus `out.scores`."""
    assert out.texts is not None
    scores = {
        "exact_match": [float(exact_match(p, r)) for p, r in zip(out.texts, references)],
        "token_f1": [token_f1(p, r) for p, r in zip(out.texts, references)],
        "rouge_l": [rouge_l(p, r) for p, r in zip(out.texts, references)],
        **out.scores,
    }
    return {k: scores[k] for k in GEN_SCORES if k in scores}


def _mean(x: Sequence[float]) -> float:
    return sum(x) / len(x)


def _generation(out: SystemOutput, references: Sequence[str], scores: dict[str, list[float]], n_boot: int, seed: int) -> dict[str, Any]:
    assert out.texts is not None
    rep: dict[str, Any] = generation_report(out.texts, references)
    rep.update({k: _mean(v) for k, v in scores.items()})
    rep["ci"] = {k: bootstrap_ci(_mean, v, n_resamples=n_boot, seed=seed) for k, v in scores.items()}
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
        m["generation"] = _generation(out, references, per_example_scores(out, references), n_boot, seed)
        if out.loss is None and "loss" in out.scores:  # the mean of the per-example losses
            out.loss = m["generation"]["loss"]
    if out.loss is not None:
        m["loss"] = out.loss
    if out.loss is not None and out.texts is not None:  # perplexity of generated answers (not of a head)
        # exp of a large loss overflows; report it as infinite rather than crash
        m["perplexity"] = math.exp(out.loss) if out.loss < 700 else math.inf
    return m


def _example(i: int, row: dict[str, Any], systems: dict[str, SystemOutput], flags: dict[str, list[bool]],
             scores: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": row["id"], "input": row["input"], "reference": row["reference"]}
    for name, out in systems.items():
        if out.texts is not None:
            rec[f"{name}_output"] = out.texts[i]
        if out.labels is not None:
            rec[f"{name}_label"] = out.labels[i]
        rec[f"{name}_correct"] = flags[name][i]
        if name in scores:
            rec[f"{name}_scores"] = {k: v[i] for k, v in scores[name].items()}
    return rec


def headline_value(system: dict[str, Any], metric: str) -> float | None:
    """A system's value of a headline metric in metrics.json (`macro_f1`, `accuracy`, `loss` or a generation score)."""
    cls, gen = system.get("classification") or {}, system.get("generation") or {}
    if metric == "macro_f1":
        return (cls.get("macro") or {}).get("f1")
    if metric == "accuracy":
        return cls.get("accuracy")
    return gen.get(metric, system.get("loss") if metric == "loss" else None)


def _headline_ci(system: dict[str, Any], metric: str) -> list[float] | None:
    ci = (system.get("classification") or {}).get("ci") or (system.get("generation") or {}).get("ci") or {}
    return ci.get(metric)


def _strongest(metrics: dict[str, Any], metric: str) -> str | None:
    """The best other system by the headline metric: the one the tuned model must beat."""
    values = {n: headline_value(metrics["systems"][n], metric) for n in BASELINES if n in metrics["systems"]}
    values = {n: v for n, v in values.items() if v is not None}
    if not values:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(values, key=values.__getitem__)


def headline(metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    """The one line a reader needs: the tuned model's metric with its interval, and how it compares.

    Returns:
        `{"metric", "higher_is_better", "value", "ci", "strongest", "vs": {system: {"value", "pvalue", "test", "diff", "ci"}}}`;
        the p-value is McNemar's (labels) or the paired test on the metric (generation).
    """
    systems = metrics["systems"]
    out: dict[str, Any] = {"metric": metric, "higher_is_better": metric not in LOWER_IS_BETTER,
                           "value": headline_value(systems["tuned"], metric), "ci": _headline_ci(systems["tuned"], metric),
                           "strongest": _strongest(metrics, metric), "vs": {}}
    for name in BASELINES:
        if name not in systems:
            continue
        test = (metrics.get("paired", {}).get(f"tuned_vs_{name}") or {}).get(metric)
        vs: dict[str, Any] = {"value": headline_value(systems[name], metric)}
        if test:
            vs.update(pvalue=test["pvalue"], test=test["method"], diff=test["diff"], ci=[test["ci_low"], test["ci_high"]])
        elif (mc := metrics.get("comparisons", {}).get(f"tuned_vs_{name}")) is not None:
            vs.update(pvalue=mc["pvalue"], test=f"McNemar ({mc['method']})")
        out["vs"][name] = vs
    return out


def _paired(scores: dict[str, dict[str, list[float]]], method: str, n_boot: int, seed: int) -> dict[str, Any]:
    """Paired test of tuned vs each other generating system, on every score both have."""
    out: dict[str, Any] = {}
    for name in BASELINES:
        if name in scores and "tuned" in scores:
            shared = [k for k in scores["tuned"] if k in scores[name]]
            # paired_test(a, b) tests b − a: the difference is tuned minus the other system.
            out[f"tuned_vs_{name}"] = {k: paired_test(scores[name][k], scores["tuned"][k], metric=k, method=method,
                                                      n_boot=n_boot or 1000, seed=seed).to_dict() for k in shared}
    return out


def _extremes(predictions: list[dict[str, Any]], against: str, metric: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Examples whose headline score changed most from `against` to tuned: (most improved, most worsened)."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    deltas = [(sign * (p["tuned_scores"][metric] - p[f"{against}_scores"][metric]), p) for p in predictions
              if metric in p.get("tuned_scores", {}) and metric in p.get(f"{against}_scores", {})]
    improved = [{**p, "delta": d} for d, p in sorted(deltas, key=lambda dp: -dp[0]) if d > 0][:N_EXTREMES]
    worsened = [{**p, "delta": d} for d, p in sorted(deltas, key=lambda dp: dp[0]) if d < 0][:N_EXTREMES]
    return improved, worsened


def score(
    rows: Sequence[dict[str, Any]],
    systems: dict[str, SystemOutput],
    *,
    task: str,
    labels: list[str] | None,
    n_boot: int = 1000,
    seed: int = 0,
    metric: str = "auto",
    paired_method: str = "wilcoxon",
) -> Scored:
    """Score every system on the same rows and compare the tuned model with the others.

    Args:
        rows: Test examples as `{"id", "input", "reference", "label" (classify only)}`.
        systems: Outputs by system name; "tuned" is required, `BASELINES` optional.
        task: "classify" or "generate" (only generate gets the per-example text scores).
        labels: The task's labels (classification), or None for open-ended generation.
        n_boot: Bootstrap resamples for the 95% intervals (0: none).
        seed: Bootstrap seed.
        metric: The headline metric ("auto": macro-F1 for classify, token F1 for generate).
        paired_method: "wilcoxon" or "bootstrap": the paired test of per-example generation scores.

    Returns:
        Metrics per system, McNemar tests (labels) and paired tests (generation) of tuned vs each
        other system, the headline, per-example predictions with their scores, and the examples
        that changed most against the strongest other system.
    """
    metric = DEFAULT_METRIC[task] if metric == "auto" else metric
    references = [r["reference"] for r in rows]
    ref_labels = [r["label"] for r in rows] if labels else None
    flags = {name: correct_flags(out, references, ref_labels) for name, out in systems.items()}
    gen_scores = {name: per_example_scores(out, references) for name, out in systems.items()
                  if task == "generate" and out.texts is not None}
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
            f"tuned_vs_{b}": mcnemar(flags["tuned"], flags[b]).to_dict()
            for b in BASELINES if b in systems and labels
        },
        "paired": _paired(gen_scores, paired_method, n_boot, seed),
    }
    metrics["headline"] = headline(metrics, metric)
    against = metrics["examples_against"] = metrics["headline"]["strongest"]
    predictions = [_example(i, row, systems, flags, gen_scores) for i, row in enumerate(rows)]
    scored = Scored(metrics, predictions)
    if against is not None and labels:
        scored.fixed = [p for p in predictions if p["tuned_correct"] and not p[f"{against}_correct"]]
        scored.broken = [p for p in predictions if p[f"{against}_correct"] and not p["tuned_correct"]]
    if against is not None and task == "generate":
        scored.most_improved, scored.most_worsened = _extremes(predictions, against, metric)
    scored.side_by_side = predictions[:N_SIDE_BY_SIDE] if task == "generate" else []
    metrics["fixed"], metrics["broken"] = len(scored.fixed), len(scored.broken)
    return scored
