"""Run a loaded model over test rows: class-head predictions or batched greedy generation.

Works on `tuneloop.runs.load_trained(...)` results (`.model`, `.tokenizer`, `.cfg`, `.labels`,
`.kind`). torch is imported here only, so the metric modules stay light.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from rich.console import Console

from tuneloop.progress import track

_console = Console(stderr=True)


def _batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), size):
        yield list(order[i : i + size])


def _by_length(texts: Sequence[str]) -> list[int]:
    # Batching similar lengths together wastes less compute on padding; results are put back in order.
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


@torch.inference_mode()
def predict_head(loaded: Any, texts: Sequence[str], *, batch_size: int, desc: str = "predicting") -> list[str]:
    """Labels from a sequence-classification head: argmax of the logits.

    Args:
        loaded: A `load_trained` result of kind "head" with `.labels` in logit order.
        texts: Input texts.
        batch_size: Texts per forward pass.
        desc: Progress-bar label.

    Returns:
        One label per text, in input order.
    """
    tok, model = loaded.tokenizer, loaded.model
    out: list[str] = [""] * len(texts)
    done = 0
    with track(desc, len(texts), _console, unit="examples", transient=True) as progress:
        for idx in _batches(_by_length(texts), batch_size):
            enc = tok([texts[i] for i in idx], padding=True, truncation=True,
                      max_length=loaded.cfg.train.max_length, return_tensors="pt").to(model.device)
            for i, k in zip(idx, model(**enc).logits.argmax(dim=-1).tolist()):
                out[i] = loaded.labels[k]
            done += len(idx)
            progress(done)
    return out


def stop_ids(loaded: Any) -> set[int]:
    """Token ids that end an answer: the tokenizer's eos and the model's generation eos ids."""
    ids = {loaded.tokenizer.eos_token_id}
    gen_eos = getattr(loaded.model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return {i for i in ids if i is not None}


def _cut(ids: list[int], stop: set[int]) -> list[int]:
    for j, t in enumerate(ids):
        if t in stop:
            return ids[:j]
    return ids


@torch.inference_mode()
def generate(
    loaded: Any, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int, desc: str = "generating"
) -> list[str]:
    """Greedy answers to rendered prompts, batched with left padding; only the new text, stripped.

    Args:
        loaded: A `load_trained` result of kind "lm".
        prompts: Prompts rendered through the assistant generation prompt (`render_prompt`).
        batch_size: Prompts per `generate` call.
        max_new_tokens: Generation limit per answer.
        desc: Progress-bar label.

    Returns:
        One answer per prompt, in input order, cut at the first end-of-turn token.
    """
    tok, model = loaded.tokenizer, loaded.model
    tok.padding_side = "left"  # generation continues from the right end of every row
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stop = stop_ids(loaded)
    out: list[str] = [""] * len(prompts)
    done = 0
    with track(desc, len(prompts), _console, unit="examples", transient=True) as progress:
        for idx in _batches(_by_length(prompts), batch_size):
            # The rendered chat template already holds any BOS/special tokens it needs.
            enc = tok([prompts[i] for i in idx], padding=True, add_special_tokens=False,
                      return_tensors="pt").to(model.device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad_id, eos_token_id=sorted(stop) or None)
            for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:].tolist()):
                out[i] = tok.decode(_cut(row, stop), skip_special_tokens=True).strip()
            done += len(idx)
            progress(done)
    return out
