"""Benchmark `tuneloop prepare` at scale: rows/s, peak memory and seconds per stage.

Generates N short classification rows as JSONL (default 1,000,000) with the mess real data has —
exact copies (some with another label), near copies, personal data, broken lines — runs prepare in
a child process (so its peak RSS is its own), prints the figures and saves them as JSON under
bench/results/. With `--peer N` it also times datasketch's own `MinHashLSH` index on the first N
rows against our array-based LSH, the part of prepare that most needs to scale.

    .venv/bin/python bench/prepare_bench.py                 # 1M rows
    .venv/bin/python bench/prepare_bench.py --rows 100000 --peer 100000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LABELS = ["billing", "bug", "feature", "account", "other"]


def _vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "da", "go", "zu", "che", "bra", "ix", "on"]
    return sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(size)})


def generate(path: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Write `rows` JSONL lines; return how many of each kind of mess were planted."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    recent: list[tuple[str, str]] = []
    planted = dict.fromkeys(["unique", "exact", "conflict", "near", "pii", "broken", "missing_label"], 0)
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            kind, text, label = _row(rng, words, recent, i)
            planted[kind] += 1
            if kind == "broken":
                f.write('{"text": "unterminated\n')
                continue
            obj = {"text": text, "region": rng.choice(["north", "south"])} if kind == "missing_label" else \
                {"text": text, "label": label, "region": rng.choice(["north", "south"])}
            f.write(json.dumps(obj) + "\n")
            if kind == "unique":
                recent.append((text, label))
                if len(recent) > 10_000:
                    recent.pop(rng.randrange(len(recent)))
    return planted


def _row(rng: random.Random, words: list[str], recent: list[tuple[str, str]], i: int) -> tuple[str, str, str]:
    r = rng.random()
    if recent and r < 0.04:
        text, label = rng.choice(recent)
        return "exact", text.upper() if rng.random() < 0.3 else text, label
    if recent and r < 0.045:
        text, label = rng.choice(recent)
        return "conflict", text, rng.choice([lab for lab in LABELS if lab != label])
    if recent and r < 0.085:
        text, label = rng.choice(recent)
        toks = text.split()
        toks[rng.randrange(len(toks))] = rng.choice(words)
        return "near", " ".join(toks), label
    if r < 0.095:
        return "pii", _sentence(rng, words) + f" mail me at user{i}@example.com or call (415) 555-{i % 10000:04d}", rng.choice(LABELS)
    if r < 0.097:
        return "broken", "", ""
    if r < 0.099:
        return "missing_label", _sentence(rng, words), ""
    return "unique", _sentence(rng, words), rng.choice(LABELS)


def _sentence(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(12, 30)))


def run_prepare(data: Path, out: Path) -> dict:
    """Run prepare in this process (the child); return counts and seconds per stage."""
    from tuneloop.config import load_config
    from tuneloop.data import run

    cfg = load_config(None, {"task": "classify", "prepare.inputs": [str(data)], "prepare.out": str(out)})
    start = time.perf_counter()
    result = run(cfg)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "seconds": result.seconds, "counts": result.counts}


def peer_lsh(data: Path, n: int) -> dict:
    """datasketch `MinHashLSH` (insert + query every row) vs our arrays, on the first `n` rows."""
    import numpy as np
    from datasketch import LeanMinHash, MinHashLSH

    from tuneloop.data.lsh import Signer, band_keys, lsh_shape, near_duplicates, shingles

    texts = []
    with data.open(encoding="utf-8") as f:
        for line in f:
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError):
                continue
            if len(texts) >= n:
                break
    sig = Signer(64).sign(shingles(t) for t in texts)
    bands, rows = lsh_shape(0.8, 64)
    rss0 = _rss_mb()
    t = time.perf_counter()
    dropped, _ = near_duplicates(sig, band_keys(sig, bands, rows), np.arange(len(texts)), 0.8)
    ours = {"seconds": time.perf_counter() - t, "near_duplicates": int(len(dropped)), "rss_growth_mb": _rss_mb() - rss0}
    rss0 = _rss_mb()
    t = time.perf_counter()
    # The same greedy rule with datasketch's index: a row is a near duplicate of a kept row it
    # collides with and whose estimated Jaccard is at least 0.8; otherwise it is kept and indexed.
    index = MinHashLSH(threshold=0.8, num_perm=64, weights=(0.1, 0.9))
    sketches = [LeanMinHash(seed=1, hashvalues=hv, scheme="affine32") for hv in sig]
    found = 0
    for i, m in enumerate(sketches):
        if any(sketches[j].jaccard(m) >= 0.8 for j in index.query(m)):
            found += 1
        else:
            index.insert(i, m)
    peer = {"seconds": time.perf_counter() - t, "near_duplicates": found, "rss_growth_mb": _rss_mb() - rss0}
    return {"rows": len(texts), "ours": ours, "datasketch_MinHashLSH": peer,
            "speedup": peer["seconds"] / max(ours["seconds"], 1e-9)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Generate, run prepare in a child process, print and save the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--peer", type=int, default=0, help="also compare LSH with datasketch's index on this many rows")
    ap.add_argument("--child", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_prepare(Path(args.child[0]), Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        data = Path(tmp) / "data.jsonl"
        t = time.perf_counter()
        planted = generate(data, args.rows)
        gen_s = time.perf_counter() - t
        proc = subprocess.run([sys.executable, __file__, "--child", str(data), str(Path(tmp) / "out")],
                              check=True, capture_output=True, text=True)
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result = {
            "rows": args.rows, "file_mb": round(data.stat().st_size / 2**20, 1), "generate_s": round(gen_s, 1),
            "wall_s": round(child["wall_s"], 1), "rows_per_s": round(args.rows / child["wall_s"]),
            "peak_rss_mb": round(peak_mb), "seconds_per_stage": {k: round(v, 2) for k, v in child["seconds"].items()},
            "planted": planted, "counts": child["counts"], "machine": f"{platform.machine()}, {_cpus()} CPUs",
            "python": platform.python_version(),
        }
        if args.peer:
            result["peer"] = peer_lsh(data, args.peer)
    _print(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    dest = RESULTS / f"prepare-{args.rows}.json"
    dest.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"saved {dest}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _print(r: dict) -> None:
    print(f"{r['rows']:,} rows ({r['file_mb']} MB): {r['wall_s']} s, {r['rows_per_s']:,} rows/s, peak RSS {r['peak_rss_mb']:,} MB")
    for stage, s in sorted(r["seconds_per_stage"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<12} {s:8.2f} s")
    c = r["counts"]
    print(f"  planted {r['planted']}")
    print(f"  found: rejected {c['rejected_by_reason']}, exact {c['exact_duplicates']:,}, "
          f"conflicts {c['label_conflicts']:,}, near {c['near_duplicates']:,}, pii {c['pii']}, splits {c['splits']}")
    if "peer" in r:
        p = r["peer"]
        print(f"  LSH on {p['rows']:,} rows: ours {p['ours']['seconds']:.2f} s (+{p['ours']['rss_growth_mb']:.0f} MB), "
              f"datasketch MinHashLSH {p['datasketch_MinHashLSH']['seconds']:.2f} s "
              f"(+{p['datasketch_MinHashLSH']['rss_growth_mb']:.0f} MB): {p['speedup']:.1f}x")


if __name__ == "__main__":
    main()
