"""Calibrated confidence for classifiers: temperature scaling, expected calibration error, the monitor's reference.

A fine-tuned classifier's softmax is usually over-confident. Temperature scaling (Guo et al. 2017,
"On Calibration of Modern Neural Networks") divides the logits by one number T, fitted on the
validation split by minimising the negative log-likelihood; it never changes which label wins, only
how sure the model says it is. Calibrated confidences are what `tuneloop monitor` needs to estimate
accuracy on live traffic without labels (CBPE).

`tuneloop eval` of a classifier calls `calibrate`, which writes:
- `RUN/eval/calibration.json`: the temperature, ECE before/after (on the test split, which the fit
  never saw) and the reliability-diagram bins; `/v1/classify` applies the temperature;
- `RUN/eval/reference.jsonl`: the model's own test-set predictions with calibrated probabilities —
  the reference `tuneloop monitor` compares live traffic with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

#: Confidence bins of the expected calibration error and the reliability diagram.
N_BINS = 15
#: Temperatures searched (log-uniform bounds): far beyond what a real model needs, never 0.
T_RANGE = (0.05, 20.0)
CALIBRATION_FILE, REFERENCE_FILE = "calibration.json", "reference.jsonl"


def _log_probs(probs: np.ndarray) -> np.ndarray:
    # Probabilities are a softmax of logits; their logs are those logits up to a per-row constant,
    # which a softmax ignores, so scaling them by 1/T is temperature scaling of the logits.
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities rescaled as if the logits had been divided by `temperature`.

    >>> apply_temperature(np.array([[0.8, 0.2]]), 1.0).round(3).tolist()
    [[0.8, 0.2]]
    """
    return softmax(_log_probs(probs) / temperature, axis=-1)


def fit_temperature(probs: np.ndarray, y: Sequence[int]) -> float:
    """The temperature that minimises the negative log-likelihood of the true labels `y` (indices).

    Args:
        probs: Model probabilities, shape (examples, labels).
        y: The true label's column for each example.

    Returns:
        T in `T_RANGE` (1.0 when there is nothing to fit on).
    """
    logp, y = _log_probs(probs), np.asarray(y, dtype=int)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=-1)[np.arange(len(y)), y].mean())

    best = minimize_scalar(nll, bounds=tuple(np.log(T_RANGE)), method="bounded")
    return float(np.exp(best.x))


def reliability(probs: np.ndarray, y: Sequence[int], n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each non-empty bin."""
    probs, y = np.asarray(probs), np.asarray(y, dtype=int)
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == y
    which = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return [{"low": b / n_bins, "high": (b + 1) / n_bins, "count": int((which == b).sum()),
             "confidence": float(conf[which == b].mean()), "accuracy": float(right[which == b].mean())}
            for b in range(n_bins) if (which == b).any()]


def expected_calibration_error(probs: np.ndarray, y: Sequence[int], n_bins: int = N_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width bins (0: calibrated).

    >>> round(expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), [0, 1]), 6)
    0.4
    """
    bins = reliability(probs, y, n_bins)
    n = sum(b["count"] for b in bins)
    return sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in bins) / n if n else 0.0


def label_probabilities(loaded: Any, texts: Sequence[str]) -> np.ndarray:
    """The served model's probabilities over `loaded.labels` (as /v1/classify computes them, before calibration)."""
    from tuneloop.evaluate.likelihood import head_probabilities, label_log_probs

    if not texts:
        return np.zeros((0, len(loaded.labels)))
    scores = head_probabilities(loaded, texts) if loaded.kind == "head" else label_log_probs(loaded, texts).softmax(dim=-1)
    return scores.numpy().astype(np.float64)


def calibrate(run_dir: Path, loaded: Any, val: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the temperature on `val`, measure ECE on `test`, write calibration.json and reference.jsonl.

    Args:
        run_dir: The run folder (files go to `RUN/eval/`).
        loaded: The tuned model (`tuneloop.runs.load_trained`), a classifier.
        val: Validation rows (`tuneloop.runs.eval_rows`): the temperature is fitted on them.
        test: Test rows: ECE before/after and the monitor's reference come from them.

    Returns:
        What metrics.json records under `calibration`: temperature, ece_before, ece_after, counts, bins.
    """
    from tuneloop.report import write

    labels = list(loaded.labels)
    index = {label: i for i, label in enumerate(labels)}
    val = [r for r in val if r["label"] in index]  # a label the model cannot output says nothing about T
    temperature = fit_temperature(label_probabilities(loaded, [r["input"] for r in val]), [index[r["label"]] for r in val])
    raw = label_probabilities(loaded, [r["input"] for r in test])
    cal = apply_temperature(raw, temperature) if len(raw) else raw
    known = [i for i, r in enumerate(test) if r["label"] in index]
    y = [index[test[i]["label"]] for i in known]
    result = {"method": "temperature", "temperature": round(temperature, 6), "n_val": len(val), "n_test": len(known),
              "ece_before": expected_calibration_error(raw[known], y), "ece_after": expected_calibration_error(cal[known], y),
              "reliability": {"before": reliability(raw[known], y), "after": reliability(cal[known], y)}}
    out = run_dir / "eval"
    write(out / CALIBRATION_FILE, json.dumps(result, indent=2) + "\n")
    reference = [{"text": r["input"], "label": r["label"], "prediction": labels[int(p.argmax())],
                  "confidence": round(float(p.max()), 6), "probabilities": {lab: round(float(x), 6) for lab, x in zip(labels, p)}}
                 for r, p in zip(test, cal)]
    write(out / REFERENCE_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reference))
    return result


def read_temperature(run_dir: Path) -> float | None:
    """The run's fitted temperature, or None when it was not calibrated (or the file is unreadable)."""
    try:
        t = json.loads((Path(run_dir) / "eval" / CALIBRATION_FILE).read_text(encoding="utf-8"))["temperature"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(t) if isinstance(t, (int, float)) and T_RANGE[0] <= t <= T_RANGE[1] else None


def calibrate_run(run_dir: Path, cfg: Any, test: list[dict[str, Any]]) -> dict[str, Any]:
    """`calibrate` for `tuneloop eval`: loads the tuned model and the run's validation split (T = 1 without one)."""
    from tuneloop.runs import eval_rows, load_trained, read_jsonl

    path = Path(cfg.train.data) / "val.jsonl" if cfg.train.data else None
    val = eval_rows(read_jsonl(path), "classify", path) if path is not None and path.is_file() else []
    return calibrate(Path(run_dir), load_trained(run_dir), val, test)
