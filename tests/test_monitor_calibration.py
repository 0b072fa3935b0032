"""Temperature scaling: it finds an over-confident model's temperature, lowers ECE, and eval + serve use it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from tiny import write_data
from tuneloop import train
from tuneloop.config import load_config
from tuneloop.evaluate import stage
from tuneloop.evaluate.calibration import (apply_temperature, expected_calibration_error, fit_temperature,
                                           label_probabilities, read_temperature)
from tuneloop.runs import load_trained
from tuneloop.serve.classify import classify
from tuneloop.serve.models import load_served


def _overconfident(n: int, seed: int, sharpen: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports softmax(sharpen * z): over-confident by `sharpen`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(z, axis=1)])
    return softmax(sharpen * z, axis=1), y


def test_temperature_undoes_overconfidence_and_lowers_ece() -> None:
    val, y_val = _overconfident(3000, seed=0)
    test, y_test = _overconfident(3000, seed=1)
    t = fit_temperature(val, y_val)
    assert t == pytest.approx(3.0, rel=0.1)
    before, after = expected_calibration_error(test, y_test), expected_calibration_error(apply_temperature(test, t), y_test)
    assert after < before / 3 and after < 0.03
    assert (apply_temperature(test, t).argmax(1) == test.argmax(1)).all()  # the labels never change


def test_ece_by_hand() -> None:
    # Bin [0.6, 0.667): confidences 0.6, 0.6 — one right, one wrong: gap 0.1; bin [0.933, 1): 0.95, right: gap 0.05.
    probs = np.array([[0.6, 0.4], [0.4, 0.6], [0.95, 0.05]])
    assert expected_calibration_error(probs, [0, 0, 0]) == pytest.approx((2 * 0.1 + 0.05) / 3)


@pytest.fixture(scope="module")
def evaluated(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calib")
    run = root / "run"
    train.run(load_config(None, {"task": "classify", "base": str(tiny_bert), "train.data": str(write_data(root / "d", "classify")),
                                 "train.out": str(run), "train.classify_as": "head", "train.method": "full", "seed": 0,
                                 "train.max_steps": 10, "train.lr": 1e-2, "train.batch_size": 8, "train.threads": 1,
                                 "train.eval_every": 10, "train.save_every": 10, "train.max_length": 64}))
    stage.run(run, overrides={"eval.base_too": False, "eval.baseline": False, "eval.bootstrap": 0})
    return run


def test_eval_fits_a_temperature_and_keeps_the_reference(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "eval" / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["temperature"] == read_temperature(evaluated) and cal["n_val"] == 16 and cal["n_test"] == 16
    assert 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1 and cal["reliability"]["after"]
    ref = [json.loads(line) for line in (evaluated / "eval" / "reference.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (Path(metrics["test_file"])).read_text().splitlines()]
    assert [r["text"] for r in ref] == [t["text"] for t in test] and [r["label"] for r in ref] == [t["label"] for t in test]
    assert all(r["confidence"] == max(r["probabilities"].values()) for r in ref)


def test_served_probabilities_are_the_calibrated_ones(evaluated: Path) -> None:
    served = load_served(evaluated)
    assert served.temperature == read_temperature(evaluated)
    texts = ["good film", "the food was terrible"]
    raw = label_probabilities(load_trained(evaluated), texts)
    expected = apply_temperature(raw, served.temperature)
    got = classify(served.loaded, texts, temperature=served.temperature)
    for row, p in zip(got, expected):
        assert list(row["probabilities"].values()) == pytest.approx(p.tolist(), abs=1e-5)


def test_the_run_report_shows_ece_and_the_reliability_diagram(evaluated: Path) -> None:
    html = (evaluated / "report.html").read_text()
    assert 'id="calibration"' in html and "ECE after" in html and 'alt="reliability diagram"' in html
