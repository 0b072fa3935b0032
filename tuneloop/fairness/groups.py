"""Per-group metrics and disparities with Fairlearn's `MetricFrame` (the numbers are Fairlearn's).

Every metric is computed per group of one sensitive attribute: accuracy, macro precision/recall/F1
(scikit-learn, zero_division=0) and the selection rate of every label. Disparities are one-vs-rest
per label — demographic parity difference/ratio and equalized odds difference — and the report
keeps the worst label. Groups smaller than `min_size` are reported with a 95% Wilson interval and a
warning, and are left out of the disparities: a 3-example group's accuracy is noise, not evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    selection_rate,
)
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score


@dataclass
class GroupReport:
    """Metrics of every group of one attribute, and the disparities between the large-enough ones."""

    attribute: str
    groups: dict[str, dict[str, Any]]
    disparities: dict[str, float | None]
    per_label: dict[str, dict[str, float | None]]
    worst_group: str | None
    best_group: str | None
    accuracy_gap: float | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _metrics(labels: Sequence[str]) -> dict[str, Any]:
    avg = {"average": "macro", "labels": list(labels), "zero_division": 0}
    fns: dict[str, Any] = {
        "count": count,
        "accuracy": accuracy_score,
        "precision": partial(precision_score, **avg),
        "recall": partial(recall_score, **avg),
        "f1": partial(f1_score, **avg),
    }
    fns.update({f"selection_rate[{lab}]": partial(selection_rate, pos_label=lab) for lab in labels})
    return fns


def metric_frame(
    y_true: Sequence[str], y_pred: Sequence[str], *, groups: Sequence[str], labels: Sequence[str], name: str = "group"
) -> MetricFrame:
    """Fairlearn `MetricFrame` of accuracy, macro P/R/F1 and per-label selection rates by group.

    >>> mf = metric_frame(["a", "b", "a", "b"], ["a", "b", "b", "b"], groups=["x", "x", "y", "y"], labels=["a", "b"])
    >>> mf.by_group["accuracy"].to_dict()
    {'x': 1.0, 'y': 0.5}
    """
    return MetricFrame(
        metrics=_metrics(labels), y_true=np.asarray(y_true, dtype=object), y_pred=np.asarray(y_pred, dtype=object),
        sensitive_features=pd.Series(list(groups), name=name),
    )


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (honest at small n, unlike the normal one).

    >>> [round(x, 3) for x in wilson_interval(3, 3)]
    [0.439, 1.0]
    """
    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _label_disparities(yt: np.ndarray, yp: np.ndarray, g: np.ndarray, label: str) -> dict[str, float | None]:
    t, p = yt == label, yp == label
    out: dict[str, float | None] = {
        "demographic_parity_difference": float(demographic_parity_difference(t, p, sensitive_features=g)),
        "demographic_parity_ratio": float(demographic_parity_ratio(t, p, sensitive_features=g)),
    }
    # Equalized odds needs positives and negatives in every group; otherwise a missing TPR reads as 0.
    ok = [k for k in np.unique(g) if t[g == k].any() and (~t[g == k]).any()]
    keep = np.isin(g, ok)
    out["equalized_odds_difference"] = (
        float(equalized_odds_difference(t[keep], p[keep], sensitive_features=g[keep])) if len(ok) >= 2 else None
    )
    return out


def _worst(values: list[float | None], key: str) -> float | None:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    if not vals:
        return None
    return min(vals) if key.endswith("ratio") else max(vals)


def group_report(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    *,
    groups: Sequence[str],
    labels: Sequence[str],
    attribute: str = "group",
    min_size: int = 30,
) -> GroupReport:
    """Per-group metrics and disparities of one attribute.

    Args:
        y_true: True labels.
        y_pred: Predicted labels (may contain values outside `labels`, e.g. unparseable answers).
        groups: The attribute's value for every example.
        labels: The task's labels (selection rates and one-vs-rest disparities are per label).
        attribute: The attribute's name (for messages).
        min_size: Groups with fewer examples get a warning and no say in the disparities.

    Returns:
        A `GroupReport`; disparities are None when fewer than two groups are large enough.
    """
    mf = metric_frame(y_true, y_pred, groups=groups, labels=labels, name=attribute)
    table = mf.by_group.to_dict(orient="index")
    yt, yp, g = (np.asarray(a, dtype=object) for a in (y_true, y_pred, groups))
    warnings: list[str] = []
    for name, row in table.items():
        n = int(row["count"])
        row["count"] = n
        row["accuracy_ci"] = wilson_interval(int(round(row["accuracy"] * n)), n)
        row["small"] = n < min_size
        if row["small"]:
            warnings.append(f"{attribute}={name}: only {n} examples (< {min_size}); accuracy 95% CI "
                            f"{row['accuracy_ci'][0]:.2f}-{row['accuracy_ci'][1]:.2f}; left out of disparities")
    big = [k for k, r in table.items() if not r["small"]]
    per_label: dict[str, dict[str, float | None]] = {}
    if len(big) >= 2:
        keep = np.isin(g, big)
        per_label = {lab: _label_disparities(yt[keep], yp[keep], g[keep], lab) for lab in labels}
    else:
        warnings.append(f"{attribute}: fewer than two groups with >= {min_size} examples; no disparities computed")
    keys = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference")
    disparities = {k: _worst([d[k] for d in per_label.values()], k) for k in keys}
    acc = {k: table[k]["accuracy"] for k in big}
    worst = min(acc, key=acc.__getitem__) if len(acc) >= 2 else None
    best = max(acc, key=acc.__getitem__) if len(acc) >= 2 else None
    gap = acc[best] - acc[worst] if worst is not None and best is not None else None
    groups_out = {str(k): v for k, v in table.items()}
    return GroupReport(attribute, groups_out, disparities, per_label, worst and str(worst), best and str(best),
                       gap, warnings)
