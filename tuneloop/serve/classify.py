"""Label probabilities for /v1/classify: a head's softmax, or a causal LM's scores of each label's tokens.

A classify-as-generate model (kind "lm") answers with a label. Instead of generating and parsing,
the server scores every label as that answer: the log-probability of the label's tokens followed by
the end-of-turn token, after the same prompt the model was trained on. A softmax over those scores
gives a distribution over the labels (summing to 1 over the labels, not over all possible texts);
the label is its argmax. The end-of-turn token matters: it keeps a label from winning just because
another label starts with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tuneloop.encode import IGNORE, encode_classify_lm
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


def _split(loaded: Any, text: str) -> tuple[list[int], list[list[int]]]:
    """A text's prompt ids and each label's answer ids (label + end of turn), encoded as in training."""
    cfg = loaded.cfg
    encoded = [encode_classify_lm(loaded.tokenizer, text, label, loaded.labels, cfg.train.max_length, cfg.train.system_prompt)
               for label in loaded.labels]
    # The answer is the run of tokens that carry loss (the template may add tokens after it).
    spans = [[i for i, t in enumerate(e.labels) if t != IGNORE] for e in encoded]
    # Prompts differ only where a long text was cut to make room for a longer label: use the shortest.
    prompt = min((e.input_ids[: s[0]] for e, s in zip(encoded, spans)), key=len)
    return prompt, [e.input_ids[s[0] : s[-1] + 1] for e, s in zip(encoded, spans)]


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
def label_log_probs(loaded: Any, texts: Sequence[str]) -> torch.Tensor:
    """Log-probability of each label as the LM's whole answer, shape (texts, labels).

    The prompts run once, as a batch (their shared system prompt once for the batch); every label's
    answer tokens then run from a copy of its text's keys/values, so a text costs its own part of
    the prompt plus a few tokens per label.
    """
    tok, n_labels = loaded.tokenizer, len(loaded.labels)
    lm = core(loaded.model)
    decoder, head, device = lm.get_decoder(), lm.get_output_embeddings(), lm.device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for start in range(0, len(texts), CHUNK):
        split = [_split(loaded, t) for t in texts[start : start + CHUNK]]
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


def length_groups(texts: Sequence[str], max_tokens: int = 2048) -> list[list[int]]:
    """Indices of `texts` in groups of similar length, each padding to about `max_tokens` at most.

    A forward pass pads every text to the longest in it: grouping by length keeps one long text
    from making the short ones batched with it cost as much as it does. Lengths are estimated
    from characters (about 4 a token), which is all the grouping needs.

    Example:
        >>> length_groups(["a" * 4000, "hi", "yo"], max_tokens=512)
        [[1, 2], [0]]
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(texts)), key=lambda i: len(texts[i])):
        width = len(texts[i]) // 4 + 8  # the longest so far: texts come shortest first
        if not groups or len(groups[-1]) >= CHUNK or (len(groups[-1]) + 1) * width > max_tokens:
            groups.append([])
        groups[-1].append(i)
    return groups


def classify(loaded: Any, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Label and per-label probabilities for each text.

    Args:
        loaded: A `load_trained` result of a classify run (kind "head" or "lm").
        texts: Texts to classify (run in groups of similar length).

    Returns:
        `{"label": str, "probabilities": {label: float}}` per text, in order.
    """
    probs = torch.empty(len(texts), len(loaded.labels))
    for group in length_groups(texts):
        batch = [texts[i] for i in group]
        probs[group] = head_probabilities(loaded, batch) if loaded.kind == "head" else label_log_probs(loaded, batch).softmax(dim=-1)
    return [
        {"label": loaded.labels[int(p.argmax())], "probabilities": {lab: round(float(x), 6) for lab, x in zip(loaded.labels, p)}}
        for p in probs
    ]
