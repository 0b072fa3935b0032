"""Label likelihoods: a head's softmax, or a causal LM's log-probability of each label as its answer.

A classify-as-generate model (kind "lm") answers with a label. Instead of generating and parsing,
every label is scored as that answer: the log-probability of the label's tokens followed by the
end-of-turn token, after the same prompt the model was trained on (optionally with in-context
examples before the question). A softmax over those scores gives a distribution over the labels
(summing to 1 over the labels, not over all possible texts); the label is its argmax. The
end-of-turn token matters: it keeps a label from winning just because another label starts with it.

`tuneloop eval` uses it for the zero-shot and k-shot baselines of the base model (no unparseable
answers, so the base is not beaten by default) and `/v1/classify` for served predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuneloop.encode import IGNORE, classify_messages, encode_chat, encode_classify_lm
from tuneloop.evaluate.shots import with_shots
from tuneloop.losses import core

# Texts per forward pass.
CHUNK = 32


@torch.inference_mode()
def head_probabilities(loaded: Any, texts: Sequence[str]) -> torch.Tensor:
    """Softmax of a sequence-classification head's logits, shape (texts, labels), in `loaded.labels` order."""
    tok, model = loaded.tokenizer, loaded.model
    out = []
    for i in range(0, len(texts), CHUNK):
        enc = tok(list(texts[i : i + CHUNK]), padding=True, truncation=True, max_length=loaded.cfg.train.max_length,
                  return_tensors="pt").to(model.device)
        out.append(model(**enc).logits.float().softmax(dim=-1).cpu())
    return torch.cat(out)


def _split(loaded: Any, text: str, shots: Sequence[list[dict[str, str]]] = ()) -> tuple[list[int], list[list[int]]]:
    """A text's prompt ids and each label's answer ids (label + end of turn), encoded as in training.

    With shots (in-context examples) the prompt is not cut to `train.max_length`: the base model
    has no such limit, and cutting would drop the examples.
    """
    cfg, tok, labels = loaded.cfg, loaded.tokenizer, loaded.labels
    if shots:
        msgs = with_shots(classify_messages(text, labels, cfg.train.system_prompt), shots)
        encoded = [encode_chat(tok, [*msgs, {"role": "assistant", "content": label}]) for label in labels]
    else:
        encoded = [encode_classify_lm(tok, text, label, labels, cfg.train.max_length, cfg.train.system_prompt)
                   for label in labels]
    # The answer is the last run of tokens that carry loss (shots' answers carry loss too; the
    # template may add tokens after it).
    spans = [_last_run([i for i, t in enumerate(e.labels) if t != IGNORE]) for e in encoded]
    # Prompts differ only where a long text was cut to make room for a longer label: use the shortest.
    prompt = min((e.input_ids[: s[0]] for e, s in zip(encoded, spans)), key=len)
    return prompt, [e.input_ids[s[0] : s[-1] + 1] for e, s in zip(encoded, spans)]


def _last_run(positions: list[int]) -> list[int]:
    """The last run of consecutive positions: `[3, 4, 9, 10, 11]` → `[9, 10, 11]`."""
    start = len(positions) - 1
    while start > 0 and positions[start - 1] == positions[start] - 1:
        start -= 1
    return positions[start:]


def _right_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def _common_prefix(rows: Sequence[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one of its own (0 for a single row)."""
    if len(rows) < 2:
        return 0
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        n = next((i for i in range(n) if r[i] != first[i]), n)
    return n


def _run_prompts(lm: Any, prompts: list[list[int]], pad_id: int) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the prompts into a key/value cache; the prefix they all share (the system prompt) runs once.

    Returns:
        The cache, its attention mask, each prompt's length, and the hidden state of each prompt's last token.
    """
    from transformers import DynamicCache

    decoder, device = lm.get_decoder(), lm.device
    cache, n = DynamicCache(config=lm.config), _common_prefix(prompts)
    if n:
        decoder(input_ids=torch.tensor([prompts[0][:n]], device=device), cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(prompts))
    ids, mask = (x.to(device) for x in _right_pad([p[n:] for p in prompts], pad_id))
    mask = torch.cat([torch.ones(len(prompts), n, dtype=mask.dtype, device=device), mask], dim=1)
    pos = (n + torch.arange(ids.shape[1], device=device)).expand(len(prompts), -1)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).last_hidden_state
    lengths = mask.sum(1)
    return cache, mask, lengths, hidden[torch.arange(len(prompts)), lengths - n - 1]


@torch.inference_mode()
def label_log_probs(loaded: Any, texts: Sequence[str], *, shots: Sequence[list[dict[str, str]]] = ()) -> torch.Tensor:
    """Log-probability of each label as the LM's whole answer, shape (texts, labels).

    The prompts run once, as a batch (their shared system prompt and shots once for the batch);
    every label's answer tokens then run from a copy of its text's keys/values, so a text costs its
    own part of the prompt plus a few tokens per label.

    Args:
        loaded: A `load_trained` result of kind "lm" with `.labels`.
        texts: Texts to classify.
        shots: In-context examples as chat turns (`evaluate.shots.shot_turns`), the same for every text.
    """
    tok, n_labels = loaded.tokenizer, len(loaded.labels)
    lm = core(loaded.model)
    decoder, head, device = lm.get_decoder(), lm.get_output_embeddings(), lm.device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for start in range(0, len(texts), CHUNK):
        split = [_split(loaded, t, shots) for t in texts[start : start + CHUNK]]
        answers = [a for _, text_answers in split for a in text_answers]  # row r: text r // n_labels
        cache, mask, lengths, last = _run_prompts(lm, [p for p, _ in split], pad_id)
        first = head(last).float().log_softmax(-1)  # predicts every answer's first token
        # One row per (text, label): the answer's tokens but its last, fed after the text's prompt.
        a_ids, a_mask = (x.to(device) for x in _right_pad([a[:-1] or [pad_id] for a in answers], pad_id))
        cache.batch_repeat_interleave(n_labels)
        pos = lengths.repeat_interleave(n_labels)[:, None] + torch.arange(a_ids.shape[1], device=device)
        full_mask = torch.cat([mask.repeat_interleave(n_labels, 0), a_mask], dim=1)
        hidden = decoder(input_ids=a_ids, attention_mask=full_mask, position_ids=pos, cache=cache,
                         use_cache=True).last_hidden_state
        scores = torch.zeros(len(answers), device=device)
        for r, answer in enumerate(answers):
            scores[r] = first[r // n_labels, answer[0]]
            if len(answer) > 1:  # the rest of the answer, predicted from the answer's own positions
                logp = head(hidden[r, : len(answer) - 1]).float().log_softmax(-1)
                scores[r] += logp.gather(1, torch.tensor(answer[1:], device=device)[:, None]).sum()
        out.append(scores.view(len(split), n_labels).cpu())
    return torch.cat(out)


#: Most tokens per forward pass of `answer_losses` (rows are batched by length up to this).
TOKEN_BUDGET = 4096


def _answer_example(tok: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and the positions of its last assistant answer (end of turn included)."""
    enc = encode_chat(tok, messages)
    return enc.input_ids, _last_run([i for i, t in enumerate(enc.labels) if t != IGNORE])


@torch.inference_mode()
def answer_losses(loaded: Any, conversations: Sequence[list[dict[str, str]]]) -> list[float]:
    """Per-example loss: mean negative log-likelihood per token of each conversation's last answer.

    Only the last assistant turn is scored, so a k-shot prompt (earlier worked examples) gives the
    loss of the answer to the question, comparable with the zero-shot and tuned models' losses on
    the same rows. Nothing is cut: the whole conversation is the context.

    Args:
        loaded: A `load_trained` result of kind "lm".
        conversations: Chats ending with the reference answer.

    Returns:
        One loss per conversation, in order (lower is better; exp() is the answer's perplexity).
    """
    tok, lm = loaded.tokenizer, core(loaded.model)
    decoder, head, device = lm.get_decoder(), lm.get_output_embeddings(), lm.device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = [_answer_example(tok, list(c)) for c in conversations]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    out = [0.0] * len(examples)
    while order:
        width = len(examples[order[0]][0])  # the batch's longest row, as rows are taken shortest first
        batch = [order.pop(0)]
        while order and (len(batch) + 1) * max(width, len(examples[order[0]][0])) <= TOKEN_BUDGET:
            width = max(width, len(examples[order[0]][0]))
            batch.append(order.pop(0))
        ids, mask = (x.to(device) for x in _right_pad([examples[i][0] for i in batch], pad_id))
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        for r, i in enumerate(batch):
            ids_i, answer = examples[i]
            # Position p predicts token p + 1: the answer's tokens are predicted from the position before each.
            logp = head(hidden[r, [p - 1 for p in answer]]).float().log_softmax(-1)
            target = torch.tensor([ids_i[p] for p in answer], device=device)
            out[i] = float(-logp.gather(1, target[:, None]).mean())
    return out
