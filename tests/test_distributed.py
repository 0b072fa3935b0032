"""Data-parallel training on 2 CPU processes (gloo) equals one process with the same global batch.

Tolerance: both runs do the same arithmetic in fp32, but in another order (two half batches with
their own padding, then a sum across processes), which moves results by ~1e-7 relative. Adam
divides each gradient by its running RMS, so for LoRA's B matrices, which start at zero, those
differences grow to a few 1e-6 over 6 steps, measured; the weights themselves move by ~1e-1.
atol 2e-5 leaves room for that and is still ~500x smaller than one Adam step (lr 1e-2): a
missing gradient sum moved them by 3e-2 in this test, a per-process mean loss by 2e-3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny import write_data
from tuneloop import dpo, runs, train
from tuneloop.config import DpoConfig, RunConfig, load_config, save_config
from tuneloop.errors import TuneloopError

ATOL = 2e-5
FAST = {"seed": 0, "train.threads": 1, "train.precision": "fp32", "train.eval_every": 3, "train.save_every": 3,
        "train.patience": None, "train.warmup": 0.1}
# name: task, per-process batch, training rows, settings. The classify case has 61 rows in global
# batches of 6: the last one has a single row, so process 1 has nothing to do in that step.
CASES = {
    "lora": ("generate", 4, 64, {"train.method": "lora", "train.lr": 1e-2, "train.max_steps": 6}),
    "full-grad-accum": ("classify", 3, 61, {"train.method": "full", "train.lr": 3e-3, "train.grad_accum": 2, "train.epochs": 1}),
}


def _cfg(base: Path, data: Path, out: Path, **over: object) -> RunConfig:
    return load_config(None, {**FAST, "base": str(base), "train.data": data, "train.out": out, **over})


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    folder = run / "checkpoints" / f"step-{step:06d}"
    lora = folder / "adapter.safetensors"
    return load_file(lora if lora.is_file() else folder / "model.safetensors")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), (k, float((a[k] - b[k]).abs().max()))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _tree(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("gen") / "data", "generate")


@pytest.mark.parametrize("case", CASES)
def test_two_processes_train_what_one_does_with_twice_the_batch(case: str, tiny_llama: Path, tmp_path: Path) -> None:
    task, batch, rows, extra = CASES[case]
    data = write_data(tmp_path / "data", task, n_train=rows)
    one = train.run(_cfg(tiny_llama, data, tmp_path / "one", **{**extra, "train.batch_size": 2 * batch}))
    two = train.run(_cfg(tiny_llama, data, tmp_path / "two", **{**extra, "train.batch_size": batch, "train.nproc": 2}))
    assert (one.info["processes"], two.info["processes"]) == (1, 2)
    assert two.steps == one.steps > 0
    # Every example was seen once per epoch, by one process: the same real and loss tokens.
    assert (two.info["tokens_seen"], two.info["loss_tokens"]) == (one.info["tokens_seen"], one.info["loss_tokens"])
    _assert_same_weights(_weights(tmp_path / "one", one.steps), _weights(tmp_path / "two", two.steps), ATOL)
    lines_one, lines_two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    # One line per step and validation: only rank 0 logs; training and validation losses agree.
    assert [(x["kind"], x["step"]) for x in lines_two] == [(x["kind"], x["step"]) for x in lines_one]
    assert [x["loss"] for x in lines_two] == pytest.approx([x["loss"] for x in lines_one], rel=1e-5)
    assert _tree(tmp_path / "two") == _tree(tmp_path / "one")  # no stray files from other ranks
    assert load_config(tmp_path / "two" / "config.yaml").train.nproc == 2
    assert runs.load_trained(tmp_path / "two").kind == "lm"


def test_resume_continues_a_two_process_run_exactly(tiny_llama: Path, gen_data: Path, tmp_path: Path) -> None:
    # Dropout draws random numbers in every process: a resume must draw the same ones.
    over = {"train.nproc": 2, "train.batch_size": 4, "train.max_steps": 6, "train.lr": 1e-2, "train.lora.dropout": 0.1}
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    train.run(_cfg(tiny_llama, gen_data, whole, **over))
    shutil.copytree(whole, crashed)
    # As if killed after the checkpoint of step 3: what came later is stale or was never written.
    for later in ("checkpoints/step-000006", "model"):
        shutil.rmtree(crashed / later)
    (crashed / "train_summary.json").unlink()
    result = train.resume(crashed)
    assert result.steps == 6 and result.info["processes"] == 2
    _assert_same_weights(_weights(crashed, 6), _weights(whole, 6), atol=1e-7)
    losses = [[(x["kind"], x["step"], x["loss"]) for x in _metrics(run)] for run in (crashed, whole)]
    assert losses[0] == losses[1]  # each step logged once, with the same loss


def test_errors_in_the_processes_reach_the_caller_as_one_message(tiny_llama: Path, gen_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_llama, gen_data, tmp_path / "r1", **{"train.nproc": 2, "train.lora.target_modules": ["attn_qkv"]})
    with pytest.raises(TuneloopError, match="matches no module.*q_proj"):
        train.run(cfg)
    with pytest.raises(TuneloopError, match="train.nproc 2 cannot report each validation"):
        train.run(_cfg(tiny_llama, gen_data, tmp_path / "r2", **{"train.nproc": 2}), on_validate=lambda step, loss: None)


def test_torchrun_launch_equals_one_process(tiny_llama: Path, gen_data: Path, tmp_path: Path) -> None:
    settings = {"base": str(tiny_llama), "seed": 0, "train": {
        "data": str(gen_data), "out": str(tmp_path / "torchrun"), "batch_size": 4, "max_steps": 6, "lr": 1e-2,
        "threads": 1, "precision": "fp32", "eval_every": 3, "save_every": 3, "patience": None, "warmup": 0.1}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "-m", "tuneloop.cli", "train", "-c", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train.run(load_config(config, {"train.out": tmp_path / "one", "train.batch_size": 8}))
    _assert_same_weights(_weights(tmp_path / "one", one.steps), _weights(tmp_path / "torchrun", one.steps), ATOL)
    assert load_config(tmp_path / "torchrun" / "config.yaml").train.nproc == 2  # what `--resume` starts again
    assert len(_metrics(tmp_path / "torchrun")) == len(_metrics(tmp_path / "one"))


def test_dpo_on_two_processes_tunes_what_one_does_with_twice_the_batch(tiny_llama: Path, gen_data: Path, tmp_path: Path) -> None:
    # DPO runs in the same loop: each process takes its share of every batch of pairs.
    sft = tmp_path / "sft"
    train.run(_cfg(tiny_llama, gen_data, sft, **{"train.max_steps": 2, "train.lr": 1e-2, "train.lora.dropout": 0.0}))
    one, two = Path(shutil.copytree(sft, tmp_path / "one")), Path(shutil.copytree(sft, tmp_path / "two"))
    save_config(load_config(two / "config.yaml", {"train.nproc": 2}), two / "config.yaml")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": json.loads(x)["messages"][:-1], "chosen": json.loads(x)["messages"][-1]["content"],
                                         "rejected": "i am not sure"}) + "\n"
                             for x in (gen_data / "train.jsonl").read_text().splitlines()[:16]))
    a = dpo.run(one, pairs, DpoConfig(beta=0.5, lr=1e-2, epochs=2, batch_size=4))
    b = dpo.run(two, pairs, DpoConfig(beta=0.5, lr=1e-2, epochs=2, batch_size=2))
    assert (a.info["processes"], b.info["processes"]) == (1, 2) and a.steps == b.steps == 8
    ckpt = f"dpo/checkpoints/step-{a.steps:06d}/adapter.safetensors"
    _assert_same_weights(load_file(one / ckpt), load_file(two / ckpt), ATOL)
    assert b.after == pytest.approx(a.after, rel=1e-4, abs=1e-5)
    assert [x["loss"] for x in _metrics(two) if x.get("phase") == "dpo"] == pytest.approx(
        [x["loss"] for x in _metrics(one) if x.get("phase") == "dpo"], rel=1e-5)
