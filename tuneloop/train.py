"""`tuneloop train`: fine-tune a base model (LoRA or full) in the one visible loop every objective uses.

`Trainer.fit()` holds the loop: forward on what carries loss, `loss.backward()`, clipping,
`optimizer.step()`, validation, early stopping and atomic checkpoints from which a run continues
exactly. What it trains on is an `Objective`: supervised fine-tuning here (`run`, `resume`),
preference pairs in `tuneloop.dpo`, each with LoRA or all weights. With `train.nproc` above 1, or
under torchrun, every process runs the loop on its share of each global batch and rank 0 writes the
files (`tuneloop.distributed`).

A run folder holds `config.yaml` (resolved), `metrics.jsonl`, `checkpoints/step-N/` (the last few)
and `checkpoints/best-N/`, `model/` (the best adapter or weights + tokenizer + `tuneloop.json`) and
`train_summary.json` (`tuneloop.runs` reads and writes them).
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
from typing import Any, Callable, Iterator, Protocol

import torch
from rich.console import Console
from rich.table import Table

from tuneloop import checkpoint, distributed, losses, models, runs, threads
from tuneloop.config import RunConfig, load_config, save_config
from tuneloop.encode import Encoded, encode_rows, epoch_batches
from tuneloop.errors import TuneloopError
from tuneloop.losses import Exec, core, loss_sum, mean_loss
from tuneloop.progress import track

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
class State:
    """Everything about progress that a checkpoint must restore (plain values, saved as JSON)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    tokens_seen: int = 0  # real (non-padding) tokens
    loss_tokens: int = 0  # units the loss was a mean over: tokens, examples or pairs
    train_seconds: float = 0.0  # time inside optimizer steps only
    train_cpu_seconds: float = 0.0  # process CPU time inside optimizer steps (all threads)
    best_val_loss: float = math.inf
    best_step: int = -1
    bad_evals: int = 0  # validations since the last improvement
    last_val_step: int = -1
    stopped: str = ""
    best: dict[str, float] = field(default_factory=dict)  # every validation metric at the best step


# ---------------------------------------------------------------- objectives


class Objective(Protocol):
    """What the loop trains on: supervised fine-tuning (`Sft`) or preference pairs (`tuneloop.dpo.Dpo`).

    A row is a list of indices into the objective's examples; a micro-batch is a list of rows.
    """

    ex: Exec
    phase: str | None  # None for SFT; else it tags every metrics record and prefixes its kind (`dpo_train`)
    validate_each_epoch: bool

    def epoch(self, epoch: int, global_batch: int) -> list[list[list[int]]]:
        """The micro-batches of an epoch, each of `global_batch` rows: a pure function of (seed, epoch)."""

    def batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """A collated micro-batch on the device."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """The units the loss is a mean over (loss tokens, examples or pairs) in `batch`."""

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss summed over the batch's units, and other per-unit sums to log (as means)."""

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation metrics; `loss` decides early stopping and the best step."""


@dataclass
class Sft:
    """Supervised fine-tuning: cross-entropy on the answer tokens (or on the label, for a head)."""

    cfg: RunConfig
    kind: runs.Kind
    train_set: list[Encoded]
    val_set: list[Encoded]
    ex: Exec
    phase: str | None = None
    validate_each_epoch: bool = True

    def epoch(self, epoch: int, global_batch: int) -> list[list[list[int]]]:
        """Shuffled micro-batches of the training set (grouped by length, or packed)."""
        t = self.cfg.train
        return epoch_batches(self.train_set, global_batch, self.cfg.seed * 100_003 + epoch, packing=t.packing and self.kind == "lm",
                             group_by_length=t.group_by_length, max_length=t.max_length)

    def batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Collate training examples."""
        return self.ex.batch(self.train_set, rows)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """Loss tokens (LM) or examples (head)."""
        return losses.n_loss(batch)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed cross-entropy; nothing else to log."""
        return loss_sum(model, batch, self.kind), {}

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean validation loss."""
        return {"loss": mean_loss(model, self.val_set, self.cfg.train.batch_size, self.ex)}


# ---------------------------------------------------------------- the loop


class Trainer:
    """The loop: `cfg.train` says how long and how (lr, schedule, accumulation, validation, checkpoints)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, objective: Objective, model: torch.nn.Module,
                 ckpt_dir: Path | None = None, on_validate: OnValidate | None = None) -> None:
        t = cfg.train
        self.cfg, self.run_dir, self.objective, self.model, self.on_validate = cfg, run_dir, objective, model, on_validate
        self.ex = objective.ex
        self.ckpt_dir = ckpt_dir or run_dir / "checkpoints"
        self.params = [p for p in model.parameters() if p.requires_grad]
        distributed.replicate(self.params)
        self.optimizer = models.optimizer(self.params, t.lr, t.weight_decay, self.ex.device)
        self._order: tuple[int, list[list[list[int]]]] = (-1, [])
        self.batches_per_epoch = len(self._epoch(0))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / t.grad_accum)
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.steps_per_epoch))
        from transformers import get_scheduler

        name = {"constant": "constant_with_warmup"}.get(t.schedule, t.schedule)
        self.scheduler = get_scheduler(name, self.optimizer, round(t.warmup * self.total_steps), self.total_steps)
        self.state = State()
        self.interrupted = False

    def _epoch(self, epoch: int) -> list[list[list[int]]]:
        # Batches of the global micro-batch size: the order does not depend on the process count.
        if self._order[0] != epoch:
            self._order = (epoch, self.objective.epoch(epoch, self.cfg.train.batch_size * distributed.world()))
        return self._order[1]

    def fit(self) -> State:
        """Train until max steps, the epochs, or early stopping; end with the best weights loaded.

        With several processes, each takes its share of every micro-batch; the loss is the mean over
        every process's units and the summed gradients are those of the whole global batch.
        """
        t, s, obj = self.cfg.train, self.state, self.objective
        desc = "training" if obj.phase is None else obj.phase.upper()
        with track(desc, self.total_steps, console, completed=s.step, disable=not distributed.is_main()) as progress, self._sigint():
            while s.step < self.total_steps and not s.stopped:
                batches = self._epoch(s.epoch)
                group = batches[s.batch_in_epoch : s.batch_in_epoch + t.grad_accum]
                threads.refresh()  # another tuneloop process came or went: take the new share of the cores
                started, cpu = time.perf_counter(), time.process_time()
                distributed.seed_step(self.cfg.seed, s.step)
                micro = [obj.batch(rows) for rows in distributed.shard_group(group)]
                n = int(distributed.sum_values(sum(obj.count(b) for b in micro))[0])
                total, sums = 0.0, {}
                for batch in micro:
                    with self.ex.autocast():
                        loss, extra = obj.loss_sum(self.model, batch)
                        loss = loss / n
                    loss.backward()
                    total += float(loss.detach())
                    sums = {k: sums.get(k, 0.0) + v for k, v in extra.items()}
                distributed.sum_grads(self.params)
                if t.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                total, tokens, *values = distributed.sum_values(total, sum(int(b["n_tokens"]) for b in micro), *sums.values())
                seconds = time.perf_counter() - started
                s.train_cpu_seconds += time.process_time() - cpu
                s.step, s.batch_in_epoch = s.step + 1, s.batch_in_epoch + len(group)
                s.tokens_seen, s.loss_tokens, s.train_seconds = s.tokens_seen + int(tokens), s.loss_tokens + n, s.train_seconds + seconds
                self._log("train", {"step": s.step, "epoch": round(s.epoch + s.batch_in_epoch / len(batches), 4), "loss": total,
                                    **{k: v / n for k, v in zip(sums, values)}, "lr": self.scheduler.get_last_lr()[0],
                                    "tokens_per_s": tokens / seconds})
                progress(s.step, loss=total, **{"tok/s": tokens / seconds})
                self._after_step(epoch_done=s.batch_in_epoch >= len(batches))
        if distributed.is_main() and s.stopped != "interrupted":
            checkpoint.load_weights(self.model, self.ckpt_dir / f"best-{s.best_step:06d}", t.method)
        return s

    def _after_step(self, epoch_done: bool) -> None:
        t, s = self.cfg.train, self.state
        if epoch_done:
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        last = s.step >= self.total_steps
        if s.step % t.eval_every == 0 or (epoch_done and self.objective.validate_each_epoch) or last:
            self._validate()
        if distributed.any_true(self.interrupted):  # every process stops after the same step
            s.stopped = "interrupted"
        if s.step % t.save_every == 0 or last or s.stopped:
            self._checkpoint()

    def _validate(self) -> None:
        t, s = self.cfg.train, self.state
        metrics = self.objective.validate(self.model)
        val = metrics["loss"]
        s.last_val_step = s.step
        self._log("val", {"step": s.step, "epoch": round(s.epoch + s.batch_in_epoch / self.batches_per_epoch, 4), **metrics})
        if val < s.best_val_loss:
            s.best_val_loss, s.best_step, s.bad_evals, s.best = val, s.step, 0, metrics
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
        self.state = State(**progress)
        if self.state.stopped == "interrupted":
            self.state.stopped = ""
        if distributed.is_main():
            for stale in checkpoint.step_dirs(self.ckpt_dir, "best"):  # written after the checkpoint: will be redone
                if checkpoint.step_of(stale) > self.state.step:
                    shutil.rmtree(stale)
            # Records written after the checkpoint belong to steps that will be trained again.
            phase, step = self.objective.phase, self.state.step
            runs.rewrite_metrics(self.run_dir, lambda r: r.get("phase") != phase or r["step"] <= step)
        return True

    def _log(self, kind: str, record: dict[str, Any]) -> None:
        if distributed.is_main():
            phase = self.objective.phase
            runs.append_metrics(self.run_dir, {"kind": kind} | record if phase is None else
                                {"phase": phase, "kind": f"{phase}_{kind}"} | record)

    @contextlib.contextmanager
    def _sigint(self) -> Iterator[None]:
        """First Ctrl-C: finish the step, save a checkpoint, stop. A second one interrupts at once."""
        def handler(signum: int, frame: Any) -> None:
            self.interrupted = True
            console.print("[yellow]Ctrl-C: saving a checkpoint after this step (again to abort)[/]")
            signal.signal(signal.SIGINT, previous)

        with distributed.on_sigint(handler) as previous:
            yield

    def info(self) -> dict[str, Any]:
        """Steps, stop reason, best validation, throughput and the machine: the summary both objectives share."""
        s, t = self.state, self.cfg.train
        info = {
            "steps": s.step, "epochs": round(s.step / max(1, self.steps_per_epoch), 3),
            "stopped": s.stopped or ("max_steps" if t.max_steps else "epochs"),
            "best_val_loss": s.best_val_loss, "best_step": s.best_step,
            "tokens_seen": s.tokens_seen, "loss_tokens": s.loss_tokens,
            "tokens_per_s": s.tokens_seen / max(s.train_seconds, 1e-9), "train_seconds": s.train_seconds,
            "train_cpu_seconds": s.train_cpu_seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bf16": self.ex.bf16, "device": str(self.ex.device), "attention": core(self.model).config._attn_implementation,
            "processes": distributed.world(), "threads": torch.get_num_threads(),
            "threads_reason": threads.reason(),
        }
        if self.ex.device.type == "cuda":
            info["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return info


# ---------------------------------------------------------------- supervised fine-tuning


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


@dataclass
class SftRun:
    """An SFT run set up: the trainer, and what its summary and model metadata need."""

    trainer: Trainer
    objective: Sft
    tokenizer: Any
    labels: list[str] | None
    base_path: Path | str
    dropped: int


def sft_trainer(cfg: RunConfig, run_dir: Path, on_validate: OnValidate | None = None) -> SftRun:
    """Set up SFT from a resolved config: data encoded, the base model prepared (LoRA or full), the loop built.

    With LoRA and bf16 the frozen base weights are stored in bf16 (no cast in every matmul, half the
    memory); what trains (adapters, a new head) stays fp32 for the optimizer.
    """
    models.quiet_transformers()
    t = cfg.train
    threads.claim("train", t.threads)
    kind = runs.model_kind(cfg)
    labels = runs.read_manifest(Path(t.data)).get("labels") if cfg.task == "classify" else None
    base_path = models.resolve(cfg.base, task=cfg.task, classify_as=t.classify_as)
    tokenizer = models.load_tokenizer(base_path, cfg.trust_remote_code)
    train_set, dropped = _encode(cfg, tokenizer, runs.read_split(Path(t.data), "train"), labels, "train.jsonl")
    val_set, _ = _encode(cfg, tokenizer, runs.read_split(Path(t.data), "val")[: t.max_eval_examples], labels, "val.jsonl")
    if dropped:
        console.print(f"[yellow]warning:[/] {dropped} training rows dropped: their prompt is longer than max_length {t.max_length}")
    device = models.device()
    bf16 = models.use_bf16(t.precision, device)
    torch.manual_seed(cfg.seed)  # a new head and the LoRA init depend on it
    lora = t.method == "lora"
    model = models.load_model(
        base_path, kind, labels=labels, pad_token_id=tokenizer.pad_token_id, trust_remote_code=cfg.trust_remote_code,
        dtype=torch.bfloat16 if lora and bf16 else torch.float32,
        attn_implementation=models.attention(device, t.max_length, t.batch_size, base_path, t.attention),
    )
    model = models.for_training(model, lora=t.lora if lora else None, kind=kind, base=cfg.base, bf16=bf16,
                                gradient_checkpointing=t.gradient_checkpointing).to(device)
    # Sharing a prefix needs a KV cache, which activation checkpointing turns off.
    ex = Exec(kind, device, bf16, tokenizer.pad_token_id, t.share_prefix and not t.gradient_checkpointing)
    objective = Sft(cfg, kind, train_set, val_set, ex)
    return SftRun(Trainer(cfg, run_dir, objective, model, on_validate=on_validate), objective, tokenizer, labels, base_path, dropped)


def _finish(sft: SftRun, wall: float) -> TrainResult:
    trainer, s, cfg = sft.trainer, sft.trainer.state, sft.trainer.cfg
    if s.stopped == "interrupted":
        raise TuneloopError(f"interrupted at step {s.step}; checkpoint saved, continue with `tuneloop train --resume {trainer.run_dir}`")
    info = {"task": cfg.task, "kind": sft.objective.kind, "method": cfg.train.method, "base": str(sft.base_path),
            **trainer.info(), "train_examples": len(sft.objective.train_set), "dropped_examples": sft.dropped, "wall_seconds": wall}
    if distributed.is_main():
        meta = {"kind": sft.objective.kind, "method": cfg.train.method, "labels": sft.labels, "base": str(sft.base_path),
                "task": cfg.task, "best_step": s.best_step}
        runs.write_model(trainer.run_dir, trainer.model, sft.tokenizer, meta)
        (trainer.run_dir / "train_summary.json").write_text(json.dumps(info, indent=1))
    distributed.barrier()  # the model is written when any process returns
    return _result(trainer.run_dir, info)


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


def resume(run_dir: Path, on_validate: OnValidate | None = None, n_threads: int | None = None) -> TrainResult:
    """Continue a run from its last checkpoint; the result equals an uninterrupted run with the same seed.

    A finished run returns its summary; a run killed before its first checkpoint starts over.
    `n_threads` replaces the run's `train.threads` (the machine may be busier or quieter than when it started).
    """
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.yaml").is_file():
        raise TuneloopError(f"{run_dir} is not a training run (no config.yaml); start one with `tuneloop train --out`")
    cfg = load_config(run_dir / "config.yaml")
    cfg.train.threads = n_threads or cfg.train.threads
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
    sft = sft_trainer(cfg, run_dir, on_validate)
    if resuming and sft.trainer.restore():
        console.print(f"resuming {run_dir} at step {sft.trainer.state.step}")
    elif resuming and distributed.is_main():
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    started = time.perf_counter()
    sft.trainer.fit()
    return _finish(sft, time.perf_counter() - started)


def _fit_launched(cfg: RunConfig, run_dir: Path, resuming: bool) -> None:
    """What each process started by `_fit` runs (module level, so that it can be pickled)."""
    _join(cfg, None)
    _fit(cfg, run_dir, None, resuming)
