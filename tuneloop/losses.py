"""Training objectives: cross-entropy on the positions that carry loss (SFT), the DPO loss, validation loss.

For a causal LM the decoder runs on every token, but the LM head (for SmolLM2 a 49k-vocabulary
matmul whose fp32 logits are ~1 GB for 8 x 256 tokens) runs only on answer positions, in chunks,
and computes its gradient on the spot: the logits never exist whole and are never stored.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tuneloop import distributed
from tuneloop.encode import IGNORE, Encoded, collate, encode_rows, eval_batches

if TYPE_CHECKING:
    from tuneloop.runs import Loaded

# Positions per LM-head chunk: 512 x 49k fp32 logits are ~100 MB.
CHUNK = 512


def core(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Summed cross-entropy of a micro-batch (from `encode.collate`) over the positions that carry loss.

    Args:
        model: A causal LM or sequence classifier, bare or wrapped by peft.
        batch: `input_ids` plus `targets` (LM; may hold a shared `prefix_ids`) or `labels` (head).
        kind: `lm` or `head`.

    Returns:
        A scalar: the sum over loss tokens (LM) or examples (head); divide by their count for a mean.
    """
    if kind == "head":
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
    lm = core(model)
    keep = batch["targets"] != IGNORE
    hidden = decoder_hidden(lm, batch)[keep]
    head = lm.get_output_embeddings()
    if head.bias is not None:  # no fused path for a biased head (rare in LMs)
        return F.cross_entropy(head(hidden).float(), batch["targets"][keep], reduction="sum")
    return linear_cross_entropy(hidden, head.weight, batch["targets"][keep])


def decoder_hidden(lm: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's last hidden states; a shared prefix runs once and its keys/values are reused."""
    decoder, cache = lm.get_decoder(), None
    if "prefix_ids" in batch:
        from transformers import DynamicCache

        cache = DynamicCache(config=lm.config)
        decoder(input_ids=batch["prefix_ids"], cache=cache, use_cache=True)
        # Every row attends to the same prefix keys/values; their gradients add up in backward.
        cache.batch_repeat_interleave(batch["input_ids"].shape[0])
    return decoder(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"),
        cache=cache, use_cache=cache is not None,
    ).last_hidden_state


class _LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)), chunk by chunk, gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # noqa: ANN001
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for i in range(0, hidden.shape[0], CHUNK):
            h, t = hidden[i : i + CHUNK].to(dtype), targets[i : i + CHUNK]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                # d(loss)/d(logits) = softmax - one_hot, computed in place over the logits.
                g = logits.sub_(lse[:, None]).exp_()
                g[torch.arange(len(t), device=t.device), t] -= 1.0
                g = g.to(dtype)
                if need_h:
                    grad_h[i : i + CHUNK] = g @ w
                if need_w:
                    grad_w += (g.T @ h).float()
        ctx.save_for_backward(*(x for x in (grad_h, grad_w) if x is not None))
        ctx.need, ctx.weight_dtype = (need_h, need_w), weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN205
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) * grad_out if ctx.need[0] else None
        grad_w = (saved.pop(0) * grad_out).to(ctx.weight_dtype) if ctx.need[1] else None
        return grad_h, grad_w, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets` without materialising all logits.

    Matmuls run in the autocast dtype when autocast is on (as `nn.Linear` would), the softmax in fp32.

    Example:
        >>> h, w, t = torch.randn(5, 4), torch.randn(7, 4), torch.tensor([0, 1, 2, 3, 6])
        >>> bool(torch.isclose(linear_cross_entropy(h, w, t), F.cross_entropy(h @ w.T, t, reduction="sum")))
        True
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, dtype)


# ---------------------------------------------------------------- scoring loss on held-out rows


def n_loss(batch: dict[str, torch.Tensor]) -> int:
    """Positions (LM) or examples (head) of a micro-batch that carry loss: what `loss_sum` sums over."""
    return len(batch["labels"]) if "labels" in batch else int((batch["targets"] != IGNORE).sum())


@dataclass(frozen=True)
class Exec:
    """How batches are built and run: the same for training, validation and `validation_loss`."""

    kind: str
    device: torch.device
    bf16: bool
    pad_id: int
    share_prefix: bool

    def batch(self, examples: list[Encoded], rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Collate a micro-batch and move it to the device."""
        b = collate(examples, rows, self.pad_id, share_prefix=self.share_prefix and self.kind == "lm")
        return {k: v.to(self.device, non_blocking=True) for k, v in b.items()}

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast, or nothing for fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


@torch.no_grad()
def mean_loss(model: torch.nn.Module, examples: list[Encoded], batch_size: int, ex: Exec) -> float:
    """Mean loss per loss token (LM) or per example (head) over `examples`, in eval mode.

    Under several processes each scores its share and the mean is over all of them.
    """
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for rows in distributed.shard(eval_batches(examples, batch_size)):  # each process scores its share
        batch = ex.batch(examples, rows)
        with ex.autocast():
            total += float(loss_sum(model, batch, ex.kind))
        n += n_loss(batch)
    model.train(was_training)
    total, n = distributed.sum_values(total, n)
    return total / max(n, 1)


def validation_loss(loaded: Loaded, rows: list[dict[str, Any]]) -> float:
    """Mean loss per loss token (per example for a head) on prepared rows, masked as in training.

    `exp()` of it is the perplexity of the answers.
    """
    from tuneloop.models import use_bf16

    t = loaded.cfg.train
    examples, _ = encode_rows(rows, loaded.tokenizer, task=loaded.cfg.task, kind=loaded.kind, max_length=t.max_length,
                              labels=loaded.labels, system_prompt=t.system_prompt, source="rows")
    device = next(loaded.model.parameters()).device
    ex = Exec(loaded.kind, device, use_bf16(t.precision, device), loaded.tokenizer.pad_token_id, t.share_prefix)
    return mean_loss(loaded.model, examples, t.batch_size, ex)


# ---------------------------------------------------------------- the DPO objective


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
