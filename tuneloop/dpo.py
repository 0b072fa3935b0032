"""Preference tuning (DPO) of a trained run on (chosen, rejected) answer pairs, in our own visible loop.

run(run_dir, pairs) continues the run's model (LoRA adapter or full weights) with the standard DPO
loss `-logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`, where each term is a sequence
log-prob summed over the answer tokens only. The reference is the SFT model itself: its log-probs
are computed once, up front, without grad, so no second model is held in memory.

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
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tuneloop import checkpoint, models, runs
from tuneloop.config import DpoConfig, RunConfig, load_config
from tuneloop.encode import IGNORE, Encoded, encode_chat, encode_classify_lm, eval_batches, length_grouped_batches
from tuneloop.errors import TuneloopError
from tuneloop.losses import Exec, core, decoder_hidden, linear_cross_entropy
from tuneloop.train import console

SFT = "model_sft"  # RUN/model_sft: the SFT model, kept so DPO can be undone and rerun from it
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


# ---------------------------------------------------------------- the loss


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss per pair (Rafailov et al. 2023) and the implicit rewards.

    Args:
        policy_chosen: Summed answer log-probs of the chosen answers under the model being tuned.
        policy_rejected: The same for the rejected answers.
        ref_chosen: Chosen answers' log-probs under the reference (the SFT model).
        ref_rejected: Rejected answers' log-probs under the reference.
        beta: How far the policy may move from the reference (higher: less far).

    Returns:
        `(losses, chosen_rewards, rejected_rewards)`, one value per pair; a reward is
        `beta * (policy - reference)` log-prob.

    Example:
        >>> z = torch.zeros(1)
        >>> round(float(dpo_loss(z, z, z, z, beta=0.1)[0]), 4)  # policy = reference: log 2
        0.6931
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-prob of each row's answer tokens, summed (one value per row of `encode.collate`'s batch).

    The LM head runs only on answer positions, chunked, like the training loss (`losses.py`).
    """
    lm = core(model)
    hidden = decoder_hidden(lm, batch)
    head = lm.get_output_embeddings()
    out = []
    for h, t in zip(hidden, batch["targets"]):
        keep = t != IGNORE
        if head.bias is not None:  # no fused path for a biased head (rare in LMs)
            nll = F.cross_entropy(head(h[keep]).float(), t[keep], reduction="sum")
        else:
            nll = linear_cross_entropy(h[keep], head.weight, t[keep])
        out.append(-nll)
    return torch.stack(out)


def pair_metrics(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> dict[str, float]:
    """Mean DPO loss, reward accuracy and margin, and the policy's own preference, over pairs.

    Args:
        policy: `[n, 2]` answer log-probs (chosen, rejected) under the policy.
        ref: The same under the reference.
        beta: The DPO beta.

    Returns:
        `loss`; `reward_accuracy` (share of pairs whose chosen reward beats the rejected one) and
        `reward_margin` (mean chosen minus rejected reward), both 0 before training by definition;
        `logp_accuracy` and `logp_margin`: the same for the policy's raw log-probs (does the
        model itself prefer the chosen answer?), meaningful before training too.
    """
    losses, rc, rr = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta)
    logp = policy[:, 0] - policy[:, 1]
    return {"loss": float(losses.mean()), "reward_accuracy": float((rc > rr).float().mean()),
            "reward_margin": float((rc - rr).mean()), "logp_accuracy": float((logp > 0).float().mean()),
            "logp_margin": float(logp.mean())}


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


# ---------------------------------------------------------------- the model


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
def _all_logps(model: torch.nn.Module, examples: list[Encoded], batch_size: int, ex: Exec) -> torch.Tensor:
    """`[n_pairs, 2]` answer log-probs (chosen, rejected) of every pair, in eval mode, without grad."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(examples), dtype=torch.float32)
    for rows in eval_batches(examples, batch_size):
        with ex.autocast():
            out[[r[0] for r in rows]] = sequence_logps(model, ex.batch(examples, rows)).float().cpu()
    model.train(was_training)
    return out.view(-1, 2)


def _flat(pairs: list[tuple[Encoded, Encoded]]) -> list[Encoded]:
    # Pair p is examples 2p (chosen) and 2p + 1 (rejected).
    return [e for pair in pairs for e in pair]


# ---------------------------------------------------------------- the loop


class _Dpo:
    """One DPO phase on a run: set up, then `fit()` runs the loop and `write()` saves the result."""

    def __init__(self, run_dir: Path, pairs_path: Path, cfg: DpoConfig | None) -> None:
        models.quiet_transformers()
        self.run_dir = run_dir
        self.meta, self.run_cfg = runs.model_meta(run_dir), load_config(run_dir / "config.yaml")
        if self.meta["kind"] != "lm":
            raise TuneloopError(f"{run_dir} trains a classification head; DPO needs a causal LM (train with classify_as: generate)")
        t = self.run_cfg.train
        self.cfg = cfg or t.dpo
        if t.threads:
            torch.set_num_threads(t.threads)
        self.max_length = self.cfg.max_length or t.max_length
        self.tokenizer = models.load_tokenizer(run_dir / "model", self.run_cfg.trust_remote_code)
        encoder = PairEncoder(self.tokenizer, self.run_cfg, self.meta["labels"], self.max_length)
        pairs, self.rejects = read_pairs(pairs_path, encoder)
        _keep_sft(run_dir)  # only now: a bad pairs file leaves the run as it was
        self.train_idx, self.val_idx = _split(len(pairs), self.run_cfg.seed)
        self.examples = _flat(pairs)
        device = models.device()
        self.ex = Exec("lm", device, models.use_bf16(t.precision, device), self.tokenizer.pad_token_id, t.share_prefix)
        torch.manual_seed(self.run_cfg.seed)
        # A micro-batch holds both answers of each pair.
        self.model = _load_policy(run_dir, self.meta, self.run_cfg, self.tokenizer, self.ex, self.max_length, 2 * self.cfg.batch_size)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = models.optimizer(self.params, self.cfg.lr, t.weight_decay, device)
        steps_per_epoch = math.ceil(len(self.train_idx) / self.cfg.batch_size)
        self.total_steps = max(1, math.ceil(self.cfg.epochs * steps_per_epoch))
        from transformers import get_scheduler

        self.scheduler = get_scheduler("cosine", self.optimizer, round(t.warmup * self.total_steps), self.total_steps)

    def _batches(self, epoch: int) -> list[list[int]]:
        lengths = [max(len(self.examples[2 * p].input_ids), len(self.examples[2 * p + 1].input_ids)) for p in self.train_idx]
        order = length_grouped_batches(lengths, self.cfg.batch_size, self.run_cfg.seed * 100_003 + epoch)
        return [[self.train_idx[i] for i in b] for b in order]

    def fit(self) -> DpoResult:
        """Reference log-probs, then the DPO steps, then validation; returns before/after metrics."""
        started = time.perf_counter()
        _drop_dpo_records(self.run_dir)  # a rerun replaces the previous DPO phase
        self.ref = _all_logps(self.model, self.examples, 2 * self.cfg.batch_size, self.ex)
        ref_seconds = time.perf_counter() - started
        before = pair_metrics(self.ref[self.val_idx], self.ref[self.val_idx], self.cfg.beta)  # policy = reference
        self._log({"kind": "dpo_val", "step": 0, **before})
        step, epoch, train_seconds = 0, 0, 0.0
        with _progress() as bar:
            task = bar.add_task("DPO", total=self.total_steps, loss=math.log(2), acc=0.0)
            while step < self.total_steps:
                for pairs in self._batches(epoch):
                    t0 = time.perf_counter()
                    stats = self._step(pairs)
                    train_seconds += time.perf_counter() - t0
                    step += 1
                    self._log({"kind": "dpo_train", "step": step, "epoch": epoch, **stats, "lr": self.scheduler.get_last_lr()[0]})
                    bar.update(task, completed=step, loss=stats["loss"], acc=stats["reward_accuracy"])
                    if step >= self.total_steps:
                        break
                epoch += 1
        after = self._validate()
        self._log({"kind": "dpo_val", "step": step, **after})
        info = self._info(step, ref_seconds, train_seconds, time.perf_counter() - started)
        return DpoResult(self.run_dir, before, after, step, self.rejects, info)

    def _step(self, pairs: list[int]) -> dict[str, float]:
        rows = [[2 * p] for p in pairs] + [[2 * p + 1] for p in pairs]
        with self.ex.autocast():
            logps = sequence_logps(self.model, self.ex.batch(self.examples, rows)).float()
        chosen, rejected = logps.chunk(2)
        ref = self.ref[pairs].to(logps.device)
        losses, rc, rr = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], self.cfg.beta)
        loss = losses.mean()
        loss.backward()
        if self.run_cfg.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.run_cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach()), "reward_accuracy": float((rc > rr).float().mean()),
                "reward_margin": float((rc - rr).detach().mean())}

    def _validate(self) -> dict[str, float]:
        val = [e for p in self.val_idx for e in (self.examples[2 * p], self.examples[2 * p + 1])]
        policy = _all_logps(self.model, val, 2 * self.cfg.batch_size, self.ex)
        return pair_metrics(policy, self.ref[self.val_idx], self.cfg.beta)

    def _info(self, steps: int, ref_seconds: float, train_seconds: float, wall: float) -> dict[str, Any]:
        n = len(self.train_idx)
        seen = min(steps * self.cfg.batch_size, math.ceil(self.cfg.epochs * n))  # pairs trained on, repeats counted
        return {
            "method": self.meta["method"], "beta": self.cfg.beta, "lr": self.cfg.lr, "epochs": self.cfg.epochs,
            "batch_size": self.cfg.batch_size, "max_length": self.max_length, "steps": steps,
            "train_pairs": n, "val_pairs": len(self.val_idx), "val_is_train": self.val_idx == self.train_idx,
            "rejected_rows": len(self.rejects), "reference_seconds": ref_seconds, "train_seconds": train_seconds,
            "seconds_per_pair": train_seconds / max(seen, 1), "wall_seconds": wall, "bf16": self.ex.bf16,
            "device": str(self.ex.device),
        }

    def _log(self, record: dict[str, Any]) -> None:
        runs.append_metrics(self.run_dir, {"phase": "dpo", **record})

    def write(self, result: DpoResult) -> None:
        """Replace RUN/model with the tuned model (atomically) and write the summary and rejects."""
        meta = {**self.meta, "dpo": {"pairs": len(self.train_idx), "steps": result.steps, "beta": self.cfg.beta}}

        runs.write_model(self.run_dir, self.model, self.tokenizer, meta)
        with (self.run_dir / "dpo_rejects.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(asdict(r)) + "\n" for r in self.rejects)
        summary = {**result.info, "before": result.before, "after": result.after}
        (self.run_dir / "dpo_summary.json").write_text(json.dumps(summary, indent=1))


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


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("reward acc {task.fields[acc]:.2f}"),
        TimeRemainingColumn(), console=console,
    )


# ---------------------------------------------------------------- entry points


def run(run_dir: Path, pairs: Path, cfg: DpoConfig | None = None) -> DpoResult:
    """Tune a trained run's model on preference pairs with DPO; the result replaces `RUN/model/`.

    Args:
        run_dir: A finished training run (causal LM: generate, or classify-as-generate).
        pairs: JSONL of `{"prompt": [messages] | str, "chosen": str, "rejected": str}`; in a classify
            run a string prompt (or a `text` field) is the text to classify and the answers are labels.
        cfg: DPO settings (default: the run's `train.dpo`).

    Returns:
        Validation metrics before and after, steps, rejected rows and timings (also in
        `RUN/dpo_summary.json`). The SFT model is kept in `RUN/model_sft/`; a rerun starts from it.

    Raises:
        TuneloopError: no trained model, a classification-head run, a missing pairs file, or no
            usable pair in it.
    """
    trainer = _Dpo(Path(run_dir).resolve(), Path(pairs), cfg)
    for r in trainer.rejects[:5]:
        console.print(f"[yellow]warning:[/] {r.source} line {r.line}: {r.reason} (pair skipped)")
    if len(trainer.rejects) > 5:
        console.print(f"[yellow]warning:[/] {len(trainer.rejects)} pairs skipped in all; see {trainer.run_dir / 'dpo_rejects.jsonl'}")
    result = trainer.fit()
    trainer.write(result)
    return result


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
    (run_dir / "dpo_summary.json").unlink(missing_ok=True)
    return run_dir / "model"
