"""Feedback: curation of what the server stored (responses + ratings) into training data.

`FeedbackStore` (`tuneloop.store`, re-exported here) records every response the server returns
and the feedback users give on it; `export(db, out, task=..., cfg=...)` turns that feedback into `feedback.jsonl` (SFT /
classification rows `tuneloop prepare` reads) and `preferences.jsonl` (DPO pairs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneloop.store.feedback import MAX_TEXT_CHARS, FeedbackError, FeedbackStore, parse_rating

if TYPE_CHECKING:
    from tuneloop.feedback.curate import ExportResult, export

__all__ = ["MAX_TEXT_CHARS", "ExportResult", "FeedbackError", "FeedbackStore", "export", "parse_rating"]


def __getattr__(name: str) -> Any:
    # Curation pulls in the data pipeline (~1 s of imports); every server worker process imports
    # the store, which needs only SQLAlchemy, so curation loads on first use.
    if name in ("ExportResult", "export"):
        from tuneloop.feedback import curate

        return getattr(curate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
