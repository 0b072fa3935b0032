"""Classification metrics computed from the confusion matrix, equal to scikit-learn's.

Signatures follow scikit-learn (`f1_score(y_true, y_pred, *, labels=None, average="macro")`), and
so do the numbers: `tests/test_metrics.py` checks them against `sklearn.metrics` on random and
edge-case inputs with hypothesis. We compute them ourselves (a few lines from the confusion matrix)
so that the per-class counts behind every number are in one place and bootstrapping is fast.

Zero division: a precision with no predictions of a class, a recall with no true examples of it, or
an F1 with neither is set to `zero_division` (default 0.0; 1.0 and `nan` are allowed, as in
scikit-learn, and `nan` values are left out of the averages). Unlike scikit-learn we never warn.

Predictions outside `labels` (e.g. an unparseable generated answer) count as a false negative of
the true class and as a false positive of no class — scikit-learn's behaviour with `labels=`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np

Average = Literal["micro", "macro", "weighted"] | None


def unique_labels(*ys: Sequence[Hashable]) -> list[Any]:
    """The sorted set of labels present in any of the arrays (scikit-learn's default label order).

    >>> unique_labels(["b", "a"], ["c", "a"])
    ['a', 'b', 'c']
    """
    values = {v for y in ys for v in y}
    try:
        return sorted(values)
    except TypeError:
        raise ValueError(f"labels must all be of one comparable type, got {sorted(map(repr, values))}") from None


def _check(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred have different lengths ({len(y_true)} vs {len(y_pred)})")
    if len(y_true) == 0:
        raise ValueError("y_true and y_pred are empty")


def confusion_matrix(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], *, labels: Sequence[Hashable] | None = None
) -> np.ndarray:
    """Counts `C[i, j]` of examples whose true label is `labels[i]` and predicted label `labels[j]`.

    Values outside `labels` are ignored (as in scikit-learn).

    Raises:
        ValueError: different lengths, no examples, `labels` empty, repeated, or none of them in
            `y_true` (scikit-learn raises for the same cases).

    >>> confusion_matrix(["a", "b", "b"], ["a", "a", "b"]).tolist()
    [[1, 0], [1, 1]]
    """
    _check(y_true, y_pred)
    labels = unique_labels(y_true, y_pred) if labels is None else list(labels)
    index = {label: i for i, label in enumerate(labels)}
    if not labels or len(index) != len(labels):
        raise ValueError(f"labels must be a non-empty list without repeats, got {labels!r}")
    if not any(v in index for v in y_true):
        raise ValueError(f"none of the labels {labels!r} occurs in y_true")
    k = len(labels)
    t = np.fromiter((index.get(v, -1) for v in y_true), dtype=np.int64, count=len(y_true))
    p = np.fromiter((index.get(v, -1) for v in y_pred), dtype=np.int64, count=len(y_pred))
    keep = (t >= 0) & (p >= 0)
    return np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)


def _counts(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, predicted counts and true counts (support)."""
    labels = unique_labels(y_true, y_pred) if labels is None else list(labels)
    # Extra rows/columns hold values outside `labels`: they still count as fn/fp of the others.
    known = set(labels)
    extra = [v for v in dict.fromkeys([*y_true, *y_pred]) if v not in known]
    cm = confusion_matrix(y_true, y_pred, labels=labels + extra)
    k = len(labels)
    return np.diag(cm)[:k], cm[:, :k].sum(axis=0), cm[:k, :].sum(axis=1)


def _divide(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    out = np.full(num.shape, zero_division, dtype=float)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _average(values: np.ndarray, weights: np.ndarray | None) -> float:
    # scikit-learn's `_nanaverage`: nan entries (zero_division=nan) drop out; all-zero weights
    # fall back to a plain mean.
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    if weights is None or weights[keep].sum() == 0:
        return float(values[keep].mean())
    return float(np.average(values[keep], weights=weights[keep]))


def precision_recall_fscore_support(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    *,
    labels: Sequence[Hashable] | None = None,
    average: Average = None,
    zero_division: float = 0.0,
) -> tuple[Any, Any, Any, np.ndarray | None]:
    """Precision, recall, F1 and support per label, or averaged.

    Args:
        y_true: True labels.
        y_pred: Predicted labels; values outside `labels` count as wrong for every label.
        labels: Labels to report, in this order (default: sorted labels present in either array).
        average: None (per label arrays), "micro" (pool the counts), "macro" (unweighted mean of
            labels) or "weighted" (mean weighted by support).
        zero_division: Value for a ratio whose denominator is 0 (0.0, 1.0 or nan).

    Returns:
        `(precision, recall, f1, support)`; floats and support None when averaged.

    >>> p, r, f, s = precision_recall_fscore_support(["a", "a", "b"], ["a", "b", "b"])
    >>> p.tolist(), r.tolist(), s.tolist()
    ([1.0, 0.5], [0.5, 1.0], [2, 1])
    >>> precision_recall_fscore_support(["a", "a", "b"], ["a", "b", "b"], average="micro")[:3]
    (0.6666666666666666, 0.6666666666666666, 0.6666666666666666)
    """
    if average not in (None, "micro", "macro", "weighted"):
        raise ValueError(f"average must be None, 'micro', 'macro' or 'weighted', got {average!r}")
    _check(y_true, y_pred)
    tp, pred, true = _counts(y_true, y_pred, labels)
    if average == "micro":
        tp, pred, true = tp.sum(keepdims=True), pred.sum(keepdims=True), true.sum(keepdims=True)
    precision = _divide(tp, pred, zero_division)
    recall = _divide(tp, true, zero_division)
    f1 = _divide(2 * tp, true + pred, zero_division)  # = 2PR/(P+R), defined whenever tp+fp+fn > 0
    if average is None:
        return precision, recall, f1, true
    weights = true if average == "weighted" else None
    return _average(precision, weights), _average(recall, weights), _average(f1, weights), None


def precision_score(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], *, labels: Sequence[Hashable] | None = None,
    average: Average = "macro", zero_division: float = 0.0,
) -> Any:
    """Precision: of the examples predicted as a label, the share that have it.

    >>> precision_score(["a", "a", "b"], ["a", "a", "a"])
    0.3333333333333333
    """
    return precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, zero_division=zero_division
    )[0]


def recall_score(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], *, labels: Sequence[Hashable] | None = None,
    average: Average = "macro", zero_division: float = 0.0,
) -> Any:
    """Recall: of the examples that have a label, the share predicted as it.

    >>> recall_score(["a", "a", "b"], ["a", "a", "a"])
    0.5
    """
    return precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, zero_division=zero_division
    )[1]


def f1_score(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], *, labels: Sequence[Hashable] | None = None,
    average: Average = "macro", zero_division: float = 0.0,
) -> Any:
    """F1, the harmonic mean of precision and recall (macro-averaged over labels by default).

    >>> round(f1_score(["a", "a", "b"], ["a", "b", "b"]), 4)
    0.6667
    """
    return precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, zero_division=zero_division
    )[2]


def accuracy_score(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Share of examples predicted exactly right (an unparseable answer is wrong).

    >>> accuracy_score(["a", "b", "b"], ["a", "b", None])
    0.6666666666666666
    """
    _check(y_true, y_pred)
    return float(np.mean([t == p for t, p in zip(y_true, y_pred)]))


def classification_report(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable | None], *, labels: Sequence[Hashable]
) -> dict[str, Any]:
    """Every classification number the run report shows, as a JSON-ready dict.

    `None` in `y_pred` marks an unparseable answer: wrong, counted in `unparseable_rate`, and shown
    in an extra last column of the confusion matrix.

    The macro, micro and weighted averages run over the labels that occur in `y_true` (listed in
    `averaged_over`): a task label absent from this test set would otherwise add a 0 (or, with
    no predictions of it, an undefined) F1 to every system's macro average. Predicting such a label
    is still wrong. Per-class rows and the confusion matrix show every label.

    Args:
        y_true: True labels (each must be in `labels`).
        y_pred: Predicted labels or None.
        labels: All labels of the task, in display order.

    Returns:
        accuracy; precision/recall/f1 for macro, micro and weighted averages; per-class
        precision/recall/f1/support; the confusion matrix (rows true, columns predicted +
        "unparseable"); n and unparseable count and rate.

    >>> r = classification_report(["a", "b"], ["a", None], labels=["a", "b"])
    >>> r["accuracy"], r["unparseable_rate"], r["confusion_matrix"]
    (0.5, 0.5, [[1, 0, 0], [0, 0, 1]])
    """
    labels = list(labels)
    present = set(y_true)
    averaged = [label for label in labels if label in present]
    out: dict[str, Any] = {"n": len(y_true), "labels": labels, "averaged_over": averaged,
                           "accuracy": accuracy_score(y_true, y_pred)}
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=averaged, average=avg)
        out[avg] = {"precision": p, "recall": r, "f1": f}
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None)
    out["per_class"] = {
        str(label): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, label in enumerate(labels)
    }
    unparseable = object()  # a sentinel no label can equal
    preds = [unparseable if v is None else v for v in y_pred]
    out["confusion_matrix"] = confusion_matrix(y_true, preds, labels=labels + [unparseable]).tolist()[: len(labels)]
    out["unparseable"] = sum(v is None for v in y_pred)
    out["unparseable_rate"] = out["unparseable"] / len(y_pred)
    return out
