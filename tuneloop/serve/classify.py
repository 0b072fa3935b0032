"""Label probabilities for /v1/classify: a head's softmax, or a causal LM's scores of each label's tokens.

The scoring lives in `tuneloop.evaluate.likelihood` (evaluation scores the base model's zero-shot
and k-shot baselines the same way); this module turns it into the API's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuneloop.evaluate.likelihood import CHUNK, head_probabilities, label_log_probs


def length_groups(texts: Sequence[str], max_tokens: int = 2048) -> list[list[int]]:
    """Indices of `texts` in groups of similar length, each padding to about `max_tokens` at most.

    A forward pass pads every text to the longest in it: grouping by length keeps one long text
    from making the short ones batched with it cost as much as it does. Lengths are estimated
    from characters (about 4 a token), which is all the grouping needs.

    Example:
        >>> length_groups(["a" * 4000, "hi", "yo"], max_tokens=512)
        [[1, 2], [0]]
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(texts)), key=lambda i: len(texts[i])):
        width = len(texts[i]) // 4 + 8  # the longest so far: texts come shortest first
        if not groups or len(groups[-1]) >= CHUNK or (len(groups[-1]) + 1) * width > max_tokens:
            groups.append([])
        groups[-1].append(i)
    return groups


def classify(loaded: Any, texts: Sequence[str], temperature: float | None = None) -> list[dict[str, Any]]:
    """Label and per-label probabilities for each text.

    Args:
        loaded: A `load_trained` result of a classify run (kind "head" or "lm").
        texts: Texts to classify (run in groups of similar length).
        temperature: The run's fitted temperature (`tuneloop.evaluate.calibration`): calibrated probabilities.

    Returns:
        `{"label": str, "probabilities": {label: float}}` per text, in order.
    """
    probs = torch.empty(len(texts), len(loaded.labels))
    for group in length_groups(texts):
        batch = [texts[i] for i in group]
        probs[group] = head_probabilities(loaded, batch) if loaded.kind == "head" else label_log_probs(loaded, batch).softmax(dim=-1)
    if temperature is not None and temperature != 1.0:  # same argmax, honest confidences
        probs = (probs.clamp(min=1e-12).log() / temperature).softmax(dim=-1)
    return [
        {"label": loaded.labels[int(p.argmax())], "probabilities": {lab: round(float(x), 6) for lab, x in zip(loaded.labels, p)}}
        for p in probs
    ]
