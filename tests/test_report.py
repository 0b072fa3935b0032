"""The run report: every section, self-contained, escaped, and rendered by a real headless browser."""

from __future__ import annotations

import doctest
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from evalfixtures import load, make_run

from tuneloop import report
from tuneloop.errors import TuneloopError
from tuneloop.report import RUN_SECTIONS, write_run_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from screenshot_report import chromium, screenshot  # noqa: E402


@pytest.fixture(scope="module")
def classify_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_report(make_run(tmp_path_factory.mktemp("c"), task="classify", overfit=True))


@pytest.fixture(scope="module")
def generate_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_report(make_run(tmp_path_factory.mktemp("g"), task="generate", overfit=False))


def _section(html: str, anchor: str) -> str:
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert m, f"section {anchor} missing"
    return m.group(1)


@pytest.mark.parametrize("which", ["classify_report", "generate_report"])
def test_every_section_is_there_and_self_contained(which: str, request: pytest.FixtureRequest) -> None:
    html = request.getfixturevalue(which).read_text(encoding="utf-8")
    for anchor in RUN_SECTIONS:
        _section(html, anchor)
    # One file: every image is embedded, nothing is fetched.
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)
    assert len(imgs) >= (5 if which == "classify_report" else 1)  # curves (+ 3 confusion matrices + F1 bars)


def test_classification_content(classify_report: Path) -> None:
    html = classify_report.read_text(encoding="utf-8")
    m = load(classify_report.parent)
    tuned = m["systems"]["tuned"]["classification"]
    metrics = _section(html, "metrics")
    # The table shows each system's accuracy with its interval, as in metrics.json.
    lo, hi = tuned["ci"]["accuracy"]
    assert f"{tuned['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" in metrics
    assert "TF-IDF + LogReg" in metrics and "base (zero-shot)" in metrics and "McNemar" in metrics
    assert "Overfitting" in _section(html, "training") and "overfitting" in _section(html, "summary")
    assert f"{m['fixed']:,} fixed by tuning" in _section(html, "examples")
    assert "unparseable" in _section(html, "confusion")
    env = _section(html, "environment")
    assert "torch" in env and "transformers" in env and "peft" in env and "ab" * 32 in env and "cd" * 32 in env
    data = _section(html, "data")
    assert "ABBR" in data and "Lengths (whitespace tokens)" in data and "label_distribution" in data
    assert "classify_as: generate" in _section(html, "config") and "train_summary.json" in _section(html, "training")


def test_user_text_is_escaped(classify_report: Path) -> None:
    html = classify_report.read_text(encoding="utf-8")
    assert "question &lt;1&gt; &amp; what is it?" in html and "<1>" not in html


def test_generation_content(generate_report: Path) -> None:
    html = generate_report.read_text(encoding="utf-8")
    metrics = _section(html, "metrics")
    assert "token F1" in metrics and "ROUGE-L" in metrics and "perplexity" in metrics
    assert "no labels" in _section(html, "confusion")
    assert "No overfitting" in _section(html, "training")


def test_missing_eval_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="run `tuneloop eval"):
        write_run_report(tmp_path)


def test_report_helpers_docstrings() -> None:
    result = doctest.testmod(report)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_renders_the_report(classify_report: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = screenshot(classify_report, tmp_path / "shot.png", width=1200, height=3000)
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape == (3000, 1200)
    # Content all the way down (sections, plots), not a blank or error page: every 500-px band
    # has dark text or plot pixels.
    for band in range(0, 3000, 500):
        assert (img[band : band + 500] < 128).mean() > 0.005, f"band at {band}px is empty"
