"""Data preparation (`tuneloop prepare`): load, validate, clean, redact PII, deduplicate, split, report.

`run(cfg)` is the stage's entry point; `content_id` gives any example the id prepare gives it.
"""

from tuneloop.data.dedup import content_id
from tuneloop.data.pipeline import PrepareResult, run

__all__ = ["PrepareResult", "content_id", "run"]
