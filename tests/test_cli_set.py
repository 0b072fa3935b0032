"""Every config field can be set from the command line (`--set FIELD=VALUE`), checked as a YAML file is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import RunConfig, load_config, parse_sets
from tuneloop.errors import TuneloopError


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every field of a config model that is not itself a section."""
    out = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += _leaves(kind, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def _get(cfg: BaseModel, dotted: str) -> tuple[BaseModel, str]:
    *sections, leaf = dotted.split(".")
    for s in sections:
        cfg = getattr(cfg, s)
    return cfg, leaf


FIELDS = _leaves(RunConfig)


def test_the_walk_finds_the_fields_of_every_section() -> None:
    assert len(FIELDS) > 100
    assert {"seed", "train.warmup", "train.weight_decay", "train.schedule", "train.max_grad_norm", "train.lora.r",
            "train.dpo.beta", "loop.metric", "fairness.thresholds.max_flip_rate"} <= set(FIELDS)


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_can_be_set_by_name(field: str) -> None:
    default = _get(RunConfig(), field)
    value = getattr(*default)
    text = yaml.safe_dump(_json_value(field), default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    cfg = load_config(None, parse_sets([f"{field}={text}"]))
    section, leaf = _get(cfg, field)
    assert leaf in section.model_fields_set, f"--set {field}={text} did not set the field"
    assert getattr(section, leaf) == value


def _json_value(field: str) -> Any:
    value: Any = RunConfig().model_dump(mode="json")
    for part in field.split("."):
        value = value[part]
    return value


def test_values_are_yaml_and_null_sets_none() -> None:
    cfg = load_config(None, parse_sets(["train.warmup=0.1", "train.max_grad_norm=null", "train.lora.target_modules=[q_proj, v_proj]",
                                        "train.system_prompt=\"Answer: yes\"", "prepare.strip_html=false"]))
    t = cfg.train
    assert (t.warmup, t.max_grad_norm, t.lora.target_modules, t.system_prompt) == (0.1, None, ["q_proj", "v_proj"], "Answer: yes")
    assert cfg.prepare.strip_html is False


def test_bad_fields_get_the_same_error_as_in_a_yaml_file(tmp_path: Path) -> None:
    for text, yaml_doc in [("train.warmup=2", {"train": {"warmup": 2}}), ("train.lrr=1", {"train": {"lrr": 1}}),
                           ("train.schedule=cosin", {"train": {"schedule": "cosin"}})]:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(yaml_doc))
        with pytest.raises(TuneloopError) as from_file:
            load_config(path)
        with pytest.raises(TuneloopError) as from_cli:
            load_config(None, parse_sets([text]))
        assert str(from_cli.value).splitlines()[1:] == str(from_file.value).splitlines()[1:]
    for bad in ["train.warmup", "=1", "train..lr=1", "train.lr=[1"]:
        with pytest.raises(TuneloopError, match="--set"):
            parse_sets([bad])


def test_every_command_that_takes_a_config_takes_set() -> None:
    def commands(group: Any, path: str = "") -> list[tuple[str, Any]]:
        out = []
        for name, cmd in group.commands.items():  # a sub-app (`feedback`) is a group of commands
            out += commands(cmd, f"{path}{name} ") if hasattr(cmd, "commands") else [(f"{path}{name}", cmd)]
        return out

    with_config = {name: cmd for name, cmd in commands(typer.main.get_command(app)) if any(p.name == "config" for p in cmd.params)}
    assert {"prepare", "train", "eval", "fairness", "tune", "loop", "feedback export"} <= set(with_config)
    for name, cmd in with_config.items():
        assert any("--set" in p.opts for p in cmd.params), f"`tuneloop {name}` has no --set"


def test_the_cli_reports_a_bad_set_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "train.warmup=2"])
    assert result.exit_code != 0 and isinstance(result.exception, TuneloopError)
    assert "config field 'train.warmup' (got 2)" in str(result.exception)


def test_a_run_config_takes_nulls_from_an_extra_file_and_from_set(tmp_path: Path) -> None:
    from tuneloop.config import save_config
    from tuneloop.runs import load_run_config

    save_config(load_config(None, {"train.max_steps": 5, "train.patience": 4}), tmp_path / "config.yaml")
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  max_steps: null\n")
    cfg = load_run_config(tmp_path, extra, parse_sets(["train.patience=null", "eval.batch_size=4"]))
    assert (cfg.train.max_steps, cfg.train.patience, cfg.eval.batch_size) == (None, None, 4)
