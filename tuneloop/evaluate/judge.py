"""Pairwise judging of generated answers by a model behind any OpenAI-compatible endpoint.

For two answers to the same prompt the judge is asked twice, once in each order, and an answer
wins only when the judge prefers it in both orders (position bias cancels; anything else is a
tie). The win rate of the tuned model against a baseline counts a tie as half a win and gets a
bootstrap interval. A judge is trusted only as far as it agrees with people: its verdicts on pairs
built from the human ratings in the feedback store (a corrected answer over the served one; for
one prompt, the better-rated answer over the worse) give Cohen's kappa, and the gate may use the
win rate only when kappa reaches `eval.judge_min_kappa`. Without a judge, judging is "skipped".
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.evaluate.stats import bootstrap_ci

#: The instruction the judge gets; it must answer with one letter.
PROMPT = (
    "You compare two answers to the same question. Judge which one answers it better: correct, "
    "helpful and to the point. Reply with exactly one letter: A, B, or T for a tie.\n\n"
    "Question:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\nBetter answer (A, B or T):"
)
_VERDICT = re.compile(r"\b([ABT])\b")
#: Environment variable holding the judge endpoint's API key (a local `tuneloop serve` may need one).
KEY_ENV = "TUNELOOP_JUDGE_API_KEY"


@dataclass
class Judge:
    """A chat model behind an OpenAI-compatible endpoint (`…/v1`), asked with greedy decoding."""

    url: str
    model: str = "default"
    timeout: float = 120.0

    def __post_init__(self) -> None:
        import openai

        self._client = openai.OpenAI(base_url=self.url, api_key=os.environ.get(KEY_ENV, "none"), timeout=self.timeout,
                                     max_retries=2)

    def ask(self, prompt: str, a: str, b: str) -> str:
        """One verdict: "A", "B" or "T" (tie; also what an answer naming no letter counts as).

        Raises:
            TuneloopError: the endpoint cannot be reached or refuses the request.
        """
        import openai

        try:
            reply = self._client.chat.completions.create(
                model=self.model, temperature=0, max_tokens=4,
                messages=[{"role": "user", "content": PROMPT.format(prompt=prompt, a=a, b=b)}])
        except openai.OpenAIError as e:
            raise TuneloopError(f"the judge at {self.url} failed: {e}; check eval.judge_url and {KEY_ENV}") from None
        found = _VERDICT.search((reply.choices[0].message.content or "").upper())
        return found.group(1) if found else "T"

    def compare(self, prompt: str, x: str, y: str) -> int:
        """+1 if x is better in both orders, −1 if y is, 0 otherwise (a tie or a position-biased verdict)."""
        first, second = self.ask(prompt, x, y), self.ask(prompt, y, x)
        if first == "A" and second == "B":
            return 1
        if first == "B" and second == "A":
            return -1
        return 0


def win_rate(judge: Judge, prompts: Sequence[str], tuned: Sequence[str], other: Sequence[str], *,
             n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The tuned model's win rate against another system (ties count ½) with a bootstrap interval.

    Returns:
        `{"win_rate", "ci", "wins", "ties", "losses", "n", "outcomes"}` (outcomes: +1/0/−1 per prompt).
    """
    outcomes = [judge.compare(p, t, o) for p, t, o in zip(prompts, tuned, other)]
    points = [(o + 1) / 2 for o in outcomes]
    return {"win_rate": sum(points) / len(points), "ci": bootstrap_ci(lambda x: sum(x) / len(x), points, n_resamples=n_boot, seed=seed),
            "wins": outcomes.count(1), "ties": outcomes.count(0), "losses": outcomes.count(-1), "n": len(outcomes),
            "outcomes": outcomes}


def human_pairs(feedback: Path | str) -> list[tuple[str, str, str]]:
    """Pairs people decided, as (prompt, preferred answer, other answer), from rated chat responses.

    A corrected answer is preferred to the answer it corrects; for one prompt, an answer rated
    higher is preferred to one rated lower (equal ratings make no pair).
    """
    from tuneloop.store.feedback import FeedbackStore
    from tuneloop.store.items import Unreadable, chat_answer

    _, records = FeedbackStore(feedback).snapshot()
    pairs: list[tuple[str, str, str]] = []
    rated: dict[str, list[tuple[float, str]]] = {}
    for rec in records:
        if rec.get("kind") != "chat":
            continue
        try:
            answer = chat_answer(rec["response"])
        except Unreadable:
            continue
        users = [m.get("content", "") for m in rec["request"].get("messages", []) if m.get("role") == "user"]
        prompt = users[-1] if users else ""
        if rec.get("corrected") and rec["corrected"].strip() != answer.strip():
            pairs.append((prompt, rec["corrected"], answer))
        rated.setdefault(prompt, []).append((float(rec["score"]), answer))
    for prompt, answers in rated.items():
        answers.sort(key=lambda sa: -sa[0])
        pairs += [(prompt, hi, lo) for i, (s_hi, hi) in enumerate(answers) for s_lo, lo in answers[i + 1:]
                  if s_hi > s_lo and hi != lo]
    return pairs


def agreement(judge: Judge, pairs: Sequence[tuple[str, str, str]], *, seed: int = 0) -> dict[str, Any]:
    """Cohen's kappa between the judge and people on pairs people decided.

    Each pair is shown in a random (seeded) order, so people's labels are "first" or "second" and
    the judge's "first", "second" or "tie"; kappa is scikit-learn's `cohen_kappa_score`.

    Returns:
        `{"kappa", "n", "agree"}`, or `{"kappa": None, "n", "reason"}` when there is too little to measure.
    """
    from sklearn.metrics import cohen_kappa_score

    if len(pairs) < 2:
        return {"kappa": None, "n": len(pairs), "reason": f"{len(pairs)} rated pair(s) in the feedback store; need at least 2"}
    rng = random.Random(seed)
    human, verdicts = [], []
    for prompt, better, worse in pairs:
        first_is_better = rng.random() < 0.5
        x, y = (better, worse) if first_is_better else (worse, better)
        human.append("first" if first_is_better else "second")
        verdicts.append({1: "first", -1: "second", 0: "tie"}[judge.compare(prompt, x, y)])
    if len(set(human)) < 2:
        return {"kappa": None, "n": len(pairs), "reason": "people's preferences all fell on one side after shuffling"}
    kappa = float(cohen_kappa_score(human, verdicts, labels=["first", "second", "tie"]))
    return {"kappa": kappa, "n": len(pairs), "agree": sum(h == v for h, v in zip(human, verdicts))}


def judge_systems(cfg: Any, prompts: Sequence[str], texts: dict[str, list[str]], *, seed: int = 0) -> dict[str, Any]:
    """The judge section of metrics.json: win rate of tuned vs each other system, agreement, trust.

    Args:
        cfg: The run config (`eval.judge_url`, `judge_model`, `judge_feedback`, `judge_min_kappa`, `bootstrap`).
        prompts: The test prompts.
        texts: Generated answers by system name ("tuned" and the others).

    Returns:
        `{"status": "skipped", "reason"}` without a judge; else `{"status": "done", "model", "url", "vs", "agreement", "trusted"}`.
    """
    e = cfg.eval
    if not e.judge_url:
        return {"status": "skipped", "reason": "no judge configured (eval.judge_url)"}
    judge = Judge(e.judge_url, e.judge_model)
    vs = {name: {k: v for k, v in win_rate(judge, prompts, texts["tuned"], other, n_boot=e.bootstrap, seed=seed).items()}
          for name, other in texts.items() if name != "tuned"}
    agree = (agreement(judge, human_pairs(e.judge_feedback), seed=seed) if e.judge_feedback
             else {"kappa": None, "n": 0, "reason": "no feedback store given (eval.judge_feedback)"})
    trusted = agree.get("kappa") is not None and agree["kappa"] >= e.judge_min_kappa
    return {"status": "done", "model": e.judge_model, "url": e.judge_url, "vs": vs, "agreement": agree,
            "min_kappa": e.judge_min_kappa, "trusted": trusted}
