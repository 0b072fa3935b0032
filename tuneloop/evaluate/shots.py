"""In-context examples ("k-shot"): the strongest baseline a user gets from the base model without training.

The shots are picked from the run's train split (never from test), with a fixed seed, and put in
the chat as earlier user/assistant turns after the system prompt, so the base model sees the same
instruction the tuned model was trained with, plus worked examples of the task.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any


def pick_shots(rows: Sequence[dict[str, Any]], k: int, *, labels: Sequence[str] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Choose in-context examples from train rows: k per label (classification) or k in all (generation).

    Args:
        rows: `eval_rows` of the train split (`"input"`, `"label"`, `"row"`).
        k: Examples per label (with `labels`) or in total.
        labels: The task's labels; shots cycle through them (label 1, label 2, ..., label 1, ...) so
            the last example before the question does not favour one label.
        seed: Seed of the choice.

    Returns:
        The chosen rows, in prompt order (fewer when the split has fewer).

    >>> rows = [{"input": str(i), "label": "ab"[i % 2]} for i in range(10)]
    >>> [r["label"] for r in pick_shots(rows, 2, labels=["a", "b"])]
    ['a', 'b', 'a', 'b']
    """
    rng = random.Random(seed)
    if labels is None:
        return rng.sample(list(rows), min(k, len(rows)))
    by_label = {label: [r for r in rows if r["label"] == label] for label in labels}
    chosen = {label: rng.sample(group, min(k, len(group))) for label, group in by_label.items()}
    return [chosen[label][i] for i in range(k) for label in labels if i < len(chosen[label])]


def shot_turns(shot: dict[str, Any], task: str) -> list[dict[str, str]]:
    """A chosen train row as chat turns: its text and label (classify) or its conversation without system turns."""
    if task == "classify":
        return [{"role": "user", "content": shot["input"]}, {"role": "assistant", "content": shot["label"]}]
    return [m for m in shot["row"]["messages"] if m.get("role") != "system"]


def with_shots(messages: list[dict[str, str]], shots: Sequence[list[dict[str, str]]]) -> list[dict[str, str]]:
    """The conversation with the shots' turns inserted after its leading system messages.

    >>> with_shots([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
    ...            [[{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]])[1]["content"]
    'q1'
    """
    n_system = next((i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages))
    return [*messages[:n_system], *(t for shot in shots for t in shot), *messages[n_system:]]
