"""Preference tuning (DPO) of a trained run on (chosen, rejected) answer pairs, in the training loop.

run(run_dir, pairs) continues the run's model (LoRA adapter or full weights) with the standard DPO
loss `-logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`, where each term is a sequence
log-prob summed over the answer tokens only. The reference is the SFT model itself: its log-probs
are computed once, up front, without grad, so no second model is held in memory. The `Dpo`
objective runs in `train.Trainer` (the loop SFT uses): gradient accumulation, several processes,
checkpoints in `RUN/dpo/checkpoints/` from which a rerun continues exactly, early stopping.

A pair file is JSONL, one pair a line (what `tuneloop feedback export` writes to preferences.jsonl):
    {"prompt": [chat messages] or "a user message", "chosen": "good answer", "rejected": "bad answer"}
In a run that classifies as a causal LM, a string prompt (or a "text" field) is the text to
classify and the answers are labels: the prompt is rendered as in training.

The SFT model stays in `RUN/model_sft/` (see `undo`); the result replaces `RUN/model/`;
`RUN/metrics.jsonl` gets `"phase": "dpo"` records and `RUN/dpo_summary.json` the before/after numbers.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from tuneloop import checkpoint, distributed, models, runs, threads, train
from tuneloop.config import DpoConfig, RunConfig, load_config
from tuneloop.data.load import sha256_file
from tuneloop.encode import IGNORE, Encoded, encode_chat, encode_classify_lm, eval_batches, length_grouped_batches
from tuneloop.errors import TuneloopError
from tuneloop.losses import Exec, core, dpo_loss, pair_metrics, sequence_logps

SFT = "model_sft"  # RUN/model_sft: the SFT model, kept so DPO can be undone and rerun from it
DPO_DIR = "dpo"  # RUN/dpo: phase.json (which pairs and settings) and checkpoints/ of an unfinished phase
# Below this many pairs every pair validates: a held-out tenth of fewer than 10 pairs says nothing.
MIN_HELD_OUT = 100


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Reject:
    """A pair row that was skipped, and why."""

    source: str
    line: int
    reason: str


@dataclass
class DpoResult:
    """What a DPO phase reports; the same numbers are in `RUN/dpo_summary.json`."""

    run_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    steps: int
    rejected: list[Reject] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Table:
        """Validation metrics before and after DPO, as a table for the CLI."""
        table = Table(title=f"DPO {self.run_dir} ({self.info.get('val_pairs')} validation pairs)")
        for col in ("metric", "before", "after"):
            table.add_column(col)
        for key in self.after:
            table.add_row(key, f"{self.before[key]:.4g}", f"{self.after[key]:.4g}")
        return table


# ---------------------------------------------------------------- pairs


def _answer_only(enc: Encoded) -> Encoded:
    # Loss on the final answer only: earlier assistant turns of a multi-turn prompt are context.
    labels = list(enc.labels)
    end = len(labels)
    while end and labels[end - 1] == IGNORE:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE:
        start -= 1
    return Encoded(enc.input_ids, [IGNORE] * start + labels[start:end] + [IGNORE] * (len(labels) - end))


def _truncate(enc: Encoded, max_length: int) -> Encoded:
    return Encoded(enc.input_ids[:max_length], enc.labels[:max_length])


def _prompt(row: dict) -> list[dict]:
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("'prompt' must be a non-empty list of chat messages (or a string)")
    for m in prompt:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"bad prompt message {m!r}: needs role system/user/assistant and a string content")
    if prompt[-1]["role"] == "assistant":
        raise ValueError("the prompt ends with an assistant message; the answers go in 'chosen' and 'rejected'")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _answers(row: dict) -> tuple[str, str]:
    answers = []
    for key in ("chosen", "rejected"):
        value = row.get(key)
        if not isinstance(value, str):
            raise ValueError(f"missing field '{key}' (a string answer)")
        if not value.strip():
            raise ValueError(f"'{key}' is empty")
        answers.append(value)
    if answers[0].strip() == answers[1].strip():
        raise ValueError("'chosen' and 'rejected' are the same answer")
    return answers[0], answers[1]


@dataclass(frozen=True)
class PairEncoder:
    """Turns a pair row into (chosen, rejected) token ids, rendering prompts the way the run trained.

    Attributes:
        tokenizer: The run's tokenizer (with its chat template).
        cfg: The run's config (`train.system_prompt` for classify prompts).
        labels: The run's labels for `{"text", ...}` rows (None: generate run).
        max_length: Tokens per sequence; a longer one is cut at the end.
    """

    tokenizer: Any
    cfg: RunConfig
    labels: list[str] | None
    max_length: int

    def pair(self, row: Any) -> tuple[Encoded, Encoded]:
        """(chosen, rejected) encoded; ValueError with the reason for a bad row."""
        if not isinstance(row, dict):
            raise ValueError("a pair must be a JSON object with 'prompt' (or 'text'), 'chosen' and 'rejected'")
        chosen, rejected = _answers(row)
        if "text" in row or (self.labels and isinstance(row.get("prompt"), str)):
            # `feedback export` writes a classified text as a string prompt.
            text = row["text"] if "text" in row else row["prompt"]
            encs = [self._classify(text, a) for a in (chosen, rejected)]
        elif "prompt" in row:
            prompt = _prompt(row)
            encs = [_truncate(_answer_only(encode_chat(self.tokenizer, [*prompt, {"role": "assistant", "content": a}])), self.max_length)
                    for a in (chosen, rejected)]
        else:
            raise ValueError("missing field 'prompt' (chat messages) or, for a classify run, 'text'")
        if any(e.n_loss == 0 for e in encs):
            raise ValueError(f"the prompt fills max_length {self.max_length}: no answer token is left")
        return encs[0], encs[1]

    def _classify(self, text: Any, label: str) -> Encoded:
        if not self.labels:
            raise ValueError("'text' rows need a classify run; give 'prompt' as chat messages")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("'text' must be a non-empty string")
        if label not in self.labels:
            raise ValueError(f"answer {label!r} is not one of the run's labels {self.labels}")
        try:
            return encode_classify_lm(self.tokenizer, text, label, self.labels, self.max_length, self.cfg.train.system_prompt)
        except TuneloopError as e:
            raise ValueError(str(e)) from None


def read_pairs(path: Path, encoder: PairEncoder) -> tuple[list[tuple[Encoded, Encoded]], list[Reject]]:
    """Encode every good pair of a JSONL file; bad rows are returned as rejects with line and reason.

    Raises:
        TuneloopError: the file is missing or holds no good pair.
    """
    path = Path(path)
    if not path.is_file():
        raise TuneloopError(f"preference pairs file {path} does not exist; write one with `tuneloop feedback export`")
    pairs, rejects = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                pairs.append(encoder.pair(json.loads(line)))
            except json.JSONDecodeError as e:
                rejects.append(Reject(str(path), n, f"not valid JSON ({e.msg})"))
            except ValueError as e:
                rejects.append(Reject(str(path), n, str(e)))
    if not pairs:
        first = f"; first problem: line {rejects[0].line}: {rejects[0].reason}" if rejects else ""
        raise TuneloopError(f"{path} holds no usable preference pair ({len(rejects)} rejected{first}); "
                            'each line needs {"prompt": [...], "chosen": "...", "rejected": "..."}')
    return pairs, rejects


# ---------------------------------------------------------------- the model and the objective


def _load_policy(run_dir: Path, meta: dict[str, Any], cfg: RunConfig, tokenizer: Any, ex: Exec, max_length: int,
                 batch_size: int) -> torch.nn.Module:
    """The SFT model as it was trained (adapter on its base, or full weights), trainable, in train mode."""
    source = run_dir / SFT
    config_from = source if meta["method"] == "full" else meta["base"]  # whose layer and head counts size attention
    attn = models.attention(ex.device, max_length, batch_size, config_from, cfg.train.attention)
    if meta["method"] == "full":
        model = models.load_model(source, "lm", trust_remote_code=cfg.trust_remote_code, attn_implementation=attn)
    else:
        from peft import PeftModel

        # As in training: frozen base in bf16 under bf16 autocast, the adapter in fp32.
        base = models.load_model(meta["base"], "lm", pad_token_id=tokenizer.pad_token_id, trust_remote_code=cfg.trust_remote_code,
                                 dtype=torch.bfloat16 if ex.bf16 else torch.float32, attn_implementation=attn)
        model = PeftModel.from_pretrained(base, source, is_trainable=True)
        models.fp32_trainable(model, keep_input_dtype=ex.bf16)
    core(model).config.use_cache = False
    return model.to(ex.device).train()


@torch.no_grad()
def all_logps(model: torch.nn.Module, examples: list[Encoded], batch_size: int, ex: Exec) -> torch.Tensor:
    """`[n_pairs, 2]` answer log-probs (chosen, rejected) of every pair, in eval mode, without grad."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(examples), dtype=torch.float32)
    for rows in eval_batches(examples, batch_size):
        with ex.autocast():
            out[[r[0] for r in rows]] = sequence_logps(model, ex.batch(examples, rows)).float().cpu()
    model.train(was_training)
    return out.view(-1, 2)


def flat(pairs: list[tuple[Encoded, Encoded]]) -> list[Encoded]:
    """The pairs as one list of examples: pair p is examples 2p (chosen) and 2p + 1 (rejected)."""
    return [e for pair in pairs for e in pair]


@dataclass
class Dpo:
    """The DPO objective for `train.Trainer`: a row is one pair; the reference log-probs are fixed up front."""

    examples: list[Encoded]
    train_idx: list[int]
    val_idx: list[int]
    ref: torch.Tensor
    cfg: DpoConfig
    seed: int
    ex: Exec
    phase: str | None = "dpo"
    validate_each_epoch: bool = False  # validate every `train.dpo.eval_every` steps and at the end

    def epoch(self, epoch: int, global_batch: int) -> list[list[list[int]]]:
        """Pairs of similar length batched together, in a seeded order."""
        lengths = [max(len(self.examples[2 * p].input_ids), len(self.examples[2 * p + 1].input_ids)) for p in self.train_idx]
        order = length_grouped_batches(lengths, global_batch, self.seed * 100_003 + epoch)
        return [[[self.train_idx[i]] for i in b] for b in order]

    def batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """The chosen answers, then the rejected ones, of the pairs in `rows`."""
        pairs = [r[0] for r in rows]
        batch = self.ex.batch(self.examples, [[2 * p] for p in pairs] + [[2 * p + 1] for p in pairs])
        return batch | {"pairs": torch.tensor(pairs)}

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """Pairs."""
        return len(batch["pairs"])

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed DPO loss of the pairs, and their summed reward accuracy and margin."""
        chosen, rejected = sequence_logps(model, batch).float().chunk(2)
        ref = self.ref[batch["pairs"].cpu()].to(chosen.device)
        pair_losses, rc, rr = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], self.cfg.beta)
        return pair_losses.sum(), {"reward_accuracy": float((rc > rr).sum()), "reward_margin": float((rc - rr).detach().sum())}

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """`pair_metrics` of the validation pairs against the reference."""
        val = [e for p in self.val_idx for e in (self.examples[2 * p], self.examples[2 * p + 1])]
        return pair_metrics(all_logps(model, val, 2 * self.cfg.batch_size, self.ex), self.ref[self.val_idx], self.cfg.beta)


# ---------------------------------------------------------------- set-up and files


@dataclass
class DpoRun:
    """A DPO phase set up: the loop on the SFT model, and what the summary and files need."""

    trainer: train.Trainer
    objective: Dpo
    run_dir: Path
    pairs: Path
    meta: dict[str, Any]
    tokenizer: Any
    rejects: list[Reject]
    reference_seconds: float


def _plan(run_cfg: RunConfig, cfg: DpoConfig, max_length: int) -> RunConfig:
    """The run's config with `train` set to how DPO trains (its lr, epochs, batch; the run's precision and clipping)."""
    t = run_cfg.train.model_copy(update={
        "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "max_steps": None,
        "schedule": "cosine", "max_length": max_length, "eval_every": cfg.eval_every or 10**9, "patience": cfg.patience,
        "save_every": cfg.save_every})
    return run_cfg.model_copy(update={"train": t})


def _same_phase(run_dir: Path, key: dict[str, Any]) -> bool:
    """Whether RUN/dpo holds an unfinished phase on the same pairs and settings (which then resumes)."""
    saved = run_dir / DPO_DIR / "phase.json"
    return (not (run_dir / "dpo_summary.json").is_file() and saved.is_file()
            and json.loads(saved.read_text(encoding="utf-8")) == key)


def _setup(run_dir: Path, pairs_path: Path, cfg: DpoConfig | None, n_threads: int | None = None) -> DpoRun:
    models.quiet_transformers()
    meta, run_cfg = runs.model_meta(run_dir), load_config(run_dir / "config.yaml")
    if meta["kind"] != "lm":
        raise TuneloopError(f"{run_dir} trains a classification head; DPO needs a causal LM (train with classify_as: generate)")
    t, cfg = run_cfg.train, cfg or run_cfg.train.dpo
    threads.claim("dpo", n_threads or t.threads)
    max_length = cfg.max_length or t.max_length
    tokenizer = models.load_tokenizer(run_dir / "model", run_cfg.trust_remote_code)
    pairs, rejects = read_pairs(pairs_path, PairEncoder(tokenizer, run_cfg, meta["labels"], max_length))
    key = {"pairs": str(pairs_path.resolve()), "sha256": sha256_file(str(pairs_path)), "dpo": cfg.model_dump(mode="json")}
    # Rank 0 decides (before it changes any file), so that every process agrees.
    resuming = distributed.any_true(distributed.is_main() and _same_phase(run_dir, key))
    if distributed.is_main():
        _keep_sft(run_dir)  # only now: a bad pairs file leaves the run as it was
        if not resuming:  # a new phase starts again from the SFT model and replaces the previous one's records
            shutil.rmtree(run_dir / DPO_DIR, ignore_errors=True)
            (run_dir / DPO_DIR).mkdir()
            (run_dir / DPO_DIR / "phase.json").write_text(json.dumps(key, indent=1), encoding="utf-8")
            (run_dir / "dpo_summary.json").unlink(missing_ok=True)  # until it ends, this phase is unfinished
            _drop_dpo_records(run_dir)
    distributed.barrier()
    meta = json.loads((run_dir / SFT / runs.META).read_text())  # the SFT model's, also when RUN/model holds a DPO result
    train_idx, val_idx = _split(len(pairs), run_cfg.seed)
    examples = flat(pairs)
    device = models.device()
    ex = Exec("lm", device, models.use_bf16(t.precision, device), tokenizer.pad_token_id, t.share_prefix)
    torch.manual_seed(run_cfg.seed)
    # A micro-batch holds both answers of each pair.
    model = _load_policy(run_dir, meta, run_cfg, tokenizer, ex, max_length, 2 * cfg.batch_size)
    started = time.perf_counter()
    ref = all_logps(model, examples, 2 * cfg.batch_size, ex)  # the reference is the SFT model: computed once, up front
    objective = Dpo(examples, train_idx, val_idx, ref, cfg, run_cfg.seed, ex)
    trainer = train.Trainer(_plan(run_cfg, cfg, max_length), run_dir, objective, model, ckpt_dir=run_dir / DPO_DIR / "checkpoints")
    d = DpoRun(trainer, objective, run_dir, pairs_path, meta, tokenizer, rejects, time.perf_counter() - started)
    if resuming and trainer.restore():
        train.console.print(f"resuming the DPO phase of {run_dir} at step {trainer.state.step}")
    elif distributed.is_main():
        _drop_dpo_records(run_dir)
        runs.append_metrics(run_dir, {"phase": "dpo", "kind": "dpo_val", "step": 0, **_before(objective)})
    return d


def _before(objective: Dpo) -> dict[str, float]:
    ref = objective.ref[objective.val_idx]
    return pair_metrics(ref, ref, objective.cfg.beta)  # policy = reference


def _finish(d: DpoRun, wall: float) -> DpoResult:
    """Write RUN/model (the best DPO model, atomically), dpo_summary.json and dpo_rejects.jsonl."""
    s, o = d.trainer.state, d.objective
    if s.stopped == "interrupted":
        raise TuneloopError(f"interrupted at step {s.step}; checkpoint saved, continue with `tuneloop dpo {d.run_dir} --pairs {d.pairs}`")
    n, c = len(o.train_idx), o.cfg
    seen = min(s.step * c.batch_size * c.grad_accum, math.ceil(c.epochs * n))  # pairs trained on, repeats counted
    info = {**d.trainer.info(), "method": d.meta["method"], "beta": c.beta, "lr": c.lr, "epochs": c.epochs,
            "batch_size": c.batch_size, "max_length": d.trainer.cfg.train.max_length, "train_pairs": n,
            "val_pairs": len(o.val_idx), "val_is_train": o.val_idx == o.train_idx, "rejected_rows": len(d.rejects),
            "reference_seconds": d.reference_seconds, "seconds_per_pair": s.train_seconds / max(seen, 1), "wall_seconds": wall}
    result = DpoResult(d.run_dir, _before(o), s.best, s.step, d.rejects, info)
    if distributed.is_main():
        meta = {**d.meta, "dpo": {"pairs": n, "steps": s.step, "best_step": s.best_step, "beta": c.beta}}
        runs.write_model(d.run_dir, d.trainer.model, d.tokenizer, meta)
        with (d.run_dir / "dpo_rejects.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(asdict(r)) + "\n" for r in d.rejects)
        (d.run_dir / "dpo_summary.json").write_text(json.dumps({**info, "before": result.before, "after": result.after}, indent=1))
    distributed.barrier()  # the model is written when any process returns
    return result


def _split(n: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) pair indices: a seeded held-out tenth, or all pairs both ways when few."""
    if n < MIN_HELD_OUT:
        return list(range(n)), list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = round(0.1 * n)
    return sorted(order[k:]), sorted(order[:k])


def _keep_sft(run_dir: Path) -> None:
    """Copy RUN/model to RUN/model_sft once; a rerun starts again from the SFT model, not from the last DPO."""
    if not (run_dir / SFT).is_dir():
        checkpoint.atomic_dir(run_dir / SFT, lambda d: shutil.copytree(run_dir / "model", d, dirs_exist_ok=True))


def _drop_dpo_records(run_dir: Path) -> None:
    runs.rewrite_metrics(run_dir, lambda r: r.get("phase") != "dpo")


# ---------------------------------------------------------------- entry points


def run(run_dir: Path, pairs: Path, cfg: DpoConfig | None = None, n_threads: int | None = None) -> DpoResult:
    """Tune a trained run's model on preference pairs with DPO; the result replaces `RUN/model/`.

    The phase trains in `train.Trainer`'s loop: gradient accumulation, `train.nproc` processes,
    atomic checkpoints in `RUN/dpo/checkpoints/` and early stopping (`train.dpo.*`). Run again on
    the same pairs and settings after a crash or Ctrl-C, it continues from its last checkpoint;
    otherwise it starts again from the SFT model.

    Args:
        run_dir: A finished training run (causal LM: generate, or classify-as-generate).
        pairs: JSONL of `{"prompt": [messages] | str, "chosen": str, "rejected": str}`; in a classify
            run a string prompt (or a `text` field) is the text to classify and the answers are labels.
        cfg: DPO settings (default: the run's `train.dpo`).
        n_threads: torch threads (default: the run's `train.threads`, else this process's share of the free cores).

    Returns:
        Validation metrics before and after, steps, rejected rows and timings (also in
        `RUN/dpo_summary.json`). The SFT model is kept in `RUN/model_sft/`; a rerun starts from it.

    Raises:
        TuneloopError: no trained model, a classification-head run, a missing pairs file, no
            usable pair in it, or Ctrl-C (after saving a checkpoint).
    """
    run_dir, pairs = Path(run_dir).resolve(), Path(pairs)
    distributed.init_from_env()
    if not distributed.is_main():
        train.console.quiet = True
    nproc = runs.load_run_config(run_dir).train.nproc
    if distributed.needs_launch(nproc):
        distributed.launch(nproc, _run_launched, (run_dir, pairs, cfg))
        return _read_result(run_dir)
    d = _setup(run_dir, pairs, cfg, n_threads)
    for r in d.rejects[:5]:
        train.console.print(f"[yellow]warning:[/] {r.source} line {r.line}: {r.reason} (pair skipped)")
    if len(d.rejects) > 5:
        train.console.print(f"[yellow]warning:[/] {len(d.rejects)} pairs skipped in all; see {run_dir / 'dpo_rejects.jsonl'}")
    started = time.perf_counter()
    d.trainer.fit()
    return _finish(d, time.perf_counter() - started)


def _run_launched(run_dir: Path, pairs: Path, cfg: DpoConfig | None) -> None:
    """What each process started by `run` runs (module level, so that it can be pickled)."""
    run(run_dir, pairs, cfg)


def _read_result(run_dir: Path) -> DpoResult:
    summary = json.loads((run_dir / "dpo_summary.json").read_text())
    rejects = [Reject(**r) for r in runs.read_jsonl(run_dir / "dpo_rejects.jsonl")]
    return DpoResult(run_dir, summary.pop("before"), summary.pop("after"), summary["steps"], rejects, summary)


def undo(run_dir: Path) -> Path:
    """Put the SFT model back in `RUN/model/` (drops the DPO result); returns the model folder.

    Raises:
        TuneloopError: the run has no `model_sft/` (DPO never ran on it).
    """
    run_dir = Path(run_dir)
    if not (run_dir / SFT).is_dir():
        raise TuneloopError(f"{run_dir} has no {SFT}/: DPO has not run on it, so there is nothing to undo")
    checkpoint.atomic_dir(run_dir / "model", lambda d: shutil.copytree(run_dir / SFT, d, dirs_exist_ok=True))
    _drop_dpo_records(run_dir)
    shutil.rmtree(run_dir / DPO_DIR, ignore_errors=True)
    (run_dir / "dpo_summary.json").unlink(missing_ok=True)
    return run_dir / "model"
