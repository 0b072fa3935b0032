"""Hyperparameter search (`tuneloop tune`): Optuna over the fields of the `train` section.

Each trial is an ordinary training run in `STUDY/trials/<n>/` (the one training loop, no second
one); its validation losses are reported to Optuna so hopeless trials are pruned early. The study
lives in an Optuna storage (SQLite in the study folder by default), so a killed search resumes
without repeating finished trials and several workers can share one study.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import optuna
from pydantic import BaseModel
from rich.table import Table

from tuneloop import report, threads
from tuneloop.config import ParamRange, RunConfig, TrainConfig, save_config
from tuneloop.errors import TuneloopError

# Short names users write in `tune.space`, beside any `train` field path (`lora.r`, `lr`, ...).
ALIASES = {"dropout": "lora.dropout", "rank": "lora.r", "r": "lora.r", "alpha": "lora.alpha"}
# Steps a trial's heartbeat may miss before another worker declares it dead (a killed process).
HEARTBEAT_S = 10
GRACE_S = 30


@dataclass
class TuneResult:
    """What a search found: the best trial and where its evidence lies."""

    study_dir: Path
    direction: str
    objective: str
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    report: Path
    states: dict[str, int] = field(default_factory=dict)
    refit_dir: Path | None = None

    def summary(self) -> Table:
        """A rich table of the search outcome."""
        t = Table(title=f"tuneloop tune — {self.study_dir}", show_header=False)
        t.add_row("objective", f"{self.objective} ({self.direction})")
        t.add_row("trials", ", ".join(f"{k.lower()} {v}" for k, v in self.states.items()))
        t.add_row("best value", "—" if self.best_value is None else f"{self.best_value:.4f}")
        for k, v in self.best_params.items():
            t.add_row(f"  {k}", f"{v:.3g}" if isinstance(v, float) else str(v))
        t.add_row("best config", str(self.best_config or "—"))
        if self.refit_dir:
            t.add_row("refit run", str(self.refit_dir))
        t.add_row("report", str(self.report))
        return t


def default_space(cfg: RunConfig) -> dict[str, ParamRange | list[Any]]:
    """A sensible search space for the task and method when the YAML declares none."""
    full = cfg.train.method == "full"
    space: dict[str, ParamRange | list[Any]] = {
        "lr": ParamRange(low=1e-6 if full else 1e-5, high=1e-4 if full else 1e-3, log=True),
        "batch_size": [4, 8, 16],
        "warmup": ParamRange(low=0.0, high=0.1),
    }
    if not full:
        space["lora.r"] = [8, 16, 32]
    return space


def _field_path(name: str) -> list[str]:
    """Resolve a space key to a path inside the `train` section, or explain what exists."""
    parts = ALIASES.get(name, name).removeprefix("train.").split(".")
    model: type[BaseModel] = TrainConfig
    for i, part in enumerate(parts):
        if part not in model.model_fields:
            known = ", ".join(sorted(model.model_fields))
            raise TuneloopError(f"tune.space: parameter '{name}' does not exist in the train config; known: {known}")
        ann = model.model_fields[part].annotation
        sub = [a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if i < len(parts) - 1:
            if not sub:
                raise TuneloopError(f"tune.space: '{name}': '{part}' is not a section")
            model = sub[0]
    return parts


def _is_int_field(parts: list[str]) -> bool:
    model: type[BaseModel] = TrainConfig
    for part in parts[:-1]:
        model = next(a for a in (model.model_fields[part].annotation,) if issubclass(a, BaseModel))
    ann = model.model_fields[parts[-1]].annotation
    return ann is int or int in get_args(ann) and float not in get_args(ann)


def _with_params(cfg: RunConfig, params: dict[str, Any], out: Path | None) -> RunConfig:
    """A copy of `cfg` with the trial's parameters set (validated) and its own run folder."""
    data = cfg.model_dump()
    for name, value in params.items():
        d = data["train"]
        parts = _field_path(name)
        for p in parts[:-1]:
            d = d[p]
        d[parts[-1]] = value
    data["train"]["out"] = out
    try:
        return RunConfig.model_validate(data)
    except Exception as e:  # a value inside the space that the config rejects
        raise TuneloopError(f"tune.space produces an invalid config {params}: {e}") from None


def _check_space(cfg: RunConfig, space: dict[str, ParamRange | list[Any]]) -> None:
    """Fail before any training if a name is unknown or a value in the space is invalid."""
    if not space:
        raise TuneloopError("tune.space is empty: name at least one train field to search")
    for name, spec in space.items():
        _field_path(name)
        values = spec if isinstance(spec, list) else [spec.low, spec.high]
        if not values:
            raise TuneloopError(f"tune.space: '{name}' has an empty list of choices")
        for v in values:
            _with_params(cfg, {name: v}, None)


def _suggest(trial: optuna.Trial, name: str, spec: ParamRange | list[Any]) -> Any:
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    if _is_int_field(_field_path(name)):
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def _grid(space: dict[str, ParamRange | list[Any]]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            grid[name] = spec
        elif spec.step:
            n = int(round((spec.high - spec.low) / spec.step))
            grid[name] = [spec.low + i * spec.step for i in range(n + 1)]
        else:
            raise TuneloopError(f"tune.space: grid search needs a list or a step for '{name}'")
    return grid


def _sampler(cfg: RunConfig, space: dict[str, ParamRange | list[Any]]) -> optuna.samplers.BaseSampler:
    kind = cfg.tune.sampler
    if kind == "grid":
        return optuna.samplers.GridSampler(_grid(space), seed=cfg.seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(5, max(2, (cfg.tune.trials or 10) // 3)))


def _pruner(cfg: RunConfig) -> optuna.pruners.BasePruner:
    if cfg.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if cfg.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.tune.max_steps or "auto")
    return optuna.pruners.NopPruner()


def _storage(cfg: RunConfig, study_dir: Path) -> optuna.storages.BaseStorage:
    """The study's Optuna storage: `tune.storage` (a SQLite path or URL, or a PostgreSQL URL) or study.db.

    Raises:
        TuneloopError: an unsupported URL, a missing driver (the message names the package to
            install), or a database that cannot be reached — one line, password masked.
    """
    import sqlalchemy as sa

    from tuneloop.store import db

    what = "the tune storage (--storage)"
    eng = db.engine(cfg.tune.storage or (study_dir / "study.db").resolve(), what)
    url, sqlite = eng.url, eng.dialect.name == "sqlite"
    # The heartbeat lets a resumed or second worker recognise a trial whose process was killed
    # and mark it failed (then retried once) instead of waiting on it forever.
    try:
        # Workers starting at once on an empty PostgreSQL database would race creating Optuna's tables.
        with db.schema_lock(eng):
            return optuna.storages.RDBStorage(
                url.render_as_string(hide_password=False),
                engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True},
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except sa.exc.SQLAlchemyError as e:
        raise db.db_error(e, url, f"cannot open {what}") from None
    finally:
        eng.dispose()


def _masked(cfg: RunConfig) -> RunConfig:
    """`cfg` with the password in `tune.storage` replaced by `***`."""
    from tuneloop.store import mask

    if not cfg.tune.storage:
        return cfg
    return cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"storage": mask(cfg.tune.storage)})})


def _objective_name(cfg: RunConfig) -> str:
    if cfg.tune.objective != "auto":
        return cfg.tune.objective
    return "macro_f1" if cfg.task == "classify" else "val_loss"


def _val_macro_f1(run_dir: Path) -> float:
    """Macro-F1 of the trained run on the validation split (never the test split)."""
    from tuneloop.evaluate.stage import validation_macro_f1

    return validation_macro_f1(run_dir)


def _make_objective(cfg: RunConfig, space: dict[str, ParamRange | list[Any]], study_dir: Path, objective: str):
    from tuneloop import train

    # Optuna compares intermediate values in the study's direction; a maximised metric therefore
    # gets the negated validation loss as its intermediate value.
    sign = -1.0 if objective == "macro_f1" else 1.0

    def run_trial(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
        run_dir = study_dir / "trials" / f"{trial.number:03d}"
        if run_dir.exists():  # a retried trial starts clean
            shutil.rmtree(run_dir)
        tcfg = _with_params(cfg, params, run_dir)
        if cfg.tune.max_steps:
            tcfg.train.max_steps = cfg.tune.max_steps
        trial.set_user_attr("run_dir", str(run_dir))

        def on_validate(step: int, val_loss: float) -> None:
            trial.report(sign * val_loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (val loss {val_loss:.4f})")

        result = train.run(tcfg, on_validate=on_validate)
        trial.set_user_attr("best_val_loss", result.best_val_loss)
        return _val_macro_f1(run_dir) if objective == "macro_f1" else result.best_val_loss

    return run_trial


def _finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run(cfg: RunConfig) -> TuneResult:
    """Search the space in `cfg.tune`, resume a study that exists, and report the best trial.

    Args:
        cfg: The run config; `train` is the template every trial starts from, `tune` the search.

    Returns:
        The best trial's value, parameters and config file, and the study's HTML report.

    Raises:
        TuneloopError: an invalid space or budget, or missing data — before any training starts.
    """
    threads.claim("tune", cfg.train.threads)  # each trial claims again as `train`
    if cfg.tune.out is None:
        raise TuneloopError("tune.out is not set: give the study folder with --out or tune.out in the YAML")
    if cfg.train.data is None or not (Path(cfg.train.data) / "train.jsonl").is_file():
        raise TuneloopError(f"train.data ({cfg.train.data}) has no train.jsonl: run `tuneloop prepare` first")
    if cfg.tune.trials is None and cfg.tune.timeout is None:
        raise TuneloopError("tune needs a budget: set tune.trials and/or tune.timeout")
    manifest = Path(cfg.train.data) / "manifest.json"
    if manifest.is_file():  # the prepared data knows its task; the objective depends on it
        cfg = cfg.model_copy(update={"task": json.loads(manifest.read_text()).get("task", cfg.task)})
    space = cfg.tune.space or default_space(cfg)
    _check_space(cfg, space)
    study_dir = Path(cfg.tune.out)
    study_dir.mkdir(parents=True, exist_ok=True)
    objective = _objective_name(cfg)
    direction = "maximize" if objective == "macro_f1" else "minimize"
    storage = _storage(cfg, study_dir)
    # From here on every file written (study, trial and best configs, which the registry copies)
    # holds the storage URL with its password masked.
    cfg = _masked(cfg)
    save_config(cfg, study_dir / "config.yaml")

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage, sampler=_sampler(cfg, space), pruner=_pruner(cfg),
        study_name=cfg.tune.study_name, direction=direction, load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise TuneloopError(f"study '{cfg.tune.study_name}' optimises {study.direction.name.lower()}, not {direction}")
    todo = None if cfg.tune.trials is None else max(0, cfg.tune.trials - _finished(study))
    if todo != 0:
        callbacks = []
        if cfg.tune.trials is not None:
            # Counts trials of every worker sharing the storage, so N workers stop at N trials in all.
            states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            callbacks.append(optuna.study.MaxTrialsCallback(cfg.tune.trials, states=states))
        study.optimize(
            _make_objective(cfg, space, study_dir, objective), n_trials=todo, timeout=cfg.tune.timeout,
            callbacks=callbacks, catch=(TuneloopError,), gc_after_trial=True,
        )
    return _finish(cfg, study, study_dir, objective)


def _finish(cfg: RunConfig, study: optuna.Study, study_dir: Path, objective: str) -> TuneResult:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = _best(study)
    best_cfg_path = refit_dir = None
    if best is not None:
        best_cfg = _with_params(cfg, best.params, Path(best.user_attrs["run_dir"]))
        best_cfg_path = study_dir / "best.yaml"
        save_config(best_cfg, best_cfg_path)
        if cfg.tune.refit:
            refit_dir = refit(best_cfg, study_dir / "refit")
    (study_dir / "summary.json").write_text(json.dumps({
        "objective": objective, "direction": study.direction.name.lower(), "states": states,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
    }, indent=2, sort_keys=True))
    report = write_report(study, study_dir, objective)
    return TuneResult(
        study_dir=study_dir, direction=study.direction.name.lower(), objective=objective,
        best_value=None if best is None else best.value, best_params={} if best is None else best.params,
        best_config=best_cfg_path, report=report, states=states, refit_dir=refit_dir,
    )


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial if done else None


def refit(best_cfg: RunConfig, out: Path) -> Path:
    """Retrain the best configuration on train + validation data.

    The validation split is then part of training, so early stopping is off and the number of
    steps is the best trial's; the test split stays untouched for `tuneloop eval`.
    """
    from tuneloop import train

    src = Path(best_cfg.train.data)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    with (data / "train.jsonl").open("w", encoding="utf-8") as w:
        for split in ("train.jsonl", "val.jsonl"):
            w.write((src / split).read_text(encoding="utf-8"))
    for name in ("val.jsonl", "test.jsonl", "manifest.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, data / name)
    summary = json.loads((Path(best_cfg.train.out) / "train_summary.json").read_text())
    cfg = best_cfg.model_copy(deep=True)
    cfg.train.data, cfg.train.out, cfg.train.patience = data, out / "run", None
    cfg.train.max_steps = summary.get("steps") or cfg.train.max_steps
    started = time.time()
    train.run(cfg)
    (out / "refit.json").write_text(json.dumps({"seconds": time.time() - started, "steps": cfg.train.max_steps}))
    return out / "run"


def _trials_table(study: optuna.Study) -> str:
    rows = []
    for t in study.get_trials(deepcopy=False):
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        last_step = max(t.intermediate_values) if t.intermediate_values else "—"
        rows.append([t.number, t.state.name.lower(), "—" if t.value is None else t.value, params, last_step,
                     "—" if secs is None else f"{secs:.0f} s"])
    return report.table(["trial", "state", "value", "parameters", "last step", "time"], rows)


def _plots(study: optuna.Study) -> list[str]:
    import optuna.visualization.matplotlib as ovm

    out = []
    plots = [("Optimisation history", ovm.plot_optimization_history), ("Parameter importances", ovm.plot_param_importances),
             ("Slices", ovm.plot_slice), ("Parallel coordinates", ovm.plot_parallel_coordinate),
             ("Intermediate values (validation)", ovm.plot_intermediate_values)]
    for title, plot in plots:
        try:
            ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few finished trials for this plot
            out.append(report.section(title, f'<p class="muted">not available: {report.esc(e)}</p>'))
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        out.append(report.section(title, report.figure(fig, title)))
    return out


def write_report(study: optuna.Study, study_dir: Path, objective: str) -> Path:
    """Write `STUDY/tune_report.html`: the trials table and Optuna's plots of the search."""
    best = _best(study)
    head = "<p>No trial has finished yet.</p>" if best is None else (
        f'<p class="ok">Best: trial {best.number}, {objective} = {best.value:.4f} with '
        f"{report.esc(best.params)}. Runnable config: <code>best.yaml</code>.</p>"
    )
    sections = [report.section("Result", head), report.section("Trials", _trials_table(study)), *_plots(study)]
    return report.write(study_dir / "tune_report.html", report.page(f"Hyperparameter search — {study.study_name}",
                                                                    sections, subtitle=str(study_dir)))
