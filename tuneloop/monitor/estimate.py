"""Live quality: estimated from calibrated confidences (CBPE), realized from feedback, and per group.

Confidence-based performance estimation (CBPE, as in NannyML): if the probabilities are
calibrated, the chance that prediction i is right is its confidence, so the expected accuracy of a
window is the mean confidence, and each class's expected true/false positives and false negatives
follow from the probability columns (expected macro-F1 below). The interval is that of the
accuracy a fully labelled window would show: true labels drawn from the calibrated distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

#: Simulated labellings behind the CBPE macro-F1 interval.
DRAWS = 200


def expected_macro_f1(probs: np.ndarray) -> float:
    """Macro-F1 expected under the calibrated probabilities (CBPE), over the labels that can occur.

    For class k: TPₖ = Σ_{pred=k} pᵢₖ, FPₖ = Σ_{pred=k} (1 − pᵢₖ), FNₖ = Σ_{pred≠k} pᵢₖ, F1ₖ = 2TPₖ / (2TPₖ + FPₖ + FNₖ).

    >>> round(expected_macro_f1(np.array([[0.9, 0.1], [0.2, 0.8]])), 4)
    0.8496
    """
    pred = probs.argmax(1)
    hit = np.eye(probs.shape[1], dtype=bool)[pred]
    tp = (probs * hit).sum(0)
    fp = ((1 - probs) * hit).sum(0)
    fn = (probs * ~hit).sum(0)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[denom > 0].mean()) if (denom > 0).any() else 0.0


def _macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of each row of y (draws × n) against pred, over the labels present in truth or prediction."""
    hit = y == pred[None, :]
    f1s, present = [], []
    for c in range(k):
        tp = (hit & (pred[None, :] == c)).sum(1)
        n_pred, n_true = (pred == c).sum(), (y == c).sum(1)
        denom = n_pred + n_true
        f1s.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        present.append(denom > 0)
    f1s, present = np.array(f1s), np.array(present)
    return (f1s * present).sum(0) / np.maximum(present.sum(0), 1)


def cbpe(probs: np.ndarray, *, seed: int = 0, draws: int = DRAWS) -> dict[str, Any]:
    """Estimated accuracy and macro-F1 of a window from its calibrated probabilities, with 95% intervals.

    Args:
        probs: Calibrated probabilities of the window's predictions, shape (n, labels).
        seed: Seed of the simulated labellings.
        draws: Simulated labellings for the macro-F1 interval.

    Returns:
        `accuracy`, `accuracy_ci` (normal, from the Poisson-binomial variance Σp(1−p)/n²), `macro_f1`,
        `macro_f1_ci` (2.5/97.5 percentiles over simulated labellings), `n`.
    """
    n, k = probs.shape
    conf = probs.max(1)
    acc = float(conf.mean())
    half = 1.96 * float(np.sqrt((conf * (1 - conf)).sum())) / n
    rng = np.random.default_rng(seed)
    cum = probs.cumsum(1)
    cum[:, -1] = 1.0  # rounding must not leave a draw above the last label
    pred, f1_draws = probs.argmax(1), []
    chunk = max(1, 2_000_000 // max(n * k, 1))
    for start in range(0, draws, chunk):
        u = rng.random((min(chunk, draws - start), n, 1))
        y = (u > cum[None]).sum(-1)
        f1_draws.append(_macro_f1(y, pred, k))
    f1_draws = np.concatenate(f1_draws)
    return {"n": n, "accuracy": acc, "accuracy_ci": [max(acc - half, 0.0), min(acc + half, 1.0)],
            "macro_f1": expected_macro_f1(probs), "macro_f1_ci": [float(np.percentile(f1_draws, 2.5)),
                                                                  float(np.percentile(f1_draws, 97.5))]}


def wilson(right: int, n: int) -> list[float]:
    """95% Wilson score interval of a proportion right/n.

    >>> [round(x, 3) for x in wilson(8, 10)]
    [0.49, 0.943]
    """
    ci = stats.binomtest(right, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def realized(rated: Sequence[dict[str, Any]], labels: Sequence[str], *, seed: int = 0) -> dict[str, Any]:
    """Accuracy and macro-F1 from the feedback that arrived, with counts and 95% intervals.

    Args:
        rated: One dict per rated prediction: `prediction`, `correct` (bool), `label` (the true label
            when known: the prediction of a good rating or a correction; None for a bad rating without one).
        labels: The model's labels.
        seed: Seed of the macro-F1 bootstrap.

    Returns:
        `n_rated`, `accuracy` + `accuracy_ci` (Wilson), `n_labelled`, `macro_f1` + `macro_f1_ci`
        (bootstrap over the labelled ones); None values when there is nothing to compute them on.
    """
    from tuneloop.evaluate.metrics import f1_score

    n = len(rated)
    right = sum(r["correct"] for r in rated)
    out: dict[str, Any] = {"n_rated": n, "accuracy": right / n if n else None, "accuracy_ci": wilson(right, n) if n else None}
    known = [r for r in rated if r.get("label") is not None]
    out["n_labelled"] = len(known)
    if not known:
        return {**out, "macro_f1": None, "macro_f1_ci": None}
    y, pred = np.array([r["label"] for r in known]), np.array([r["prediction"] for r in known])
    f1 = float(f1_score(y, pred, labels=list(labels), average="macro"))
    rng = np.random.default_rng(seed)
    boots = [float(f1_score(y[i], pred[i], labels=list(labels), average="macro"))
             for i in (rng.integers(0, len(y), len(y)) for _ in range(200))]
    return {**out, "macro_f1": f1, "macro_f1_ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def by_group(rows: Sequence[dict[str, Any]], min_group_size: int) -> dict[str, Any]:
    """Per attribute of `metadata.group`: each group's count, estimated accuracy, and realized accuracy (Fairlearn).

    Args:
        rows: Window rows with `metadata`, `confidence`, and `correct` (True/False/None when not rated).
        min_group_size: Groups smaller than this are reported but left out of `gap`.

    Returns:
        `{attribute: {"groups": {group: {...}}, "estimated_gap": float | None}}` (empty without groups).
    """
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count

    out: dict[str, Any] = {}
    attributes = sorted({a for r in rows for a in _groups(r)})
    for attr in attributes:
        sub = [r for r in rows if attr in _groups(r)]
        groups = pd.Series([_groups(r)[attr] for r in sub], name=attr)
        conf = np.array([r["confidence"] for r in sub], dtype=np.float64)
        frame = MetricFrame(metrics={"n": count, "estimated_accuracy": lambda _t, p: float(np.mean(p))},
                            y_true=conf, y_pred=conf, sensitive_features=groups)
        table = {str(g): {"n": int(v["n"]), "estimated_accuracy": float(v["estimated_accuracy"])}
                 for g, v in frame.by_group.iterrows()}
        rated = [i for i, r in enumerate(sub) if r.get("correct") is not None]
        if rated:
            right = np.array([bool(sub[i]["correct"]) for i in rated])
            live = MetricFrame(metrics={"n_rated": count, "realized_accuracy": lambda t, _p: float(np.mean(t))},
                               y_true=right, y_pred=right, sensitive_features=groups.iloc[rated].reset_index(drop=True))
            for g, v in live.by_group.iterrows():
                table[str(g)].update({"n_rated": int(v["n_rated"]), "realized_accuracy": float(v["realized_accuracy"])})
        big = [v["estimated_accuracy"] for v in table.values() if v["n"] >= min_group_size]
        out[attr] = {"groups": table, "estimated_gap": max(big) - min(big) if len(big) >= 2 else None}
    return out


def _groups(row: dict[str, Any]) -> dict[str, str]:
    group = (row.get("metadata") or {}).get("group")
    return {str(k): str(v) for k, v in group.items()} if isinstance(group, dict) else {}
