"""Matmul peak of this machine (fp32 and bf16) and the model-FLOPs utilisation of training.

The peak is the best of several `torch.matmul` calls on big square matrices. Training FLOPs per
real token follow the usual convention: 6·N for full fine-tuning (forward 2N, backward 4N) and
4·N for LoRA (the frozen weights need no weight gradients), N = parameters of the base model;
attention's sequence-length term is left out, so MFU is slightly understated at long lengths.
Achieved FLOP/s come from `bench/results/sft.json` (run `bench/sft.py` first).

Usage: `python bench/mfu.py`. Writes `bench/results/mfu.json`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best FLOP/s of `n x n @ n x n` in `dtype` over `repeats` timed calls (after a warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peaks() -> dict[str, float]:
    """GFLOP/s peaks for fp32 and bf16, best over a few sizes."""
    sizes, repeats = ([1024, 2048], 3) if common.QUICK else ([1024, 2048, 4096], 5)
    return {name: round(max(matmul_peak(dt, n, repeats) for n in sizes) / 1e9, 1)
            for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def training_flops(sft: dict, n_params: int) -> dict[str, dict]:
    """Achieved GFLOP/s of each LoRA system in `sft.json` (4·N per real token)."""
    out = {}
    for name, r in sft.get("systems", {}).items():
        tps = r.get("real_tokens_per_s")
        if tps:
            out[name] = {"real_tokens_per_s": tps, "gflops": round(4 * n_params * tps / 1e9, 1)}
    return out


def main() -> None:
    """Measure the peaks, combine with the SFT benchmark's throughput, write mfu.json."""
    common.set_threads()
    peak = peaks()
    print("matmul peak GFLOP/s", peak, flush=True)
    sft_path = common.RESULTS / f"sft{'.quick' if common.QUICK else ''}.json"
    sft = json.loads(sft_path.read_text()) if sft_path.is_file() else {}
    n_params = sft.get("settings", {}).get("base_params", 134_515_008)
    train = training_flops(sft, n_params)
    for name, r in train.items():
        r["mfu_bf16"] = round(r["gflops"] / peak["bf16"], 3)
        r["mfu_fp32"] = round(r["gflops"] / peak["fp32"], 3)
        print(f"{name}: {r['gflops']} GFLOP/s = {r['mfu_bf16']:.1%} of bf16 peak", flush=True)
    common.write_result("mfu", {"peak_gflops": peak, "flops_per_token": "4*N (LoRA), N = base parameters",
                                "n_params": n_params, "source": sft_path.name, "training": train})


if __name__ == "__main__":
    main()
