"""Evaluation (`tuneloop eval`): metrics, base vs tuned vs TF-IDF baseline, per-example diffs.

Modules: `metrics` (classification, equal to scikit-learn), `labels` (generated answer → label),
`text` (exact match, token F1, ROUGE-L), `stats` (bootstrap intervals, McNemar), `baseline`
(TF-IDF + logistic regression), `curves` (loss curves, overfitting), `score` (all of it on one test
set), `predict` (models over rows), `stage` (the `run` entry point and its files).
"""

from tuneloop.evaluate.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)
from tuneloop.evaluate.stage import EvalResult, run

__all__ = [
    "EvalResult",
    "accuracy_score",
    "classification_report",
    "confusion_matrix",
    "f1_score",
    "precision_recall_fscore_support",
    "precision_score",
    "recall_score",
    "run",
]
