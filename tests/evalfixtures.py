"""Synthetic runs for the evaluation and report tests: a run folder with curves, a manifest and
scored predictions, built without any model (the numbers come from seeded random predictions)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tuneloop.config import RunConfig, save_config
from tuneloop.evaluate.curves import curve_summary
from tuneloop.runs import read_curves
from tuneloop.evaluate.score import SystemOutput, score
from tuneloop.evaluate.stage import environment, write_outputs

LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def _noisy(truth: list[str], accuracy: float, rng: random.Random, unparseable: float = 0.0) -> list[str | None]:
    out: list[str | None] = []
    for t in truth:
        r = rng.random()
        out.append(None if r < unparseable else t if r < unparseable + accuracy else rng.choice(LABELS))
    return out


def write_curves(run: Path, *, overfit: bool) -> None:
    """A metrics.jsonl whose validation loss falls, then (if `overfit`) rises for 4 evaluations."""
    lines = []
    for step in range(1, 201):
        lines.append({"kind": "train", "step": step, "epoch": step / 100, "loss": 2.5 * 0.99**step + 0.2, "lr": 1e-4, "tokens_per_s": 300.0})
        if step % 25 == 0:
            k = step // 25
            val = 2.0 * 0.8**k + 0.4 + (0.3 * (k - 4) if overfit and k > 4 else 0.0)
            lines.append({"kind": "val", "step": step, "epoch": step / 100, "loss": val})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def make_run(root: Path, *, task: str = "classify", n: int = 120, overfit: bool = True, seed: int = 0) -> Path:
    """Write a complete evaluated run (config, curves, manifest, eval files) under `root`; return RUN."""
    rng = random.Random(seed)
    data, run = root / "data", root / "run"
    data.mkdir(parents=True)
    run.mkdir(parents=True)
    cfg = RunConfig.model_validate({"task": task, "train": {"data": str(data), "out": str(run)}, "eval": {"bootstrap": 200}})
    save_config(cfg, run / "config.yaml")
    # The shape `tuneloop prepare` writes (tuneloop/data/manifest.py), abridged.
    splits = {"test": n, "train": 4000, "val": 200}
    manifest: dict[str, Any] = {
        "task": task,
        "counts": {"read": 4500, "valid": 4420, "rejected": 80, "rejected_by_reason": {"empty text": 80},
                   "exact_duplicates": 120, "pii": {}, "splits": splits},
        "inputs": [{"format": "text_label", "path": "runs/demo/trec.jsonl", "role": "data", "rows": 4500, "sha256": "ab" * 32}],
        "length_stats": {"unit": "whitespace tokens", **{s: {"count": k, "mean": 9.8, "p90": 14, "max": 30} for s, k in splits.items()}},
    }
    if task == "classify":
        manifest["labels"] = LABELS
        manifest["counts"]["label_distribution"] = {s: {lb: k // 6 for lb in LABELS} for s, k in splits.items()}
    (data / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    write_curves(run, overfit=overfit)
    if task == "classify":
        truth = [rng.choice(LABELS) for _ in range(n)]
        rows = [{"id": f"r{i}", "input": f"question <{i}> & what is it?", "reference": t, "label": t} for i, t in enumerate(truth)]
        tuned, base = _noisy(truth, 0.85, rng, 0.02), _noisy(truth, 0.2, rng, 0.5)
        systems = {
            "tuned": SystemOutput(texts=[t or "I think so" for t in tuned], labels=tuned, loss=0.31),
            "base": SystemOutput(texts=[b or "The answer to this question is" for b in base], labels=base, loss=3.2),
            "baseline": SystemOutput(labels=_noisy(truth, 0.8, rng)),
        }
        labels: list[str] | None = LABELS
    else:
        refs = [f"The answer is {rng.choice(['yes', 'no', 'maybe'])} because of {i}." for i in range(n)]
        rows = [{"id": f"g{i}", "input": f"Question {i}?", "reference": r, "label": r} for i, r in enumerate(refs)]
        tuned_t = [r if rng.random() < 0.5 else "The answer is yes." for r in refs]
        base_t = ["I am a helpful assistant, let me think." if rng.random() < 0.8 else r for r in refs]
        systems = {"tuned": SystemOutput(texts=tuned_t, loss=0.9), "base": SystemOutput(texts=base_t, loss=2.4)}
        labels = None
    scored = score(rows, systems, task=task, labels=labels, n_boot=200, seed=seed)
    scored.metrics.update({
        "run": str(run), "test_file": str(data / "test.jsonl"), "data_hashes": {str(data / "test.jsonl"): "cd" * 32},
        "train_summary": {"steps": 200, "tokens_per_s": 301.5, "stopped": "max_steps"},
        "manifest": manifest, "curves": curve_summary(read_curves(run / "metrics.jsonl"), 3),
        "environment": environment(cfg), "config": cfg.model_dump(mode="json"),
    })
    write_outputs(run, scored)
    return run


def load(run: Path) -> dict[str, Any]:
    """RUN/eval/metrics.json as a dict."""
    return json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
