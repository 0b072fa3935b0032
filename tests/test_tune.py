"""Hyperparameter search on a tiny model and a toy task: it finds a good learning rate, resumes
after a kill without repeating trials, prunes a diverging trial, and rejects a bad space early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tuneloop import train, tune
from tuneloop.config import RunConfig, load_config
from tuneloop.errors import TuneloopError
from tuneloop.models import build_tiny
from postgres import pg_server, pg_url  # noqa: F401  (fixtures: a real PostgreSQL server)

WORDS = "red green blue black white pink gray brown".split()


def _toy_data(folder: Path) -> Path:
    """A learnable generate task: the answer repeats the last word of the question."""
    folder.mkdir(parents=True, exist_ok=True)

    def rows(n: int, offset: int) -> list[dict]:
        out = []
        for i in range(n):
            a, b = WORDS[(i + offset) % 8], WORDS[(3 * i + offset) % 8]
            msgs = [{"role": "user", "content": f"say {a} {b}"}, {"role": "assistant", "content": b}]
            out.append({"id": f"{offset}-{i}", "messages": msgs, "meta": {}})
        return out

    for split, n, off in (("train", 64, 0), ("val", 16, 1), ("test", 16, 2)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows(n, off)))
    (folder / "manifest.json").write_text(json.dumps({"task": "generate", "counts": {}}))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tune")
    return build_tiny("llama", root / "tiny"), _toy_data(root / "data")


def _cfg(setup: tuple[Path, Path], study: Path, **tune_fields) -> RunConfig:
    model, data = setup
    return load_config(None, {
        "task": "generate", "base": str(model), "seed": 0,
        "train": {"data": str(data), "method": "full", "batch_size": 8, "max_length": 32, "eval_every": 4,
                  "save_every": 100, "patience": None, "warmup": 0.0, "precision": "fp32"},
        "tune": {"out": str(study), "max_steps": 12, **tune_fields},
    })


def test_bad_space_is_rejected_before_training(setup, tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="'learning_rate' does not exist"):
        tune.run(_cfg(setup, tmp_path / "s1", space={"learning_rate": [0.1]}, trials=2))
    with pytest.raises(TuneloopError, match="must not exceed"):
        _cfg(setup, tmp_path / "s2", space={"lr": {"low": 0.1, "high": 0.01}}, trials=2)
    with pytest.raises(TuneloopError, match="tune.trials"):
        _cfg(setup, tmp_path / "s3", space={"lr": [0.1]}, trials=0)
    with pytest.raises(TuneloopError, match="invalid config"):
        tune.run(_cfg(setup, tmp_path / "s4", space={"batch_size": [0, 8]}, trials=2))
    assert not (tmp_path / "s1" / "trials").exists() and not (tmp_path / "s4" / "trials").exists()


def test_search_finds_a_better_lr_than_a_bad_one(setup, tmp_path: Path) -> None:
    cfg = _cfg(setup, tmp_path / "study", space={"lr": {"low": 1e-4, "high": 5e-2, "log": True}},
               trials=3, sampler="random", pruner="none")
    result = tune.run(cfg)
    bad = cfg.model_copy(deep=True)
    bad.train.lr, bad.train.out, bad.train.max_steps = 1e-6, tmp_path / "bad", 12
    bad_loss = train.run(bad).best_val_loss
    assert result.best_value < bad_loss - 0.5, (result.best_value, bad_loss)
    assert result.best_params["lr"] > 1e-4
    best = load_config(result.best_config)  # a runnable YAML with the winning value
    assert best.train.lr == pytest.approx(result.best_params["lr"])
    assert "Optimisation history" in result.report.read_text()


def test_killed_study_resumes_without_repeating_trials(setup, tmp_path: Path) -> None:
    cfg = _cfg(setup, tmp_path / "study", space={"lr": {"low": 1e-3, "high": 3e-2, "log": True}},
               trials=3, sampler="random", pruner="none")
    from tuneloop.config import save_config

    save_config(cfg, tmp_path / "run.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "tune", "-c", str(tmp_path / "run.yaml")], env=env)
    deadline = time.time() + 120
    while not (tmp_path / "study" / "trials" / "001").exists():  # the second trial has started
        assert proc.poll() is None and time.time() < deadline, "tune exited or stalled before trial 1"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    storage = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    first = optuna.load_study(study_name="tuneloop", storage=storage).trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE

    result = tune.run(cfg)
    trials = optuna.load_study(study_name="tuneloop", storage=storage).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and result.states["COMPLETE"] == 3
    assert trials[0].params == first.params and trials[0].value == first.value  # not re-run
    assert len(trials) == 4  # 3 finished + the one that was killed, never re-started as trial 0


def test_diverging_trial_is_pruned_early(setup, tmp_path: Path) -> None:
    good = _cfg(setup, tmp_path / "study", space={"lr": {"low": 5e-3, "high": 1e-2}}, trials=2, pruner="median")
    tune.run(good)
    bad = _cfg(setup, tmp_path / "study", space={"lr": {"low": 0.5, "high": 0.9}}, trials=3, pruner="median")
    bad.train.max_grad_norm = None  # let it diverge
    result = tune.run(bad)
    last = optuna.load_study(study_name="tuneloop", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}").trials[-1]
    assert last.state == optuna.trial.TrialState.PRUNED
    assert max(last.intermediate_values) < 12  # stopped before its step budget
    assert result.states["PRUNED"] == 1


NO_DRIVER = """
import sys
sys.modules["psycopg"] = None  # as if psycopg 3 were not installed
from tuneloop.cli import main
sys.argv = ["tuneloop", *sys.argv[1:]]
main()
"""


def test_a_postgresql_storage_without_its_driver_says_what_to_install(setup, tmp_path: Path) -> None:
    _, data = setup
    args = ["tune", "--data", str(data), "--out", str(tmp_path / "study"), "--trials", "1",
            "--storage", "postgresql://ann:hunter2@db.example:5432/studies"]
    proc = subprocess.run([sys.executable, "-c", NO_DRIVER, *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"}, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error")] == [
        "error: the tune storage (--storage) postgresql+psycopg://ann:***@db.example:5432/studies needs a database "
        "driver that is not installed (psycopg): pip install 'tuneloop[postgres]' (psycopg 3; or: pip install 'psycopg[binary]')"]
    with pytest.raises(TuneloopError, match="neither a file path nor a database URL"):
        tune.run(_cfg(setup, tmp_path / "s", trials=1, storage="postgresql:/ann@db/studies"))
    assert not (tmp_path / "s" / "postgresql:").exists()


def test_a_study_on_postgresql_is_shared_and_resumed(setup, pg_url: str, tmp_path: Path) -> None:
    cfg = _cfg(setup, tmp_path / "study", space={"lr": [1e-3, 1e-2]}, trials=1, sampler="grid", pruner="none", storage=pg_url)
    tune.run(cfg)
    again = tune.run(cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"trials": 2, "out": tmp_path / "other"})}))
    trials = optuna.load_study(study_name="tuneloop", storage=pg_url.replace("postgresql://", "postgresql+psycopg://")).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"] and again.states["COMPLETE"] == 2
    assert {t.params["lr"] for t in trials} == {1e-3, 1e-2}  # the second worker did not repeat the first's trial
    password = pg_url.split(":")[2].split("@")[0]
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".yaml", ".json", ".html") and p.is_file()]
    assert any(p.name == "best.yaml" for p in written) and any("trials" in p.parts for p in written)
    assert not [p for p in written if password in p.read_text(encoding="utf-8", errors="replace")]


def _open_storage(url: str, out: str) -> str:
    tune._storage(load_config(None, {"tune": {"out": out, "storage": url, "trials": 1}}), Path(out))
    return "ok"


def test_workers_starting_at_once_on_an_empty_postgresql_database_all_open_the_study(pg_url: str, tmp_path: Path) -> None:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:  # Optuna's create_all raced here before the lock
        assert pool.starmap(_open_storage, [(pg_url, str(tmp_path))] * 4) == ["ok"] * 4
