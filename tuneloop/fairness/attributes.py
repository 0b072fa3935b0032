"""Which group each test example belongs to: sensitive attributes from `meta`, or a derived rule."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneloop.config import DeriveRule, FairnessConfig
from tuneloop.errors import TuneloopError
from tuneloop.fairness.terms import TermAxis

#: Field names taken as sensitive attributes when `fairness.attributes` is empty.
KNOWN_ATTRIBUTES = ("gender", "sex", "race", "ethnicity", "age", "age_band", "region", "religion", "nationality",
                    "disability", "condition")
MISSING = "(missing)"


def _value(v: Any) -> str:
    return MISSING if v is None or (isinstance(v, str) and not v.strip()) else str(v)


def _bin(v: Any, edges: list[float], where: str) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        if v is None:
            return MISSING
        raise TuneloopError(f"{where}: value {v!r} is not a number, so it cannot be binned") from None
    i = bisect.bisect_right(edges, x)
    if i == 0 or i == len(edges):
        return f"outside [{edges[0]:g}, {edges[-1]:g})"
    return f"[{edges[i - 1]:g}, {edges[i]:g})"


def _derived(rows: Sequence[dict[str, Any]], texts: Sequence[str], name: str, rule: DeriveRule,
             axes: dict[str, TermAxis], source: Path) -> list[str]:
    if rule.terms is not None:
        axis = axes.get(rule.terms)
        if axis is None or not axis.member:
            usable = [a for a, ax in axes.items() if ax.member]
            raise TuneloopError(f"fairness.derive.{name}.terms: {rule.terms!r} is not a term axis with groups; "
                                f"use one of {usable}")
        return [" + ".join(sorted(axis.groups_in(t))) or "(none)" for t in texts]
    assert rule.field is not None and rule.bins is not None  # the config validator guarantees it
    present = {k for r in rows for k in r.get("meta", {})}
    if rule.field not in present:
        raise TuneloopError(f"fairness.derive.{name}.field: {source} rows have no meta field {rule.field!r}; "
                            f"fields present: {sorted(present)}")
    return [_bin(r.get("meta", {}).get(rule.field), rule.bins, f"{source} row {i + 1} meta.{rule.field}")
            for i, r in enumerate(rows)]


def group_columns(
    rows: Sequence[dict[str, Any]], texts: Sequence[str], cfg: FairnessConfig, axes: Sequence[TermAxis], source: Path
) -> dict[str, list[str]]:
    """Every attribute's group for every row: `{"gender": ["female", "male", ...], ...}`.

    Args:
        rows: Test rows (`{"id", ..., "meta": {...}}`).
        texts: The rows' input texts (for term-derived groups).
        cfg: The fairness config (attributes, expected groups, derive rules).
        axes: Loaded term axes (for term-derived groups).
        source: The test file (for messages).

    Raises:
        TuneloopError: a named attribute is in no row's `meta`, or an expected group has no examples.
    """
    present = {k for r in rows for k in (r.get("meta") or {})}
    attrs = list(cfg.attributes) or [a for a in KNOWN_ATTRIBUTES if a in present]
    missing = [a for a in attrs if a not in present]
    if missing:
        raise TuneloopError(f"fairness.attributes: {missing} not found in the `meta` of any row of {source}; "
                            f"fields present: {sorted(present) or 'none'} — prepare the data keeping these columns "
                            "or fix the names")
    cols = {a: [_value((r.get("meta") or {}).get(a)) for r in rows] for a in attrs}
    by_name = {a.name: a for a in axes}
    cols.update({n: _derived(rows, texts, n, rule, by_name, source) for n, rule in cfg.derive.items()})
    for attr, expected in cfg.expected_groups.items():
        if attr not in cols:
            raise TuneloopError(f"fairness.expected_groups names {attr!r}, which is not an attribute or derived group "
                                f"(have {sorted(cols)})")
        empty = [g for g in expected if g not in set(cols[attr])]
        if empty:
            raise TuneloopError(f"fairness.expected_groups.{attr}: group(s) {empty} have no examples in {source} "
                                f"(found {sorted(set(cols[attr]))}); add test data for them or remove them")
    return cols
