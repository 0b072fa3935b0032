"""Leakage by prompt: a held-out prompt is never trained or validated on, whatever the answer."""

from __future__ import annotations

import json
from pathlib import Path

from datafixtures import make_cfg, read_jsonl, sentences, write_jsonl

from tuneloop.data import run
from tuneloop.data.leakage import prompt_text
from tuneloop.data.pipeline import PrepareResult


def _prompts(result: PrepareResult, split: str) -> set[str]:
    return {prompt_text(r) for r in read_jsonl(result.path(split))}


def test_same_and_near_duplicate_prompts_of_test_leave_train_and_validation(tmp_path: Path) -> None:
    questions = sentences(60, words=30, seed=1)
    answers = sentences(120, words=30, seed=2)
    data = write_jsonl(tmp_path / "train.jsonl", [{"instruction": q, "output": a} for q, a in zip(questions, answers)])
    # Test: 4 questions asked again with another answer, 2 with one word changed, 4 new ones.
    new = sentences(4, words=30, seed=3)
    test = ([{"instruction": q, "output": a} for q, a in zip(questions[:4], answers[60:64])]
            + [{"instruction": q.rsplit(" ", 1)[0] + " zz", "output": a} for q, a in zip(questions[4:6], answers[64:66])]
            + [{"instruction": q, "output": a} for q, a in zip(new, answers[66:70])])
    test_file = write_jsonl(tmp_path / "test.jsonl", test)
    result = run(make_cfg(tmp_path / "out", [data], task="generate", test_file=str(test_file), val_fraction=0.3))
    c = result.counts
    assert (c["leaked_exact"], c["leaked_prompt"], c["leaked_near"], c["leaked"]) == (0, 4, 2, 6)
    assert c["leaked_from_train"] + c["leaked_from_val"] == 6
    held = set(questions[:6])
    assert not held & (_prompts(result, "train") | _prompts(result, "val"))
    assert result.splits["test"] == 10 and result.splits["train"] + result.splits["val"] == 54
    manifest = json.loads(result.path("manifest").read_text())
    assert manifest["counts"]["leaked_prompt"] == 4
    report = result.path("report").read_text()
    assert "same prompt, another answer" in report and "removed from validation" in report


def test_validation_is_checked_against_a_given_test_file(tmp_path: Path) -> None:
    rows = [{"text": t, "label": ["spam", "ham"][i % 2]} for i, t in enumerate(sentences(80, seed=4))]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    test_file = write_jsonl(tmp_path / "test.jsonl", rows[:30])  # 30 input rows are also test rows
    result = run(make_cfg(tmp_path / "out", [data], test_file=str(test_file), val_fraction=0.3, near_dup=False))
    texts = {r["text"] for r in rows[:30]}
    val = {r["text"] for r in read_jsonl(result.path("val"))}
    train = {r["text"] for r in read_jsonl(result.path("train"))}
    assert val and not val & texts and not train & texts
    assert result.counts["leaked_from_val"] > 0 and result.counts["leaked"] == 30


def test_a_sampled_test_split_shares_no_prompt_with_train_or_validation(tmp_path: Path) -> None:
    questions = sentences(40, words=10, seed=5)
    answers = sentences(80, words=10, seed=6)
    # Every question twice, with two different answers: dedup keeps both (they differ), leakage must not split them.
    rows = [{"instruction": q, "output": answers[2 * i + k]} for k in (0, 1) for i, q in enumerate(questions)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = run(make_cfg(tmp_path / "out", [data], task="generate", val_fraction=0.2, test_fraction=0.2))
    test = _prompts(result, "test")
    assert test and not test & _prompts(result, "train") and not test & _prompts(result, "val")
    assert not _prompts(result, "val") & _prompts(result, "train")
    assert result.counts["leaked_prompt"] > 0 and result.counts["exact_duplicates"] == 0


def test_chats_without_a_user_turn_do_not_match_each_other(tmp_path: Path) -> None:
    import numpy as np

    from tuneloop.data.ingest import Rows
    from tuneloop.data.leakage import Prompts, prompt_index

    spill = write_jsonl(tmp_path / "spill.jsonl", [
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "Same  question"}, {"role": "assistant", "content": "c"}]},
        {"messages": [{"role": "user", "content": "same question"}, {"role": "assistant", "content": "d"}]},
    ])
    rows = Rows(keys=np.arange(4, dtype=np.uint64), labels=np.full(4, -1, dtype=np.int32), lengths=np.ones(4, dtype=np.int32),
                groups=np.zeros(4, dtype=np.int8), sig=np.zeros((4, 64), dtype=np.uint32), label_names=[])
    p = prompt_index(spill, rows, "generate", 64, 2)
    assert isinstance(p, Prompts) and p.keys[0] != p.keys[1] and p.keys[2] == p.keys[3]
