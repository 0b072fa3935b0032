"""The hostile file corpus (tests/fuzz/files, written by tests/fuzz/make_files.py; issue 13).

Every data file goes through `tuneloop prepare`, every config file through `load_config`. Expected:
no traceback (only TuneloopError, with a short message), every good row kept, exactly the expected
rows rejected, each reject naming its file, line and reason.
"""

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from datafixtures import make_cfg, read_jsonl

from tuneloop.config import load_config
from tuneloop.data import run
from tuneloop.errors import TuneloopError

FUZZ = Path(__file__).parents[1] / "fuzz"
FILES = FUZZ / "files"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FILES / "expected.json").read_text())
DATA = sorted(n for n, e in EXPECTED.items() if e["kind"] == "data")
CONFIGS = sorted(n for n, e in EXPECTED.items() if e["kind"] == "config")


def _short(msg: str, lines: int = 1) -> None:
    assert msg.count("\n") < lines and max(map(len, msg.splitlines() or [""])) < 400, msg[:2000]


def test_corpus_is_big_enough_and_matches_its_generator() -> None:
    assert len(DATA) + len(CONFIGS) >= 50 and len(CONFIGS) >= 15
    spec = importlib.util.spec_from_file_location("make_files", FUZZ / "make_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run python tests/fuzz/make_files.py and commit tests/fuzz/files"


@pytest.mark.parametrize("name", DATA)
def test_prepare_keeps_every_good_row_and_rejects_each_bad_one(name: str, tmp_path: Path) -> None:
    exp = EXPECTED[name]
    path = FILES / name
    out = tmp_path / "out"
    cfg = make_cfg(out, [path], task=exp["task"], val_fraction=0.0, test_fraction=0.0)
    if "error" in exp:
        with pytest.raises(TuneloopError) as e:
            run(cfg)
        assert exp["error"] in str(e.value)
        _short(str(e.value))
        return
    run(cfg)
    kept = [json.dumps(r["text"] if exp["task"] == "classify" else r["messages"]) for r in read_jsonl(out / "train.jsonl")]
    found = sorted(m for m in exp["good"] if any(m in k for k in kept))
    assert found == sorted(exp["good"]) and len(kept) == len(exp["good"]), kept
    rejects = read_jsonl(out / "rejects.jsonl")
    assert sorted(r["line"] for r in rejects) == sorted(exp["rejects"]), rejects
    for r in rejects:
        assert r["source"] == str(path) and r["kind"] and r["reason"], r
        _short(r["reason"])


@pytest.mark.parametrize("name", CONFIGS)
def test_config_file_loads_or_says_what_is_wrong_in_a_few_short_lines(name: str) -> None:
    exp = EXPECTED[name]
    path = FILES / name
    if exp["ok"]:
        load_config(path)
        return
    with pytest.raises(TuneloopError) as e:
        load_config(path)
    msg = str(e.value)
    assert exp["says"] in msg and str(path) in msg, msg[:2000]
    _short(msg, lines=22)  # "invalid config in FILE:" and at most 20 fields and "... and N more"
