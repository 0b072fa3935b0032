"""`tuneloop train`: fine-tune a base model (LoRA or full) in one visible loop.

run(cfg) → _Trainer: data and model set up, then `_Trainer.fit()` holds the loop: forward on the
positions that carry loss, `loss.backward()`, clipping, `optimizer.step()`, validation, early
stopping and atomic checkpoints from which `resume(run_dir)` continues exactly. With `train.nproc`
above 1, or under torchrun, every process runs this loop on its share of each global batch and
rank 0 writes the files (`tuneloop.distributed`).

A run folder holds `config.yaml` (resolved), `metrics.jsonl`, `checkpoints/step-N/` (the last few)
and `checkpoints/best-N/`, `model/` (the best adapter or weights + tokenizer + `tuneloop.json`) and
`train_summary.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tuneloop import checkpoint, distributed, models, runs
from tuneloop.config import RunConfig, load_config, save_config
from tuneloop.encode import Encoded, encode_rows, epoch_batches
from tuneloop.errors import TuneloopError
from tuneloop import losses
from tuneloop.losses import Exec, core, loss_sum, mean_loss

console = Console(stderr=True)
OnValidate = Callable[[int, float], None]


# ---------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What a finished run reports; the same numbers are in `RUN/train_summary.json`."""

    run_dir: Path
    best_val_loss: float
    steps: int
    tokens_per_s: float
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Table:
        """A two-column table of the run's summary for the CLI."""
        table = Table(title=f"training run {self.run_dir}", show_header=False)
        for key, value in self.info.items():
            table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else str(value))
        return table




@dataclass
class _State:
    """Everything about progress that a checkpoint must restore (plain values, saved as JSON)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    tokens_seen: int = 0  # real (non-padding) tokens
    loss_tokens: int = 0
    train_seconds: float = 0.0  # time inside optimizer steps only
    train_cpu_seconds: float = 0.0  # process CPU time inside optimizer steps (all threads)
    best_val_loss: float = math.inf
    best_step: int = -1
    bad_evals: int = 0  # validations since the last improvement
    last_val_step: int = -1
    stopped: str = ""



# ---------------------------------------------------------------- data and model


def _resolve_task(cfg: RunConfig, manifest: dict[str, Any]) -> RunConfig:
    """The data decides the task: the manifest's task wins over the config default."""
    task = manifest.get("task") or cfg.task
    if "task" in cfg.model_fields_set and cfg.task != task:
        console.print(f"[yellow]warning:[/] task {cfg.task} given, but the data was prepared for {task}; training {task}")
    if task == "classify" and not manifest.get("labels"):
        raise TuneloopError("manifest.json has no labels for a classify task; re-run `tuneloop prepare --task classify`")
    cfg = cfg.model_copy(deep=True)
    cfg.task = task
    return cfg


def _encode(cfg: RunConfig, tokenizer: Any, rows: list[dict], labels: list[str] | None, source: str) -> tuple[list[Encoded], int]:
    return encode_rows(
        rows, tokenizer, task=cfg.task, kind=runs.model_kind(cfg), max_length=cfg.train.max_length, labels=labels,
        system_prompt=cfg.train.system_prompt, source=source,
    )


def _build_model(cfg: RunConfig, base_path: Path | str, kind: runs.Kind, labels: list[str] | None, tokenizer: Any,
                 device: torch.device, bf16: bool) -> torch.nn.Module:
    """The base model with LoRA adapters (or all weights trainable), seeded, in train mode.

    With LoRA and bf16 the frozen base weights are stored in bf16 (no cast in every matmul, half the
    memory); what trains (adapters, a new head) stays fp32 for the optimizer.
    """
    torch.manual_seed(cfg.seed)  # a new head and the LoRA init depend on it
    t = cfg.train
    lora = t.method == "lora"
    model = models.load_model(
        base_path, kind, labels=labels, pad_token_id=tokenizer.pad_token_id, trust_remote_code=cfg.trust_remote_code,
        dtype=torch.bfloat16 if lora and bf16 else torch.float32,
        attn_implementation=models.attention(device, t.max_length, t.batch_size, base_path, t.attention),
    )
    return models.for_training(model, lora=t.lora if lora else None, kind=kind, base=cfg.base, bf16=bf16,
                               gradient_checkpointing=t.gradient_checkpointing)


# ---------------------------------------------------------------- the trainer


# ---------------------------------------------------------------- the trainer


class _Trainer:
    """One training run: set up from a resolved config, then `fit()` runs the loop."""

    def __init__(self, cfg: RunConfig, run_dir: Path, on_validate: OnValidate | None = None) -> None:
        models.quiet_transformers()
        t = cfg.train
        threads = t.threads or distributed.default_threads()
        if threads:
            torch.set_num_threads(threads)
        self.cfg, self.run_dir, self.on_validate = cfg, run_dir, on_validate
        self.ckpt_dir = run_dir / "checkpoints"
        self.kind = runs.model_kind(cfg)
        manifest = runs.read_manifest(Path(t.data))
        self.labels = manifest.get("labels") if cfg.task == "classify" else None
        self.base_path = models.resolve(cfg.base, task=cfg.task, classify_as=t.classify_as)
        self.tokenizer = models.load_tokenizer(self.base_path, cfg.trust_remote_code)
        self.train_set, dropped = _encode(cfg, self.tokenizer, runs.read_split(Path(t.data), "train"), self.labels, "train.jsonl")
        val_rows = runs.read_split(Path(t.data), "val")[: t.max_eval_examples]
        self.val_set, _ = _encode(cfg, self.tokenizer, val_rows, self.labels, "val.jsonl")
        if dropped:
            console.print(f"[yellow]warning:[/] {dropped} training rows dropped: their prompt is longer than "
                          f"max_length {t.max_length}")
        device = models.device()
        bf16 = models.use_bf16(t.precision, device)
        # Sharing a prefix needs a KV cache, which activation checkpointing turns off.
        self.ex = Exec(self.kind, device, bf16, self.tokenizer.pad_token_id, t.share_prefix and not t.gradient_checkpointing)
        self.model = _build_model(cfg, self.base_path, self.kind, self.labels, self.tokenizer, device, bf16).to(device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        distributed.replicate(self.params)
        self.optimizer = models.optimizer(self.params, t.lr, t.weight_decay, self.ex.device)
        self._order: tuple[int, list[list[list[int]]]] = (-1, [])
        self.batches_per_epoch = len(self._epoch(0))
        steps_per_epoch = math.ceil(self.batches_per_epoch / t.grad_accum)
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup"}.get(t.schedule, t.schedule)
        self.scheduler = get_scheduler(name, self.optimizer, round(t.warmup * self.total_steps), self.total_steps)
        self.state = _State()
        self.dropped, self.interrupted = dropped, False

    # ---- data order: a pure function of (seed, epoch), so a resumed run sees the same batches
    def _epoch(self, epoch: int) -> list[list[list[int]]]:
        t = self.cfg.train
        if self._order[0] != epoch:
            # Batches of the global micro-batch size: the order does not depend on the process count.
            batches = epoch_batches(self.train_set, t.batch_size * distributed.world(), self.cfg.seed * 100_003 + epoch,
                                    packing=t.packing and self.kind == "lm", group_by_length=t.group_by_length,
                                    max_length=t.max_length)
            self._order = (epoch, batches)
        return self._order[1]

    # ---- the loop
    def fit(self) -> TrainResult:
        """Train until max steps, the epochs, or early stopping; then write the model and summary."""
        t, s = self.cfg.train, self.state
        started = time.perf_counter()
        with self._progress() as bar, self._sigint():
            task = bar.add_task("training", total=self.total_steps, completed=s.step, loss=float("nan"), tps=0.0)
            while s.step < self.total_steps and not s.stopped:
                batches = self._epoch(s.epoch)
                group = batches[s.batch_in_epoch : s.batch_in_epoch + t.grad_accum]
                cpu = time.process_time()
                distributed.seed_step(self.cfg.seed, s.step)
                loss, tokens, seconds = self._step(distributed.shard_group(group))
                s.train_cpu_seconds += time.process_time() - cpu
                s.step += 1
                s.batch_in_epoch += len(group)
                s.tokens_seen += tokens
                s.train_seconds += seconds
                self._log({"kind": "train", "step": s.step, "epoch": round(s.epoch + s.batch_in_epoch / len(batches), 4),
                           "loss": loss, "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens / seconds})
                bar.update(task, completed=s.step, loss=loss, tps=tokens / seconds)
                self._after_step(epoch_done=s.batch_in_epoch >= len(batches))
        return self._finish(time.perf_counter() - started)

    def _step(self, group: list[list[list[int]]]) -> tuple[float, int, float]:
        """One optimizer step over a few micro-batches; the loss is the mean over all their loss tokens.

        With several processes, `group` is this process's share, the mean is over every process's
        loss tokens, and the summed gradients are those of the whole global batch.
        """
        t0 = time.perf_counter()
        micro = [self.ex.batch(self.train_set, rows) for rows in group]
        n_loss = int(distributed.sum_values(sum(losses.n_loss(b) for b in micro))[0])
        total = 0.0
        for batch in micro:
            with self.ex.autocast():
                loss = loss_sum(self.model, batch, self.kind) / n_loss
            loss.backward()
            total += float(loss.detach())
        distributed.sum_grads(self.params)
        if self.cfg.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.loss_tokens += n_loss
        total, tokens = distributed.sum_values(total, sum(int(b["n_tokens"]) for b in micro))
        return total, int(tokens), time.perf_counter() - t0

    def _after_step(self, epoch_done: bool) -> None:
        t, s = self.cfg.train, self.state
        if epoch_done:
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        last = s.step >= self.total_steps
        if s.step % t.eval_every == 0 or epoch_done or last:
            self._validate()
        if distributed.any_true(self.interrupted):  # every process stops after the same step
            s.stopped = "interrupted"
        if s.step % t.save_every == 0 or last or s.stopped:
            self._checkpoint()

    def _validate(self) -> None:
        t, s = self.cfg.train, self.state
        val = mean_loss(self.model, self.val_set, t.batch_size, self.ex)
        s.last_val_step = s.step
        self._log({"kind": "val", "step": s.step, "epoch": round(s.epoch + s.batch_in_epoch / self.batches_per_epoch, 4), "loss": val})
        if val < s.best_val_loss:
            s.best_val_loss, s.best_step, s.bad_evals = val, s.step, 0
            if distributed.is_main():
                checkpoint.atomic_dir(self.ckpt_dir / f"best-{s.step:06d}", lambda d: checkpoint.save_weights(self.model, d, t.method))
        else:
            s.bad_evals += 1
            if t.patience and s.bad_evals >= t.patience:
                s.stopped = "early_stopping"
        if self.on_validate:
            self.on_validate(s.step, val)

    def _checkpoint(self) -> None:
        if not distributed.is_main():  # every replica holds the same state; one writes it
            return
        s = self.state
        checkpoint.save(self.ckpt_dir / f"step-{s.step:06d}", self.model, self.optimizer, self.scheduler, asdict(s),
                        self.cfg.train.method)
        for old in checkpoint.step_dirs(self.ckpt_dir, "step")[: -self.cfg.train.keep_last]:
            shutil.rmtree(old)
        # Older best weights go only now: until this checkpoint, the previous one still points at them.
        for old in checkpoint.step_dirs(self.ckpt_dir, "best"):
            if old.name != f"best-{s.best_step:06d}":
                shutil.rmtree(old)

    def restore(self) -> bool:
        """Continue from the last complete checkpoint, if there is one (False: start from scratch)."""
        steps = checkpoint.step_dirs(self.ckpt_dir, "step")
        if not steps:
            return False
        progress = checkpoint.load(steps[-1], self.model, self.optimizer, self.scheduler, self.cfg.train.method)
        self.state = _State(**progress)
        if self.state.stopped == "interrupted":
            self.state.stopped = ""
        if distributed.is_main():
            for stale in checkpoint.step_dirs(self.ckpt_dir, "best"):  # written after the checkpoint: will be redone
                if checkpoint.step_of(stale) > self.state.step:
                    shutil.rmtree(stale)
            # Lines written after the checkpoint belong to steps that will be trained again.
            runs.rewrite_metrics(self.run_dir, lambda r: r["step"] <= self.state.step)
        return True

    def _log(self, record: dict[str, Any]) -> None:
        if distributed.is_main():
            runs.append_metrics(self.run_dir, record)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TimeRemainingColumn(), console=console, disable=not distributed.is_main(),
        )

    @contextlib.contextmanager
    def _sigint(self) -> Iterator[None]:
        """First Ctrl-C: finish the step, save a checkpoint, stop. A second one interrupts at once."""
        def handler(signum: int, frame: Any) -> None:
            self.interrupted = True
            console.print("[yellow]Ctrl-C: saving a checkpoint after this step (again to abort)[/]")
            signal.signal(signal.SIGINT, previous)

        with distributed.on_sigint(handler) as previous:
            yield

    def _finish(self, wall: float) -> TrainResult:
        s, t = self.state, self.cfg.train
        if s.stopped == "interrupted":
            raise TuneloopError(f"interrupted at step {s.step}; checkpoint saved, continue with `tuneloop train --resume {self.run_dir}`")
        info = {
            "task": self.cfg.task, "kind": self.kind, "method": t.method, "base": str(self.base_path),
            "steps": s.step, "epochs": round(s.step / max(1, math.ceil(self.batches_per_epoch / t.grad_accum)), 3),
            "stopped": s.stopped or ("max_steps" if t.max_steps else "epochs"),
            "best_val_loss": s.best_val_loss, "best_step": s.best_step, "train_examples": len(self.train_set),
            "dropped_examples": self.dropped, "tokens_seen": s.tokens_seen, "loss_tokens": s.loss_tokens,
            "tokens_per_s": s.tokens_seen / max(s.train_seconds, 1e-9), "train_seconds": s.train_seconds,
            "train_cpu_seconds": s.train_cpu_seconds,
            "wall_seconds": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bf16": self.ex.bf16, "device": str(self.ex.device), "attention": core(self.model).config._attn_implementation,
            "processes": distributed.world(),
        }
        if self.ex.device.type == "cuda":
            info["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if distributed.is_main():
            checkpoint.load_weights(self.model, self.ckpt_dir / f"best-{s.best_step:06d}", t.method)
            self._write_model()
            (self.run_dir / "train_summary.json").write_text(json.dumps(info, indent=1))
        distributed.barrier()  # the model is written when any process returns
        return _result(self.run_dir, info)

    def _write_model(self) -> None:
        meta = {"kind": self.kind, "method": self.cfg.train.method, "labels": self.labels, "base": str(self.base_path),
                "task": self.cfg.task, "best_step": self.state.best_step}
        runs.write_model(self.run_dir, self.model, self.tokenizer, meta)


def _result(run_dir: Path, info: dict[str, Any]) -> TrainResult:
    return TrainResult(run_dir, info["best_val_loss"], info["steps"], info["tokens_per_s"], info)


# ---------------------------------------------------------------- entry points


def _prepare_run(cfg: RunConfig) -> tuple[RunConfig, Path]:
    t = cfg.train
    if t.data is None:
        raise TuneloopError("no training data: give --data DIR (a folder written by `tuneloop prepare`)")
    if t.out is None:
        raise TuneloopError("no run folder: give --out RUN (where checkpoints, metrics and the model go)")
    cfg = _resolve_task(cfg, runs.read_manifest(Path(t.data)))
    run_dir = Path(t.out).resolve()
    if (run_dir / "checkpoints").exists() or (run_dir / "model").exists():
        raise TuneloopError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} or choose another --out")
    cfg.train.data, cfg.train.out = Path(t.data).resolve(), run_dir
    return cfg, run_dir


def run(cfg: RunConfig, on_validate: OnValidate | None = None) -> TrainResult:
    """Fine-tune `cfg.base` on `cfg.train.data` into the run folder `cfg.train.out`.

    Args:
        cfg: The run config; `task` comes from the data's manifest unless given.
        on_validate: Called as `on_validate(step, val_loss)` after each validation (e.g. for
            pruning a hyperparameter trial); an exception it raises stops training.

    Returns:
        The run's summary (also in `RUN/train_summary.json`); the best model is in `RUN/model/`.

    Raises:
        TuneloopError: bad data, a bad base model or LoRA target, a too-short max length, or Ctrl-C
            (after saving a checkpoint).
    """
    _join(cfg, on_validate)
    cfg, run_dir = _prepare_run(cfg)
    distributed.barrier()  # every process has checked the folder before one writes into it
    if distributed.launched():
        cfg.train.nproc = distributed.world()  # what a resume must start again
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return _fit(cfg, run_dir, on_validate, resuming=False)


def resume(run_dir: Path, on_validate: OnValidate | None = None) -> TrainResult:
    """Continue a run from its last checkpoint; the result equals an uninterrupted run with the same seed.

    A finished run returns its summary; a run killed before its first checkpoint starts over.
    """
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.yaml").is_file():
        raise TuneloopError(f"{run_dir} is not a training run (no config.yaml); start one with `tuneloop train --out`")
    cfg = load_config(run_dir / "config.yaml")
    _join(cfg, on_validate)
    summary = run_dir / "train_summary.json"
    if summary.is_file():
        console.print(f"{run_dir} has already finished")
        return _result(run_dir, json.loads(summary.read_text()))
    if distributed.launched() and distributed.world() != cfg.train.nproc:
        raise TuneloopError(f"{run_dir} trains with {cfg.train.nproc} processes (its global batch depends on it) but "
                            f"{distributed.world()} were started; resume it with `tuneloop train --resume {run_dir}` "
                            f"or with {cfg.train.nproc} processes in all")
    return _fit(cfg, run_dir, on_validate, resuming=True)


def _join(cfg: RunConfig, on_validate: OnValidate | None) -> None:
    """Join the process group torchrun (or accelerate) started, if any; only its rank 0 prints."""
    distributed.init_from_env()
    if not distributed.is_main():
        console.quiet = True
    if on_validate is not None and distributed.needs_launch(cfg.train.nproc):
        raise TuneloopError(f"train.nproc {cfg.train.nproc} cannot report each validation back to a caller (hyperparameter "
                            "search): set train.nproc 1, or start the processes with torchrun")


def _fit(cfg: RunConfig, run_dir: Path, on_validate: OnValidate | None, resuming: bool) -> TrainResult:
    """Train in this process, or start the `train.nproc` processes that do and report what they wrote."""
    if distributed.needs_launch(cfg.train.nproc):
        distributed.launch(cfg.train.nproc, _fit_launched, (cfg, run_dir, resuming))
        return _result(run_dir, json.loads((run_dir / "train_summary.json").read_text()))
    trainer = _Trainer(cfg, run_dir, on_validate)
    if not resuming:
        return trainer.fit()
    if trainer.restore():
        console.print(f"resuming {run_dir} at step {trainer.state.step}")
    elif distributed.is_main():
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return trainer.fit()


def _fit_launched(cfg: RunConfig, run_dir: Path, resuming: bool) -> None:
    """What each process started by `_fit` runs (module level, so that it can be pickled)."""
    _join(cfg, None)
    _fit(cfg, run_dir, None, resuming)

