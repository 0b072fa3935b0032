"""Leakage between splits, judged by prompt as well as by whole row.

The same question with another answer is still the same question: a model trained on it is not
tested on anything new, and a checkpoint chosen on it was chosen on a test row. So rows are also
compared by their prompt — the user turns of a chat, the text of a classification row — exactly
(after `normalise_for_key`) and as near duplicates (MinHash LSH, the threshold of deduplication).
A validation row whose prompt or content matches a test row leaves validation; a training row
matching a validation or test row leaves training. Validation is checked against test whether
test was sampled or given as `test_file`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.data.dedup import content_id, id_key
from tuneloop.data.ingest import Rows
from tuneloop.data.lsh import Signer, band_keys, leaked, shingles
from tuneloop.data.split import DROPPED, TEST, TRAIN, VAL
_BATCH = 4096  # rows signed together


@dataclass
class Prompts:
    """Per-row prompt keys and MinHash signatures (for classification: the rows' own, the text is the prompt).

    Attributes:
        keys: 64-bit key of each row's normalised prompt.
        sig: MinHash signature of each row's prompt, `(rows, num_perm)` uint32.
        own: True when keys and signatures are the rows' content ones (nothing extra to compare).
    """

    keys: np.ndarray
    sig: np.ndarray
    own: bool = False


def prompt_text(record: dict[str, Any]) -> str:
    """The prompt of a prepared row: the user turns of a chat, else the text.

    >>> prompt_text({"messages": [{"role": "system", "content": "Be brief."},
    ...     {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]})
    'Capital of France?'
    """
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"] if m.get("role") == "user")
    return str(record.get("text", ""))


def prompt_index(spill: Path, rows: Rows, task: str, num_perm: int, ngram: int) -> Prompts:
    """Prompt keys and signatures of every kept row, read from the spill file (row i on line i).

    A row without user text (nothing to compare as a prompt) keeps its content key, so such
    rows never match each other merely for being empty.

    Args:
        spill: The spill file written by the first pass.
        rows: The kept rows (their content keys and signatures).
        task: "classify" (the text is the prompt: the rows' own keys are reused) or "generate".
        num_perm: MinHash permutations (as for deduplication).
        ngram: Words per shingle (as for deduplication).
    """
    if task == "classify":
        return Prompts(rows.keys, rows.sig, own=True)
    signer = Signer(num_perm)
    keys = rows.keys.copy()
    sig = rows.sig.copy()
    batch: list[tuple[int, str]] = []
    with open(spill, encoding="utf-8") as f:
        for i, line in enumerate(f):
            text = prompt_text(json.loads(line))
            if text.strip():
                keys[i] = id_key(content_id(text=text))
                batch.append((i, text))
            if len(batch) >= _BATCH:
                _sign(signer, batch, sig, ngram)
    _sign(signer, batch, sig, ngram)
    return Prompts(keys, sig)


def _sign(signer: Signer, batch: list[tuple[int, str]], sig: np.ndarray, ngram: int) -> None:
    if batch:
        sig[[i for i, _ in batch]] = signer.sign(shingles(t, ngram) for _, t in batch)
        batch.clear()


def remove_leaks(rows: Rows, prompts: Prompts, keys: np.ndarray, split: np.ndarray, threshold: float,
                 shape: tuple[int, int]) -> dict[str, int]:
    """Drop validation rows that leak a test row, then training rows that leak a validation or test row.

    Args:
        rows: The kept rows (content keys and signatures).
        prompts: Their prompt keys and signatures.
        keys: LSH band keys of the content signatures (`band_keys`).
        split: Split code per row, changed in place (leaking rows become -1).
        threshold: Jaccard similarity at or above which two rows (or prompts) are near duplicates.
        shape: (bands, rows per band) of the LSH.

    Returns:
        Counts: `leaked` (all removed), `leaked_exact` (same content), `leaked_prompt` (same prompt,
        other answer), `leaked_near` (near-duplicate content or prompt), `leaked_from_train`, `leaked_from_val`.
    """
    prompt_keys = None if prompts.own else band_keys(prompts.sig, *shape)
    counts = dict.fromkeys(("leaked", "leaked_exact", "leaked_prompt", "leaked_near", "leaked_from_train", "leaked_from_val"), 0)
    for code, name, held_codes in ((VAL, "val", (TEST,)), (TRAIN, "train", (VAL, TEST))):
        held = np.flatnonzero(np.isin(split, held_codes))
        found = _leaks(rows, prompts, keys, prompt_keys, split, code, held, threshold)
        for kind, idx in found.items():
            split[idx] = DROPPED
            counts[f"leaked_{kind}"] += len(idx)
            counts[f"leaked_from_{name}"] += len(idx)
            counts["leaked"] += len(idx)
    return counts


def _leaks(rows: Rows, prompts: Prompts, keys: np.ndarray, prompt_keys: np.ndarray | None, split: np.ndarray,
           code: int, held: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Rows of split `code` that copy a `held` row: exactly, by prompt, or nearly (content, then prompt)."""
    rest = np.flatnonzero(split == code)
    exact = rest[np.isin(rows.keys[rest], rows.keys[held])]
    rest = np.setdiff1d(rest, exact)
    prompt = rest[np.isin(prompts.keys[rest], prompts.keys[held])]
    rest = np.setdiff1d(rest, prompt)
    near = leaked(rows.sig, keys, rest, held, threshold)
    if prompt_keys is not None:
        near = np.union1d(near, leaked(prompts.sig, prompt_keys, np.setdiff1d(rest, near), held, threshold))
    return {"exact": exact, "prompt": prompt, "near": near}
