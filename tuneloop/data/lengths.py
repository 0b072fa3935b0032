"""Example lengths: tokens of the base model's tokenizer when one is given, else whitespace tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


_BATCH = 1024


def load_tokenizer(name: str, task: str = "generate", classify_as: str = "generate") -> Any:
    """The tokenizer of base model `name`: `default`, an alias, a model or tokenizer folder, a .gguf file, a hub id.

    Args:
        name: The base model, resolved as `tuneloop.models.resolve` does; a folder holding only a
            tokenizer (no config.json) is loaded as it is.
        task: The run's task (decides what `default` means).
        classify_as: `head` or `generate` (decides what `default` means for classify).

    Raises:
        TuneloopError: the tokenizer cannot be loaded.
    """
    from tuneloop import models  # imports torch: only when lengths are measured in tokens

    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        return models.load_tokenizer(path)
    return models.load_tokenizer(models.resolve(name, task=task, classify_as=classify_as))


class LengthMeter:
    """Counts tokens per text, with a tokenizer or by whitespace.

    Args:
        tokenizer: A base-model name for `load_tokenizer`, or None for whitespace tokens.
        task: The run's task (decides what `default` means).
        classify_as: `head` or `generate` (decides what `default` means for classify).
    """

    def __init__(self, tokenizer: str | None = None, task: str = "generate", classify_as: str = "generate") -> None:
        self._tok = load_tokenizer(tokenizer, task, classify_as) if tokenizer else None
        self.unit = f"tokens ({tokenizer})" if tokenizer else "whitespace tokens"

    def measure(self, texts: list[str]) -> list[int]:
        """Token count of each text (special tokens not included)."""
        if self._tok is None:
            return [len(t.split()) for t in texts]
        out: list[int] = []
        for s in range(0, len(texts), _BATCH):
            ids = self._tok(texts[s : s + _BATCH], add_special_tokens=False)["input_ids"]
            out += [len(x) for x in ids]
        return out


def length_stats(lengths: np.ndarray) -> dict[str, float | int]:
    """Summary of a length array: count, mean, min, median, p90, p99, max (zeros when empty)."""
    if not len(lengths):
        return {"count": 0, "mean": 0.0, "min": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99], method="lower")
    return {
        "count": int(len(lengths)), "mean": round(float(lengths.mean()), 2), "min": int(lengths.min()),
        "p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(lengths.max()),
    }
