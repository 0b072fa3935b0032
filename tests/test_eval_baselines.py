"""Strong baselines and graded generation scores: label likelihood with in-context examples,
per-example answer loss, sentence-embedding similarity, paired tests and ROUGE-L against references."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from tuneloop.config import RunConfig
from tuneloop.encode import classify_messages
from tuneloop.evaluate.likelihood import answer_losses, label_log_probs
from tuneloop.evaluate.score import SystemOutput, score
from tuneloop.evaluate.semantic import SentenceEncoder
from tuneloop.evaluate.shots import pick_shots, shot_turns, with_shots
from tuneloop.evaluate.text import rouge_l
from tuneloop.models import load_model, load_tokenizer

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def lm(tiny_llama: Path) -> SimpleNamespace:
    """A tiny causal LM as `load_trained` returns it (untrained: the numbers are arbitrary but exact)."""
    tok = load_tokenizer(tiny_llama)
    model = load_model(tiny_llama, "lm", labels=None, pad_token_id=tok.pad_token_id).eval()
    cfg = RunConfig.model_validate({"task": "classify", "train": {"max_length": 64}})
    return SimpleNamespace(model=model, tokenizer=tok, cfg=cfg, labels=LABELS, kind="lm")


def _answer_logps(lm: SimpleNamespace, msgs: list[dict]) -> list[float]:
    """The plain way: one full forward pass; log-probs of the tokens after the generation prompt."""
    tok = lm.tokenizer
    prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(msgs, tokenize=False).rstrip()
    p_ids, ids = tok(prompt, add_special_tokens=False)["input_ids"], tok(full, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return [logp[i - 1, ids[i]].item() for i in range(len(p_ids), len(ids))]


def test_pick_shots_per_label_from_train_only() -> None:
    train = [{"input": f"t{i}", "label": LABELS[i % 2]} for i in range(20)]
    shots = pick_shots(train, 3, labels=LABELS, seed=1)
    assert [s["label"] for s in shots] == LABELS * 3  # alternating: the last shot favours no label
    assert len({s["input"] for s in shots}) == 6 and shots == pick_shots(train, 3, labels=LABELS, seed=1)
    assert len(pick_shots(train, 30, labels=LABELS)) == 20  # fewer than asked: all there are
    assert len(pick_shots(train, 4)) == 4


def test_kshot_label_likelihood_equals_a_plain_forward_pass(lm: SimpleNamespace) -> None:
    shots = [shot_turns({"input": "a great film", "label": "positive"}, "classify"),
             shot_turns({"input": "dull and bad", "label": "negative"}, "classify")]
    texts = ["good movie", "the film was sad and bad"]
    got = label_log_probs(lm, texts, shots=shots)
    for row, text in zip(got, texts):
        base_msgs = with_shots(classify_messages(text, LABELS), shots)
        want = [sum(_answer_logps(lm, [*base_msgs, {"role": "assistant", "content": lab}])) for lab in LABELS]
        assert row.tolist() == pytest.approx(want, abs=1e-4)
    alone = label_log_probs(lm, texts[:1], shots=shots)  # batched with its shared prefix or alone: the same
    assert alone[0].tolist() == pytest.approx(got[0].tolist(), abs=1e-4)
    assert not torch.allclose(got, label_log_probs(lm, texts))  # the shots are really in the prompt


def test_answer_loss_scores_only_the_last_answer(lm: SimpleNamespace) -> None:
    shot = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "four"}]
    convs = [
        [{"role": "user", "content": "capital of France?"}, {"role": "assistant", "content": "Paris is the capital"}],
        with_shots([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello there"}], [shot]),
    ]
    got = answer_losses(lm, convs)
    want = [-float(np.mean(_answer_logps(lm, c))) for c in convs]
    assert got == pytest.approx(want, abs=1e-4)


def test_sentence_embeddings_mean_pool_real_tokens(tiny_bert: Path) -> None:
    enc = SentenceEncoder(tiny_bert)
    texts = ["money", "a much longer sentence about saving money for retirement"]
    batched = enc.encode(texts)
    for i, text in enumerate(texts):  # alone (no padding) = in a padded batch: padding is not averaged in
        ids = enc.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            want = torch.nn.functional.normalize(enc.model(**ids).last_hidden_state[0].mean(0), dim=-1)
        assert batched[i].tolist() == pytest.approx(want.tolist(), abs=1e-5)
    sims = enc.similarity(["money", "", "cats"], ["money", "money", "money"])
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims[1] == 0.0 and -1.0 <= sims[2] < 1.0


def test_paired_tests_of_every_score_match_scipy() -> None:
    rng = random.Random(0)
    vocab = "the stock bond fund pays tax rate interest account money bank loan".split()
    refs = [" ".join(rng.choices(vocab, k=8)) for _ in range(40)]
    # Tuned copies more of the reference than the base does: a real, graded difference.
    tuned = [" ".join(r.split()[: rng.randint(3, 8)]) for r in refs]
    base = [" ".join(rng.choices(vocab, k=5)) for _ in refs]
    loss_t, loss_b = [rng.uniform(1, 2) for _ in refs], [rng.uniform(1.5, 3) for _ in refs]
    rows = [{"id": str(i), "input": f"q{i}", "reference": r} for i, r in enumerate(refs)]
    scored = score(rows, {"tuned": SystemOutput(texts=tuned, scores={"loss": loss_t}),
                          "base": SystemOutput(texts=base, scores={"loss": loss_b})}, task="generate", labels=None, n_boot=200)
    m, preds = scored.metrics, scored.predictions
    paired = m["paired"]["tuned_vs_base"]
    for key in ("token_f1", "rouge_l", "loss"):
        a = np.array([p["base_scores"][key] for p in preds])
        b = np.array([p["tuned_scores"][key] for p in preds])
        assert paired[key]["pvalue"] == pytest.approx(stats.wilcoxon(b - a).pvalue)
        assert paired[key]["diff"] == pytest.approx(float((b - a).mean()))
        lo, hi = m["systems"]["tuned"]["generation"]["ci"][key]
        assert lo <= b.mean() <= hi
    assert m["systems"]["tuned"]["loss"] == pytest.approx(np.mean(loss_t))
    head = m["headline"]
    assert head["metric"] == "token_f1" and head["vs"]["base"]["pvalue"] < 0.001 and head["value"] > head["vs"]["base"]["value"]
    # most improved first, by token F1, with both answers to read side by side
    deltas = [p["delta"] for p in scored.most_improved]
    assert deltas == sorted(deltas, reverse=True) and {"tuned_output", "base_output"} <= set(scored.most_improved[0])
    assert len(scored.side_by_side) >= 10


def test_loss_headline_prefers_lower_and_picks_the_strongest_baseline() -> None:
    rows = [{"id": str(i), "input": "q", "reference": "a b"} for i in range(6)]
    systems = {"tuned": SystemOutput(texts=["a"] * 6, scores={"loss": [1.0] * 6}),
               "base": SystemOutput(texts=["a"] * 6, scores={"loss": [3.0] * 6}),
               "base_kshot": SystemOutput(texts=["a"] * 6, scores={"loss": [2.0, 1.0, 1.5, 2.0, 1.2, 0.5]})}
    m = score(rows, systems, task="generate", labels=None, n_boot=50, metric="loss").metrics
    assert m["headline"]["higher_is_better"] is False and m["headline"]["strongest"] == "base_kshot"


def test_rouge_l_matches_the_rouge_score_package() -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(1)
    vocab = "a the cat dog sat on mat 42 Bank's rate-cut U.S. tax".split()
    for _ in range(200):
        pred, ref = (" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(2))
        assert rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure), (pred, ref)


def test_generation_report_tells_the_verdict_and_shows_answers_side_by_side(tmp_path: Path) -> None:
    from tuneloop.report import render_run_report

    rng = random.Random(3)
    vocab = "stock bond fund tax rate interest account money bank loan".split()
    refs = [" ".join(rng.choices(vocab, k=8)) for _ in range(30)]
    rows = [{"id": str(i), "input": f"question {i}?", "reference": r} for i, r in enumerate(refs)]
    systems = {"tuned": SystemOutput(texts=[" ".join(r.split()[:6]) for r in refs]),
               "base": SystemOutput(texts=["I cannot say"] * 30),
               "base_kshot": SystemOutput(texts=[" ".join(rng.choices(vocab, k=4)) for _ in refs], note="2 in-context examples")}
    scored = score(rows, systems, task="generate", labels=None, n_boot=100)
    html = render_run_report(tmp_path, scored.metrics, scored.examples())
    assert "Tuned token F1:" in html and "(strongest)" in html and "wilcoxon p = " in html and ": better" in html
    assert "Paired tests on per-example scores" in html and "ROUGE-L" in html
    side = html.split("Answers side by side")[1].split("most improved")[0]
    assert side.count("<tr>") - 1 >= 10 and "I cannot say" in side  # ≥ 10 rows: prompt, reference, base, k-shot, tuned
    assert "most worsened by token F1, tuned vs base (k-shot)" in html


def test_models_list_shows_the_tasks_own_headline_metric(tmp_path: Path) -> None:
    import json

    import yaml
    from typer.testing import CliRunner

    from tuneloop.cli import app
    from tuneloop.registry import Registry

    rows = [{"id": str(i), "input": "q", "reference": f"pay the tax {i}"} for i in range(12)]
    m = score(rows, {"tuned": SystemOutput(texts=[f"pay tax {i}" for i in range(12)]),
                     "base": SystemOutput(texts=["no idea"] * 12)}, task="generate", labels=None, n_boot=50).metrics
    run = tmp_path / "gen-run"
    (run / "model").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "generate", "base": "default"}))
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    url = f"sqlite:///{tmp_path}/reg.db"
    h = Registry(url).register(run).headline()
    assert h["metric"] == "token_f1" and h["value"] == pytest.approx(m["headline"]["value"]) and h["pvalue"] < 0.01
    out = CliRunner().invoke(app, ["models", "list", "--registry", url], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "token_f1" in out.output and f"{h['value']:.3f} [{h['ci'][0]:.3f}" in out.output
