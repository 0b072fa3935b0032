"""The overfitting check on a run's training curves (`tuneloop.runs.read_curves` reads them)."""

from __future__ import annotations

from typing import Any

from tuneloop.runs import Curves


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
