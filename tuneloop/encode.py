"""Examples → token ids and loss labels; prompts; length-grouped batches and packing.

The loss is on assistant tokens only (generate and classify-as-generate) or on the class id (a head).
Labels follow the Hugging Face convention: `labels[i]` is the target of position `i`, `-100` where
no loss is taken; `collate` shifts them per example (so packed neighbours never predict each other).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch

from tuneloop.errors import TuneloopError

IGNORE = -100
# How many neighbouring examples are sorted together when batching by length: enough to avoid
# padding, few enough that batches stay random.
_GROUP_BATCHES = 64


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: `labels` are per-token (LM, IGNORE where no loss) or a class id (head)."""

    input_ids: list[int]
    labels: list[int] | int

    @property
    def n_loss(self) -> int:
        """Tokens (LM) or examples (head) that carry loss."""
        if isinstance(self.labels, int):
            return 1
        return sum(1 for t in self.labels if t != IGNORE)


def classify_messages(text: str, labels: list[str], system_prompt: str | None = None) -> list[dict]:
    """The chat prompt that asks a causal LM for one label (training and zero-shot evaluation).

    Args:
        text: The text to classify.
        labels: The allowed labels.
        system_prompt: An instruction replacing the default first sentence; the label list is always added.

    Returns:
        A system message naming the labels and a user message with the text.

    Example:
        >>> classify_messages("Who wrote Hamlet?", ["HUM", "LOC"])[0]["content"]
        'Classify the text. Answer with exactly one of: HUM, LOC.'
    """
    instruction = system_prompt or "Classify the text."
    return [
        {"role": "system", "content": f"{instruction} Answer with exactly one of: {', '.join(labels)}."},
        {"role": "user", "content": text},
    ]


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """The prompt rendered with the chat template up to and including the assistant generation prompt.

    Tokenize it with `add_special_tokens=False`: the template already holds every special token.
    """
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _assistant_spans(tokenizer: Any, messages: list[dict], full: str) -> list[tuple[int, int]]:
    # Render the conversation up to each assistant turn: the characters an assistant turn adds
    # (its content and end-of-turn token) are the ones that carry loss.
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render_prompt(tokenizer, messages[:i]))
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(upto):
            raise TuneloopError(
                "the model's chat template renders a conversation differently from its prefix; "
                "assistant-only loss needs a prefix-stable template (ChatML, Llama, ...)"
            )
        # Trailing whitespace after the end-of-turn token is template formatting, not the answer.
        spans.append((start, len(upto.rstrip())))
    return spans


def encode_chat(tokenizer: Any, messages: list[dict], max_length: int | None = None) -> Encoded:
    """Tokenize a conversation with the chat template; labels on assistant tokens only.

    Args:
        tokenizer: A fast tokenizer with a chat template.
        messages: `{"role", "content"}` dicts; at least one assistant turn.
        max_length: Truncate to this many tokens (None: no limit).

    Returns:
        The token ids and per-token labels (IGNORE outside assistant turns).
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = _assistant_spans(tokenizer, messages, full)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [
        tok if any(s <= start < e for s, e in spans) else IGNORE
        for tok, (start, _) in zip(ids, enc["offset_mapping"])
    ]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels)


def encode_classify_lm(
    tokenizer: Any, text: str, label: str, labels: list[str], max_length: int, system_prompt: str | None = None
) -> Encoded:
    """Encode a text → label example for a causal LM; a long text is cut so the label always fits.

    Raises:
        TuneloopError: even an empty text leaves no room for the label within `max_length`.
    """
    def encode(t: str) -> Encoded:
        return encode_chat(tokenizer, [*classify_messages(t, labels, system_prompt), {"role": "assistant", "content": label}])

    enc = encode(text)
    if len(enc.input_ids) <= max_length:
        return enc
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep = len(offsets) - (len(enc.input_ids) - max_length)
    while keep > 0:
        enc = encode(text[: offsets[keep - 1][1]])
        if len(enc.input_ids) <= max_length:
            return enc
        keep -= 1  # token boundaries can shift at the cut: shorten until it fits
    need = len(encode("").input_ids)
    raise TuneloopError(
        f"max_length {max_length} is below the prompt length: the classification prompt and label alone need "
        f"{need} tokens; raise --max-length to at least {need + 16} or shorten train.system_prompt"
    )


def encode_head(tokenizer: Any, text: str, label_id: int, max_length: int) -> Encoded:
    """Encode a text for a sequence-classification head (the tokenizer adds its own special tokens)."""
    return Encoded(tokenizer(text, truncation=True, max_length=max_length)["input_ids"], label_id)


def _row_error(where: str, msg: str) -> TuneloopError:
    return TuneloopError(f"{where}: {msg}")


def _messages(row: dict, where: str) -> list[dict]:
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _row_error(where, "field 'messages' must be a non-empty list of {role, content}; re-run `tuneloop prepare`")
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise _row_error(where, f"bad message {m!r}: needs role system/user/assistant and a string content")
    if not any(m["role"] == "assistant" for m in msgs):
        raise _row_error(where, "no assistant message, so nothing to learn; every row needs an answer")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _classify_fields(row: dict, labels: list[str], where: str) -> tuple[str, str]:
    text, label = row.get("text"), row.get("label")
    if not isinstance(text, str):
        raise _row_error(where, "field 'text' must be a string")
    if label not in labels:
        raise _row_error(where, f"label {label!r} is not one of the manifest's labels {labels}")
    return text, label


def encode_rows(
    rows: Iterable[dict],
    tokenizer: Any,
    *,
    task: Literal["generate", "classify"],
    kind: Literal["lm", "head"],
    max_length: int,
    labels: list[str] | None = None,
    system_prompt: str | None = None,
    source: str = "data",
) -> tuple[list[Encoded], int]:
    """Encode prepared rows (`messages`, or `text` + `label`) for training or validation.

    Args:
        rows: Rows as written by `tuneloop prepare`.
        tokenizer: The base model's tokenizer.
        task: `generate` or `classify`.
        kind: `lm` (loss on answer tokens) or `head` (loss on the class id).
        max_length: Token limit per example.
        labels: The manifest's labels (classify).
        system_prompt: Instruction for classify-as-generate prompts.
        source: File name for error messages.

    Returns:
        The encoded examples and how many rows were dropped because truncation left no answer token.

    Raises:
        TuneloopError: a malformed row (names file, line and field) or no example left after truncation.
    """
    out, dropped = [], 0
    for i, row in enumerate(rows):
        where = f"{source} line {i + 1}"
        if task == "generate":
            enc = encode_chat(tokenizer, _messages(row, where), max_length)
        else:
            text, label = _classify_fields(row, labels or [], where)
            enc = (encode_head(tokenizer, text, labels.index(label), max_length) if kind == "head"
                   else encode_classify_lm(tokenizer, text, label, labels, max_length, system_prompt))
        if enc.n_loss == 0:
            dropped += 1
            continue
        out.append(enc)
    if not out and dropped:
        raise TuneloopError(
            f"max_length {max_length} is below the prompt length of every row in {source}: truncation leaves no "
            "answer token to learn; raise --max-length"
        )
    return out, dropped


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort neighbourhoods of examples by length and cut batches; the batch order is random.

    Deterministic in `seed`, so a resumed run recomputes the same order and skips what it has seen.

    Example:
        >>> sorted(len(b) for b in length_grouped_batches([5, 1, 9, 3, 7], 2, seed=0))
        [1, 2, 2]
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * _GROUP_BATCHES
    batches = []
    for g in range(0, len(order), group):
        chunk = sorted(order[g : g + group], key=lambda i: -lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def pack(lengths: list[int], order: list[int], max_length: int) -> list[list[int]]:
    """Greedily pack examples (in `order`) into rows of at most `max_length` tokens (first fit, 64 open rows).

    Example:
        >>> pack([3, 2, 4, 1], [0, 1, 2, 3], max_length=5)
        [[0, 1], [2, 3]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        # Only the last 64 rows are searched: first fit over all rows is quadratic.
        fit = next((r for r in range(max(0, len(rows) - 64), len(rows)) if room[r] >= n), None)
        if fit is None:
            rows.append([i])
            room.append(max_length - n)
        else:
            rows[fit].append(i)
            room[fit] -= n
    return rows


def epoch_batches(
    examples: list[Encoded], batch_size: int, seed: int, *, packing: bool, group_by_length: bool, max_length: int
) -> list[list[list[int]]]:
    """The micro-batches of one epoch: each a list of rows, each row a list of example indices.

    Without packing every row holds one example; with packing a row holds several (up to `max_length`
    tokens) and a micro-batch holds `batch_size` rows.
    """
    lengths = [len(e.input_ids) for e in examples]
    if packing:
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        rows = pack(lengths, order, max_length)
        rows_len = [sum(lengths[i] for i in r) for r in rows]
        return [[rows[i] for i in b] for b in length_grouped_batches(rows_len, batch_size, seed + 1)]
    if group_by_length:
        return [[[i] for i in b] for b in length_grouped_batches(lengths, batch_size, seed)]
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [[[i] for i in order[b : b + batch_size]] for b in range(0, len(order), batch_size)]


def eval_batches(examples: list[Encoded], batch_size: int) -> list[list[list[int]]]:
    """Validation micro-batches: sorted by length (least padding), in a fixed order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    return [[[i] for i in order[b : b + batch_size]] for b in range(0, len(order), batch_size)]


def shared_prefix(examples: list[Encoded]) -> int:
    """Tokens that all examples share at the start and on which no loss is taken (0 if fewer than 2)."""
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    n = min(len(e.input_ids) for e in examples) - 1  # each keeps at least one token of its own
    for e in examples:
        # Position i's target is token i + 1: the prefix must end before the first answer token.
        n = min(n, next((i for i, t in enumerate(e.labels) if t != IGNORE), n + 1) - 1)
        n = next((i for i in range(n) if e.input_ids[i] != first[i]), n)
    return max(n, 0)


def collate(
    examples: list[Encoded], rows: list[list[int]], pad_id: int, *, share_prefix: bool = False
) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch: right-padded ids plus shifted `targets` (LM) or `labels` (head).

    A packed row (several examples) gets position ids that restart per example and no attention
    mask, which makes transformers isolate the examples from each other (run with use_cache=False).
    `targets[i]` is what position `i` must predict, shifted within each example.

    With `share_prefix`, a prompt prefix that every example of the batch starts with (a system
    prompt) is returned once as `prefix_ids`; `input_ids`, `position_ids` and `targets` then hold
    the rest, and `attention_mask` covers prefix + rest. `n_tokens` always counts every real token.
    """
    head = isinstance(examples[rows[0][0]].labels, int)
    n = shared_prefix([examples[r[0]] for r in rows]) if share_prefix and not head and all(len(r) == 1 for r in rows) else 0
    if n >= _MIN_PREFIX:
        return _split_prefix(_collate(examples, rows, pad_id, head), n)
    return _collate(examples, rows, pad_id, head)


# A shorter shared prefix saves less than the second forward call costs.
_MIN_PREFIX = 8


def _collate(examples: list[Encoded], rows: list[list[int]], pad_id: int, head: bool) -> dict[str, torch.Tensor]:
    width = max(sum(len(examples[i].input_ids) for i in r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e, n = examples[i], len(examples[i].input_ids)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            mask[r, at : at + n] = 1
            pos[r, at : at + n] = torch.arange(n)
            if not head:
                targets[r, at : at + n - 1] = torch.tensor(e.labels[1:])
            at += n
        pos[r, at:] = torch.arange(width - at)  # padding forms its own "sequence"
    batch = {"input_ids": ids, "n_tokens": mask.sum()}
    if head:
        batch["attention_mask"] = mask
        batch["labels"] = torch.tensor([examples[r[0]].labels for r in rows])
    elif any(len(r) > 1 for r in rows):
        batch["position_ids"] = pos
        batch["targets"] = targets
    else:
        batch["attention_mask"] = mask
        batch["position_ids"] = pos
        batch["targets"] = targets
    return batch


def _split_prefix(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {
        "prefix_ids": batch["input_ids"][:1, :n], "input_ids": batch["input_ids"][:, n:],
        "attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"][:, n:],
        "targets": batch["targets"][:, n:], "n_tokens": batch["n_tokens"],
    }
