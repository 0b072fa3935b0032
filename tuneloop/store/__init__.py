"""One SQLAlchemy storage layer: the feedback store (and the registry's database handling).

SQLite (WAL) is the embedded default; a `postgresql://` URL lets several machines share one
database (driver: psycopg 3, `pip install 'tuneloop[postgres]'`). `tuneloop.store.db` resolves
paths and URLs, masks passwords and creates versioned schemas race-free.
"""

from __future__ import annotations

from tuneloop.store.db import mask, resolve
from tuneloop.store.feedback import MAX_TEXT_CHARS, FeedbackError, FeedbackStore, exists, parse_rating

__all__ = ["MAX_TEXT_CHARS", "FeedbackError", "FeedbackStore", "exists", "mask", "parse_rating", "resolve"]
