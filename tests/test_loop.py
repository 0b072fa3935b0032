"""The feedback loop end to end on a tiny classifier: promote when feedback fixes errors, keep when it hurts.

The served model learned sentiment from "good/great/bad/terrible" only; the frozen test set also
has "happy/love/sad/hate", which it gets wrong. Users correct those labels through feedback; the
next round trains on the corrections and must be promoted. Wrong corrections must not be.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tuneloop import loop
from tuneloop.config import RunConfig, load_config
from tuneloop.feedback import FeedbackStore
from tuneloop.registry import Registry

FILL = ["the", "movie", "food", "service", "was", "a", "people", "city", "year", "film"]
OLD = {"positive": ["good", "great"], "negative": ["bad", "terrible"]}
NEW = {"positive": ["happy", "love"], "negative": ["sad", "hate"]}


def _rows(rng: random.Random, n: int, words: dict[str, list[str]]) -> list[dict]:
    out = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        ws = rng.sample(FILL, 4)
        ws.insert(rng.randrange(5), rng.choice(words[label]))
        out.append({"text": " ".join(ws), "label": label})
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path]:
    root = tmp_path_factory.mktemp("loop")
    rng = random.Random(0)
    orig = _write(root / "orig.jsonl", _rows(rng, 120, OLD))
    test = _write(root / "test.jsonl", _rows(rng, 40, OLD) + _rows(rng, 40, NEW))
    cfg = load_config(None, {
        "task": "classify", "base": str(tiny_bert), "seed": 0, "prepare.inputs": [str(orig)], "prepare.test_file": str(test),
        "prepare.near_dup": False, "train.classify_as": "head", "train.method": "full", "train.lr": 5e-3, "train.epochs": 8,
        "train.threads": 1, "train.precision": "fp32", "train.eval_every": 10, "train.patience": None,
        "eval.base_too": False, "eval.baseline": False, "eval.bootstrap": 0, "fairness.benchmark": "none",
        "feedback.db": root / "feedback.db", "loop.out": root / "loop", "loop.registry": f"sqlite:///{root}/registry.db",
    })
    return cfg, root


def _give_feedback(cfg: RunConfig, rows: list[dict], *, truthful: bool) -> None:
    """Users see the served labels and correct them (truthfully, or all wrong)."""
    store = FeedbackStore(cfg.feedback.db)
    for r in rows:
        flip = {"positive": "negative", "negative": "positive"}
        served = flip[r["label"]]  # the served model's mistake (or, for a lying user, the truth)
        corrected = r["label"] if truthful else flip[r["label"]]
        if not truthful:
            served = r["label"]
        rid = store.record_response(model="served", kind="classify", request={"input": [r["text"]]},
                                    response={"data": [{"index": 0, "label": served}]})
        store.add_feedback(response_id=rid, rating="down", corrected=corrected)


def test_loop_promotes_a_better_candidate_and_keeps_a_worse_one(setup: tuple[RunConfig, Path]) -> None:
    cfg, root = setup
    reg = Registry(cfg.loop.registry)

    first = loop.run(cfg)  # nothing served yet: the first fair candidate is promoted
    assert first.decision.decision == "promote" and reg.promoted().name == first.decision.candidate
    served_acc = reg.promoted().headline()["accuracy"]
    assert served_acc < 0.8  # it never saw the new words

    events = len(reg.history())
    again = loop.run(cfg)  # no new feedback: the same round, already decided; nothing changes
    assert again.reused and again.round_dir == first.round_dir and len(reg.history()) == events

    _give_feedback(cfg, _rows(random.Random(1), 60, NEW), truthful=True)
    second = loop.run(cfg)
    d = second.decision
    assert d.decision == "promote", d.reasons
    assert d.incumbent == first.decision.candidate and d.feedback["examples"]["written"] == 60
    assert d.candidate_value > d.incumbent_value and d.test.test == "McNemar" and d.test.pvalue < 0.05
    assert d.test.ci_low > 0 and {e.metric for e in d.evidence} == {"macro_f1", "accuracy"}
    assert reg.promoted().name == d.candidate
    assert reg.promoted().headline()["accuracy"] > served_acc + 0.2
    report = (second.round_dir / "run" / "report.html").read_text()
    assert "Promotion decision" in report and "PROMOTE" in report
    assert json.loads((second.round_dir / "run" / "gate.json").read_text())["decision"] == "promote"
    assert (root / "loop" / "frozen_test.jsonl").is_file() is False  # the user's own test file is the frozen one
    assert loop.run(cfg).reused  # the served model changed, the feedback did not: still the same round
    (second.round_dir / "decision.json").unlink()  # as if killed after promoting, before marking the round done
    events = len(reg.history())
    redo = loop.run(cfg)
    assert redo.decision.decision == "promote" and reg.promoted().name == d.candidate and len(reg.history()) == events

    _give_feedback(cfg, _rows(random.Random(2), 150, NEW), truthful=False)
    third = loop.run(cfg)
    assert third.decision.decision == "keep"
    assert any("did not rise" in r or "fell" in r for r in third.decision.reasons)
    assert reg.promoted().name == d.candidate  # the better model stays served
    assert reg.history()[-1]["action"] == "keep"


def test_a_generate_round_trains_dpo_on_preference_feedback(tiny_llama: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from tiny import write_data

    data = write_data(tmp_path / "toy", "generate", n_train=48, n_val=16)
    cfg = load_config(None, {
        "task": "generate", "base": str(tiny_llama), "seed": 0, "prepare.inputs": [str(data / "train.jsonl")],
        "prepare.test_file": str(data / "test.jsonl"), "prepare.near_dup": False, "train.max_steps": 4, "train.threads": 1,
        "train.precision": "fp32", "train.lr": 1e-2, "train.dpo.epochs": 1, "eval.base_too": False, "eval.max_new_tokens": 8,
        "eval.bootstrap": 0, "eval.semantic_model": str(tiny_bert), "fairness.benchmark": "none", "feedback.db": tmp_path / "fb.db", "loop.out": tmp_path / "loop",
        "loop.registry": f"sqlite:///{tmp_path}/reg.db",
    })
    store = FeedbackStore(cfg.feedback.db)
    for i, word in enumerate(["happy", "love", "sad", "hate"]):
        messages = [{"role": "user", "content": f"is this happy: the {word} film number {i}"}]
        right = "yes it is" if word in ("happy", "love") else "no it is not"
        wrong = "no it is not" if right == "yes it is" else "yes it is"
        rid = store.record_response(model="served", kind="chat", request={"messages": messages},
                                    response={"choices": [{"message": {"role": "assistant", "content": wrong}}]})
        store.add_feedback(response_id=rid, rating="down", corrected=right)

    result = loop.run(cfg)
    run = result.round_dir / "run"
    assert result.decision.feedback["pairs"]["written"] == 4 and result.decision.metric == "token_f1"
    assert json.loads((run / "dpo_summary.json").read_text())  # the pairs trained the model with DPO
    assert (run / "model_sft").is_dir() and result.decision.decision == "promote"
    train_rows = (result.round_dir / "data" / "train.jsonl").read_text()
    assert "the happy film number 0" in train_rows  # the corrections became SFT examples too


def test_a_candidate_no_better_than_the_served_model_is_kept(setup: tuple[RunConfig, Path], tmp_path: Path) -> None:
    """Same data, same seed, a learning rate changed in the 5th digit: noise, so the served model stays."""
    cfg, _ = setup
    cfg = cfg.model_copy(deep=True)
    cfg.loop.out, cfg.loop.registry, cfg.feedback.db = tmp_path / "loop", f"sqlite:///{tmp_path}/reg.db", tmp_path / "none.db"
    first = loop.run(cfg)
    assert first.decision.decision == "promote"
    f = first.decision.fairness  # toy sentiment: no attributes, no identity terms, no benchmark
    assert f.status == "not_assessed" and f.checks == 0
    assert any("fairness not assessed" in r for r in first.decision.reasons)
    assert "passed" not in json.loads((first.round_dir / "run" / "fairness" / "result.json").read_text())["status"]

    cfg.train.lr *= 1.0001
    second = loop.run(cfg)
    d = second.decision
    assert second.round_dir != first.round_dir and d.decision == "keep", d.reasons
    assert d.test is not None and d.test.test == "McNemar" and d.test.pvalue > 0.05 and abs(d.test.gain) < 0.05
    assert Registry(cfg.loop.registry).promoted().name == first.decision.candidate
    report = (second.round_dir / "run" / "report.html").read_text()
    assert "KEEP" in report and "Evidence: candidate vs served model" in report and "NOT ASSESSED" in report

    cfg.fairness.if_not_assessed = "block"  # nothing could be checked: with block, not even a first model is promoted
    cfg.loop.out, cfg.loop.registry = tmp_path / "loop2", f"sqlite:///{tmp_path}/reg2.db"
    blocked = loop.run(cfg)
    assert blocked.decision.decision == "keep" and Registry(cfg.loop.registry).promoted() is None
    assert any("if_not_assessed is block" in r for r in blocked.decision.reasons)


def test_a_generate_round_is_decided_by_the_paired_test(tiny_llama: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from tiny import write_data

    data = write_data(tmp_path / "toy", "generate", n_train=48, n_val=24)
    cfg = load_config(None, {
        "task": "generate", "base": str(tiny_llama), "seed": 0, "prepare.inputs": [str(data / "train.jsonl")],
        "prepare.test_file": str(data / "test.jsonl"), "prepare.near_dup": False, "train.max_steps": 1, "train.threads": 1,
        "train.precision": "fp32", "train.lr": 1e-6, "train.method": "full", "eval.base_too": False, "eval.max_new_tokens": 6,
        "eval.bootstrap": 0, "eval.semantic_model": str(tiny_bert), "fairness.benchmark": "none", "fairness.base_too": False, "feedback.db": tmp_path / "fb.db",
        "loop.out": tmp_path / "loop", "loop.registry": f"sqlite:///{tmp_path}/reg.db",
    })
    weak = loop.run(cfg)  # one step at a tiny rate: the random model, promoted only because nothing is served
    assert weak.decision.decision == "promote" and weak.decision.metric == "token_f1"

    cfg.train.max_steps, cfg.train.lr = 30, 1e-2  # now it learns to answer "yes it is" / "no it is not"
    strong = loop.run(cfg)
    d = strong.decision
    assert d.decision == "promote", d.reasons
    assert d.test.test == "Wilcoxon signed-rank" and d.test.pvalue < 0.05 and d.test.ci_low > 0 and d.test.n == 24
    assert {e.metric for e in d.evidence} == {"token_f1", "rouge_l", "semantic", "exact_match", "loss"}  # both models, every score

    cfg.train.lr *= 1.0001  # the same again, up to noise
    again = loop.run(cfg)
    assert again.decision.decision == "keep", again.decision.reasons
    assert Registry(cfg.loop.registry).promoted().name == d.candidate
