"""Profile tuneloop's LoRA training step on SmolLM2 (FiQA, max length 512, batch 8).

Three views of the same steps (after one warm-up step):
- phases: wall time of collation, forward + loss, backward, clipping and the optimizer step, timed
  around the same calls one step of `tuneloop.train.Trainer.fit` makes;
- torch.profiler: the operators with the most self CPU time in one step;
- py-spy 0.4.3 (sampling, Python stacks): the functions where the process spends its time over a
  few steps (`py-spy record --format raw`), aggregated by leaf frame.

Usage: `python bench/profile_step.py [--steps 3]`. Writes `bench/results/profile.json` and
`bench/results/profile_ops.txt` (the profiler's table).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROWS = 8 * 6


def trainer(work: Path) -> Any:
    """A tuneloop trainer (LoRA, defaults, max length 512, batch 8) on FiQA, ready to step."""
    from tuneloop import train
    from tuneloop.config import load_config

    shutil.rmtree(work, ignore_errors=True)
    data = common.write_split(work / "data", common.fiqa_rows(), val_rows=8, train_rows=ROWS, seed=0, task="generate")
    cfg = load_config(None, {"task": "generate", "base": "default", "train.data": data, "train.out": work / "run",
                             "train.max_length": 512, "train.batch_size": 8, "train.max_steps": 100,
                             "train.threads": common.THREADS})
    run_dir = work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return train.sft_trainer(cfg, run_dir).trainer


def phases(tr: Any, rows: list[list[int]]) -> dict[str, float]:
    """Seconds per phase of one step, calling what `Trainer.fit` calls in a step, in the same order."""
    import torch

    from tuneloop.losses import loss_sum, n_loss

    t = {"collate": time.perf_counter()}
    batch = tr.objective.batch(rows)
    t["forward"] = time.perf_counter()
    with tr.ex.autocast():
        loss = loss_sum(tr.model, batch, tr.objective.kind) / n_loss(batch)
    t["backward"] = time.perf_counter()
    loss.backward()
    t["clip"] = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(tr.params, tr.cfg.train.max_grad_norm)
    t["optimizer"] = time.perf_counter()
    tr.optimizer.step()
    tr.optimizer.zero_grad(set_to_none=True)
    end = time.perf_counter()
    marks = list(t.items()) + [("end", end)]
    out = {name: round(marks[i + 1][1] - at, 4) for i, (name, at) in enumerate(marks[:-1])}
    out["tokens"] = int(batch["n_tokens"])
    out["prefix_shared"] = int(batch["prefix_ids"].shape[1]) if "prefix_ids" in batch else 0
    return out


def one_step(tr: Any, group: list[list[list[int]]]) -> None:
    """One optimizer step as `Trainer.fit` takes it (one process): forward, backward, clip, step."""
    import torch

    micro = [tr.objective.batch(rows) for rows in group]
    n = sum(tr.objective.count(b) for b in micro)
    for batch in micro:
        with tr.ex.autocast():
            loss = tr.objective.loss_sum(tr.model, batch)[0] / n
        loss.backward()
    torch.nn.utils.clip_grad_norm_(tr.params, tr.cfg.train.max_grad_norm)
    tr.optimizer.step()
    tr.scheduler.step()
    tr.optimizer.zero_grad(set_to_none=True)


def torch_profile(tr: Any, rows: list[list[int]], table: Path) -> list[dict[str, Any]]:
    """Top operators by self CPU time over one step; the full table goes to `table`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(tr, [rows])
    avg = prof.key_averages()
    table.write_text(avg.table(sort_by="self_cpu_time_total", row_limit=40))
    total = sum(e.self_cpu_time_total for e in avg) or 1
    top = sorted(avg, key=lambda e: -e.self_cpu_time_total)[:15]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1), "share": round(e.self_cpu_time_total / total, 3),
             "calls": e.count} for e in top]


def pyspy_top(raw: Path, n: int = 15) -> dict[str, list[dict[str, Any]]]:
    """Aggregate py-spy's raw (collapsed) stacks inside training steps: top functions by own and inclusive time."""
    own, incl, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "one_step (" not in stack:  # model loading and set-up are not the step
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
                  for f in stack.split(";")]
        c = int(count)
        total += c
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    fmt = lambda cnt: [{"function": f, "share": round(c / max(total, 1), 3)} for f, c in cnt.most_common(n)]  # noqa: E731
    return {"self": fmt(own), "inclusive": fmt(incl), "samples": total}


def run_child(mode: str, work: Path, steps: int) -> dict[str, Any]:
    """`profile`: phases + torch.profiler; `spin`: just train `steps` steps (sampled by py-spy)."""
    tr = trainer(work)
    batches = tr._epoch(0)
    one_step(tr, batches[0:1])  # warm-up: first-call allocations and kernel selection
    if mode == "spin":
        for b in batches[1 : 1 + steps]:
            one_step(tr, [b])
        return {"steps": steps}
    ph = [phases(tr, b) for b in batches[1 : 1 + steps]]
    top = torch_profile(tr, batches[1 + steps], common.RESULTS / "profile_ops.txt")
    return {"phases": ph, "torch_profiler_top": top, "bf16": tr.ex.bf16,
            "attention": tr.model.get_base_model().config._attn_implementation}


def main() -> None:
    """Profile with torch.profiler in one process, then sample another with py-spy."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1 if common.QUICK else 2)
    p.add_argument("--work", type=Path, default=Path("runs/bench-profile"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        common.set_threads()
        print(json.dumps(run_child(a.child, a.work, a.steps)))
        return
    report: dict[str, Any] = {"settings": {"max_length": 512, "batch_size": 8, "lora_r": 16, "steps": a.steps}}
    report["profile"] = common.child(__file__, ["--child", "profile", "--work", str(a.work), "--steps", str(a.steps)])
    print(json.dumps(report["profile"], indent=1), flush=True)
    raw = a.work.parent / "bench-pyspy.txt"
    pyspy = Path(sys.executable).parent / "py-spy"
    cmd = [str(pyspy), "record", "--format", "raw", "--rate", "50", "--nonblocking", "-o", str(raw), "--",
           sys.executable, __file__, "--child", "spin", "--work", str(a.work), "--steps", str(a.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report["py_spy"] = pyspy_top(raw) if proc.returncode == 0 and raw.is_file() else {"error": proc.stderr[-2000:]}
    print(json.dumps(report["py_spy"], indent=1), flush=True)
    common.write_result("profile", report)


if __name__ == "__main__":
    main()
