"""Seeded train/validation/test assignment, stratified by label for classification."""

from __future__ import annotations

import numpy as np

DROPPED, TRAIN, VAL, TEST = -1, 0, 1, 2  # split codes; -1: the row is not in any split
SPLITS = ("train", "val", "test")


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    # Round half up, but always leave at least one row for training.
    n_test = int(n * test_fraction + 0.5)
    n_val = int(n * val_fraction + 0.5)
    over = n_test + n_val - (n - 1)
    if over > 0 and n > 0:
        cut_val = min(n_val, (over + 1) // 2)
        n_val -= cut_val
        n_test -= min(n_test, over - cut_val)
    return n_val, n_test


def assign(labels: np.ndarray | None, n: int, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Give each of `n` rows a split (0 train, 1 val, 2 test).

    Args:
        labels: Label id per row to stratify on (each label is split in the same proportions), or
            None for a plain random split.
        n: Number of rows.
        val_fraction: Share of rows (of each label) for validation.
        test_fraction: Share of rows (of each label) for test.
        seed: Seed of the shuffle; the same seed and rows give the same split.

    Returns:
        An int8 array of split codes.

    >>> assign(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 8, 0.25, 0.25, seed=0).tolist().count(2)
    2
    """
    rng = np.random.default_rng(seed)
    out = np.full(n, TRAIN, dtype=np.int8)
    strata = [np.arange(n)] if labels is None else [np.flatnonzero(labels == v) for v in np.unique(labels)]
    for rows in strata:
        n_val, n_test = _counts(len(rows), val_fraction, test_fraction)
        shuffled = rng.permutation(rows)
        out[shuffled[:n_test]] = TEST
        out[shuffled[n_test : n_test + n_val]] = VAL
    return out
