"""Training on tiny models: loss goes down, the right weights change, resume is exact, merge is faithful."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny import kill_cli_when, write_data
from tuneloop import runs, train
from tuneloop.config import RunConfig, load_config
from tuneloop.errors import TuneloopError
from tuneloop.losses import validation_loss

# Single-threaded fp32 keeps tiny runs fast and exactly repeatable on a shared 2-core machine.
FAST = {"seed": 0, "train.threads": 1, "train.precision": "fp32", "train.batch_size": 8, "train.epochs": 3,
        "train.eval_every": 4, "train.save_every": 4, "train.patience": None, "train.warmup": 0.1}


def _cfg(base: Path, data: Path, out: Path, **over: object) -> RunConfig:
    return load_config(None, {**FAST, "base": str(base), "train.data": data, "train.out": out, **over})


def _rows(data: Path, split: str = "val") -> list[dict]:
    return [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("gen") / "data", "generate")


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("cls") / "data", "classify")


@pytest.fixture(scope="module")
def lora_run(tiny_llama: Path, gen_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    train.run(_cfg(tiny_llama, gen_data, out, **{"train.lr": 1e-2}))
    return out


# 64 examples in batches of 8 for 3 epochs: 24 steps; 12 with 2 micro-batches a step, or with
# packing (2 examples of ~70 tokens in a row of 160).
CASES = [  # task, classify_as, base, method, settings exercised on the way, steps
    ("generate", "generate", "llama", "full", {"train.packing": True, "train.max_length": 160}, 12),
    ("classify", "generate", "llama", "lora", {"train.precision": "bf16", "train.grad_accum": 2}, 12),
    ("classify", "generate", "llama", "full", {"train.gradient_checkpointing": True}, 24),
    ("classify", "head", "bert", "lora", {}, 24),
    ("classify", "head", "bert", "full", {}, 24),
    ("classify", "head", "llama", "lora", {}, 24),
]


@pytest.mark.parametrize("task,classify_as,base,method,extra,steps", CASES)
def test_validation_loss_goes_down(task, classify_as, base, method, extra, steps, request, tmp_path: Path) -> None:
    data = request.getfixturevalue("gen_data" if task == "generate" else "cls_data")
    lr = 1e-2 if method == "lora" else 3e-3
    out = tmp_path / "run"
    result = train.run(_cfg(request.getfixturevalue(f"tiny_{base}"), data, out, **{
        "train.method": method, "train.classify_as": classify_as, "train.lr": lr, **extra}))
    rows = _rows(data)
    tuned = validation_loss(runs.load_trained(out), rows)
    untuned = validation_loss(runs.load_trained(out, base_only=True), rows)
    assert tuned < untuned * 0.97, (tuned, untuned)
    assert tuned == pytest.approx(result.best_val_loss, rel=1e-3)  # RUN/model holds the best weights
    assert result.steps == steps and result.tokens_per_s > 0


def test_run_folder_metrics_and_summary(lora_run: Path) -> None:
    lines = [json.loads(x) for x in (lora_run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    val_lines = [x for x in lines if x["kind"] == "val"]
    assert [x["step"] for x in train_lines] == list(range(1, 25))
    assert set(train_lines[0]) == {"kind", "step", "epoch", "loss", "lr", "tokens_per_s"}
    assert set(val_lines[0]) == {"kind", "step", "epoch", "loss"}
    assert [x["step"] for x in val_lines] == [4, 8, 12, 16, 20, 24]
    assert val_lines[-1]["loss"] < val_lines[0]["loss"]
    summary = json.loads((lora_run / "train_summary.json").read_text())
    assert summary["steps"] == 24 and summary["tokens_seen"] > 0 and summary["peak_rss_mib"] > 0
    assert summary["best_val_loss"] == min(x["loss"] for x in val_lines)
    ckpts = sorted(p.name for p in (lora_run / "checkpoints").iterdir())
    assert ckpts == [f"best-{summary['best_step']:06d}", "step-000020", "step-000024"]  # keep_last 2 + best
    model_files = {p.name for p in (lora_run / "model").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tuneloop.json"} <= model_files
    assert load_config(lora_run / "config.yaml").task == "generate"


def test_lora_changes_only_lora_weights(tiny_llama: Path, gen_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_llama, gen_data, tmp_path / "run", **{"train.max_steps": 3, "task": "generate"})
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    trainer = train.sft_trainer(cfg, run_dir).trainer
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    # fit() loads the best weights at the end; either way only adapter weights may differ from the start.
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("lora_B" in k or "lora_A" in k for k in changed), changed


def test_merge_gives_the_same_logits_as_adapter_on_base(lora_run: Path, tiny_llama: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = runs.export(lora_run)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), lora_run / "model").eval()
    ids = torch.tensor([[5, 17, 99, 42, 7, 300, 12]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
        assert not torch.allclose(base(ids).logits, merged(ids).logits, atol=1e-3)  # training did change it
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    assert (runs.export(lora_run, merge=False) / "adapter_model.safetensors").is_file()


def test_resume_after_sigkill_equals_uninterrupted(tiny_llama: Path, gen_data: Path, tmp_path: Path) -> None:
    settings = {"base": str(tiny_llama), "seed": 3, "train": {
        "data": str(gen_data), "max_steps": 150, "batch_size": 4, "grad_accum": 2, "lr": 5e-3, "threads": 1,
        "precision": "fp32", "eval_every": 25, "save_every": 10, "patience": None, "lora": {"dropout": 0.1}}}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**settings, "train": {**settings["train"], "out": str(killed)}}))
    kill_cli_when(["train", "-c", str(config)], killed / "checkpoints" / "step-000030")
    assert not (killed / "train_summary.json").exists(), "the run finished before it was killed"
    resumed = train.resume(killed)
    reference = train.run(load_config(config, {"train.out": whole}))
    assert resumed.steps == reference.steps == 150
    a = load_file(killed / "checkpoints" / "step-000150" / "adapter.safetensors")
    b = load_file(whole / "checkpoints" / "step-000150" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (killed, whole)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # same steps, logged once each


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_llama: Path, cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"

    def press_ctrl_c(step: int, val_loss: float) -> None:
        if step == 8:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TuneloopError, match="interrupted at step 8.*--resume"):
        train.run(_cfg(tiny_llama, cls_data, out, **{"train.save_every": 100}), on_validate=press_ctrl_c)
    assert (out / "checkpoints" / "step-000008").is_dir()
    assert train.resume(out).steps == 24


def test_early_stopping_keeps_the_best(tiny_llama: Path, gen_data: Path, tmp_path: Path) -> None:
    seen: list[float] = []
    result = train.run(_cfg(tiny_llama, gen_data, tmp_path / "run", **{
        "train.method": "full", "train.lr": 0.5, "train.schedule": "constant", "train.warmup": 0.0,
        "train.eval_every": 1, "train.patience": 2}), on_validate=lambda step, loss: seen.append(loss))
    assert result.info["stopped"] == "early_stopping" and result.steps < 24
    assert result.best_val_loss == min(seen) and seen[-1] > min(seen) and seen[-2] > min(seen)


def test_bad_input_is_a_one_line_error(tiny_llama: Path, gen_data: Path, cls_data: Path, tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="manifest.json does not exist"):
        train.run(_cfg(tiny_llama, tmp_path / "nothing", tmp_path / "r0"))
    empty = write_data(tmp_path / "empty", "generate", n_val=0)
    with pytest.raises(TuneloopError, match="val.jsonl has no rows"):
        train.run(_cfg(tiny_llama, empty, tmp_path / "r1"))
    with pytest.raises(TuneloopError, match="is not a model folder"):
        train.run(_cfg(tmp_path, gen_data, tmp_path / "r2"))
    with pytest.raises(TuneloopError, match="matches no module.*q_proj"):
        train.run(_cfg(tiny_llama, gen_data, tmp_path / "r3", **{"train.lora.target_modules": ["attn_qkv"]}))
    with pytest.raises(TuneloopError, match="max_length 8 is below the prompt length"):
        train.run(_cfg(tiny_llama, cls_data, tmp_path / "r4", **{"train.max_length": 8}))


def test_cli_prints_one_line_without_traceback(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "from tuneloop.cli import main; main()", "train", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    # A wide terminal: rich wraps long lines at the width it detects (80 columns in a pipe).
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "COLUMNS": "400"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "tuneloop prepare" in lines[0], proc.stderr


def test_a_run_folder_is_not_overwritten(lora_run: Path, tiny_llama: Path, gen_data: Path) -> None:
    with pytest.raises(TuneloopError, match="already holds a training run.*--resume"):
        train.run(_cfg(tiny_llama, gen_data, lora_run))
    assert train.resume(lora_run).steps == 24  # a finished run just reports


def test_a_shared_prefix_gives_the_same_loss_and_gradients(tiny_llama: Path, cls_data: Path) -> None:
    from tuneloop.encode import collate, encode_rows
    from tuneloop.losses import loss_sum
    from tuneloop.models import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_llama), load_model(tiny_llama, "lm", attn_implementation="eager")
    encs, _ = encode_rows(_rows(cls_data)[:6], tok, task="classify", kind="lm", max_length=128, labels=["negative", "positive"])
    rows = [[i] for i in range(6)]
    results = []
    for share in (False, True):
        batch = collate(encs, rows, tok.pad_token_id, share_prefix=share)
        assert ("prefix_ids" in batch) == share
        model.zero_grad()
        loss = loss_sum(model, batch, "lm")
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert batch["prefix_ids"].shape[1] >= 10  # the system prompt is computed once
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_lm_head_loss_equals_plain_cross_entropy(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    from tuneloop import losses

    monkeypatch.setattr(losses, "CHUNK", 7)  # several chunks and a ragged last one
    torch.manual_seed(0)
    hidden = torch.randn(30, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)  # trainable, as in full fine-tuning of a tied head
    targets = torch.randint(0, 50, (30,))
    grads = []
    for fused in (True, False):
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = (losses.linear_cross_entropy(hidden, weight, targets) if fused
                    else torch.nn.functional.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum"))
        (loss * 0.5).backward()
        grads.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(grads[0], grads[1]):
        assert torch.allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.integration
def test_fine_tunes_the_default_model_for_a_few_steps(tmp_path: Path) -> None:
    data = write_data(tmp_path / "data", "classify", n_train=48, n_val=16)
    out = tmp_path / "run"
    result = train.run(load_config(None, {
        "base": "default", "train.data": data, "train.out": out, "train.max_steps": 6, "train.batch_size": 8,
        "train.lr": 1e-3, "train.max_length": 64, "train.eval_every": 3, "train.save_every": 3}))
    assert result.info["base"].endswith(tuple("0123456789abcdef")) and result.info["bf16"] in (True, False)
    rows = _rows(data)
    tuned = validation_loss(runs.load_trained(out), rows)
    untuned = validation_loss(runs.load_trained(out, base_only=True), rows)
    assert tuned < untuned
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(runs.export(out))
    assert merged.config.vocab_size == 49152
