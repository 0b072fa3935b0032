"""Decide which kept rows go where: deduplicate, split, then remove rows that leak held-out ones.

Everything here works on the compact per-row arrays (`Rows`, `Prompts`), never on the rows' text, so
it runs in memory at a million rows. Rows of a user-given test file are deduplicated among
themselves; their overlap with the other data is leakage (by content and by prompt, see
`leakage`), counted and removed from training and validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuneloop.config import RunConfig
from tuneloop.data.dedup import exact_duplicates
from tuneloop.data.ingest import Laps, Rows
from tuneloop.data.leakage import Prompts, remove_leaks
from tuneloop.data.lsh import band_keys, lsh_shape, near_duplicates, similarity
from tuneloop.data.split import DROPPED, TEST, assign

EXAMPLES = 12  # near-duplicate pairs shown in the report, so a person can judge the threshold


@dataclass
class Selection:
    """Where each kept row goes.

    Attributes:
        split: Per row: -1 dropped, 0 train, 1 val, 2 test (int8).
        conflict: Per row: dropped as a label conflict (these are written to rejects.jsonl).
        conflict_labels: Content key → the label ids it appeared with.
        counts: exact_duplicates, label_conflicts, near_duplicates, and the leakage counts of `remove_leaks`.
        near_examples: A few (dropped row, kept row, estimated Jaccard) for the report.
    """

    split: np.ndarray
    conflict: np.ndarray
    conflict_labels: dict[int, list[int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    near_examples: list[tuple[int, int, float]] = field(default_factory=list)


def select(rows: Rows, cfg: RunConfig, laps: Laps, prompts: Prompts | None = None) -> Selection:
    """Deduplicate, split and check leakage.

    Args:
        rows: The kept rows' keys, labels, groups and signatures.
        cfg: The run config (`seed`, `task`, `prepare`).
        laps: Stage timer; charged `exact_dedup`, `near_dup`, `split`, `leakage`.
        prompts: The rows' prompt keys and signatures (`leakage.prompt_index`); None: the rows' own.
    """
    p = cfg.prepare
    n = len(rows.keys)
    alive = np.ones(n, dtype=bool)
    sel = Selection(np.full(n, DROPPED, dtype=np.int8), np.zeros(n, dtype=bool))
    counts = dict.fromkeys(("exact_duplicates", "label_conflicts", "near_duplicates"), 0)
    laps.start()
    shape = lsh_shape(p.near_dup_threshold, p.near_dup_num_perm)
    keys = band_keys(rows.sig, *shape)
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
    prompts = prompts if prompts is not None else Prompts(rows.keys, rows.sig, own=True)
    counts.update(remove_leaks(rows, prompts, keys, sel.split, p.near_dup_threshold, shape))
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
