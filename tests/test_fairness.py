"""Fairness audit: Fairlearn/scikit-learn-equal group metrics, counterfactual flips, the gate, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame, equalized_odds_difference, selection_rate
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from tuneloop.config import DeriveRule, FairnessConfig, FairnessThresholds
from tuneloop.errors import TuneloopError
from tuneloop.fairness import audit
from tuneloop.fairness.attributes import group_columns
from tuneloop.fairness.gate import failures, gate
from tuneloop.fairness.groups import group_report
from tuneloop.fairness.stereotype import load_crows_pairs, stereotype_score
from tuneloop.fairness.terms import load_terms

LABELS = ["approve", "reject"]
GOOD = ["reliable", "excellent", "strong", "steady"]
BAD = ["missed", "defaulted", "late", "unpaid"]


def _loan_texts(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Toy loan notes about a man or a woman; the label depends only on the history words."""
    rng = random.Random(seed)
    texts, y, gender = [], [], []
    for _ in range(n):
        male = rng.random() < 0.5
        good = rng.random() < 0.5
        who = rng.choice(["he", "his brother"] if male else ["she", "her sister"])
        texts.append(f"{who} has a {rng.choice(GOOD if good else BAD)} payment history")
        y.append("approve" if good else "reject")
        gender.append("male" if male else "female")
    return texts, y, gender


def fair_model(texts: list[str], _sources: list[int]) -> list[str]:
    """Decides on the payment history alone."""
    return ["approve" if any(w in t.split() for w in GOOD) else "reject" for t in texts]


def biased_model(texts: list[str], _sources: list[int]) -> list[str]:
    """Also rejects every applicant described with female terms."""
    female = {"she", "her", "sister", "woman"}
    return ["reject" if female & set(t.lower().split()) else p for t, p in zip(texts, fair_model(texts, []))]


def test_group_metrics_equal_fairlearn_and_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    y_true, y_pred = rng.choice(labels, 300).tolist(), rng.choice(labels, 300).tolist()
    groups = rng.choice(["x", "y", "z"], 300).tolist()
    rep = group_report(y_true, y_pred, groups=groups, labels=labels, attribute="g", min_size=10)
    yt, yp, g = map(np.array, (y_true, y_pred, groups))
    for name in ("x", "y", "z"):
        m = g == name
        got = rep.groups[name]
        assert got["count"] == m.sum()
        assert got["accuracy"] == pytest.approx(accuracy_score(yt[m], yp[m]))
        for key, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
            assert got[key] == pytest.approx(fn(yt[m], yp[m], labels=labels, average="macro", zero_division=0))
        for lab in labels:
            assert got[f"selection_rate[{lab}]"] == pytest.approx(np.mean(yp[m] == lab))
    mf = MetricFrame(metrics=selection_rate, y_true=yt == "a", y_pred=yp == "a", sensitive_features=g)
    assert rep.per_label["a"]["demographic_parity_difference"] == pytest.approx(mf.difference())
    eod = max(equalized_odds_difference(yt == lab, yp == lab, sensitive_features=g) for lab in labels)
    assert rep.disparities["equalized_odds_difference"] == pytest.approx(eod)
    accs = {k: v["accuracy"] for k, v in rep.groups.items()}
    assert rep.accuracy_gap == pytest.approx(max(accs.values()) - min(accs.values()))
    assert rep.worst_group == min(accs, key=accs.get)


def test_small_groups_get_intervals_and_are_left_out() -> None:
    y = ["a", "b"] * 50 + ["a", "b"]
    groups = ["big1"] * 50 + ["big2"] * 50 + ["tiny"] * 2
    rep = group_report(y, y, groups=groups, labels=["a", "b"], attribute="region", min_size=30)
    assert rep.groups["tiny"]["small"] and rep.groups["tiny"]["accuracy_ci"][0] < 0.5  # 2/2 correct is weak evidence
    assert any("region=tiny" in w for w in rep.warnings)
    assert rep.worst_group in {"big1", "big2"}


def test_biased_classifier_is_caught_by_groups_and_flips_and_fair_one_passes() -> None:
    texts, y, gender = _loan_texts(400)
    axes = load_terms(axes=["gender"])
    thresholds = FairnessThresholds()
    results = {}
    for name, model in (("fair", fair_model), ("biased", biased_model)):
        a = audit(texts, model, axes=axes, groups={"gender": gender}, y_true=y, labels=LABELS)
        results[name] = (a, gate(a, thresholds))
    fair, fair_checks = results["fair"]
    biased, biased_checks = results["biased"]
    assert fair["groups"]["gender"]["disparities"]["equalized_odds_difference"] == pytest.approx(0.0)
    assert fair["counterfactual"]["gender"]["flip_rate"] == 0.0
    assert fair_checks and all(c.passed for c in fair_checks)
    assert biased["groups"]["gender"]["disparities"]["equalized_odds_difference"] > 0.9
    assert biased["counterfactual"]["gender"]["flip_rate"] > 0.4
    failed = " ".join(failures(biased_checks))
    assert "max_equalized_odds_difference" in failed and "max_flip_rate" in failed
    flip = biased["counterfactual"]["gender"]["flipped"][0]
    assert flip["prediction"] != flip["counterfactual_prediction"]


def test_increase_over_reference_fails_the_gate() -> None:
    ref = {"stereotype": {"score": 0.55}}
    now = {"stereotype": {"score": 0.62}}
    checks = gate(now, FairnessThresholds(max_increase=0.05), ref, compare={"stereotype_score"})
    assert [c.passed for c in checks] == [False]
    assert "increase vs base" in failures(checks)[0]


def test_counterfactual_rewrites_keep_case_and_skip_words_that_are_not_names() -> None:
    axes = {a.name: a for a in load_terms()}
    (v,) = axes["gender"].variants("He said HIS sister will call.", max_variants=3)
    assert v.text == "She said HER brother will call."
    assert axes["gender_names"].variants("I will see you", max_variants=3) == []
    assert axes["ethnicity_names"].variants("Brad called.", max_variants=3)[0].text == "Darnell called."
    assert len(axes["nationality"].variants("A German chef", max_variants=3)) == 3


def test_generation_output_change() -> None:
    axes = load_terms(axes=["gender"])
    echo = lambda ts, _: [f"answer about {t}" for t in ts]  # noqa: E731
    a = audit(["he sings", "the sky"], echo, axes=axes)
    rep = a["counterfactual"]["gender"]
    assert rep["examples"] == 1 and 0 < rep["output_change"] < 1


def _bad_term_file(tmp_path: Path, content: str) -> Path:
    p = tmp_path / "terms.json"
    p.write_text(content)
    return p


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"axes": []}', "must hold"),
    ('{"axes": {"g": {"groups": {"a": ["x"]}}}}', "at least two groups"),
    ('{"axes": {"g": {"terms": ["x"], "swaps": {"a": "b"}}}}', "exactly one of"),
])
def test_invalid_term_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(TuneloopError, match=message):
        load_terms(_bad_term_file(tmp_path, content))


def test_missing_term_file_and_axis(tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="does not exist"):
        load_terms(tmp_path / "nope.json")
    with pytest.raises(TuneloopError, match="caste"):
        load_terms(axes=["caste"])


def _rows(values: list[object], field: str = "gender") -> list[dict]:
    return [{"id": str(i), "text": "t", "label": "a", "meta": {field: v}} for i, v in enumerate(values)]


def test_attribute_errors_and_derived_groups() -> None:
    src = Path("test.jsonl")
    axes = load_terms()
    with pytest.raises(TuneloopError, match=r"\['race'\] not found.*gender"):
        group_columns(_rows(["f"]), ["t"], FairnessConfig(attributes=["race"]), axes, src)
    with pytest.raises(TuneloopError, match=r"group\(s\) \['nonbinary'\] have no examples"):
        group_columns(_rows(["f", "m"]), ["t", "t"],
                      FairnessConfig(expected_groups={"gender": ["f", "m", "nonbinary"]}), axes, src)
    cols = group_columns(_rows([25, 40, None], "age"), ["Brad is here", "Darnell too", "nobody"],
                         FairnessConfig(derive={"age_band": DeriveRule(field="age", bins=[0, 30, 120]),
                                                "names": DeriveRule(terms="ethnicity_names")}), axes, src)
    assert cols["age"] == ["25", "40", "(missing)"]  # auto-detected known attribute
    assert cols["age_band"] == ["[0, 30)", "[30, 120)", "(missing)"]
    assert cols["names"] == ["european_american", "african_american", "(none)"]


def test_crows_pairs_ships_and_scores() -> None:
    pairs = load_crows_pairs()
    assert len(pairs) == 1508 and all(p.stereo != p.anti for p in pairs)
    s = stereotype_score([0.0, -1.0, -1.0], [-1.0, 0.0, -2.0], ["age", "age", "race-color"])
    assert s["score"] == pytest.approx(2 / 3) and s["by_bias_type"]["age"]["score"] == 0.5


def test_unparseable_answers_do_not_count_as_flips() -> None:
    mute = lambda ts, _: [None for _ in ts]  # noqa: E731
    a = audit(["he is late"], mute, axes=load_terms(axes=["gender"]), groups={"g": ["m"]}, y_true=["approve"],
              labels=LABELS, min_group_size=1)
    assert a["counterfactual"]["gender"]["flip_rate"] == 0.0


def test_run_on_a_tiny_trained_model_writes_result_and_report(tmp_path: Path) -> None:
    from tiny import write_data
    from tuneloop import fairness, train
    from tuneloop.config import RunConfig
    from tuneloop.models import build_tiny

    data = write_data(tmp_path / "data", "classify")
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r["text"] = ("she said " if i % 2 else "he said ") + r["text"]
        r["meta"] = {"gender": "female" if i % 2 else "male"}
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig.model_validate({"task": "classify", "base": str(build_tiny("llama", tmp_path / "base")),
                                    "train": {"data": str(data), "out": str(tmp_path / "run"), "max_steps": 1,
                                              "eval_every": 1, "save_every": 1}})
    train.run(cfg)
    with pytest.raises(TuneloopError, match="'religion'"):
        fairness.run(tmp_path / "run", None, {"fairness.attributes": ["religion"]})
    res = fairness.run(tmp_path / "run", None, {"fairness.benchmark_max_pairs": 4, "fairness.min_group_size": 5,
                                                "eval.max_new_tokens": 2, "fairness.thresholds.max_flip_rate": 0.0})
    doc = json.loads((tmp_path / "run" / "fairness" / "result.json").read_text())
    assert set(doc["audits"]) == {"tuned", "base"} and doc["passed"] == res.passed
    assert doc["audits"]["tuned"]["groups"]["gender"]["groups"]["female"]["count"] == 8
    assert doc["audits"]["tuned"]["stereotype"]["pairs"] == 4
    assert "Fairness" in (fairness.report_section(tmp_path / "run") or "")
    assert (tmp_path / "run" / "fairness" / "report.html").is_file()

    # Data with no identity terms and no attributes, no benchmark: nothing can be checked.
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({**r, "text": r["text"].split(" said ", 1)[1], "meta": {}}) + "\n" for r in rows))
    from typer.testing import CliRunner

    from tuneloop.cli import app

    args = ["fairness", str(tmp_path / "run"), "--data", str(plain), "--benchmark", "none", "--no-base-too"]
    warned = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert warned.exit_code == 0 and "NOT ASSESSED" in warned.output and "PASSED" not in warned.output
    blocked = CliRunner().invoke(app, [*args, "--if-not-assessed", "block"])
    assert blocked.exit_code != 0 and "fairness not assessed" in str(blocked.exception)


def test_zero_checks_is_not_assessed_never_passed(tmp_path: Path) -> None:
    from tuneloop.fairness.gate import Check
    from tuneloop.fairness.stage import FairnessResult

    empty = {"groups": {}, "counterfactual": {"gender": {"examples": 0}}, "stereotype": None}
    result = FairnessResult(tmp_path, {"tuned": empty}, [], [], [])
    assert (result.status, result.passed) == ("not_assessed", False)
    assert len(result.not_assessed()) == 3 and "no identity terms" in result.not_assessed()[1]
    ok = FairnessResult(tmp_path, {"tuned": empty}, [Check("flip_rate <= max_flip_rate", 0.0, 0.1, True, "gender")], [], [])
    assert (ok.status, ok.passed, ok.not_assessed()) == ("passed", True, [])
