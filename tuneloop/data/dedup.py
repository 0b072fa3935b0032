"""Exact duplicates and label conflicts, on compact per-row arrays (64-bit content keys, label ids).

A row's content key is the first 64 bits of the SHA-256 of its normalised content; the same
16 hex digits are its `id` in the output, so two rows share an id exactly when they are exact
duplicates. At a million rows the chance of any false collision is about 3e-8.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from tuneloop.data.clean import normalise_for_key


def content_id(text: str | None = None, messages: list[dict[str, str]] | None = None) -> str:
    """The stable id of an example: 16 hex digits of SHA-256 over its normalised content.

    Classification rows are identified by their text alone (not the label), so that the same text
    with two labels is recognised as a conflict. Other stages (feedback, evaluation) call this to
    match their examples to prepared ones.

    >>> content_id(text="Hello  world") == content_id(text="hello world")
    True
    """
    if messages is not None:
        body = "\x1e".join(f"{m['role']}\x1f{normalise_for_key(m['content'])}" for m in messages)
    else:
        body = normalise_for_key(text or "")
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def id_key(ident: str) -> int:
    """The id as an unsigned 64-bit integer, for numpy arrays of keys."""
    return int(ident, 16)


@dataclass
class ExactResult:
    """What exact deduplication decided, as boolean masks over all rows.

    Attributes:
        duplicate: Rows dropped as a copy of an earlier row (same content, same label).
        conflict: Rows dropped because the same content has another label.
        conflict_labels: For each conflicting key, the labels it was seen with (sorted ids).
    """

    duplicate: np.ndarray
    conflict: np.ndarray
    conflict_labels: dict[int, list[int]] = field(default_factory=dict)


def exact_duplicates(keys: np.ndarray, labels: np.ndarray, idx: np.ndarray, *, drop_copies: bool = True,
                     conflicts: str = "drop") -> ExactResult:
    """Find exact duplicates among rows `idx`; the first occurrence of each content stays.

    Args:
        keys: Content key per row (uint64).
        labels: Label id per row, or -1 for every row when there are no labels (generate).
        idx: Ascending indices of the rows to consider.
        drop_copies: Drop same-label copies (False keeps them but still resolves conflicts).
        conflicts: `drop` removes every row of a conflicting content; `keep_majority` keeps the
            first row with the most common label (none if two labels tie).

    Returns:
        Masks of the rows to drop, and the labels of each conflicting content.
    """
    n = len(keys)
    result = ExactResult(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
    if len(idx) < 2:
        return result
    order = idx[np.argsort(keys[idx], kind="stable")]  # stable: input order within a key
    k, lab = keys[order], labels[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sizes = np.diff(np.r_[starts, len(k)])
    group = np.repeat(np.arange(len(starts)), sizes)
    is_first = np.zeros(len(order), dtype=bool)
    is_first[starts] = True
    differs = np.minimum.reduceat(lab, starts) != np.maximum.reduceat(lab, starts)
    in_conflict = differs[group]
    if drop_copies:
        result.duplicate[order[~is_first & ~in_conflict]] = True
    for g in np.flatnonzero(differs):
        rows, row_labels = order[starts[g] : starts[g] + sizes[g]], lab[starts[g] : starts[g] + sizes[g]]
        result.conflict_labels[int(k[starts[g]])] = sorted(set(row_labels.tolist()))
        _resolve_conflict(result, rows, row_labels, conflicts, drop_copies)
    return result


def _resolve_conflict(result: ExactResult, rows: np.ndarray, row_labels: np.ndarray, policy: str,
                      drop_copies: bool) -> None:
    values, counts = np.unique(row_labels, return_counts=True)
    top = np.flatnonzero(counts == counts.max())
    if policy == "drop" or len(top) > 1:
        result.conflict[rows] = True
        return
    winner = row_labels == values[top[0]]
    result.conflict[rows[~winner]] = True
    if drop_copies:
        result.duplicate[rows[winner][1:]] = True
