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

from tuneloop.config import RunConfig
from tuneloop.errors import TuneloopError
from tuneloop.fairness.attributes import group_columns
from tuneloop.fairness.counterfactual import Predict, flip_test, output_change_test
from tuneloop.fairness.gate import BASE_COMPARABLE, Check, failures, gate
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

    @property
    def passed(self) -> bool:
        """True when every check of the gate passed."""
        return all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        """One line per failed threshold."""
        return failures(self.checks)

    def summary(self) -> Group:
        """The gate's checks as a table, then warnings and the report path."""
        table = Table(title=f"tuneloop fairness — {'PASSED' if self.passed else 'FAILED'}")
        for col in ("check", "value", "threshold", "where", "result"):
            table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
        for c in self.checks:
            table.add_row(c.name, f"{c.value:.4g}", f"{c.threshold:.4g}", c.where,
                          "[green]pass[/]" if c.passed else "[bold red]FAIL[/]")
        extra = [f"[yellow]warning:[/] {w}" for w in self.warnings] + self.notes
        return Group(table, *extra, f"report: {self.run_dir / 'fairness' / 'report.html'}")


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
        The audits and checks; `.passed` says whether the gate passed, `.summary()` is for the terminal.

    Raises:
        TuneloopError: bad run folder, data, attribute, term file or config (the message says which).
    """
    from tuneloop.fairness.report import write_outputs
    from tuneloop.runs import load_run_config, load_test_set, load_trained

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, config, overrides or {})
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
    result = FairnessResult(run_dir, audits, checks, warnings, notes)
    write_outputs(result, cfg, test_file)
    if (run_dir / "eval" / "metrics.json").is_file():  # put the audit into the run's report too
        from tuneloop.report import write_run_report

        write_run_report(run_dir)
    return result
