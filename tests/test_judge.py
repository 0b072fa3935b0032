"""The pairwise judge against real OpenAI-compatible endpoints on loopback (FastAPI + uvicorn), and
its agreement with human ratings from a real feedback store."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request

from tuneloop.config import RunConfig
from tuneloop.evaluate.judge import Judge, agreement, human_pairs, judge_systems, win_rate
from tuneloop.store.feedback import FeedbackStore


def judge_app(rule: str) -> FastAPI:
    """A chat endpoint that judges by a rule: "longer" prefers the longer answer, "first" always says A."""
    app = FastAPI()
    app.state.calls = 0

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        app.state.calls += 1
        text = body["messages"][-1]["content"]
        a, b = re.search(r"Answer A:\n(.*)\n\nAnswer B:\n(.*)\n\nBetter", text, re.S).groups()
        verdict = "A" if rule == "first" else ("A" if len(a) > len(b) else "B" if len(b) > len(a) else "T")
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"{verdict}."}}]}

    return app


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve an app with uvicorn on a free loopback port in a thread; yield its `/v1` base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1500):  # until it accepts connections (30 s at most)
        if server.started:
            break
        time.sleep(0.02)
    assert server.started, "judge endpoint did not start"
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


PROMPTS = ["How do I save for retirement?", "What is an index fund?", "Should I pay off debt first?", "What is APR?"]
TUNED = ["Open a tax-advantaged account and contribute every month.", "A fund that tracks a market index at low cost.", "Yes", "The yearly rate."]
BASE = ["Save.", "A fund.", "Usually, pay the highest-interest debt first.", "Annual percentage rate, the yearly cost of a loan."]


def test_both_orders_cancel_position_bias() -> None:
    app = judge_app("first")
    with serving(app) as url:
        result = win_rate(Judge(url), PROMPTS, TUNED, BASE, n_boot=50)
    # A judge that always picks the first answer contradicts itself when the order swaps: every pair is a tie.
    assert (result["wins"], result["ties"], result["losses"]) == (0, 4, 0) and result["win_rate"] == 0.5
    assert app.state.calls == 8  # each pair asked in both orders


def test_win_rate_with_interval() -> None:
    with serving(judge_app("longer")) as url:
        result = win_rate(Judge(url), PROMPTS, TUNED, BASE, n_boot=200)
    assert result["outcomes"] == [1, 1, -1, -1] and result["win_rate"] == 0.5
    low, high = result["ci"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def _feedback(path: Path) -> Path:
    store = FeedbackStore(path)

    def chat(prompt: str, answer: str, rating: int | str, corrected: str | None = None) -> None:
        rid = store.record_response(model="m", kind="chat", request={"messages": [{"role": "user", "content": prompt}]},
                                    response={"choices": [{"message": {"role": "assistant", "content": answer}}]})
        store.add_feedback(response_id=rid, rating=rating, corrected=corrected)

    chat("What is APR?", "A rate.", "down", corrected="The annual percentage rate: the yearly cost of a loan, fees included.")
    chat("What is a bond?", "A loan you make to a government or company that pays interest.", 5)
    chat("What is a bond?", "Debt.", 2)
    chat("What is a stock?", "A share of ownership in a company, with a claim on its profits.", "up")
    chat("What is a stock?", "Equity.", "down")
    chat("What is a Roth IRA?", "A retirement account.", 4)  # alone for its prompt and uncorrected: no pair
    store.close()
    return path


def test_agreement_with_people_is_cohens_kappa(tmp_path: Path) -> None:
    pairs = human_pairs(_feedback(tmp_path / "fb.db"))
    assert len(pairs) == 3 and all(len(better) > len(worse) for _, better, worse in pairs)  # people preferred the fuller answer
    with serving(judge_app("longer")) as url:
        agree = agreement(Judge(url), pairs, seed=1)
    assert agree["n"] == 3 and agree["agree"] == 3 and agree["kappa"] == pytest.approx(1.0)
    with serving(judge_app("first")) as url:
        biased = agreement(Judge(url), pairs, seed=1)
    # Position bias cancels to ties, which agree with nobody: kappa 0 (scikit-learn's value for a constant rater).
    assert biased["agree"] == 0 and biased["kappa"] == pytest.approx(0.0)


def test_judge_is_skipped_without_an_endpoint_and_trusted_only_above_the_agreement(tmp_path: Path) -> None:
    cfg = RunConfig.model_validate({"task": "generate"})
    assert judge_systems(cfg, PROMPTS, {"tuned": TUNED, "base": BASE})["status"] == "skipped"
    with serving(judge_app("longer")) as url:
        cfg = RunConfig.model_validate({"task": "generate", "eval": {"judge_url": url, "judge_feedback": str(_feedback(tmp_path / "f.db")),
                                                                      "bootstrap": 50, "judge_min_kappa": 0.5}})
        result = judge_systems(cfg, PROMPTS, {"tuned": TUNED, "base": BASE})
        assert result["status"] == "done" and result["trusted"] and result["vs"]["base"]["n"] == 4
        cfg = RunConfig.model_validate({"task": "generate", "eval": {"judge_url": url}})
        untested = judge_systems(cfg, PROMPTS, {"tuned": TUNED, "base": BASE})
        assert untested["trusted"] is False and untested["agreement"]["kappa"] is None  # no ratings: never trusted


def test_report_shows_the_judge_or_why_there_is_none(tmp_path: Path) -> None:
    from tuneloop.evaluate.score import SystemOutput, score
    from tuneloop.report import render_run_report

    rows = [{"id": str(i), "input": p, "reference": t} for i, (p, t) in enumerate(zip(PROMPTS, TUNED))]
    m = score(rows, {"tuned": SystemOutput(texts=TUNED), "base": SystemOutput(texts=BASE)}, task="generate", labels=None, n_boot=20).metrics
    m["judge"] = judge_systems(RunConfig.model_validate({"task": "generate"}), PROMPTS, {"tuned": TUNED, "base": BASE})
    assert "Pairwise judge: skipped — no judge configured" in render_run_report(tmp_path, m, {})
    with serving(judge_app("longer")) as url:
        m["judge"] = judge_systems(RunConfig.model_validate({"task": "generate", "eval": {"judge_url": url, "bootstrap": 20}}),
                                   PROMPTS, {"tuned": TUNED, "base": BASE})
    html = render_run_report(tmp_path, m, {})
    assert "win rate [95% CI]" in html and "0.500 [" in html and "NOT trusted" in html
