"""Decide which kept rows go where: deduplicate, split, then remove training rows that leak.

Everything here works on the compact per-row arrays (`Rows`), never on the rows' text, so it runs
in memory at a million rows. Rows of a user-given test file are deduplicated among themselves;
their overlap with the training data is leakage, counted and removed from training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuneloop.config import RunConfig
from tuneloop.data.dedup import exact_duplicates
from tuneloop.data.ingest import Laps, Rows
from tuneloop.data.lsh import band_keys, leaked, lsh_shape, near_duplicates, similarity
from tuneloop.data.split import TEST, TRAIN, assign

DROPPED = -1
EXAMPLES = 12  # near-duplicate pairs shown in the report, so a person can judge the threshold


@dataclass
class Selection:
    """Where each kept row goes.

    Attributes:
        split: Per row: -1 dropped, 0 train, 1 val, 2 test (int8).
        conflict: Per row: dropped as a label conflict (these are written to rejects.jsonl).
        conflict_labels: Content key → the label ids it appeared with.
        counts: exact_duplicates, label_conflicts, near_duplicates, leaked, leaked_exact, leaked_near.
        near_examples: A few (dropped row, kept row, estimated Jaccard) for the report.
    """

    split: np.ndarray
    conflict: np.ndarray
    conflict_labels: dict[int, list[int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    near_examples: list[tuple[int, int, float]] = field(default_factory=list)


def select(rows: Rows, cfg: RunConfig, laps: Laps) -> Selection:
    """Deduplicate, split and check leakage.

    Args:
        rows: The kept rows' keys, labels, groups and signatures.
        cfg: The run config (`seed`, `task`, `prepare`).
        laps: Stage timer; charged `exact_dedup`, `near_dup`, `split`, `leakage`.
    """
    p = cfg.prepare
    n = len(rows.keys)
    alive = np.ones(n, dtype=bool)
    sel = Selection(np.full(n, DROPPED, dtype=np.int8), np.zeros(n, dtype=bool))
    counts = dict.fromkeys(("exact_duplicates", "label_conflicts", "near_duplicates"), 0)
    laps.start()
    keys = band_keys(rows.sig, *lsh_shape(p.near_dup_threshold, p.near_dup_num_perm))
    laps.lap("lsh_bands")
    for group in (0, 1):
        idx = np.flatnonzero(rows.groups == group)
        exact = exact_duplicates(rows.keys, rows.labels, idx, drop_copies=p.dedup, conflicts=p.label_conflicts)
        alive &= ~(exact.duplicate | exact.conflict)
        sel.conflict |= exact.conflict
        sel.conflict_labels.update(exact.conflict_labels)
        counts["exact_duplicates"] += int(exact.duplicate.sum())
        counts["label_conflicts"] += int(exact.conflict.sum())
        laps.lap("exact_dedup")
        if p.near_dup:
            near, kept = near_duplicates(rows.sig, keys, idx[alive[idx]], p.near_dup_threshold)
            alive[near] = False
            counts["near_duplicates"] += len(near)
            sel.near_examples += _examples(rows, near, kept, EXAMPLES - len(sel.near_examples))
        laps.lap("near_dup")
    _split(rows, cfg, alive, sel.split)
    laps.lap("split")
    counts.update(_remove_leaks(rows, keys, sel.split, p.near_dup_threshold))
    laps.lap("leakage")
    sel.counts = counts
    return sel


def _examples(rows: Rows, near: np.ndarray, kept: np.ndarray, n: int) -> list[tuple[int, int, float]]:
    near, kept = near[: max(n, 0)], kept[: max(n, 0)]
    sims = similarity(rows.sig, near, kept)
    return [(int(d), int(k), round(float(s), 3)) for d, k, s in zip(near, kept, sims)]


def _split(rows: Rows, cfg: RunConfig, alive: np.ndarray, split: np.ndarray) -> None:
    p = cfg.prepare
    pool = np.flatnonzero(alive & (rows.groups == 0))
    given_test = np.flatnonzero(alive & (rows.groups == 1))
    labels = rows.labels[pool] if cfg.task == "classify" else None
    test_fraction = 0.0 if p.test_file else p.test_fraction
    split[pool] = assign(labels, len(pool), p.val_fraction, test_fraction, cfg.seed)
    split[given_test] = TEST


def _remove_leaks(rows: Rows, keys: np.ndarray, split: np.ndarray, threshold: float) -> dict[str, int]:
    """Drop training rows that are exact or near copies of a validation or test row (always checked)."""
    train = np.flatnonzero(split == TRAIN)
    held = np.flatnonzero(split > TRAIN)
    exact = train[np.isin(rows.keys[train], rows.keys[held])]
    split[exact] = DROPPED
    near = leaked(rows.sig, keys, np.flatnonzero(split == TRAIN), held, threshold)
    split[near] = DROPPED
    return {"leaked": len(exact) + len(near), "leaked_exact": len(exact), "leaked_near": len(near)}
