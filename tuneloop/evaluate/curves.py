"""Training curves from `RUN/metrics.jsonl` and the overfitting check."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError


@dataclass
class Curves:
    """Loss curves of a run: `(step, loss)` pairs for training and validation, in step order."""

    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)


def read_curves(path: Path) -> Curves:
    """Read the train and val loss records of a run's `metrics.jsonl` (other kinds are skipped).

    A missing file gives empty curves (a run may not have validated yet).

    Raises:
        TuneloopError: a line is not JSON or a train/val record lacks a numeric step or loss.
    """
    curves = Curves()
    if not path.is_file():
        return curves
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec: dict[str, Any] = json.loads(line)
            kind = rec.get("kind")
            if kind in ("train", "val"):
                getattr(curves, kind).append((int(rec["step"]), float(rec["loss"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise TuneloopError(
                f"{path}, line {lineno}: not a metrics record ({type(e).__name__}: {e}); expected JSON like "
                '{"kind": "val", "step": 10, "epoch": 0.5, "loss": 1.2}'
            ) from None
    curves.train.sort()
    curves.val.sort()
    return curves


def overfitting(val_losses: list[float], window: int) -> bool:
    """Whether validation loss rose at each of the last `window` evaluations.

    Needs `window + 1` validation losses; with fewer it cannot tell and says False.

    >>> overfitting([2.0, 1.5, 1.6, 1.7, 1.8], window=3)
    True
    >>> overfitting([2.0, 1.5, 1.6, 1.55, 1.8], window=3)
    False
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    tail = val_losses[-(window + 1) :]
    return len(tail) == window + 1 and all(b > a for a, b in zip(tail, tail[1:]))


def curve_summary(curves: Curves, window: int) -> dict[str, Any]:
    """The numbers the report states about the curves: best validation step and the overfit flag.

    >>> curve_summary(Curves(val=[(10, 2.0), (20, 1.5), (30, 1.6)]), window=1)["best_val_step"]
    20
    """
    val = [loss for _, loss in curves.val]
    best = min(curves.val, key=lambda sv: sv[1]) if curves.val else None
    return {
        "train_points": len(curves.train),
        "val_points": len(curves.val),
        "final_train_loss": curves.train[-1][1] if curves.train else None,
        "final_val_loss": val[-1] if val else None,
        "best_val_loss": best[1] if best else None,
        "best_val_step": best[0] if best else None,
        "overfit_window": window,
        "overfitting": overfitting(val, window),
    }
