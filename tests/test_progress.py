"""Long stages report progress when stdout is not a terminal (CI logs, nohup, a file): a line every few seconds."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from tiny import write_data
from tuneloop import train
from tuneloop.config import load_config
from tuneloop.progress import track


def test_plain_lines_carry_step_loss_throughput_and_eta() -> None:
    out = Console(file=io.StringIO(), width=300)
    assert not out.is_terminal
    with track("training", 4, out, every=0) as update:
        for step in range(1, 5):
            update(step, loss=2.0 / step, **{"tok/s": 300.0})
    lines = out.file.getvalue().splitlines()
    assert len(lines) == 4
    assert re.fullmatch(r"training: step 4/4 · loss 0\.5000 · tok/s 300 · ETA 0:00:00", lines[-1]), lines[-1]
    assert all("ETA" in line for line in lines)


def test_plain_lines_are_spaced_out_but_the_last_one_always_shows() -> None:
    out = Console(file=io.StringIO(), width=300)
    with track("DPO", 1000, out, every=3600) as update:
        for step in range(1, 1001):
            update(step, loss=0.1)
    lines = out.file.getvalue().splitlines()
    assert [line.split(" · ")[0] for line in lines] == ["DPO: step 1/1000", "DPO: step 1000/1000"]


def test_a_training_run_in_a_log_file_prints_progress(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_data(tmp_path / "data", "generate", n_train=16, n_val=8)
    train.run(load_config(None, {"seed": 0, "base": str(tiny_llama), "train.data": data, "train.out": tmp_path / "run",
                                 "train.threads": 1, "train.precision": "fp32", "train.max_steps": 3, "train.batch_size": 8}))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training: step")]
    assert lines and lines[-1].startswith("training: step 3/3 · loss ") and "tok/s" in lines[-1] and "ETA" in lines[-1]
