"""Helpers for the data-preparation tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.config import RunConfig, load_config


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write one JSON value per line (strings are written as they are, to plant broken lines)."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def make_cfg(out: Path, inputs: list[Path | str], task: str = "classify", seed: int = 0, **prepare: Any) -> RunConfig:
    """A RunConfig writing to `out`, with `prepare` fields given by name (`near_dup=False`)."""
    overrides: dict[str, Any] = {"task": task, "seed": seed, "prepare.inputs": [str(p) for p in inputs], "prepare.out": str(out)}
    overrides.update({f"prepare.{k}": v for k, v in prepare.items()})
    return load_config(None, overrides)


def sentences(n: int, words: int = 12, seed: int = 0) -> list[str]:
    """`n` distinct pseudo-random sentences that are not near duplicates of each other."""
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]
