"""The promotion gate on synthetic predictions: it never promotes noise and never calls an empty check passed."""

from __future__ import annotations

import random

import pytest
from scipy import stats as sps

from tuneloop.errors import TuneloopError
from tuneloop.gate import FairnessVerdict, GateDecision, decide, fairness_verdict, report_rows

PASSED = FairnessVerdict(status="passed", checks=3)
WORDS = "the capital of france is paris and its river is the seine which flows north".split()


def _classify(correct: list[bool], labels: tuple[str, str] = ("pos", "neg")) -> list[dict]:
    refs = [labels[i % 2] for i in range(len(correct))]
    return [{"id": str(i), "reference": r, "tuned_label": r if ok else labels[(i + 1) % 2], "tuned_correct": ok}
            for i, (r, ok) in enumerate(zip(refs, correct))]


def _generate(answers: list[str], refs: list[str], loss: list[float] | None = None) -> list[dict]:
    rows = [{"id": str(i), "reference": r, "tuned_output": a, "tuned_correct": a == r} for i, (a, r) in enumerate(zip(answers, refs))]
    for r, v in zip(rows, loss or []):
        r["tuned_scores"] = {"loss": v}  # as evaluate writes per-example scores
    return rows


def _refs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(WORDS, 8)) for _ in range(n)]


def _partial(refs: list[str], keep: int, seed: int) -> list[str]:
    """Answers sharing `keep` of the reference's words, in a seeded shuffle (graded, not exact)."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(r.split()[:keep] + ["um", "well", "so"], keep + 1)) for r in refs]


def test_classify_clear_gain_is_promoted_with_mcnemar_evidence() -> None:
    served = _classify([i % 2 == 0 for i in range(200)])  # 50 %
    cand = _classify([i % 10 != 0 for i in range(200)])  # 90 %
    d = decide("classify", "auto", None, 0.05, cand, served, PASSED)
    assert d.decision == "promote", d.reasons
    assert d.metric == "macro_f1" and d.margin == 0.0 and d.test is not None and d.test.test == "McNemar"
    assert d.test.pvalue < 1e-6 and d.test.ci_low > 0.2 and d.delta == pytest.approx(d.test.gain)
    assert {e.metric for e in d.evidence} == {"macro_f1", "accuracy"}
    acc = next(e for e in d.evidence if e.metric == "accuracy")
    assert (acc.candidate, acc.served, acc.n) == (pytest.approx(0.9), pytest.approx(0.5), 200)


def test_classify_noise_is_kept_even_above_the_margin() -> None:
    served = _classify([i % 5 != 0 for i in range(100)])  # 80 %
    cand = _classify([i % 5 != 0 or i in (5, 10) for i in range(100)])  # two more right: 82 %
    d = decide("classify", "accuracy", 0.0, 0.05, cand, served, PASSED)
    assert d.decision == "keep" and d.test.gain == pytest.approx(0.02)
    assert any("not significant" in r and "McNemar" in r for r in d.reasons)


def test_identical_candidate_is_kept() -> None:
    rows = _classify([i % 3 != 0 for i in range(90)])
    d = decide("classify", "auto", None, 0.05, rows, [dict(r) for r in rows], PASSED)
    assert d.decision == "keep" and d.test.pvalue == 1.0 and d.test.gain == 0.0
    assert any("did not rise" in r for r in d.reasons)


def test_generation_is_decided_by_wilcoxon_on_token_f1() -> None:
    refs = _refs(40)
    served, cand = _generate(_partial(refs, 3, 1), refs), _generate(_partial(refs, 6, 2), refs)
    boot = decide("generate", "auto", None, 0.05, cand, served, PASSED, method="bootstrap")
    assert boot.decision == "promote" and boot.test.test == "paired bootstrap" and boot.test.ci_low > 0
    d = decide("generate", "auto", None, 0.05, cand, served, PASSED)
    assert d.decision == "promote", d.reasons
    assert d.metric == "token_f1" and d.test.test == "Wilcoxon signed-rank"
    from tuneloop.evaluate.text import token_f1
    diffs = [token_f1(c["tuned_output"], r) - token_f1(s["tuned_output"], r) for c, s, r in zip(cand, served, refs)]
    assert d.test.pvalue == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert {e.metric for e in d.evidence} == {"token_f1", "rouge_l", "exact_match"}
    assert all(e.ci_low <= e.gain <= e.ci_high for e in d.evidence)
    # The same answers the other way round: worse, kept.
    back = decide("generate", "auto", None, 0.05, served, cand, PASSED)
    assert back.decision == "keep" and any("fell" in r for r in back.reasons)


def test_generation_noise_is_kept() -> None:
    refs = _refs(60)
    served = _generate(_partial(refs, 4, 1), refs)
    cand = [dict(r) for r in served]
    for i in (3, 17):  # two answers change a little, both for the better: a higher mean, no evidence
        cand[i]["tuned_output"] = refs[i]
    d = decide("generate", "token_f1", 0.0, 0.05, cand, served, PASSED)
    assert d.test.gain > 0 and d.decision == "keep"
    assert any("not significant" in r and "Wilcoxon" in r for r in d.reasons)


def test_loss_needs_more_than_the_auto_margin() -> None:
    refs = _refs(50)
    answers = _partial(refs, 4, 1)
    served = _generate(answers, refs, [2.9313 + 0.01 * (i % 7) for i in range(50)])
    cand = _generate(answers, refs, [2.9302 + 0.01 * (i % 7) for i in range(50)])  # 0.0011 lower, every row
    d = decide("generate", "loss", None, 0.05, cand, served, PASSED)
    assert d.margin == 0.01 and d.test.gain == pytest.approx(0.0011) and d.test.pvalue < 0.05
    assert d.decision == "keep" and any("margin 0.01" in r for r in d.reasons)
    better = _generate(answers, refs, [2.5 + 0.01 * (i % 7) for i in range(50)])
    assert decide("generate", "loss", None, 0.05, better, served, PASSED).decision == "promote"


def test_a_metric_without_per_example_scores_is_an_error_not_a_guess() -> None:
    refs = _refs(5)
    with pytest.raises(TuneloopError, match="semantic.*not measured per example"):
        decide("generate", "semantic", None, 0.05, _generate(refs, refs), None, PASSED)


def test_no_shared_rows_is_a_keep() -> None:
    served = _classify([True] * 20)
    cand = [{**r, "id": "x" + r["id"]} for r in _classify([True] * 20)]
    d = decide("classify", "auto", None, 0.05, cand, served, PASSED)
    assert d.decision == "keep" and d.test is None and any("no paired comparison" in r for r in d.reasons)


def test_fairness_not_assessed_warns_or_blocks_and_is_never_passed() -> None:
    verdict = fairness_verdict({"checks": [], "failures": [], "passed": True, "not_assessed": ["no group attributes"]})
    assert verdict.status == "not_assessed" and verdict.note == "no group attributes"
    rows = _classify([True] * 10)
    warned = decide("classify", "auto", None, 0.05, rows, None, verdict)
    assert warned.decision == "promote" and any("fairness not assessed" in r for r in warned.reasons)
    summary, _ = report_rows(warned)
    assert ["fairness", "NOT ASSESSED: no check could be made (no group attributes)"] in summary
    assert "passed" not in str(summary) and "held" not in str(summary)
    blocked = decide("classify", "auto", None, 0.05, rows, None, verdict, block_unassessed=True)
    assert blocked.decision == "keep" and any("if_not_assessed is block" in r for r in blocked.reasons)


def test_failed_fairness_keeps_a_better_candidate() -> None:
    served, cand = _classify([i % 2 == 0 for i in range(200)]), _classify([True] * 200)
    failed = fairness_verdict({"checks": [{"name": "flip_rate"}], "failures": ["flip_rate: 0.3 > 0.1 (gender)"]})
    d = decide("classify", "auto", None, 0.05, cand, served, failed)
    assert d.decision == "keep" and any("fairness gate failed: flip_rate" in r for r in d.reasons)


def test_decision_round_trips_through_json() -> None:
    d = decide("classify", "auto", None, 0.05, _classify([True] * 30), _classify([i % 2 == 0 for i in range(30)]), PASSED)
    assert GateDecision.model_validate_json(d.model_dump_json()) == d


def test_loop_summary_shows_the_evidence(tmp_path) -> None:
    from rich.console import Console

    from tuneloop.loop import LoopResult

    d = decide("classify", "auto", None, 0.05, _classify([True] * 30), _classify([i % 2 == 0 for i in range(30)]), PASSED)
    console = Console(record=True, width=200)
    console.print(LoopResult(tmp_path / "round-x", d).summary())
    text = console.export_text()
    assert "PROMOTE" in text and "McNemar" in text and "95% CI of gain" in text and "passed (3 checks)" in text


def test_a_significant_difference_against_the_candidate_is_never_a_promotion() -> None:
    # Mean token F1 up by one big win, while 30 of 40 answers got slightly worse: Wilcoxon is
    # significant, but for the served model.
    rows = [{"id": str(i), "reference": "r", "tuned_output": "x", "tuned_correct": False} for i in range(40)]
    served = [{**r, "tuned_scores": {"token_f1": 0.5 if i < 30 else 0.0}} for i, r in enumerate(rows)]
    cand = [{**r, "tuned_scores": {"token_f1": 0.48 if i < 30 else (1.0 if i == 30 else 0.0)}} for i, r in enumerate(rows)]
    d = decide("generate", "token_f1", 0.0, 0.05, cand, served, PASSED)
    assert d.test.gain > 0 and d.test.pvalue < 0.05 and d.test.favours == "served"
    assert d.decision == "keep" and any("favours the served model" in r for r in d.reasons)
