"""The promotion decision: is the candidate better than the served model — by enough, provably, and fairly?

A candidate replaces the served model only when, on the same frozen test rows,
1. the chosen metric improves by more than `loop.margin`,
2. a paired test of the two models' per-example outcomes gives p < `loop.alpha` and favours the
   candidate (McNemar's test for right/wrong outcomes: accuracy, macro-F1, exact match;
   `eval.paired_test` — Wilcoxon signed-rank or paired bootstrap — for graded scores: token F1,
   ROUGE-L, semantic similarity, per-example loss), and
3. the fairness audit passed (or, when it could check nothing, `fairness.if_not_assessed` is warn).

The decision is a typed `GateDecision` carrying its evidence: every metric with both values, the
gain, its paired-bootstrap 95% interval and p-value. It is what `RUN/gate.json`, the registry and
the run report hold. A comparison that cannot be made is a reason to keep, never to promote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from tuneloop.errors import TuneloopError
from tuneloop.evaluate.metrics import f1_score
from tuneloop.evaluate.score import GEN_SCORES, LOWER_IS_BETTER
from tuneloop.evaluate.stats import bootstrap_ci, mcnemar, paired_test
from tuneloop.evaluate.text import exact_match, rouge_l, token_f1

#: Margin `loop.margin: auto` applies: loss is in nats per token, so a 0.0011 change is noise, not progress.
AUTO_MARGIN = {"loss": 0.01}
#: Per-example outcome that is right or wrong: the paired test is McNemar's.
RIGHT_OR_WRONG = {"accuracy", "macro_f1", "exact_match"}
UNPARSEABLE = "(unparseable)"


class MetricEvidence(BaseModel):
    """One metric of both models on the same test rows, with the paired comparison."""

    metric: str
    higher_is_better: bool
    n: int = Field(description="Test rows both models were scored on.")
    candidate: float
    served: float
    gain: float = Field(description="How much better the candidate is (positive = better, whatever the metric's direction).")
    ci_low: float = Field(description="Paired bootstrap 95% interval of the gain, lower end.")
    ci_high: float
    pvalue: float = Field(description="Two-sided p-value of the paired test.")
    test: str = Field(description="The paired test: 'McNemar', 'Wilcoxon signed-rank' or 'paired bootstrap'.")
    favours: Literal["candidate", "served", "neither"] = Field(
        "neither", description="Which model the paired test's statistic favours (more wins, or the larger signed-rank sum).")


class FairnessVerdict(BaseModel):
    """What the fairness audit of the round said.

    `not_assessed` means the audit could make no check at all (no group attributes, no identity
    terms in the test inputs, no stereotype benchmark): nothing was shown, so nothing "held".
    """

    status: Literal["passed", "failed", "not_assessed", "off"]
    checks: int = 0
    failures: list[str] = Field(default_factory=list)
    note: str = ""


class GateDecision(BaseModel):
    """The promotion decision of one loop round with its evidence (what gate.json holds)."""

    decision: Literal["promote", "keep"]
    metric: str
    margin: float
    alpha: float | None
    candidate_value: float | None = None
    incumbent_value: float | None = None
    delta: float | None = Field(None, description="Gain of the chosen metric (positive = candidate better).")
    test: MetricEvidence | None = Field(None, description="The chosen metric's paired comparison.")
    evidence: list[MetricEvidence] = Field(default_factory=list)
    fairness: FairnessVerdict = Field(default_factory=lambda: FairnessVerdict(status="off"))
    reasons: list[str] = Field(default_factory=list)
    candidate: str | None = None
    incumbent: str | None = None
    fingerprint: str | None = None
    feedback: dict[str, Any] = Field(default_factory=dict)
    frozen_test: str | None = None


def resolve_metric(metric: str, task: str) -> str:
    """`loop.metric` with `auto` resolved: macro-F1 for classification, token F1 for generation.

    Token F1 is graded, so a paired test can see a partly better answer; loss says little about
    answers and exact match is almost always 0 for free text.
    """
    if metric != "auto":
        return metric
    return "macro_f1" if task == "classify" else "token_f1"


def resolve_margin(margin: float | None, metric: str) -> float:
    """`loop.margin` with None (auto) resolved: 0.01 for loss, else 0 (the paired test guards against noise)."""
    return AUTO_MARGIN.get(metric, 0.0) if margin is None else margin


def _labels(rows: Sequence[dict[str, Any]]) -> list[str | None] | None:
    if not rows or "tuned_label" not in rows[0]:
        return None
    return [r["tuned_label"] for r in rows]


#: Scores computed from the answer text when a predictions row does not carry them.
_FROM_TEXT = {"exact_match": lambda p, ref: float(exact_match(p, ref)), "token_f1": token_f1, "rouge_l": rouge_l}


def per_example(metric: str, rows: Sequence[dict[str, Any]]) -> list[float] | None:
    """The tuned system's per-example outcome of `metric` from eval predictions rows (None: not recorded).

    accuracy and macro-F1 give right (1) / wrong (0); generation scores (token F1, ROUGE-L, exact
    match, semantic similarity, loss) are the row's `tuned_scores`, and the first three are
    computed from the answer and the reference when a row lacks them.
    """
    if not rows:
        return []
    if metric in ("accuracy", "macro_f1"):
        return [float(bool(r["tuned_correct"])) for r in rows] if all("tuned_correct" in r for r in rows) else None
    scores = [r.get("tuned_scores") or {} for r in rows]
    if all(s.get(metric) is not None for s in scores):
        return [float(s[metric]) for s in scores]
    if metric in _FROM_TEXT and all(isinstance(r.get("tuned_output"), str) for r in rows):
        return [_FROM_TEXT[metric](r["tuned_output"], r["reference"]) for r in rows]
    return None


def _macro_f1(refs: Sequence[str], preds: Sequence[str]) -> float:
    return f1_score(refs, preds, labels=sorted(set(refs)), average="macro")


def compare(metric: str, cand: Sequence[dict[str, Any]], served: Sequence[dict[str, Any]], *,
            method: Literal["wilcoxon", "bootstrap"] = "wilcoxon", n_boot: int = 2000, seed: int = 0) -> MetricEvidence | None:
    """Paired comparison of the candidate and the served model on one metric (rows matched by position).

    Args:
        metric: One of accuracy, macro_f1, exact_match, token_f1, rouge_l, semantic, loss.
        cand: The candidate's eval predictions rows.
        served: The served model's rows for the same examples, in the same order.
        method: Paired test of graded scores (`eval.paired_test`): Wilcoxon signed-rank or paired bootstrap.
        n_boot: Bootstrap resamples for the interval of the gain.
        seed: Bootstrap seed.

    Returns:
        The evidence, or None when either model lacks the per-example outcome or no row is shared.
    """
    a, b = per_example(metric, served), per_example(metric, cand)
    if not a or not b:
        return None
    lower = metric in LOWER_IS_BETTER
    # paired_test's diff is mean(second - first): order the pair so that a positive diff means "better".
    first, second = (b, a) if lower else (a, b)
    paired = paired_test(first, second, metric=metric, method=method, n_boot=n_boot, seed=seed)
    ev = {"metric": metric, "higher_is_better": not lower, "n": paired.n, "candidate": float(sum(b) / len(b)),
          "served": float(sum(a) / len(a)), "gain": paired.diff, "ci_low": paired.ci_low, "ci_high": paired.ci_high,
          "pvalue": paired.pvalue, "test": "Wilcoxon signed-rank" if method == "wilcoxon" else "paired bootstrap"}
    gains = np.asarray(second, dtype=float) - np.asarray(first, dtype=float)  # per example, positive = candidate better
    ev["favours"] = _favours(gains if method == "wilcoxon" else np.array([paired.diff]))
    if metric in RIGHT_OR_WRONG:
        test = mcnemar([x > 0.5 for x in b], [x > 0.5 for x in a])
        wins = np.sign(test.only_a - test.only_b)  # mcnemar's A is the candidate here
        ev.update(pvalue=test.pvalue, test="McNemar", favours=_favours(np.array([wins])))
    if metric == "macro_f1":
        refs = [str(r["reference"]).strip() for r in cand]
        pa = [UNPARSEABLE if x is None else x for x in _labels(served) or []]
        pb = [UNPARSEABLE if x is None else x for x in _labels(cand) or []]
        if not pa or not pb:
            return None
        ev["candidate"], ev["served"] = _macro_f1(refs, pb), _macro_f1(refs, pa)
        ev["gain"] = ev["candidate"] - ev["served"]
        ci = bootstrap_ci(lambda t, x, y: _macro_f1(t, y) - _macro_f1(t, x), refs, pa, pb,
                          n_resamples=min(n_boot, 1000), seed=seed)
        ev["ci_low"], ev["ci_high"] = ci if ci is not None else (ev["gain"], ev["gain"])
    return MetricEvidence(**ev)


def _favours(gains: np.ndarray) -> Literal["candidate", "served", "neither"]:
    """Which side the signed ranks of the per-example gains favour (rank sum of wins minus losses)."""
    nonzero = gains[gains != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    balance = ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()
    return "candidate" if balance > 0 else "served" if balance < 0 else "neither"


def evidence_metrics(task: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics the evidence lists for a task: classification ones when answers are labels, graded ones for text."""
    names = ["macro_f1", "accuracy"] if _labels(rows) is not None else []
    if task == "generate":
        names += [m for m in GEN_SCORES if per_example(m, rows) is not None]
    return names


def match(cand: Sequence[dict[str, Any]], served: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of both models on the examples both were scored on, in the same order (matched by id)."""
    by_id = {r["id"]: r for r in served}
    shared = [r for r in cand if r["id"] in by_id]
    return shared, [by_id[r["id"]] for r in shared]


def decide(task: str, metric: str, margin: float | None, alpha: float | None, cand: Sequence[dict[str, Any]],
           served: Sequence[dict[str, Any]] | None, fairness: FairnessVerdict, *, block_unassessed: bool = False,
           method: Literal["wilcoxon", "bootstrap"] = "wilcoxon", n_boot: int = 2000, seed: int = 0) -> GateDecision:
    """Decide promote or keep from both models' per-example predictions on the frozen test set.

    Args:
        task: "classify" or "generate".
        metric: `loop.metric` (may be "auto").
        margin: `loop.margin` (None: auto, see `resolve_margin`).
        alpha: `loop.alpha`: the paired test's p-value must be below it (None: no test required).
        cand: The candidate's eval predictions rows (`RUN/eval/predictions.jsonl`).
        served: The served model's rows on the same test set, or None when nothing is served yet.
        fairness: The round's fairness verdict.
        block_unassessed: Keep when the fairness audit could check nothing (`fairness.if_not_assessed: block`).
        method: Paired test of graded scores (`eval.paired_test`); right/wrong outcomes always use McNemar.
        n_boot: Bootstrap resamples for the intervals.
        seed: Bootstrap seed.

    Returns:
        The decision with its evidence and reasons.

    Raises:
        TuneloopError: the chosen metric cannot be measured per example for this task.
    """
    metric = resolve_metric(metric, task)
    margin = resolve_margin(margin, metric)
    outcome = per_example(metric, cand)
    if outcome is None or (metric == "macro_f1" and _labels(cand) is None):
        raise TuneloopError(f"loop.metric {metric!r} was not measured per example for this task ({task}); "
                            f"choose one of {', '.join(evidence_metrics(task, cand)) or 'token_f1'}")
    d = GateDecision(decision="keep", metric=metric, margin=margin, alpha=alpha, fairness=fairness)
    ok = True
    if served is None:
        d.candidate_value = _value(metric, cand, outcome)
        d.reasons.append("no model is served yet: the first candidate that passes fairness is promoted")
    else:
        ok = _compare(d, task, cand, served, method=method, n_boot=n_boot, seed=seed)
    ok = _fairness_ok(d, fairness, block_unassessed) and ok
    d.decision = "promote" if ok else "keep"
    if ok and served is not None and d.test is not None:
        t = d.test
        d.reasons.append(f"{metric} improved by {t.gain:.4f} (95% CI {t.ci_low:.4f} to {t.ci_high:.4f}, "
                         f"{t.test} p={t.pvalue:.3g}) and {_fairness_words(fairness)}")
    return d


def _value(metric: str, rows: Sequence[dict[str, Any]], outcome: list[float]) -> float | None:
    if not outcome:
        return None
    if metric == "macro_f1":
        return _macro_f1([str(r["reference"]).strip() for r in rows], [UNPARSEABLE if x is None else x for x in _labels(rows) or []])
    return sum(outcome) / len(outcome)


def _compare(d: GateDecision, task: str, cand: Sequence[dict[str, Any]], served: Sequence[dict[str, Any]], *,
             method: Literal["wilcoxon", "bootstrap"], n_boot: int, seed: int) -> bool:
    """Fill the evidence and the chosen metric's comparison; False when it does not show a real gain."""
    c, s = match(cand, served)
    d.evidence = [ev for m in evidence_metrics(task, c) if (ev := compare(m, c, s, method=method, n_boot=n_boot, seed=seed))]
    d.test = next((ev for ev in d.evidence if ev.metric == d.metric), None)
    if d.test is None:
        d.reasons.append(f"no paired comparison on {d.metric}: the served model and the candidate share "
                         f"{len(c)} scored test rows with that outcome recorded; nothing shows the candidate is better")
        return False
    t = d.test
    d.candidate_value, d.incumbent_value, d.delta = t.candidate, t.served, t.gain
    ok = True
    if t.gain <= d.margin:
        ok = False
        d.reasons.append(f"{d.metric} {'fell' if t.gain < 0 else 'did not rise'} by more than the margin "
                         f"({t.candidate:.4f} vs {t.served:.4f}, margin {d.margin})")
    if d.alpha is not None and t.pvalue < d.alpha and t.favours != "candidate":
        ok = False
        d.reasons.append(f"the paired test is significant but favours the {t.favours} model, not the candidate "
                         f"({t.test} p={t.pvalue:.3g})")
    if d.alpha is not None and t.pvalue >= d.alpha:
        ok = False
        d.reasons.append(f"the difference is not significant ({t.test} p={t.pvalue:.3g} >= alpha {d.alpha}, "
                         f"n={t.n}; 95% CI of the gain {t.ci_low:.4f} to {t.ci_high:.4f})")
    return ok


def _fairness_ok(d: GateDecision, f: FairnessVerdict, block_unassessed: bool) -> bool:
    if f.status == "failed":
        d.reasons.append("fairness gate failed: " + "; ".join(f.failures))
        return False
    if f.status == "not_assessed":
        why = f"fairness not assessed: the audit could make no check{' (' + f.note + ')' if f.note else ''}"
        d.reasons.append(why + ("; fairness.if_not_assessed is block" if block_unassessed else " (warning only)"))
        return not block_unassessed
    return True


def _fairness_words(f: FairnessVerdict) -> str:
    return {"passed": f"fairness held ({f.checks} check{'s' * (f.checks != 1)})", "off": "fairness was not required (loop.require_fairness off)",
            "not_assessed": "fairness was NOT assessed (no check possible)", "failed": "fairness failed"}[f.status]


def fairness_verdict(result: dict[str, Any] | None) -> FairnessVerdict:
    """The verdict from a fairness `result.json` (None: the audit was not run)."""
    if result is None:
        return FairnessVerdict(status="off", note="loop.require_fairness is off")
    checks = result.get("checks") or []
    if not checks:
        return FairnessVerdict(status="not_assessed", note="; ".join(result.get("not_assessed") or []))
    failures = list(result.get("failures") or [])
    return FairnessVerdict(status="failed" if failures else "passed", checks=len(checks), failures=failures)


def feedback_line(counts: dict[str, Any]) -> str:
    """One line about what the curated feedback gave (from `feedback export`'s report.json)."""
    if "feedback_read" not in counts:
        return counts.get("note", "none")
    return (f"{counts['examples']['written']} examples and {counts['pairs']['written']} preference pairs "
            f"from {counts['feedback_read']} ratings")


def report_rows(d: GateDecision) -> tuple[list[list[Any]], list[list[Any]]]:
    """The decision as (summary rows, evidence rows) for the run report and the terminal."""
    rows: list[list[Any]] = [["decision", d.decision.upper()], ["candidate", d.candidate], ["served before", d.incumbent or "none"],
                             ["metric", f"{d.metric} (margin {d.margin}, alpha {d.alpha})"]]
    if d.test is not None:
        t = d.test
        rows.append([f"{d.metric}", f"{t.candidate:.4f} vs {t.served:.4f}: gain {t.gain:+.4f} "
                     f"[{t.ci_low:+.4f}, {t.ci_high:+.4f}], {t.test} p={t.pvalue:.3g}, n={t.n}"])
    elif d.candidate_value is not None:
        rows.append([f"{d.metric} (candidate)", f"{d.candidate_value:.4f}"])
    f = d.fairness
    rows.append(["fairness", {"passed": f"passed ({f.checks} check{'s' * (f.checks != 1)})", "failed": "FAILED: " + "; ".join(f.failures),
                              "not_assessed": "NOT ASSESSED: no check could be made" + (f" ({f.note})" if f.note else ""),
                              "off": "not required"}[f.status]])
    rows += [["feedback used", feedback_line(d.feedback)], ["frozen test set", d.frozen_test]]
    rows += [["reason", r] for r in d.reasons]
    evidence = [[e.metric, f"{e.candidate:.4f}", f"{e.served:.4f}", f"{e.gain:+.4f}", f"[{e.ci_low:+.4f}, {e.ci_high:+.4f}]",
                 f"{e.pvalue:.3g}", e.test, e.n] for e in d.evidence]
    return rows, evidence


#: Column names of `report_rows`' evidence rows.
EVIDENCE_COLUMNS = ["metric", "candidate", "served", "gain", "95% CI of gain (paired bootstrap)", "p", "paired test", "n"]
