"""The outputs of `tuneloop prepare`: split files (streamed from the spill), manifest.json, summary table."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from rich.table import Table

from tuneloop.config import RunConfig
from tuneloop.data.ingest import Ingest, Rows
from tuneloop.data.lengths import length_stats
from tuneloop.data.selection import Selection
from tuneloop.data.split import SPLITS

MANIFEST_VERSION = 1


def write_splits(spill: Path, out: Path, sel: Selection, rows: Rows, rejects: TextIO, conflict_policy: str,
                 advance: Callable[[int], None] | None = None) -> dict[int, dict[str, Any]]:
    """Copy each kept row from the spill file to its split file; label conflicts go to rejects.

    Args:
        spill: The spill file (row i on line i).
        out: Output folder for train/val/test.jsonl.
        sel: Where each row goes.
        rows: The rows' compact state (for conflict reasons).
        rejects: Open rejects.jsonl, appended to.
        conflict_policy: `drop` or `keep_majority`, named in the reason.
        advance: Called with a row count now and then (progress bars); may be None.

    Returns:
        The records of the rows in `sel.near_examples`, by row index (for the report).
    """
    wanted = {i for d, k, _ in sel.near_examples for i in (d, k)}
    found: dict[int, dict[str, Any]] = {}
    files = [open(out / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") for name in SPLITS]
    try:
        with open(spill, encoding="utf-8") as f:
            for i, line in enumerate(f):
                code = sel.split[i]
                if code >= 0:
                    files[code].write(line)
                elif sel.conflict[i]:
                    rejects.write(_conflict_reject(json.loads(line), rows, sel, int(rows.keys[i]), conflict_policy))
                if i in wanted:
                    found[i] = json.loads(line)
                if advance is not None and i % 16384 == 16383:
                    advance(16384)
    finally:
        for fh in files:
            fh.close()
    return found


def _conflict_reject(rec: dict[str, Any], rows: Rows, sel: Selection, key: int, policy: str) -> str:
    names = ", ".join(repr(rows.label_names[i]) for i in sel.conflict_labels[key])
    what = ("fix the labels, or set label_conflicts: keep_majority" if policy == "drop"
            else "only rows with the majority label are kept, none when labels tie")
    meta = rec["meta"]
    reason = f"label conflict: the same text appears with labels {names}; {what}"
    line = {"kind": "label conflict", "line": meta["line"], "raw": rec, "reason": reason, "source": meta["source"]}
    return json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n"


def build_manifest(cfg: RunConfig, ingest: Ingest, rows: Rows, sel: Selection, lsh: dict[str, Any]) -> dict[str, Any]:
    """Everything a later stage or a person needs to trust the prepared data.

    Args:
        cfg: The run config.
        ingest: The first pass (inputs, counts, rejects, PII).
        rows: The kept rows' compact state.
        sel: The selection (dedup, splits, leakage).
        lsh: Near-duplicate settings in effect (threshold, n-gram, permutations, bands, rows).

    Returns:
        The manifest as a JSON-ready dict (no timings: re-runs must be byte-identical).
    """
    c = ingest.counts
    splits = {name: int((sel.split == code).sum()) for code, name in enumerate(SPLITS)}
    rejected = ingest.rejected + Counter({"label conflict": int(sel.conflict.sum())})  # Counter + drops zeros
    counts: dict[str, Any] = {
        "read": c["read"], "valid": c["valid"], "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "pii": dict(sorted(ingest.pii.items())), "pii_rows": c["pii_rows"], "trimmed_turns": c["trimmed_turns"],
        **sel.counts, "splits": splits,
    }
    manifest: dict[str, Any] = {"version": MANIFEST_VERSION, "task": cfg.task, "seed": cfg.seed}
    if cfg.task == "classify":
        dist = label_distribution(rows, sel)
        counts["label_distribution"] = dist
        manifest["labels"] = sorted({label for per_split in dist.values() for label in per_split})
    manifest.update({
        "counts": counts,
        "length_stats": {"unit": ingest.meter.unit, **{
            name: length_stats(rows.lengths[sel.split == code]) for code, name in enumerate(SPLITS)}},
        "inputs": ingest.files,
        "near_dup": lsh,
        "config": cfg.prepare.model_dump(mode="json"),
        "files": {**{name: f"{name}.jsonl" for name in SPLITS}, "rejects": "rejects.jsonl", "report": "report.html"},
    })
    return manifest


def label_distribution(rows: Rows, sel: Selection) -> dict[str, dict[str, int]]:
    """Rows per label in each split, labels sorted."""
    out = {}
    for code, name in enumerate(SPLITS):
        ids, n = np.unique(rows.labels[sel.split == code], return_counts=True)
        out[name] = dict(sorted((rows.label_names[i], int(k)) for i, k in zip(ids, n)))
    return out


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest as sorted, indented JSON (stable bytes for identical inputs)."""
    path.write_text(json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def summary_table(manifest: dict[str, Any], seconds: dict[str, float]) -> Table:
    """A rich table of rows per stage (and seconds per stage) for the terminal."""
    c = manifest["counts"]
    table = Table(title=f"tuneloop prepare ({manifest['task']})", title_justify="left")
    table.add_column("stage")
    table.add_column("rows", justify="right")
    table.add_column("detail")
    reasons = ", ".join(f"{n:,} {k}" for k, n in sorted(c["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:4])
    pii = ", ".join(f"{n:,} {k}" for k, n in c["pii"].items())
    action = manifest["config"]["pii"]
    for stage, n, detail in [
        ("read", c["read"], ", ".join(f["path"] for f in manifest["inputs"])),
        ("rejected", c["rejected"], reasons),
        ("pii", c["pii_rows"], f"rows with PII ({action}): {pii}" if pii else "none found" if action != "off" else "off"),
        ("exact duplicates", c["exact_duplicates"], ""),
        ("near duplicates", c["near_duplicates"], f"Jaccard ≥ {manifest['near_dup']['threshold']}"),
        ("leaked", c["leaked"], _leak_detail(c)),
        *[(name, n, _labels(c, name)) for name, n in c["splits"].items()],
    ]:
        table.add_row(stage, f"{n:,}", detail)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items() if v >= 0.05)
    table.caption = f"time: {timing}"
    return table


def _labels(counts: dict[str, Any], split: str) -> str:
    dist = counts.get("label_distribution", {}).get(split, {})
    shown = ", ".join(f"{k}: {v:,}" for k, v in sorted(dist.items(), key=lambda kv: -kv[1])[:6])
    return shown + (", …" if len(dist) > 6 else "")


def _leak_detail(c: dict[str, Any]) -> str:
    # Manifests written before leakage by prompt lack the newer counts.
    kinds = f"{c['leaked_exact']:,} exact, {c.get('leaked_prompt', 0):,} same prompt, {c['leaked_near']:,} near"
    return f"{kinds}; {c.get('leaked_from_train', c['leaked']):,} from train, {c.get('leaked_from_val', 0):,} from validation"
