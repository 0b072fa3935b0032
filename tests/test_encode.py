"""Encoding: assistant-only labels, prompts that match training, batching and packing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuneloop.encode import (
    IGNORE, Encoded, classify_messages, collate, encode_chat, encode_classify_lm, encode_rows, epoch_batches, pack,
    render_prompt,
)
from tuneloop.errors import TuneloopError
from tuneloop.models import load_model, load_tokenizer

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello there"},
    {"role": "assistant", "content": "hi you"},
    {"role": "user", "content": "how many people"},
    {"role": "assistant", "content": "ten people"},
]


@pytest.fixture(scope="module")
def tok(tiny_llama: Path):
    return load_tokenizer(tiny_llama)


def _loss_text(tok, enc: Encoded) -> list[str]:
    """Decode each run of consecutive labelled tokens."""
    runs, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == t  # labels are the tokens themselves (shifted later)
            cur.append(t)
        elif cur:
            runs, cur = [*runs, cur], []
    runs += [cur] if cur else []
    return [tok.decode(r) for r in runs]


def test_loss_only_on_assistant_turns(tok) -> None:
    enc = encode_chat(tok, CHAT)
    assert _loss_text(tok, enc) == ["hi you<|im_end|>", "ten people<|im_end|>"]


def test_training_prompt_equals_generation_prompt(tok) -> None:
    # What the model sees before its answer in training is exactly what evaluation feeds it.
    enc = encode_chat(tok, CHAT[:3])
    first = next(i for i, lab in enumerate(enc.labels) if lab != IGNORE)
    prompt_ids = tok(render_prompt(tok, CHAT[:2]), add_special_tokens=False)["input_ids"]
    assert enc.input_ids[:first] == prompt_ids


def test_classify_prompt_lists_labels_and_only_the_label_carries_loss(tok) -> None:
    msgs = classify_messages("the film was great", ["negative", "positive"])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "exactly one of: negative, positive" in msgs[0]["content"] and msgs[1]["content"] == "the film was great"
    enc = encode_classify_lm(tok, "the film was great", "positive", ["negative", "positive"], max_length=200)
    assert _loss_text(tok, enc) == ["positive<|im_end|>"]


def test_long_text_is_cut_so_the_label_fits(tok) -> None:
    text = "the movie was good " * 80
    enc = encode_classify_lm(tok, text, "positive", ["negative", "positive"], max_length=60)
    assert len(enc.input_ids) <= 60
    assert _loss_text(tok, enc) == ["positive<|im_end|>"]


def test_max_length_below_prompt_is_a_clear_error(tok) -> None:
    with pytest.raises(TuneloopError, match="max_length 10 is below the prompt length.*--max-length"):
        encode_classify_lm(tok, "good", "positive", ["negative", "positive"], max_length=10)
    rows = [{"messages": CHAT}]
    with pytest.raises(TuneloopError, match="below the prompt length of every row"):
        encode_rows(rows, tok, task="generate", kind="lm", max_length=8)


def test_bad_rows_name_file_line_and_field(tok) -> None:
    with pytest.raises(TuneloopError, match="train.jsonl line 2: field 'messages'"):
        encode_rows([{"messages": CHAT}, {"text": "x"}], tok, task="generate", kind="lm", max_length=64, source="train.jsonl")
    with pytest.raises(TuneloopError, match="line 1: label 'maybe' is not one of"):
        encode_rows([{"text": "x", "label": "maybe"}], tok, task="classify", kind="lm", max_length=64, labels=["a", "b"])
    with pytest.raises(TuneloopError, match="no assistant message"):
        encode_rows([{"messages": CHAT[:2]}], tok, task="generate", kind="lm", max_length=64)


def _examples(lengths: list[int]) -> list[Encoded]:
    return [Encoded(list(range(1, n + 1)), [IGNORE] + list(range(2, n + 1))) for n in lengths]


def test_length_grouped_batches_cover_everything_once_and_waste_little() -> None:
    lengths = [(i * 37) % 50 + 3 for i in range(500)]
    ex = _examples(lengths)
    a = epoch_batches(ex, 8, seed=1, packing=False, group_by_length=True, max_length=64)
    assert a == epoch_batches(ex, 8, seed=1, packing=False, group_by_length=True, max_length=64)  # deterministic
    assert a != epoch_batches(ex, 8, seed=2, packing=False, group_by_length=True, max_length=64)
    assert sorted(r[0] for b in a for r in b) == list(range(500))
    padded = sum(len(b) * max(lengths[r[0]] for r in b) for b in a)
    assert padded < 1.05 * sum(lengths)
    plain = epoch_batches(ex, 8, seed=1, packing=False, group_by_length=False, max_length=64)
    assert sum(len(b) * max(lengths[r[0]] for r in b) for b in plain) > 1.3 * sum(lengths)


def test_pack_fills_rows_without_overflow() -> None:
    lengths = [(i * 13) % 40 + 2 for i in range(300)]
    rows = pack(lengths, list(range(300)), max_length=64)
    assert sorted(i for r in rows for i in r) == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    assert sum(lengths) / (64 * len(rows)) > 0.9


def test_collate_shifts_targets_within_each_packed_example() -> None:
    ex = _examples([3, 4])
    batch = collate(ex, [[0, 1]], pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    # Position i predicts the next token of the same example; the last token of each predicts nothing.
    assert batch["targets"].tolist() == [[2, 3, IGNORE, 2, 3, 4, IGNORE]]
    assert "attention_mask" not in batch and int(batch["n_tokens"]) == 7
    single = collate(ex, [[0], [1]], pad_id=0)
    assert single["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_sequences_do_not_attend_across_boundaries(tiny_llama: Path, tok, attention: str) -> None:
    model = load_model(tiny_llama, "lm", attn_implementation=attention).eval()
    encs = [encode_chat(tok, CHAT[:3]), encode_chat(tok, CHAT)]
    packed = collate(encs, [[0, 1]], tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        at = 0
        for e in encs:
            alone = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
            assert torch.allclose(logits[at : at + len(e.input_ids)], alone, atol=1e-4)
            at += len(e.input_ids)
        # The check can fail: one attention mask over the whole row lets the second example see the first.
        leaky = model(input_ids=packed["input_ids"], attention_mask=torch.ones_like(packed["input_ids"]),
                      position_ids=packed["position_ids"], use_cache=False).logits[0]
        assert not torch.allclose(leaky[len(encs[0].input_ids):], logits[len(encs[0].input_ids):], atol=1e-4)
