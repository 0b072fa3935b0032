"""Batched chat generation where every row keeps its own settings, and streams its own text.

All chat requests of a batch run in one `model.generate` call, left-padded. Each row keeps its
temperature, top_p, seed, max_tokens and stop strings: a logits processor samples the rows that
sample (greedy rows keep their logits, and generate takes the argmax), and a stopping criterion
follows every row after each token — it ends the row at end-of-turn, a stop string or its own
max_tokens, and hands new text to the row's stream callback as it appears. A batch therefore mixes
greedy and sampling requests, streaming or not, and each gets exactly what it would get alone
(up to float rounding of the batched matmuls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from tuneloop.evaluate.predict import stop_ids


@dataclass
class ChatRow:
    """One chat request as the model thread sees it."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    emit: Callable[[str], None] | None = None  # streaming: called (in the model thread) with each new piece of text
    cancelled: bool = False  # set when a streaming client goes away: the row stops at its next token
    streamed: bool = False  # some text was sent to the client already


@dataclass
class ChatOut:
    """What a row generated."""

    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int


class _PerRowSampling(LogitsProcessor):
    """Samples the next token of every sampling row (temperature, top_p, seed) and leaves only that token.

    Greedy rows are untouched, so generate's argmax picks their most likely token.
    """

    def __init__(self, rows: Sequence[ChatRow]) -> None:
        self.rows = rows
        self.generators = [torch.Generator().manual_seed(r.seed) if r.seed is not None else None for r in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        for i, row in enumerate(self.rows):
            if row.temperature <= 0:
                continue
            token = sample(scores[i], row.temperature, row.top_p, self.generators[i])
            scores[i] = float("-inf")
            scores[i, token] = 0.0
        return scores


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None) -> int:
    """One token id drawn from `softmax(logits / temperature)`, cut to the `top_p` nucleus.

    Computed in float64 after subtracting the largest logit, so any temperature above 0 gives a
    valid distribution (a tiny one puts all the mass on the most likely token), and the most likely
    token always stays in the nucleus however small `top_p` is.

    Example:
        >>> sample(torch.tensor([0.0, 5.0, 1.0]), 1e-300, 1e-300)
        1
    """
    z = logits.double()
    probs = torch.softmax((z - z.max()) / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # Keep the smallest set of most likely tokens whose mass reaches top_p (at least one).
        drop = (sorted_p.cumsum(0) - sorted_p) >= top_p
        drop[0] = False
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator).item())


class _RowTracker(StoppingCriteria):
    """After each token: decode every live row, end it where it should end, stream its new text."""

    def __init__(self, rows: Sequence[ChatRow], tokenizer: Any, stop_ids: set[int]) -> None:
        self.rows, self.tok, self.stop_ids = rows, tokenizer, stop_ids
        self.ids: list[list[int]] = [[] for _ in rows]
        self.text = [""] * len(rows)
        self.sent = [0] * len(rows)  # characters already streamed
        self.finish: list[str | None] = [None] * len(rows)
        # Text that could be the start of a stop string is held back until it cannot be.
        self.hold = [max((len(s) for s in r.stop), default=1) - 1 for r in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for i, token in enumerate(input_ids[:, -1].tolist()):
            if self.finish[i] is None:
                self._step(i, token)
        return torch.tensor([f is not None for f in self.finish], dtype=torch.bool, device=input_ids.device)

    def _step(self, i: int, token: int) -> None:
        row = self.rows[i]
        if token in self.stop_ids or row.cancelled:
            self._end(i, "stop")
            return
        self.ids[i].append(token)
        text = self.tok.decode(self.ids[i], skip_special_tokens=True)
        cut = min((p for p in (text.find(s, max(0, self.sent[i] - len(s))) for s in row.stop) if p >= 0), default=-1)
        if cut >= 0:
            self.text[i] = text[:cut]
            self._end(i, "stop")
        elif len(self.ids[i]) >= row.max_tokens:
            self.text[i] = text
            self._end(i, "length")
        else:
            self.text[i] = text
            self._flush(i, final=False)

    def _end(self, i: int, reason: str) -> None:
        self.finish[i] = reason
        self._flush(i, final=True)

    def _flush(self, i: int, *, final: bool) -> None:
        emit, text = self.rows[i].emit, self.text[i]
        if emit is None:
            return
        upto = len(text) if final else len(text) - self.hold[i]
        while not final and upto > self.sent[i] and text[upto - 1] == "\ufffd":
            upto -= 1  # an incomplete multi-byte character: wait for the rest of its bytes
        if upto > self.sent[i]:
            self.rows[i].streamed = True
            emit(text[self.sent[i] : upto])
            self.sent[i] = upto


@torch.inference_mode()
def generate_rows(loaded: Any, rows: Sequence[ChatRow]) -> list[ChatOut]:
    """Generate answers for chat rows in one batched `generate` call.

    Args:
        loaded: A `load_trained` result of kind "lm".
        rows: Prompts (token ids of the rendered chat) with their own settings.

    Returns:
        One `ChatOut` per row, in order.
    """
    tok, model = loaded.tokenizer, loaded.model
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
    mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
    stop = stop_ids(loaded)
    tracker = _RowTracker(rows, tok, stop)
    # A fresh config: the model's own defaults (sampling, penalties) must not change what was asked.
    config = GenerationConfig(max_new_tokens=max(r.max_tokens for r in rows), do_sample=False,
                              pad_token_id=pad_id, eos_token_id=sorted(stop) or None)
    model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), generation_config=config,
                   logits_processor=LogitsProcessorList([_PerRowSampling(rows)]),
                   stopping_criteria=StoppingCriteriaList([tracker]))
    out = []
    for i, row in enumerate(rows):
        if tracker.finish[i] is None:  # generate stopped on its own (context length): treat as max_tokens
            tracker._end(i, "length")
        out.append(ChatOut(tracker.text[i], tracker.finish[i] or "length", len(row.prompt_ids), len(tracker.ids[i])))
    return out
