"""Scaling curves of tuneloop's LoRA training: tokens/s and peak RSS vs sequence length and model size.

Sequence length: SmolLM2-135M-Instruct at 128, 256, 512, 1024 and 2048 tokens per example.
Model size: Llama models built from a config with SmolLM2's tokenizer and 49k vocabulary (tied
embeddings, random weights: speed and memory do not depend on the values) of about 10M and 30M
parameters, and the real 135M, at length 512. Every example is exactly the given length (FiQA
answers concatenated, then truncated), LoRA r=16 on all linear layers, batch 2, bf16 as tuneloop
chooses; each point is its own process (its own peak RSS). Tokens/s is the median over the steps
after the first (warm-up).

Usage: `python bench/scaling.py [--steps 3]`. Writes `bench/results/scaling.json`,
`scaling_seq_len.png` and `scaling_model_size.png`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BATCH = 2
SEQ_LENS = [128, 256, 512, 1024, 2048]
# hidden, layers, heads, kv heads, MLP width: ~10M and ~30M parameters with the 49k vocabulary.
SIZES = {"10M": (192, 2, 3, 1, 512), "30M": (384, 6, 6, 2, 1024)}


def build_model(name: str, out: Path) -> Path:
    """A random Llama of size `name` (see SIZES) saved with SmolLM2's tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    from tuneloop import models

    base = models.resolve("default")
    tok = models.load_tokenizer(base)
    d, layers, heads, kv, mlp = SIZES[name]
    # SmolLM2's own config (rope, norms, tied embeddings, special tokens) with a smaller shape.
    config = models.load_config(base)
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = d, mlp, layers
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = heads, kv, d // heads
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_data(folder: Path, length: int, rows: int, tokenizer: Any) -> Path:
    """Rows of exactly `length` tokens after truncation: a FiQA question and a long concatenated answer."""
    fiqa = common.fiqa_rows()
    text = " ".join(r["messages"][1]["content"] for r in fiqa)
    words = text.split()
    out, step = [], max(50, length)  # ~1.3 tokens per word: `length` words always fill the example
    for i in range(rows):
        answer = " ".join(words[i * 37 % len(words):][: step * 2])
        out.append({"id": str(i), "messages": [fiqa[i]["messages"][0], {"role": "assistant", "content": answer}], "meta": {}})
    return common.write_split(folder, out, val_rows=BATCH, train_rows=None, seed=0, task="generate")


def run_point(base: str, length: int, steps: int, work: Path) -> dict[str, Any]:
    """Train `steps` LoRA steps at `length`; tokens/s (median after the first step) and peak RSS."""
    from tuneloop import models, train
    from tuneloop.config import load_config

    shutil.rmtree(work, ignore_errors=True)
    base_path = models.resolve(base)
    data = write_data(work / "data", length, BATCH * steps + BATCH, models.load_tokenizer(base_path))
    cfg = load_config(None, {
        "task": "generate", "base": str(base_path), "train.data": data, "train.out": work / "run", "train.method": "lora",
        "train.max_length": length, "train.batch_size": BATCH, "train.max_steps": steps, "train.threads": common.THREADS, "train.eval_every": 10_000,
        "train.save_every": 10_000, "train.patience": None,
    })
    info = train.run(cfg).info
    log = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    tps = [r["tokens_per_s"] for r in log if r["kind"] == "train"]
    return {"base": base, "params": models.count_parameters(Path(base_path)), "seq_len": length, "batch": BATCH,
            "steps": info["steps"], "tokens_per_step": info["tokens_seen"] // max(info["steps"], 1),
            "tokens_per_s": round(statistics.median(tps[1:] or tps), 1), "step_tokens_per_s": [round(x, 1) for x in tps],
            "peak_rss_mib": round(common.peak_rss_mib(), 1), "bf16": info["bf16"]}


def plot(points: list[dict[str, Any]], x: str, out: Path, xlabel: str, log_x: bool) -> None:
    """Two panels (tokens/s, peak RSS) against `x`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if "tokens_per_s" in p]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [p[x] for p in ok]
    a.plot(xs, [p["tokens_per_s"] for p in ok], "o-")
    b.plot(xs, [p["peak_rss_mib"] / 1024 for p in ok], "o-", color="tab:red")
    a.set(xlabel=xlabel, ylabel="real tokens/s", title="training throughput")
    b.set(xlabel=xlabel, ylabel="peak RSS (GiB)", title="peak memory")
    for ax in (a, b):
        if log_x:
            ax.set_xscale("log", base=2 if x == "seq_len" else 10)
        ax.set_xticks(xs, [p.get("size") or str(p[x]) for p in ok])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    fig.suptitle(f"tuneloop LoRA r=16, batch {BATCH}, bf16")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    """Run every point in its own process; write the JSON and the two plots."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2 if common.QUICK else 3)
    p.add_argument("--work", type=Path, default=Path("runs/bench-scaling"))
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        common.set_threads()
        base, length = a.child
        print(json.dumps(run_point(base, int(length), a.steps, a.work / f"{Path(base).name}-{length}")))
        return
    seq_lens = [128, 512] if common.QUICK else SEQ_LENS
    seq = [common.child(__file__, ["--child", "default", str(n), "--steps", str(a.steps), "--work", str(a.work)])
           for n in seq_lens]
    for pt in seq:
        print("seq", json.dumps(pt), flush=True)
    sizes = []
    for name in SIZES:
        folder = build_model(name, a.work / f"model-{name}")
        sizes.append({"size": name, **common.child(__file__, ["--child", str(folder), "512", "--steps", str(a.steps),
                                                               "--work", str(a.work)])})
        print("size", json.dumps(sizes[-1]), flush=True)
    sizes.append({"size": "135M", **next((s for s in seq if s.get("seq_len") == 512), {})})
    suffix = ".quick" if common.QUICK else ""
    plot(seq, "seq_len", common.RESULTS / f"scaling_seq_len{suffix}.png", "sequence length (tokens)", log_x=True)
    plot(sizes, "params", common.RESULTS / f"scaling_model_size{suffix}.png", "parameters", log_x=True)
    common.write_result("scaling", {"settings": {"batch": BATCH, "steps": a.steps, "lora_r": 16, "model_size_seq_len": 512},
                                    "seq_len": seq, "model_size": sizes})


if __name__ == "__main__":
    main()
