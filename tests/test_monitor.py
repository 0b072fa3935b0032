"""`tuneloop monitor` on synthetic windows: quiet in-domain, alarms on moved traffic, CBPE, feedback, groups, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tiny import FILLER, NEGATIVE, POSITIVE
from tuneloop.cli import app
from tuneloop.config import RunConfig, save_config
from tuneloop.monitor import run
from tuneloop.monitor.drift import mmd_test, psi
from tuneloop.monitor.estimate import cbpe, expected_macro_f1
from tuneloop.store import FeedbackStore
from tuneloop.store.predictions import PredictionLog, classify_rows

LABELS = ["negative", "positive"]
OTHER = ["quantum", "ledger", "volcano", "tariff", "enzyme", "satellite", "mortgage", "glacier", "protein", "algorithm"]


def _text(rng: random.Random, positive: bool, shifted: bool = False) -> str:
    if shifted:  # another kind of text: longer, words the training data never had
        return " ".join(rng.choices(OTHER, k=14))
    words = rng.sample(FILLER, 4)
    words.insert(rng.randrange(5), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def _prediction(rng: random.Random, positive: bool, confidence: float) -> tuple[str, dict[str, float]]:
    """A calibrated prediction: right with probability `confidence`."""
    right = rng.random() < confidence
    label = LABELS[int(positive) if right else 1 - int(positive)]
    return label, {label: confidence, LABELS[1 - LABELS.index(label)]: round(1 - confidence, 6)}


def _traffic(n: int, seed: int, *, shifted: bool = False, share_positive: float = 0.5,
             group: str | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        positive = rng.random() < share_positive
        conf = rng.uniform(0.5, 0.7) if shifted else rng.uniform(0.8, 1.0)
        label, probs = _prediction(rng, positive, round(conf, 6))
        out.append({"text": _text(rng, positive, shifted), "true": LABELS[int(positive)], "label": label, "probabilities": probs,
                    "metadata": {"group": {"gender": group}} if group else None})
    return out


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A run folder with a config, a train split (the vocabulary) and a reference of 400 test predictions."""
    run_dir, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": t["text"], "label": t["true"]}) + "\n" for t in _traffic(300, 1)))
    cfg = RunConfig(task="classify", train={"data": data, "out": run_dir},
                    feedback={"db": tmp_path / "fb.db"}, monitor={"embedding_model": None, "permutations": 200})
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "eval").mkdir()
    ref = [{"text": t["text"], "label": t["true"], "prediction": t["label"], "confidence": max(t["probabilities"].values()),
            "probabilities": t["probabilities"]} for t in _traffic(400, 2)]
    (run_dir / "eval" / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref))
    return run_dir


def _log(db: Path, traffic: list[dict[str, Any]], model: str = "run") -> list[str]:
    log = PredictionLog(db)
    ids = []
    for i, t in enumerate(traffic):
        ids.append(f"cls-{model}-{i}-{random.random()}")
        log.log(classify_rows(response_id=ids[-1], model=model, version=None, texts=[t["text"]], latency_ms=1.0,
                              results=[{"label": t["label"], "probabilities": t["probabilities"]}], metadata=t["metadata"]))
    assert log.flush()
    log.close()
    return ids


def test_in_domain_traffic_raises_no_alarm(served: Path) -> None:
    _log(served.parent / "fb.db", _traffic(500, 3))
    result = run(served)
    report = result.report
    assert {"window", "drift", "estimated", "realized", "fairness", "alarms"} <= set(report)
    assert report["alarms"] == [] and result.exit_code == 0 and report["window"]["n"] == 500
    assert report["drift"]["input"]["oov"]["increase"] < 0.05
    assert abs(report["estimated"]["accuracy"] - report["reference"]["estimated_accuracy"]) < 0.03


def test_moved_traffic_raises_input_prediction_and_performance_alarms(served: Path) -> None:
    _log(served.parent / "fb.db", _traffic(300, 4, shifted=True, share_positive=0.9))
    result = run(served, overrides={"monitor.last": 300})
    fired = {a["metric"] for a in result.alarms}
    assert {"length_ks", "oov_increase", "confidence_ks", "estimated_accuracy_drop"} <= fired
    assert result.exit_code == 1
    for a in result.alarms:
        assert {"kind", "metric", "value", "threshold"} <= set(a)


def test_a_strong_shift_in_the_label_mix_alarms_on_the_label_mix_only(served: Path) -> None:
    _log(served.parent / "fb.db", _traffic(300, 12, share_positive=0.97))
    result = run(served, overrides={"monitor.last": 300})
    assert {a["metric"] for a in result.alarms} == {"label_psi"}
    assert result.report["drift"]["prediction"]["labels"]["window"]["positive"] > 0.85


def test_embedding_drift_with_a_tiny_encoder(served: Path, tiny_bert: Path) -> None:
    _log(served.parent / "fb.db", _traffic(150, 5, shifted=True))
    report = run(served, overrides={"monitor.embedding_model": str(tiny_bert), "monitor.max_embedded": 150}).report
    emb = report["drift"]["input"]["embedding"]
    assert emb["pvalue"] < 0.01 and emb["n_window"] == 150
    assert "embedding_mmd_pvalue" in {a["metric"] for a in report["alarms"]}


def test_mmd_permutation_test_finds_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    same = mmd_test(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), permutations=500)
    moved = mmd_test(rng.normal(size=(200, 8)), rng.normal(0.5, 1, size=(200, 8)), permutations=500)
    assert same["pvalue"] > 0.05 and moved["pvalue"] < 0.01 and moved["mmd2"] > same["mmd2"]


def test_cbpe_is_its_formula_and_matches_realized_accuracy_on_calibrated_traffic() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    est = cbpe(probs)
    assert est["accuracy"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    # class 0: TP 0.9+0.6, FP 0.1+0.4, FN 0.2; class 1: TP 0.8, FP 0.2, FN 0.1+0.4
    f1 = (2 * 1.5 / (2 * 1.5 + 0.5 + 0.2) + 2 * 0.8 / (2 * 0.8 + 0.2 + 0.5)) / 2
    assert est["macro_f1"] == pytest.approx(f1) == expected_macro_f1(probs)
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], size=4000)
    truth = np.array([rng.choice(3, p=row) for row in p])
    est = cbpe(p)
    assert abs(est["accuracy"] - (truth == p.argmax(1)).mean()) < 0.03
    assert est["accuracy_ci"][0] < (truth == p.argmax(1)).mean() < est["accuracy_ci"][1]


def test_psi_of_the_same_mix_is_zero() -> None:
    assert psi(["a", "b"] * 5, ["b", "a"] * 7, ["a", "b"]) == pytest.approx(0.0)


def test_realized_metrics_come_from_feedback(served: Path) -> None:
    db = served.parent / "fb.db"
    traffic = _traffic(200, 6)
    ids = _log(db, traffic)
    store = FeedbackStore(db)
    rated = 0
    for rid, t in list(zip(ids, traffic))[:80]:
        store.record_response(model="run", kind="classify", request={"input": [t["text"]]}, response={"labels": [t["label"]]},
                              response_id=rid)
        right = t["label"] == t["true"]
        store.add_feedback(response_id=rid, rating="up" if right else "down", index=0, corrected=None if right else t["true"])
        rated += right
    store.close()
    real = run(served).report["realized"]
    assert real["n_rated"] == 80 and real["n_labelled"] == 80 and real["accuracy"] == pytest.approx(rated / 80)
    assert real["accuracy_ci"][0] < real["accuracy"] < real["accuracy_ci"][1] and 0 < real["macro_f1"] <= 1


def test_groups_from_metadata_and_a_gap_alarm(served: Path) -> None:
    db = served.parent / "fb.db"
    _log(db, _traffic(150, 7, group="m") + _traffic(150, 8, group="f", shifted=False))
    quiet = run(served).report
    assert set(quiet["fairness"]["gender"]["groups"]) == {"f", "m"} and not [a for a in quiet["alarms"] if a["kind"] == "fairness"]
    worse = _traffic(150, 9, group="f")
    for t in worse:  # the model is much less sure (and right) for one group
        t["label"], t["probabilities"] = _prediction(random.Random(len(t["text"])), t["true"] == "positive", 0.6)
    _log(db, _traffic(150, 13, group="m") + worse)
    fired = [a for a in run(served, overrides={"monitor.last": 300}).report["alarms"] if a["kind"] == "fairness"]
    assert fired and fired[0]["metric"] == "estimated_accuracy_gap[gender]"


def test_too_few_predictions_say_so_without_an_alarm(served: Path) -> None:
    _log(served.parent / "fb.db", _traffic(20, 10))
    out = CliRunner().invoke(app, ["monitor", str(served), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["status"] == "too_few" and report["alarms"] == [] and "at least 100" in report["message"]


def test_cli_exit_codes_json_and_html(served: Path, tmp_path: Path) -> None:
    _log(served.parent / "fb.db", _traffic(300, 11, shifted=True))
    out = CliRunner().invoke(app, ["monitor", str(served), "--json", "--html", str(tmp_path / "m.html"), "--last", "300"])
    assert out.exit_code == 1, out.output
    assert json.loads(out.output)["status"] == "alarm"
    assert "Alarms (" in (tmp_path / "m.html").read_text()


def test_a_missing_reference_names_the_command_that_writes_it(served: Path) -> None:
    (served / "eval" / "reference.jsonl").unlink()
    out = CliRunner().invoke(app, ["monitor", str(served)])
    assert out.exit_code == 2 and "tuneloop eval" in out.output


def test_reference_embeddings_are_cached_and_give_the_same_report(served: Path, tiny_bert: Path) -> None:
    _log(served.parent / "fb.db", _traffic(150, 14))
    over = {"monitor.embedding_model": str(tiny_bert), "monitor.max_embedded": 100}
    first = run(served, overrides=over).report["drift"]["input"]["embedding"]
    assert len(list((served / "eval").glob("reference_embeddings-*.npy"))) == 1
    assert run(served, overrides=over).report["drift"]["input"]["embedding"] == first
