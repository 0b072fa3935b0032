"""The benchmark suite's bookkeeping: ratios, py-spy aggregation, the README table (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import profile_step  # noqa: E402
import sft  # noqa: E402
import suite  # noqa: E402


def _run(tps: float, rss: float, loss: float) -> dict:
    return {"real_tokens": 1000, "train_seconds": 1000 / tps, "real_tokens_per_s": tps, "cpu_seconds": 2000 / tps,
            "peak_rss_mib": rss, "val_loss": loss}


def test_ratios_compare_tuneloop_with_every_peer_that_finished() -> None:
    systems = {"tuneloop": _run(400, 3000, 3.2), "trl_default": _run(200, 4000, 3.25), "trl_packed": {"error": "x"}}
    r = sft.ratios(systems)
    assert set(r) == {"trl_default"}
    assert r["trl_default"]["real_tokens_per_s"] == pytest.approx(2.0)
    assert r["trl_default"]["tokens_per_cpu_second"] == pytest.approx(2.0)
    assert r["trl_default"]["peak_rss"] == pytest.approx(0.75)
    assert r["trl_default"]["val_loss_difference"] == pytest.approx(-0.05)


def test_two_runs_of_tuneloop_average_their_time_and_keep_the_larger_memory() -> None:
    m = sft._mean_run(_run(400, 3000, 3.2), _run(200, 3500, 3.2))
    assert m["train_seconds"] == pytest.approx((2.5 + 5.0) / 2)
    assert m["real_tokens_per_s"] == pytest.approx(1000 / 3.75)
    assert m["peak_rss_mib"] == 3500


def test_pyspy_aggregation_counts_only_samples_inside_a_training_step(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "<module> (a.py:1);load_model (models.py:3) 50\n"
        "<module> (a.py:1);one_step (profile_step.py:9);backward (graph.py:2) 30\n"
        "<module> (a.py:1);one_step (profile_step.py:9);forward (linear.py:5) 10\n"
    )
    top = profile_step.pyspy_top(raw)
    assert top["samples"] == 40
    assert top["self"][0] == {"function": "backward (graph.py)", "share": 0.75}
    assert {"function": "one_step (profile_step.py)", "share": 1.0} in top["inclusive"]


def test_readme_table_renders_without_results(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(suite.common, "RESULTS", tmp_path)
    text = suite.table()
    assert text.startswith("| benchmark | peer |")
    assert "trl_default" in text and "–" in text
