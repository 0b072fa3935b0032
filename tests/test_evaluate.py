"""Evaluation: label parsing, curves, baseline, scoring, the stage's files, and `tuneloop eval` end to end."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.config import RunConfig, save_config
from tuneloop.errors import TuneloopError
from tuneloop.evaluate.baseline import fit_baseline
from tuneloop.evaluate.curves import curve_summary, overfitting
from tuneloop.evaluate.labels import LabelParser, words
from tuneloop.evaluate.score import SystemOutput, score
from tuneloop.evaluate.stage import summary_table, write_outputs
from tuneloop.runs import eval_rows, load_run_config, load_test_set, read_curves, read_jsonl

TREC = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


# --- label parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("NUM", "NUM"),  # exact
        ("  num ", "NUM"),  # case and whitespace
        ("Num.", "NUM"),  # punctuation
        ("'LOC'!", "LOC"),
        ("The answer is LOC.", "LOC"),  # a label inside a sentence
        ("I think this question asks about a HUM", "HUM"),
        ("NUMBER", None),  # whole words only: NUMBER is not NUM
        ("NUMs", None),
        ("LOC. Not a person (HUM)", "LOC"),  # the first clause decides
        ("HUM, not LOC", "HUM"),
        ("HUM or LOC", None),  # two labels named together: ambiguous → unparseable
        ("It could be DESC or ENTY, hard to say", None),
        ("Category: LOC", "LOC"),  # first clause names none, the whole answer names one
        ("The answer to this question is", None),  # names no label
        ("", None),
        (None, None),
        ("ｌｏｃ", "LOC"),  # full-width letters (NFKC)
    ],
)
def test_parse_trec_labels(answer, expected) -> None:
    assert LabelParser(TREC)(answer) == expected


def test_labels_with_punctuation_and_synonyms() -> None:
    parse = LabelParser(["ENTY:animal", "NUM:count", "not_spam"], synonyms={"NUM:count": ["how many", "number"]})
    assert parse("ENTY:animal") == "ENTY:animal"
    assert parse("The answer is enty: Animal.") == "ENTY:animal"
    assert parse("animal") is None  # a part of a label is not the label
    assert parse("NUMBER") == "NUM:count"  # …unless a synonym says so
    assert parse("it asks how many") == "NUM:count"
    assert parse("Not spam") == "not_spam"


def test_longer_synonym_wins_over_the_label_inside_it() -> None:
    parse = LabelParser(["ham", "spam"], synonyms={"ham": ["not spam", "legit"]})
    assert parse("This is not spam.") == "ham"
    assert parse("spam") == "spam"
    assert parse("legit, definitely") == "ham"


def test_bad_synonyms_are_user_errors() -> None:
    with pytest.raises(TuneloopError, match="does not have"):
        LabelParser(["a", "b"], synonyms={"c": ["x"]})
    with pytest.raises(TuneloopError, match="reads the same"):
        LabelParser(["yes", "no"], synonyms={"yes": ["No!"]})
    with pytest.raises(TuneloopError, match="no letters"):
        LabelParser(["yes", "no"], synonyms={"yes": ["!!"]})


def test_words() -> None:
    assert words("Hello, World_2!") == ("hello", "world", "2")


# --- curves ------------------------------------------------------------------------------------

def test_read_curves_and_overfit_flag(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    recs = [{"kind": "train", "step": s, "epoch": 0, "loss": 3 - s / 10, "lr": 1e-4, "tokens_per_s": 1.0} for s in range(1, 11)]
    recs += [{"kind": "val", "step": s, "epoch": 0, "loss": v} for s, v in [(2, 2.0), (4, 1.5), (6, 1.6), (8, 1.7), (10, 1.8)]]
    recs.append({"kind": "other", "note": "ignored"})
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    curves = read_curves(path)
    assert len(curves.train) == 10 and curves.val[0] == (2, 2.0)
    s = curve_summary(curves, window=3)
    assert s["overfitting"] and s["best_val_step"] == 4 and s["best_val_loss"] == 1.5
    assert not curve_summary(curves, window=4)["overfitting"]  # only 3 rises so far
    assert not overfitting([1.0, 2.0], window=3)  # too few points to tell


def test_bad_metrics_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "val", "step": 1, "loss": 1.0}\n{"kind": "val", "step": 2}\n')
    with pytest.raises(TuneloopError, match=r"metrics.jsonl, line 2"):
        read_curves(path)
    assert read_curves(tmp_path / "missing.jsonl").val == []


# --- TF-IDF baseline -----------------------------------------------------------------------------

def test_baseline_learns_a_separable_task() -> None:
    rng = random.Random(0)
    cue = {"sport": ["match", "goal", "team"], "food": ["pizza", "bread", "soup"], "tech": ["laptop", "code", "cpu"]}
    filler = "the a of today we really".split()

    def make(n: int) -> tuple[list[str], list[str]]:
        labels = [rng.choice(list(cue)) for _ in range(n)]
        return [" ".join(rng.sample(filler, 3) + [rng.choice(cue[lb])]) for lb in labels], labels

    texts, labels = make(60)
    test_texts, test_labels = make(30)
    model = fit_baseline(texts, labels, seed=0)
    acc = sum(p == t for p, t in zip(model.predict(test_texts), test_labels)) / 30
    assert acc > 0.9


def test_baseline_needs_two_labels() -> None:
    with pytest.raises(TuneloopError, match="two labels"):
        fit_baseline(["a", "b"], ["x", "x"])


# --- scoring ---------------------------------------------------------------------------------------

def _rows(labels: list[str]) -> list[dict]:
    return [{"id": str(i), "input": f"text {i}", "reference": lb, "label": lb} for i, lb in enumerate(labels)]


def test_score_counts_fixed_broken_and_unparseable() -> None:
    truth = ["a", "b", "a", "b", "a", "b"]
    tuned = ["a", "b", "a", None, "a", "b"]  # 5/6 right, one unparseable
    base = ["a", None, None, "b", "b", "a"]  # 2/6 right
    scored = score(_rows(truth), {"tuned": SystemOutput(labels=tuned, texts=[str(t) for t in tuned]),
                                  "base": SystemOutput(labels=base, texts=[str(b) for b in base])},
                   task="classify", labels=["a", "b"], n_boot=50)
    m = scored.metrics
    assert m["systems"]["tuned"]["classification"]["accuracy"] == pytest.approx(5 / 6)
    assert m["systems"]["tuned"]["classification"]["unparseable_rate"] == pytest.approx(1 / 6)
    assert m["systems"]["base"]["classification"]["unparseable"] == 2
    assert [p["id"] for p in scored.fixed] == ["1", "2", "4", "5"]
    assert [p["id"] for p in scored.broken] == ["3"]
    assert (m["fixed"], m["broken"]) == (4, 1)
    assert m["comparisons"]["tuned_vs_base"]["only_a"] == 4 and m["comparisons"]["tuned_vs_base"]["method"] == "exact"
    assert "generation" not in m["systems"]["tuned"]  # labels are scored as labels, not as text
    lo, hi = m["systems"]["tuned"]["classification"]["ci"]["accuracy"]
    assert lo <= 5 / 6 <= hi


def test_score_generation_uses_exact_match_for_correctness() -> None:
    rows = [{"id": "1", "input": "q", "reference": "Paris"}, {"id": "2", "input": "q", "reference": "blue sky"}]
    scored = score(rows, {"tuned": SystemOutput(texts=["paris.", "sky"], loss=1.0), "base": SystemOutput(texts=["x", "blue sky"], loss=2.0)},
                   task="generate", labels=None, n_boot=0)
    g = scored.metrics["systems"]["tuned"]["generation"]
    assert g["exact_match"] == 0.5 and g["ci"]["token_f1"] is None
    assert scored.metrics["systems"]["tuned"]["perplexity"] == pytest.approx(2.718281828)
    assert [p["tuned_correct"] for p in scored.predictions] == [True, False]
    # Free text has no fixed/broken: the examples that changed most by token F1, against the base.
    assert scored.fixed == scored.broken == [] and scored.metrics["examples_against"] == "base"
    assert [p["id"] for p in scored.most_improved] == ["1"] and [p["id"] for p in scored.most_worsened] == ["2"]


def test_write_outputs_and_summary(tmp_path: Path) -> None:
    truth = ["a", "b", "a"]
    scored = score(_rows(truth), {"tuned": SystemOutput(labels=truth), "baseline": SystemOutput(labels=["a", "a", "a"])},
                   task="classify", labels=["a", "b"], n_boot=20)
    out = write_outputs(tmp_path, scored)
    metrics = json.loads((out / "metrics.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["systems"]["baseline"]["classification"]["accuracy"] == pytest.approx(2 / 3)
    assert preds[1] == {"id": "1", "input": "text 1", "reference": "b", "tuned_label": "b", "tuned_correct": True,
                        "baseline_label": "a", "baseline_correct": False}
    examples = json.loads((out / "fixed_broken.json").read_text())
    assert examples["against"] == "baseline" and examples["fixed"] == [preds[1]] and examples["broken"] == []
    assert summary_table(metrics).row_count == 2


# --- the stage's inputs ------------------------------------------------------------------------------

def test_config_layers_saved_then_extra_then_cli(tmp_path: Path) -> None:
    save_config(RunConfig.model_validate({"task": "classify", "eval": {"batch_size": 4, "bootstrap": 10}}), tmp_path / "config.yaml")
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"eval": {"batch_size": 8, "synonyms": {"a": ["x"]}}}))
    cfg = load_run_config(tmp_path, extra, {"eval.bootstrap": 99, "eval.max_examples": None})
    assert (cfg.task, cfg.eval.batch_size, cfg.eval.bootstrap, cfg.eval.synonyms) == ("classify", 8, 99, {"a": ["x"]})
    cfg = load_run_config(tmp_path, extra, {"eval.batch_size": 2})
    assert cfg.eval.batch_size == 2
    with pytest.raises(TuneloopError, match="not a run folder"):
        load_run_config(tmp_path / "nope", None, {})


def test_load_test_set_labels_override_and_limit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"task": "classify", "labels": ["neg", "pos"]}))
    (data / "test.jsonl").write_text("".join(json.dumps({"id": str(i), "text": f"t{i}", "label": lb}) + "\n"
                                             for i, lb in enumerate(["pos", "neg", "meh", "pos"])))
    cfg = RunConfig.model_validate({"task": "classify", "train": {"data": str(data)}})
    test = load_test_set(tmp_path, cfg, None, None)
    assert test.labels == ["neg", "pos", "meh"] and len(test.rows) == 4 and test.manifest["labels"] == ["neg", "pos"]
    assert test.rows[2] == {"id": "2", "input": "t2", "reference": "meh", "label": "meh",
                            "row": {"id": "2", "text": "t2", "label": "meh"}}
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"text": "x", "label": "pos"}) + "\n")
    assert [r["id"] for r in load_test_set(tmp_path, cfg, other, None).rows] == ["1"]  # --data wins; ids default to row numbers
    assert len(load_test_set(tmp_path, cfg, None, 2).rows) == 2
    gen = RunConfig.model_validate({"task": "generate"})
    with pytest.raises(TuneloopError, match="pass --data"):
        load_test_set(tmp_path, gen, None, None)


def test_bad_test_rows_name_file_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text('{"text": "hi", "label": "a"}\n\n{"text": "x"}\n')
    with pytest.raises(TuneloopError, match=r"test.jsonl, row 2: .*'label'"):
        eval_rows(read_jsonl(path), "classify", path)
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(TuneloopError, match="row 1: field 'messages'"):
        eval_rows(read_jsonl(path), "generate", path)
    path.write_text('{"text": "hi"\n')
    with pytest.raises(TuneloopError, match="line 1: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(TuneloopError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


# --- end to end on a tiny trained model -----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Train a tiny model per (task, classify_as) once per module; return its run folder."""
    tiny = pytest.importorskip("tiny", reason="tests/tiny.py (toy data of the training tests) is needed")
    train = pytest.importorskip("tuneloop.train")
    from tuneloop.config import load_config
    from tuneloop.models import build_tiny

    runs: dict[tuple[str, str], Path] = {}

    def get(task: str, classify_as: str) -> Path:
        if (task, classify_as) not in runs:
            root = tmp_path_factory.mktemp(f"{task}-{classify_as}")
            data = tiny.write_data(root / "data", task)
            base = build_tiny("bert" if classify_as == "head" else "llama", root / "base")
            train.run(load_config(None, {
                "task": task, "base": str(base), "train.data": str(data), "train.out": str(root / "run"),
                "train.classify_as": classify_as, "train.method": "full", "train.max_steps": 20, "train.lr": 1e-2,
                "train.batch_size": 8, "train.eval_every": 5, "train.max_length": 64,
            }))
            runs[task, classify_as] = root / "run"
        return runs[task, classify_as]

    return get


@pytest.mark.parametrize(("task", "classify_as"), [("classify", "generate"), ("classify", "head"), ("generate", "generate")])
def test_cli_eval_end_to_end(trained: Callable[[str, str], Path], task: str, classify_as: str, tiny_bert: Path) -> None:
    run = trained(task, classify_as)
    result = CliRunner().invoke(app, ["eval", str(run), "--max-examples", "12", "--semantic-model", str(tiny_bert)],
                                env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "test examples" in result.output and "report.html" in result.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 12 and set(metrics["systems"]) >= {"tuned", "base"}
    assert ("baseline" in metrics["systems"]) == (task == "classify")
    preds = (run / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 12 and {"input", "reference", "tuned_correct", "base_correct"} <= set(json.loads(preds[0]))
    tuned, base = metrics["systems"]["tuned"], metrics["systems"]["base"]
    if classify_as == "head":
        assert base["note"] == "untrained head (chance)"
    else:
        assert tuned["loss"] < base["loss"]  # tuning taught the answers: held-out loss fell
    assert (run / "report.html").stat().st_size > 10_000
    assert metrics["environment"]["torch"] and metrics["train_summary"]["steps"] == 20
    hashed = {Path(p).name for p in metrics["data_hashes"]}
    assert hashed == {"test.jsonl", "train.jsonl"}  # the TF-IDF baseline and the k-shot examples learn from train
    # The base model's k-shot baseline runs wherever the base is a language model.
    assert ("base_kshot" in metrics["systems"]) == (classify_as == "generate")
    if task == "classify" and classify_as == "generate":  # the base answers by label likelihood: never unparseable
        assert base["classification"]["unparseable"] == 0 and metrics["headline"]["metric"] == "macro_f1"
    if task == "generate":
        scores = json.loads(preds[0])["tuned_scores"]
        assert set(scores) == {"token_f1", "rouge_l", "semantic", "exact_match", "loss"}
        assert set(metrics["paired"]) == {"tuned_vs_base", "tuned_vs_base_kshot"}
        assert set(metrics["paired"]["tuned_vs_base"]) == set(scores)
        assert all(tuned["generation"]["ci"][k] for k in scores)
        assert metrics["headline"]["metric"] == "token_f1" and "pvalue" in metrics["headline"]["vs"]["base"]


def test_cli_eval_without_base_and_bad_run(trained: Callable[[str, str], Path], tmp_path: Path) -> None:
    run = trained("classify", "generate")
    result = CliRunner().invoke(app, ["eval", str(run), "--no-base-too", "--no-baseline", "--max-examples", "4"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"tuned"} and metrics["comparisons"] == {}
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and isinstance(result.exception, TuneloopError)


@pytest.mark.integration
def test_eval_real_smollm2_end_to_end(tmp_path: Path) -> None:
    """The bundled SmolLM2 with its real chat template: a few LoRA steps, then `tuneloop eval`."""
    tiny = pytest.importorskip("tiny")
    from tuneloop import train
    from tuneloop.config import load_config

    data = tiny.write_data(tmp_path / "data", "classify", n_train=16, n_val=8)
    train.run(load_config(None, {
        "task": "classify", "base": "default", "train.data": str(data), "train.out": str(tmp_path / "run"),
        "train.classify_as": "generate", "train.max_steps": 2, "train.batch_size": 4, "train.max_length": 96,
    }))
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--max-examples", "8", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    # The real model answers in words (cut a few tokens after the longest label), never with template tokens.
    assert all(p["base_output"].strip() and "<|im_" not in p["base_output"] for p in preds)
    assert all(len(p["base_output"].split()) <= 12 for p in preds)
    assert (tmp_path / "run" / "report.html").is_file()
