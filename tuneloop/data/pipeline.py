"""`tuneloop prepare`: raw files → validated, cleaned, redacted, deduplicated, split data.

The first pass streams every row through validation, cleaning, PII redaction, length measurement
and MinHash signing, writing kept rows to a spill file and bad ones to rejects.jsonl. The decisions
(deduplicate, split, leakage) are made on compact arrays; a second pass copies each kept row from
the spill to its split file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from tuneloop.config import RunConfig
from tuneloop.data.html_report import write_report
from tuneloop.data.ingest import Ingest
from tuneloop.data.leakage import prompt_index
from tuneloop.data.load import expand_inputs
from tuneloop.data.lsh import lsh_shape
from tuneloop.data.manifest import build_manifest, summary_table, write_manifest, write_splits
from tuneloop.data.selection import select
from tuneloop.data.split import SPLITS
from tuneloop.errors import TuneloopError

_SPILL = ".prepare-spill.jsonl"


@dataclass
class PrepareResult:
    """What `tuneloop prepare` produced.

    Attributes:
        out: The output folder (train/val/test.jsonl, rejects.jsonl, manifest.json, report.html).
        manifest: The manifest as written.
        seconds: Wall time per stage (not in the manifest, which must not change between re-runs).
    """

    out: Path
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        """Rows per stage and per split (`manifest["counts"]`)."""
        return self.manifest["counts"]

    @property
    def splits(self) -> dict[str, int]:
        """Rows per split, e.g. `{"train": 800, "val": 100, "test": 100}`."""
        return self.manifest["counts"]["splits"]

    def path(self, name: str) -> Path:
        """The file of a split (`train`, `val`, `test`) or `rejects`, `manifest`, `report`."""
        files = {**self.manifest["files"], "manifest": "manifest.json"}
        return self.out / files[name]

    def summary(self) -> Any:
        """A rich table of rows per stage, split and label, with seconds per stage."""
        return summary_table(self.manifest, self.seconds)


def run(cfg: RunConfig) -> PrepareResult:
    """Prepare data for training as configured in `cfg.prepare` (plus `cfg.task`, `cfg.seed`).

    Args:
        cfg: The run config.

    Returns:
        The output folder, manifest and timings.

    Raises:
        TuneloopError: no input or output given, an input is missing or unreadable, no row is
            valid, or nothing is left to train on; the message says why and what to do.
    """
    p = cfg.prepare
    if p.out is None:
        raise TuneloopError("no output folder: pass --out DIR or set prepare.out in the config")
    test_files = expand_inputs([p.test_file]) if p.test_file else []
    inputs = [f for f in expand_inputs(p.inputs) if f not in test_files]
    if not inputs:
        raise TuneloopError("every input file is also the test file; give training data besides --test-file")
    out = Path(p.out)
    out.mkdir(parents=True, exist_ok=True)
    spill = out / _SPILL
    try:
        return _prepare(cfg, inputs, test_files, out, spill)
    finally:
        spill.unlink(missing_ok=True)


def _prepare(cfg: RunConfig, inputs: list[str], test_files: list[str], out: Path, spill: Path) -> PrepareResult:
    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn()]
    # transient: the bars vanish when done and the summary table stays; off when not a terminal (logs, CI)
    with open(out / "rejects.jsonl", "w", encoding="utf-8", newline="\n", errors="backslashreplace") as rejects, \
            Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        ingest = _first_pass(cfg, inputs, test_files, rejects, spill, progress)
        rows = ingest.rows()
        if not len(rows.keys):
            why = nothing_valid(ingest.counts["read"], ingest.rejected, out / "rejects.jsonl", ingest.first_reject)
            raise TuneloopError(why)
        progress.add_task("deduplicating, splitting, checking leakage", total=None)
        p = cfg.prepare
        prompts = prompt_index(spill, rows, cfg.task, p.near_dup_num_perm, p.near_dup_ngram)
        ingest.laps.lap("prompts")
        sel = select(rows, cfg, ingest.laps, prompts)
        if not (sel.split == 0).any():
            raise TuneloopError(_nothing_to_train(sel.counts, len(rows.keys)))
        task = progress.add_task("writing splits", total=len(rows.keys))
        records = write_splits(spill, out, sel, rows, rejects, cfg.prepare.label_conflicts,
                               advance=lambda n: progress.advance(task, n))
        ingest.laps.lap("write")
    p = cfg.prepare
    bands, band_rows = lsh_shape(p.near_dup_threshold, p.near_dup_num_perm)
    lsh = {"threshold": p.near_dup_threshold, "ngram": p.near_dup_ngram, "num_perm": p.near_dup_num_perm,
           "bands": bands, "rows": band_rows}
    manifest = build_manifest(cfg, ingest, rows, sel, lsh)
    write_manifest(out / "manifest.json", manifest)
    near = [(records[d], records[k], sim) for d, k, sim in sel.near_examples]
    write_report(out / "report.html", manifest, {s: rows.lengths[sel.split == i] for i, s in enumerate(SPLITS)}, near)
    ingest.laps.lap("report")
    return PrepareResult(out, manifest, dict(ingest.laps.seconds))


def _first_pass(cfg: RunConfig, inputs: list[str], test_files: list[str], rejects: Any, spill: Path,
                progress: Progress) -> Ingest:
    files = [(f, 0) for f in inputs] + [(f, 1) for f in test_files]
    total = sum(Path(f).stat().st_size for f, _ in files)
    with open(spill, "w", encoding="utf-8", newline="\n") as spill_file:
        task = progress.add_task("reading", total=total)
        ingest = Ingest(cfg, rejects, spill_file, advance=lambda n: progress.advance(task, n))
        for path, group in files:
            progress.update(task, description=f"reading, checking, cleaning {Path(path).name}")
            ingest.add_file(path, group)
        progress.update(task, completed=total)
    return ingest


def nothing_valid(read: int, rejected: Counter[str], rejects: Path, first: dict[str, str] | None = None) -> str:
    """The message when no row survived validation, e.g. "0 of 120 rows valid: 120 missing field 'label'".

    Args:
        read: Rows read.
        rejected: Rejected rows per kind of problem.
        rejects: The rejects file, named in the message.
        first: For each kind, "file:line: reason" of its first row; the most common is quoted.

    >>> nothing_valid(120, Counter({"missing field 'label'": 120}), Path("out/rejects.jsonl"))
    "0 of 120 rows valid: 120 missing field 'label'. Every row and its reason is in out/rejects.jsonl"
    """
    if not read:
        return "0 rows read: the input files hold no rows"
    common = rejected.most_common(5)
    reasons = ", ".join(f"{n:,} {kind}" for kind, n in common)
    example = f" (first: {first[common[0][0]]})" if first and common[0][0] in first else ""
    return f"0 of {read:,} rows valid: {reasons}{example}. Every row and its reason is in {rejects}"


def _nothing_to_train(counts: dict[str, int], kept: int) -> str:
    return (f"no training rows left of {kept:,} valid ones ({counts['exact_duplicates']:,} exact and "
            f"{counts['near_duplicates']:,} near duplicates, {counts['label_conflicts']:,} label conflicts, "
            f"{counts['leaked']:,} leaked into validation/test); add data or lower val_fraction/test_fraction")
