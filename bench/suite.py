"""Run the whole benchmark suite (`make bench`) and put the latest table of ratios into bench/README.md.

Each benchmark is its own script and process, run one after another: sft (LoRA SFT vs TRL and the
HF Trainer), mfu (matmul peak and achieved FLOP/s; reads sft's result), classify, generation,
scaling, profile_step. `BENCH_QUICK=1` runs a short smoke version (results `*.quick.json`, README
untouched). `--only sft,mfu` runs some; `--table` only rewrites the README table from the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent
ORDER = ["sft", "mfu", "classify", "generation", "scaling", "profile_step"]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
PBEGIN, PEND = "<!-- profile:begin -->", "<!-- profile:end -->"


def _result(name: str) -> dict[str, Any]:
    path = common.RESULTS / f"{name}{'.quick' if common.QUICK else ''}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec)


def _sft_rows(sft: dict[str, Any]) -> list[str]:
    s, r = sft.get("systems", {}), sft.get("ratios", {})
    ours = s.get("tuneloop", {})
    rows = []
    for peer in ("trl_default", "trl_packed", "hf_trainer"):
        p, q = s.get(peer, {}), r.get(peer, {})
        rows.append(f"| LoRA SFT, SmolLM2-135M, FiQA, len 512, batch 8 | {peer} | "
                    f"{_fmt(ours.get('real_tokens_per_s'), '.0f')} vs {_fmt(p.get('real_tokens_per_s'), '.0f')} real tok/s | "
                    f"**{_fmt(q.get('real_tokens_per_s'), '.2f')}×** | "
                    f"peak RSS {_fmt(ours.get('peak_rss_mib', 0) / 1024, '.1f')} vs {_fmt(p.get('peak_rss_mib', 0) / 1024, '.1f')} GiB "
                    f"({_fmt(q.get('peak_rss'), '.2f')}×); val loss {_fmt(ours.get('val_loss'), '.3f')} vs "
                    f"{_fmt(p.get('val_loss'), '.3f')} |")
    return rows


def table() -> str:
    """The Markdown table of the latest results."""
    sft, mfu, cls, gen = _result("sft"), _result("mfu"), _result("classify"), _result("generation")
    lines = ["| benchmark | peer | tuneloop vs peer | ratio | also |", "|---|---|---|---|---|", *_sft_rows(sft)]
    c = cls.get("systems", {})
    lines.append(f"| MiniLM classification, TREC, len 64, batch 32 | hf_trainer | "
                 f"{_fmt(c.get('tuneloop', {}).get('examples_per_s'), '.1f')} vs {_fmt(c.get('hf_trainer', {}).get('examples_per_s'), '.1f')} examples/s | "
                 f"**{_fmt(cls.get('ratios', {}).get('hf_trainer', {}).get('examples_per_s'), '.2f')}×** | "
                 f"peak RSS ratio {_fmt(cls.get('ratios', {}).get('hf_trainer', {}).get('peak_rss'), '.2f')} |")
    b = gen.get("best", {})
    lines.append(f"| generation, SmolLM2 fp32, greedy | one-at-a-time `generate` | "
                 f"{_fmt(b.get('batched', {}).get('tokens_per_s'), '.0f')} vs {_fmt(b.get('one_at_a_time', {}).get('tokens_per_s'), '.0f')} tok/s | "
                 f"**{_fmt(gen.get('ratios', {}).get('one_at_a_time', {}).get('tokens_per_s'), '.2f')}×** | "
                 f"batch {gen.get('settings', {}).get('batch_size')}, identical answers {gen.get('identical_answers')}/"
                 f"{gen.get('settings', {}).get('prompts')} |")
    peak, tr = mfu.get("peak_gflops", {}), mfu.get("training", {})
    for name in ("tuneloop", "trl_default", "trl_packed", "hf_trainer"):
        if name in tr:
            lines.append(f"| MFU (4·N FLOPs/token, LoRA) | bf16 matmul peak {_fmt(peak.get('bf16'), '.0f')} GFLOP/s | "
                         f"{name}: {_fmt(tr[name]['gflops'], '.0f')} GFLOP/s | **{_fmt(100 * tr[name]['mfu_bf16'], '.1f')}%** | "
                         f"fp32 peak {_fmt(peak.get('fp32'), '.0f')} GFLOP/s |")
    m = sft.get("machine", {})
    lines.append("")
    lines.append(f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({', '.join(m.get('flags', []))}), torch "
                 f"{m.get('versions', {}).get('torch')}, load before the SFT runs: "
                 + ", ".join(f"{k} {v.get('load_before', ['?'])[0]}" for k, v in sft.get("systems", {}).items()) + ".")
    return "\n".join(lines)


def profile_md() -> str:
    """Phase times, the top torch.profiler operators and py-spy's top functions of the latest profile."""
    prof = _result("profile")
    ph = prof.get("profile", {}).get("phases", [])
    lines = []
    if ph:
        keys = ("collate", "forward", "backward", "clip", "optimizer")
        total = sum(p[k] for p in ph for k in keys)
        lines.append("Phases (" + f"{len(ph)} steps, {ph[0]['tokens']} tokens each, shared prefix {ph[0]['prefix_shared']} tokens): "
                     + ", ".join(f"{k} {100 * sum(p[k] for p in ph) / total:.1f}%" for k in keys) + ".")
        lines.append("")
    ops = prof.get("profile", {}).get("torch_profiler_top", [])[:10]
    spy = prof.get("py_spy", {}).get("self", [])[:10]
    lines += ["| torch.profiler operator (self CPU) | share | py-spy function (own time, in the step) | share |",
              "|---|---|---|---|"]
    for i in range(max(len(ops), len(spy))):
        o = ops[i] if i < len(ops) else {}
        f = spy[i] if i < len(spy) else {}
        lines.append(f"| `{o.get('op', '')}` ({o.get('calls', '')} calls) | {_fmt(100 * o['share'], '.1f') + '%' if o else ''} | "
                     f"`{f.get('function', '')}` | {_fmt(100 * f['share'], '.1f') + '%' if f else ''} |")
    return "\n".join(lines)


def _replace(text: str, begin: str, end: str, body: str) -> str:
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def write_readme() -> None:
    """Replace the generated parts of bench/README.md (between the result and profile markers)."""
    readme = HERE / "README.md"
    text = _replace(readme.read_text(), BEGIN, END, table())
    readme.write_text(_replace(text, PBEGIN, PEND, profile_md()))


def main() -> None:
    """Run the benchmarks in order, timing each; then update the README table (full runs only)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(ORDER))
    p.add_argument("--table", action="store_true", help="only rewrite the README table from the results")
    a = p.parse_args()
    if not a.table:
        timings = {}
        for name in a.only.split(","):
            t0 = time.time()
            print(f"== {name} (load {common.load()})", flush=True)
            subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=False)
            timings[name] = round(time.time() - t0)
            print(f"== {name} took {timings[name]} s", flush=True)
        print("timings (s):", timings, flush=True)
        (common.RESULTS / f"suite_timings{'.quick' if common.QUICK else ''}.json").write_text(
            json.dumps({"machine": common.machine_info(), "seconds": timings}, indent=1))
    print(table())
    if not common.QUICK:
        write_readme()


if __name__ == "__main__":
    main()
