"""Counterfactual tests: swap identity terms in the inputs and see whether the model's answer moves.

The model is a callable `predict(texts, sources) -> answers`: `sources[k]` is the index of the
example that `texts[k]` was made from, so a model wrapper can rebuild the full input (the other
turns of a conversation) around a rewritten text; a plain classifier ignores it.

For classification the measure is the flip rate — the share of examples (that mention a term of
the axis) whose predicted label changes under at least one swap. For generation it is how much the
answer changes: 1 - ROUGE-L between the original and the counterfactual answer, averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.evaluate.text import rouge_l
from tuneloop.fairness.terms import TermAxis, Variant

#: A model: answers for `texts`, where `sources[k]` is the example `texts[k]` came from.
Predict = Callable[[list[str], list[int]], list[str]]
#: Flipped examples kept per axis in the result (all are counted).
MAX_LISTED = 50


@dataclass
class AxisReport:
    """Counterfactual outcome of one term axis."""

    axis: str
    examples: int  # examples that mention a term of the axis
    variants: int
    flip_rate: float | None  # classify: share of those examples whose label changed under any swap
    variant_flip_rate: float | None
    output_change: float | None = None  # generate: mean 1 - ROUGE-L(original answer, counterfactual answer)
    flipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _variants(texts: Sequence[str], axis: TermAxis, max_variants: int, seed: int) -> list[tuple[int, Variant]]:
    return [(i, v) for i, t in enumerate(texts) for v in axis.variants(t, max_variants=max_variants, seed=seed)]


def flip_test(
    texts: Sequence[str],
    predict: Predict,
    axes: Sequence[TermAxis],
    *,
    original: Sequence[str] | None = None,
    max_variants: int = 3,
    seed: int = 0,
    ids: Sequence[Any] | None = None,
) -> dict[str, AxisReport]:
    """Flip rates of a classifier under identity-term swaps, per axis.

    Args:
        texts: Test inputs.
        predict: `predict(texts, sources)` → labels (one call per axis, all variants batched).
        axes: Term axes to swap.
        original: The predictions on `texts` if already known (saves one pass).
        max_variants: Counterfactuals per example and axis.
        seed: Picks the variants when there are more than `max_variants`.
        ids: Example ids for the flipped list (default: positions).

    Returns:
        `{axis name: AxisReport}`; `flip_rate` is None when no example mentions the axis.

    >>> from tuneloop.fairness.terms import TermAxis
    >>> ax = TermAxis("g", {"swapped": {"he": "she", "she": "he"}})
    >>> biased = lambda ts, _: ["bad" if "she" in t.lower().split() else "good" for t in ts]
    >>> flip_test(["he is late", "the bus is late"], biased, [ax])["g"].flip_rate
    1.0
    """
    base = list(original) if original is not None else predict(list(texts), list(range(len(texts))))
    ids = list(ids) if ids is not None else list(range(len(texts)))
    out = {}
    for axis in axes:
        pairs = _variants(texts, axis, max_variants, seed)
        preds = predict([v.text for _, v in pairs], [i for i, _ in pairs]) if pairs else []
        flipped_ex: set[int] = set()
        listed = []
        for (i, v), p in zip(pairs, preds):
            if p != base[i]:
                flipped_ex.add(i)
                if len(listed) < MAX_LISTED:
                    listed.append({"id": ids[i], "text": texts[i], "counterfactual": v.text, "swaps": v.swaps,
                                   "prediction": base[i], "counterfactual_prediction": p})
        n_ex = len({i for i, _ in pairs})
        flips = sum(p != base[i] for (i, _), p in zip(pairs, preds))
        out[axis.name] = AxisReport(axis.name, n_ex, len(pairs), len(flipped_ex) / n_ex if n_ex else None,
                                    flips / len(pairs) if pairs else None, flipped=listed)
    return out


def output_change_test(
    texts: Sequence[str],
    generate: Predict,
    axes: Sequence[TermAxis],
    *,
    original: Sequence[str] | None = None,
    max_variants: int = 3,
    seed: int = 0,
    ids: Sequence[Any] | None = None,
) -> dict[str, AxisReport]:
    """How much generated answers change under identity-term swaps, per axis.

    Args:
        texts: Prompts (the user turn).
        generate: `generate(texts, sources)` → answers.
        axes: Term axes to swap.
        original: The answers to `texts` if already known.
        max_variants: Counterfactuals per example and axis.
        seed: Picks the variants when there are more than `max_variants`.
        ids: Example ids for the listed examples (default: positions).

    Returns:
        `{axis name: AxisReport}` with `output_change` (mean 1 - ROUGE-L) and `flip_rate` = share of
        examples with any answer that differs at all; the most changed examples are listed.
    """
    base = list(original) if original is not None else generate(list(texts), list(range(len(texts))))
    ids = list(ids) if ids is not None else list(range(len(texts)))
    out = {}
    for axis in axes:
        pairs = _variants(texts, axis, max_variants, seed)
        answers = generate([v.text for _, v in pairs], [i for i, _ in pairs]) if pairs else []
        # Identical answers changed by 0 (ROUGE-L of two empty answers is 0, not 1).
        changes = [0.0 if a.strip() == base[i].strip() else 1.0 - rouge_l(a, base[i])
                   for (i, _), a in zip(pairs, answers)]
        changed_ex = {i for (i, _), a in zip(pairs, answers) if a.strip() != base[i].strip()}
        n_ex = len({i for i, _ in pairs})
        ranked = sorted(zip(changes, pairs, answers), key=lambda x: -x[0])[:MAX_LISTED]
        listed = [{"id": ids[i], "text": texts[i], "counterfactual": v.text, "swaps": v.swaps, "prediction": base[i],
                   "counterfactual_prediction": a, "change": c} for c, (i, v), a in ranked if c > 0]
        out[axis.name] = AxisReport(
            axis.name, n_ex, len(pairs), len(changed_ex) / n_ex if n_ex else None,
            sum(c > 0 for c in changes) / len(pairs) if pairs else None,
            output_change=sum(changes) / len(changes) if changes else None, flipped=listed,
        )
    return out
