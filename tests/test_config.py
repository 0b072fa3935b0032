from pathlib import Path

import pytest

from tuneloop.config import load_config, save_config
from tuneloop.errors import TuneloopError


def test_yaml_then_cli_overrides(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text("task: classify\ntrain:\n  lr: 0.001\n  lora:\n    r: 8\n")
    cfg = load_config(p, {"train.lr": 0.01, "train.batch_size": None})
    assert cfg.task == "classify"
    assert cfg.train.lr == 0.01  # the CLI wins
    assert cfg.train.lora.r == 8  # the YAML value stays
    assert cfg.train.batch_size == 8  # None means "not given": the default stays


def test_error_names_field_value_and_allowed(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  method: qlora\n")
    with pytest.raises(TuneloopError) as e:
        load_config(p)
    msg = str(e.value)
    assert "train.method" in msg and "'qlora'" in msg and "'lora' or 'full'" in msg


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(TuneloopError, match="train.lrr"):
        load_config(None, {"train.lrr": 1.0})


def test_fractions_leave_rows_for_training() -> None:
    with pytest.raises(TuneloopError, match="val_fraction \\+ test_fraction"):
        load_config(None, {"prepare.val_fraction": 0.5, "prepare.test_fraction": 0.5})


def test_save_roundtrip(tmp_path: Path) -> None:
    cfg = load_config(None, {"task": "classify", "train.out": tmp_path / "run"})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
