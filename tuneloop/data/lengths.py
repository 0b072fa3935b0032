"""Example lengths: tokens of the base model's tokenizer when one is given, else whitespace tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.errors import TuneloopError

_BATCH = 1024


def load_tokenizer(name: str) -> Any:
    """The tokenizer of base model `name` (`default`, a folder, a .gguf file or a hub id).

    Uses `tuneloop.models.load_tokenizer`, which knows the embedded models; a plain local folder
    also works without it.

    Raises:
        TuneloopError: the tokenizer cannot be loaded.
    """
    try:
        from tuneloop.models import load_tokenizer as models_load_tokenizer
    except ImportError:
        models_load_tokenizer = None
    if models_load_tokenizer is not None:
        return models_load_tokenizer(name)
    if not Path(name).is_dir():
        raise TuneloopError(f"cannot load tokenizer {name!r}: give a local model folder, or leave --tokenizer unset")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


class LengthMeter:
    """Counts tokens per text, with a tokenizer or by whitespace.

    Args:
        tokenizer: A base-model name for `load_tokenizer`, or None for whitespace tokens.
    """

    def __init__(self, tokenizer: str | None = None) -> None:
        self._tok = load_tokenizer(tokenizer) if tokenizer else None
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
