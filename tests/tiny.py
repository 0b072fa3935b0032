"""Toy data sets a tiny model can learn in a few steps, written in the layout `tuneloop prepare` writes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

POSITIVE = ["good", "great", "happy", "love"]
NEGATIVE = ["bad", "terrible", "sad", "hate"]
FILLER = ["the", "movie", "food", "service", "was", "a", "people", "city", "year", "film"]


def _sentence(rng: random.Random, word: str) -> str:
    words = rng.sample(FILLER, 4)
    words.insert(rng.randrange(5), word)
    return " ".join(words)


def _row(rng: random.Random, task: str, i: int) -> dict:
    positive = rng.random() < 0.5
    text = _sentence(rng, rng.choice(POSITIVE if positive else NEGATIVE))
    label = "positive" if positive else "negative"
    if task == "classify":
        return {"id": str(i), "text": text, "label": label, "meta": {}}
    messages = [
        {"role": "system", "content": "Answer yes or no."},
        {"role": "user", "content": f"is this happy: {text}"},
        {"role": "assistant", "content": "yes it is" if positive else "no it is not"},
    ]
    return {"id": str(i), "messages": messages, "meta": {}}


def write_data(out: Path, task: Literal["classify", "generate"], n_train: int = 64, n_val: int = 16, seed: int = 0) -> Path:
    """Write train/val/test.jsonl and manifest.json for a toy sentiment task; return `out`."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "val": n_val, "test": n_val}
    i = 0
    for split, n in sizes.items():
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(_row(rng, task, i)) + "\n")
                i += 1
    manifest = {"task": task, "labels": ["negative", "positive"] if task == "classify" else None, "counts": sizes}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def kill_cli_when(args: list[str], marker: Path, timeout: float = 240) -> None:
    """Run `tuneloop ARGS` in a child process and SIGKILL it as soon as `marker` exists (a checkpoint)."""
    cmd = [sys.executable, "-c", "from tuneloop.cli import main; main()", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"no {marker.name} within {timeout:.0f} s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
