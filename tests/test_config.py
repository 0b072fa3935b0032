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


# Hostile config files (issue 13, item 17): one clear, short line; never a traceback or a runaway parse.
LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def _error(path: Path, lines: int = 1) -> str:
    with pytest.raises(TuneloopError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.count("\n") < lines and len(msg) < 400, msg
    assert str(path) in msg
    return msg


def test_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_bytes(b"task: classify\nbase: caf\xe9\n")
    msg = _error(p)
    assert "not UTF-8" in msg and "0xe9" in msg and "save it as UTF-8" in msg


def test_billion_laughs_is_refused_quickly_with_a_short_message(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text(LAUGHS)
    assert len(LAUGHS) < 800
    assert "aliases" in _error(p)


def test_recursive_and_deeply_nested_yaml(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text("prepare:\n  inputs: &x [*x]\n")
    assert "refers to itself" in _error(p)
    p.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested" in _error(p)


def test_yaml_syntax_error_and_huge_values_stay_one_short_line(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  lr: 0.1\n - oops\n")
    assert "not valid YAML" in _error(p) and "line 3" in _error(p)
    p.write_text("train:\n  lr: " + "x" * 100_000 + "\n")
    assert "train.lr" in _error(p, lines=2)  # "invalid config in FILE:" and the field's line
    p.write_text("\x00\x01binary")
    assert "not valid YAML" in _error(p)


def test_values_python_cannot_hold_are_one_line(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text("seed: " + "9" * 5000 + "\n")
    assert "put it in quotes" in _error(p)
    p.write_text("base: 2024-13-45\n")
    assert "month must be in 1..12" in _error(p)


def test_small_anchors_and_aliases_and_a_bom_still_work(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_bytes(b"\xef\xbb\xbfseed: &s 3\nprepare:\n  near_dup_ngram: *s\n")
    cfg = load_config(p)
    assert cfg.seed == 3 and cfg.prepare.near_dup_ngram == 3


def test_cli_with_a_broken_config_prints_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tuneloop.cli import main

    p = tmp_path / "run.yaml"
    p.write_bytes(b"task: \xff\xfe\n")
    for command in (["prepare", "x.jsonl"], ["train"], ["tune"]):
        monkeypatch.setattr("sys.argv", ["tuneloop", *command, "--config", str(p)])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code == 1 and "not UTF-8" in err and "Traceback" not in err, (command, err)


def test_a_gate_without_a_paired_test_needs_a_margin(tmp_path: Path) -> None:
    """`loop.alpha: null` turns the paired test off: only a positive margin may then guard against noise."""
    p = tmp_path / "run.yaml"
    p.write_text("loop:\n  alpha: null\n")
    with pytest.raises(TuneloopError, match="noise"):
        load_config(p)
    p.write_text("loop:\n  alpha: null\n  margin: 0.02\n")
    assert load_config(p).loop.alpha is None
