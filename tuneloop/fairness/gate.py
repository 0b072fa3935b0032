"""The fairness gate: compare an audit's values with the thresholds of `fairness.thresholds`.

Absolute checks take the worst value over attributes (disparities) or axes (counterfactuals).
Increase checks compare with a reference audit: the run named by `fairness.against` (e.g. the
model being served) for every value, or the untuned base model for the values that describe the
language model itself (stereotype score, output change). A base model that cannot yet do the task
has near-zero disparities because it answers nothing, so its group numbers are no fair reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tuneloop.config import FairnessThresholds

#: value name -> (threshold field, where the values live in an audit, which key, worst = max)
_VALUES = {
    "equalized_odds_difference": ("max_equalized_odds_difference", "groups", "disparities"),
    "demographic_parity_difference": ("max_demographic_parity_difference", "groups", "disparities"),
    "accuracy_gap": ("max_accuracy_gap", "groups", None),
    "flip_rate": ("max_flip_rate", "counterfactual", None),
    "output_change": ("max_output_change", "counterfactual", None),
    "stereotype_score": ("max_stereotype_score", "stereotype", None),
}
#: Values a base model is a fair reference for (see the module docstring).
BASE_COMPARABLE = {"stereotype_score", "output_change"}


@dataclass
class Check:
    """One gate check: the value, its threshold, and where the value came from."""

    name: str
    value: float
    threshold: float
    passed: bool
    where: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def worst_values(audit: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """The worst value of every gated quantity in an audit, with where it occurs.

    >>> worst_values({"groups": {"g": {"disparities": {"equalized_odds_difference": 0.3}, "accuracy_gap": 0.1}}})
    {'equalized_odds_difference': (0.3, 'g'), 'accuracy_gap': (0.1, 'g')}
    """
    out: dict[str, tuple[float, str]] = {}
    for name, (_, part, sub) in _VALUES.items():
        if part == "stereotype":
            score = (audit.get("stereotype") or {}).get("score")
            if score is not None:
                out[name] = (float(score), "crows_pairs")
            continue
        for where, rep in (audit.get(part) or {}).items():
            v = (rep.get(sub) or {}).get(name) if sub else rep.get(name)
            if v is not None and (name not in out or v > out[name][0]):
                out[name] = (float(v), where)
    return out


def gate(
    audit: dict[str, Any],
    thresholds: FairnessThresholds,
    reference: dict[str, Any] | None = None,
    *,
    reference_name: str = "base",
    compare: set[str] | None = None,
) -> list[Check]:
    """All checks of the gate for one audit.

    Args:
        audit: The tuned model's audit (`groups`, `counterfactual`, `stereotype` parts).
        thresholds: The configured thresholds (None ones are not checked).
        reference: The reference model's audit, for the `max_increase` checks.
        reference_name: How the reference is named in messages ("base", a run folder).
        compare: Values whose increase is checked (None: all that both audits have).

    Returns:
        The checks, in a fixed order; the gate passes when all of them pass.
    """
    values = worst_values(audit)
    checks = []
    for name, (value, where) in values.items():
        limit = getattr(thresholds, _VALUES[name][0])
        if limit is not None:
            checks.append(Check(f"{name} <= {_VALUES[name][0]}", value, limit, value <= limit, where))
    if reference is not None and thresholds.max_increase is not None:
        ref = worst_values(reference)
        for name in values.keys() & ref.keys():
            if compare is None or name in compare:
                rise = values[name][0] - ref[name][0]
                checks.append(Check(f"{name} increase vs {reference_name} <= max_increase", rise,
                                    thresholds.max_increase, rise <= thresholds.max_increase,
                                    f"{ref[name][0]:.4g} -> {values[name][0]:.4g}"))
    return checks


def failures(checks: list[Check]) -> list[str]:
    """One line per failed check, naming the threshold and both numbers."""
    return [f"{c.name}: {c.value:.4g} > {c.threshold:.4g} ({c.where})" for c in checks if not c.passed]


def unchecked(audit: dict[str, Any]) -> list[str]:
    """Why an audit gave the gate nothing to check, part by part.

    >>> len(unchecked({"groups": {}, "counterfactual": {"gender": {"examples": 0}}, "stereotype": None}))
    3
    """
    why = []
    if not audit.get("groups"):
        why.append("no group attributes in the test data (set fairness.attributes, or add them to the rows' meta)")
    if not any(a.get("examples") for a in (audit.get("counterfactual") or {}).values()):
        why.append("no identity terms in the test inputs to swap (counterfactual test had no example)")
    if not audit.get("stereotype"):
        why.append("no stereotype benchmark (fairness.benchmark is none, or the model is a classification head)")
    return why
