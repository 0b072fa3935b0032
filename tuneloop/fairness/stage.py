"""`tuneloop fairness RUN`: audit the tuned (and base) model, gate it, write `RUN/fairness/`.

Files: `result.json` (thresholds, values, pass/fail per check, the full audits — what a promotion
gate reads), `flips.jsonl` (every listed counterfactual flip) and `report.html`.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from tuneloop import threads
from tuneloop.config import RunConfig
from tuneloop.errors import TuneloopError
from tuneloop.fairness.attributes import group_columns
from tuneloop.fairness.counterfactual import Predict, flip_test, output_change_test
from tuneloop.fairness.gate import BASE_COMPARABLE, Check, failures, gate, unchecked
from tuneloop.fairness.groups import group_report
from tuneloop.fairness.terms import TermAxis, load_terms

UNPARSEABLE = "(unparseable)"


def audit(
    texts: Sequence[str],
    predict: Predict,
    *,
    axes: Sequence[TermAxis],
    groups: dict[str, list[str]] | None = None,
    y_true: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    min_group_size: int = 30,
    max_variants: int = 3,
    seed: int = 0,
    ids: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Group metrics and counterfactual tests of one model on one test set.

    With `labels` (classification, or generation whose answers are labels) the model's answers
    are labels: per-group metrics are computed for every attribute in `groups` and the
    counterfactual measure is the flip rate. Without, answers are free text and the measure is
    how much they change.

    Args:
        texts: Test inputs.
        predict: `predict(texts, sources)` → one answer per text (None: unparseable).
        axes: Identity-term axes to swap.
        groups: `{attribute: group of every example}`.
        y_true: True labels (needed for group metrics).
        labels: The task's labels; None for open generation.
        min_group_size: See `group_report`.
        max_variants: Counterfactuals per example and axis.
        seed: Picks counterfactual variants.
        ids: Example ids for listed flips.

    Returns:
        `{"groups": {attr: GroupReport dict}, "counterfactual": {axis: AxisReport dict}}`.

    >>> from tuneloop.fairness.terms import TermAxis
    >>> fair = lambda ts, _: ["pos" if "good" in t else "neg" for t in ts]
    >>> a = audit(["he is good", "she is bad"], fair, axes=[TermAxis("g", {"s": {"he": "she", "she": "he"}})],
    ...           groups={"gender": ["m", "f"]}, y_true=["pos", "neg"], labels=["neg", "pos"], min_group_size=1)
    >>> a["counterfactual"]["g"]["flip_rate"], a["groups"]["gender"]["groups"]["f"]["accuracy"]
    (0.0, 1.0)
    """
    def answer(texts: list[str], sources: list[int]) -> list[str]:
        # An unparseable answer is a value of its own, the same before and after a swap.
        return [UNPARSEABLE if a is None else a for a in predict(texts, sources)]

    answers = answer(list(texts), list(range(len(texts))))
    out: dict[str, Any] = {"groups": {}, "counterfactual": {}}
    if labels is not None and y_true is not None:
        for attr, col in (groups or {}).items():
            out["groups"][attr] = group_report(y_true, answers, groups=col, labels=labels, attribute=attr,
                                               min_size=min_group_size).to_dict()
    test = flip_test if labels is not None else output_change_test
    cf = test(texts, answer, axes, original=answers, max_variants=max_variants, seed=seed, ids=ids)
    out["counterfactual"] = {k: v.to_dict() for k, v in cf.items()}
    return out


@dataclass
class FairnessResult:
    """What `run` produced: the audits, the gate's checks and where the files are."""

    run_dir: Path
    audits: dict[str, dict[str, Any]]
    checks: list[Check]
    warnings: list[str]
    notes: list[str]
    out: Path | None = None  # where the files went (default RUN/fairness)
    block_unassessed: bool = False  # fairness.if_not_assessed is block

    @property
    def folder(self) -> Path:
        """The folder of result.json, flips.jsonl and report.html."""
        return self.out if self.out is not None else self.run_dir / "fairness"

    @property
    def status(self) -> str:
        """`passed`, `failed`, or `not_assessed` when no check could be made (nothing was shown, so nothing held)."""
        if not self.checks:
            return "not_assessed"
        return "passed" if all(c.passed for c in self.checks) else "failed"

    @property
    def passed(self) -> bool:
        """True when there were checks and every one passed (zero checks is not a pass)."""
        return self.status == "passed"

    def failures(self) -> list[str]:
        """One line per failed threshold."""
        return failures(self.checks)

    def not_assessed(self) -> list[str]:
        """Why each part of the audit checked nothing (empty when some check was made)."""
        return unchecked(self.audits.get("tuned", {})) if not self.checks else []

    def summary(self) -> Group:
        """The gate's checks as a table, then warnings and the report path."""
        title = {"passed": "PASSED", "failed": "FAILED", "not_assessed": "NOT ASSESSED (no check could be made)"}[self.status]
        table = Table(title=f"tuneloop fairness — {title}")
        for col in ("check", "value", "threshold", "where", "result"):
            table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
        for c in self.checks:
            table.add_row(c.name, f"{c.value:.4g}", f"{c.threshold:.4g}", c.where,
                          "[green]pass[/]" if c.passed else "[bold red]FAIL[/]")
        extra = [f"[yellow]warning:[/] {w}" for w in self.warnings + self.not_assessed()] + self.notes
        return Group(table, *extra, f"report: {self.folder / 'report.html'}")


def _model_predict(loaded: Any, rows: list[dict[str, Any]], cfg: RunConfig, labels: list[str] | None, desc: str) -> Predict:
    """Wrap the evaluation stage's prediction path (one path for eval and fairness) as `Predict`."""
    from tuneloop.evaluate.labels import LabelParser
    from tuneloop.evaluate.stage import predict_system

    parser = LabelParser(labels, cfg.eval.synonyms) if labels else None

    def with_text(src: dict[str, Any], text: str) -> dict[str, Any]:
        row = dict(src["row"])
        if cfg.task == "classify":
            row["text"] = text
        else:  # replace the last user turn; the other turns stay as they were
            msgs = [dict(m) for m in row["messages"]]
            last = max(i for i, m in enumerate(msgs) if m.get("role") == "user")
            msgs[last]["content"] = text
            row["messages"] = msgs
        return {**src, "input": text, "row": row}

    def predict(texts: list[str], sources: list[int]) -> list[str]:
        batch = [with_text(rows[s], t) for t, s in zip(texts, sources)]
        out = predict_system(loaded, batch, cfg, labels, parser, desc)
        return out.labels if labels is not None else out.texts

    return predict


def _audit_model(loaded: Any, rows: list[dict[str, Any]], cfg: RunConfig, labels: list[str] | None,
                 cols: dict[str, list[str]], axes: list[TermAxis], name: str) -> dict[str, Any]:
    from tuneloop.fairness.stereotype import crows_pairs

    f = cfg.fairness
    result = audit([r["input"] for r in rows], _model_predict(loaded, rows, cfg, labels, name), axes=axes, groups=cols,
                   y_true=[r["label"] for r in rows], labels=labels, min_group_size=f.min_group_size,
                   max_variants=f.max_variants, seed=cfg.seed, ids=[r["id"] for r in rows])
    result["stereotype"] = None
    if loaded.kind == "lm" and f.benchmark == "crows_pairs":
        result["stereotype"] = crows_pairs(loaded, max_pairs=f.benchmark_max_pairs, seed=cfg.seed,
                                           batch_size=f.batch_size)
    return result


def _reference(path: Path) -> dict[str, Any]:
    res = path / "fairness" / "result.json"
    if not res.is_file():
        raise TuneloopError(f"fairness.against: {res} does not exist; run `tuneloop fairness {path}` first")
    return json.loads(res.read_text(encoding="utf-8"))["audits"]["tuned"]


def run(run_dir: Path, config: Path | None = None, overrides: dict[str, Any] | None = None) -> FairnessResult:
    """Audit a trained run for bias and gate it on `fairness.thresholds`; write `RUN/fairness/`.

    Args:
        run_dir: Folder written by `tuneloop train`.
        config: Optional extra YAML applied over `RUN/config.yaml` (e.g. thresholds).
        overrides: Dotted config fields from the CLI (`fairness.attributes`); None values are ignored.

    Returns:
        The audits and checks; `.status` says passed / failed / not_assessed, `.summary()` is for the terminal.

    Raises:
        TuneloopError: bad run folder, data, attribute, term file or config (the message says which).
    """
    from tuneloop.runs import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, config, overrides or {})
    threads.claim("fairness", cfg.eval.threads)
    return audit_run(run_dir, cfg)


def audit_run(run_dir: Path, cfg: RunConfig, out: Path | None = None) -> FairnessResult:
    """Audit the model of `run_dir` under the settings of `cfg` (its fairness and eval sections).

    The loop audits the served model and the candidate with one `cfg`, so both are compared like
    for like; the served model's files then go to `out` and its own run folder is left as it is.

    Args:
        run_dir: Folder written by `tuneloop train` (the model to audit).
        cfg: The full config; `fairness.*` and `eval.*` decide what is measured and how.
        out: Folder for result.json, flips.jsonl and report.html (default `RUN/fairness`).

    Returns:
        The audits and checks.
    """
    from tuneloop.fairness.report import write_outputs
    from tuneloop.runs import load_test_set, load_trained

    f = cfg.fairness
    test = load_test_set(run_dir, cfg, f.data, f.max_examples)  # the same rows and labels `tuneloop eval` scores
    rows, labels, test_file = test.rows, test.labels, test.file
    axes = load_terms(f.terms, f.axes)
    cols = group_columns([r["row"] for r in rows], [r["input"] for r in rows], f, axes, test_file)
    notes = [] if labels is not None else ["open generation: no labels, so no group metrics; answers compared by ROUGE-L"]
    loaded = load_trained(run_dir)
    audits = {"tuned": _audit_model(loaded, rows, cfg, labels, cols, axes, "tuned model")}
    kind = loaded.kind
    del loaded
    gc.collect()  # free the tuned weights before loading the base
    if f.base_too and kind == "lm":
        audits["base"] = _audit_model(load_trained(run_dir, base_only=True), rows, cfg, labels, cols, axes, "base model")
        gc.collect()
    elif f.base_too:
        notes.append("classification head: the base has an untrained head, so it is not audited as a reference")
    if f.against is not None:
        reference, ref_name, compare = _reference(f.against), str(f.against), None
    else:
        reference, ref_name, compare = audits.get("base"), "base", BASE_COMPARABLE
    checks = gate(audits["tuned"], f.thresholds, reference, reference_name=ref_name, compare=compare)
    warnings = [w for g in audits["tuned"]["groups"].values() for w in g["warnings"]]
    result = FairnessResult(run_dir, audits, checks, warnings, notes, out, f.if_not_assessed == "block")
    write_outputs(result, cfg, test_file)
    if out is None and (run_dir / "eval" / "metrics.json").is_file():  # put the audit into the run's report too
        from tuneloop.report import write_run_report

        write_run_report(run_dir)
    return result
