"""Drift between a window of live traffic and the reference: inputs (length, unknown words, embeddings) and predictions.

Every test returns its statistic, its p-value and an effect size; the stage raises an alarm only
when both the p-value is small and the effect is large, so a big window does not alarm on a
trivial shift and a small one does not alarm on noise.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

_WORD = re.compile(r"\w+")
#: Smallest share a label is given in PSI, so a label absent on one side gives a large, finite value.
PSI_FLOOR = 1e-4


def words(text: str) -> list[str]:
    """Lower-cased word tokens (what the unknown-word rate counts).

    >>> words("Who wrote Hamlet?")
    ['who', 'wrote', 'hamlet']
    """
    return _WORD.findall(text.lower())


def ks(reference: Sequence[float], window: Sequence[float]) -> dict[str, float]:
    """Two-sample Kolmogorov-Smirnov test: `statistic` (0..1, the effect), `pvalue`, and both means."""
    res = stats.ks_2samp(reference, window)
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue),
            "reference_mean": float(np.mean(reference)), "window_mean": float(np.mean(window))}


def oov_rates(texts: Iterable[str], vocabulary: set[str]) -> list[float]:
    """Per text, the share of its words not in `vocabulary` (0 for a text without words)."""
    out = []
    for text in texts:
        w = words(text)
        out.append(sum(x not in vocabulary for x in w) / len(w) if w else 0.0)
    return out


def oov_shift(reference: Sequence[str], window: Sequence[str], vocabulary: set[str]) -> dict[str, float]:
    """Unknown-word rate (words never seen in training) of window vs reference: means, rise, Mann-Whitney p-value."""
    ref, win = oov_rates(reference, vocabulary), oov_rates(window, vocabulary)
    p = float(stats.mannwhitneyu(ref, win, alternative="less").pvalue) if ref and win else 1.0
    return {"reference_mean": float(np.mean(ref)), "window_mean": float(np.mean(win)),
            "increase": float(np.mean(win) - np.mean(ref)), "pvalue": p}


def mmd_test(x: np.ndarray, y: np.ndarray, *, permutations: int = 1000, seed: int = 0) -> dict[str, float]:
    """Maximum mean discrepancy between two samples with an RBF kernel, and its permutation p-value.

    The kernel width is the median pairwise distance of the pooled sample (the usual heuristic).
    MMD² is `a·K·a` with `a` = +1/n on one sample and −1/m on the other, so every permutation is
    one column of a matrix product: the whole test is a single (N×N)·(N×P) multiplication.

    Args:
        x: Reference embeddings, shape (n, d).
        y: Window embeddings, shape (m, d).
        permutations: Random relabellings of the pooled sample.
        seed: Seed of the permutations.

    Returns:
        `mmd2` (biased estimate; 0 for identical distributions) and `pvalue` ((1 + #perm ≥ observed) / (1 + P)).
    """
    z = np.concatenate([x, y]).astype(np.float64)
    n, total = len(x), len(x) + len(y)
    sq = np.maximum((z * z).sum(1)[:, None] + (z * z).sum(1)[None, :] - 2 * z @ z.T, 0)
    width = np.median(sq[np.triu_indices(total, 1)]) or 1.0
    kernel = np.exp(-sq / width)
    rng = np.random.default_rng(seed)
    signs = np.empty((total, permutations + 1))
    base = np.r_[np.full(n, 1 / n), np.full(total - n, -1 / (total - n))]
    signs[:, 0] = base
    for j in range(1, permutations + 1):
        signs[:, j] = base[rng.permutation(total)]
    mmd2 = np.einsum("ij,ij->j", signs, kernel @ signs)
    return {"mmd2": float(mmd2[0]), "pvalue": float((1 + (mmd2[1:] >= mmd2[0]).sum()) / (1 + permutations)),
            "n_reference": n, "n_window": total - n}


def psi(reference: Sequence[str], window: Sequence[str], labels: Sequence[str]) -> float:
    """Population stability index of two label mixes: Σ (w − r)·ln(w / r) over labels (0: the same mix).

    Rules of thumb: below 0.1 stable, 0.1–0.25 a moderate shift, above 0.25 a large one.

    >>> round(psi(["a", "b"], ["a", "a", "a", "b"], ["a", "b"]), 4)
    0.2747
    """
    r, w = _shares(reference, labels), _shares(window, labels)
    return float(((w - r) * np.log(w / r)).sum())


def _shares(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    counts = Counter(values)
    shares = np.array([counts[label] for label in labels], dtype=np.float64) / max(len(values), 1)
    return np.maximum(shares, PSI_FLOOR)


def label_shift(reference: Sequence[str], window: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Predicted-label mix of window vs reference: chi-squared test of the 2×K table, PSI, and both mixes."""
    table = np.array([[Counter(side)[label] for label in labels] for side in (reference, window)])
    used = table.sum(0) > 0  # a label neither side predicted has no expected count
    if used.sum() < 2:
        p, chi2 = 1.0, 0.0
    else:
        res = stats.chi2_contingency(table[:, used])
        p, chi2 = float(res.pvalue), float(res.statistic)
    return {"chi2": chi2, "pvalue": p, "psi": psi(reference, window, labels),
            "reference": {lab: round(float(s), 4) for lab, s in zip(labels, table[0] / max(table[0].sum(), 1))},
            "window": {lab: round(float(s), 4) for lab, s in zip(labels, table[1] / max(table[1].sum(), 1))}}
