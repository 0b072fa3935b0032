"""Data and simulated users for the feedback-loop demo (`examples/loop_demo.sh`).

    python examples/loop_demo.py split OUT_DIR
        TREC's unique questions, shuffled (seed 0), cut into initial.jsonl (what the first model
        learns from), pool.jsonl (questions users will ask later) and test.jsonl (the frozen test set).
    python examples/loop_demo.py users URL POOL.jsonl --key KEY
        Users ask the served model about every pool question (16 per /v1/classify request) and
        rate each answer through /v1/feedback: thumbs up when right, thumbs down with the right
        label when wrong (the TREC label plays the part of the user's correction).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import urllib.request

sys.path.insert(0, str(Path(__file__).parent))
from trec import trec_path  # noqa: E402

SIZES = {"initial": 1200, "pool": 2000, "test": 600}


def split(out: Path) -> None:
    """Write initial/pool/test JSONL files of distinct TREC questions."""
    seen: dict[str, dict[str, str]] = {}
    for line in trec_path().read_text(encoding="latin-1").splitlines():
        tag, _, question = line.strip().partition(" ")
        if question and question.lower() not in seen:
            seen[question.lower()] = {"text": question, "label": tag.partition(":")[0]}
    rows = list(seen.values())
    random.Random(0).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, n in SIZES.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[start:start + n]), encoding="utf-8")
        start += n
    print(f"{len(rows)} distinct questions -> " + ", ".join(f"{name} {n}" for name, n in SIZES.items()))


def _post(url: str, key: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:  # raises on 4xx/5xx
        return json.loads(resp.read())


def users(url: str, pool: Path, key: str, batch: int = 16) -> None:
    """Ask about every pool question and give feedback on every answer; print the served accuracy."""
    rows = [json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines() if line.strip()]
    right = 0
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        answer = _post(f"{url}/v1/classify", key, {"input": [r["text"] for r in chunk]})
        for item, row in zip(answer["data"], chunk):
            ok = item["label"] == row["label"]
            right += ok
            body = {"response_id": answer["id"], "index": item["index"], "rating": "up" if ok else "down"}
            if not ok:
                body["corrected"] = row["label"]
            _post(f"{url}/v1/feedback", key, body)
    print(f"served model ({answer['model']}) was right on {right}/{len(rows)} = {right / len(rows):.3f} of the users' questions; "
          f"{len(rows)} ratings and {len(rows) - right} corrections stored")


def main() -> None:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("out", type=Path)
    u = sub.add_parser("users")
    u.add_argument("url")
    u.add_argument("pool", type=Path)
    u.add_argument("--key", required=True)
    a = p.parse_args()
    split(a.out) if a.cmd == "split" else users(a.url, a.pool, a.key)


if __name__ == "__main__":
    main()
