"""`tuneloop loop`: turn feedback into a candidate model and promote it only if it is better and no less fair.

One round: curate feedback → prepare (original data + feedback, the frozen test set) → train
(+ DPO on preference pairs) → evaluate on the frozen test set → fairness audit against the
served model → gate (`tuneloop.gate`: margin, paired test, fairness) → promote or keep. The served
model is re-scored and re-audited in the round under the round's settings, so both models are
compared like for like. The typed decision and its evidence go to the registry, to
`RUN/gate.json` and into the candidate's report.

A round is identified by a fingerprint of everything that shapes the candidate (config, input
files, curated feedback, frozen test set), so running the loop again without new feedback finds
the round already decided and changes nothing; a round killed half-way resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from tuneloop import threads
from tuneloop.config import RunConfig
from tuneloop.errors import TuneloopError
from tuneloop.gate import EVIDENCE_COLUMNS, FairnessVerdict, GateDecision, decide, fairness_verdict, report_rows
from tuneloop.registry import ModelRecord, Registry


@dataclass
class LoopResult:
    """What one `tuneloop loop` call did."""

    round_dir: Path
    decision: GateDecision
    reused: bool = False  # True: this round had been decided before; nothing was run
    notes: list[str] = field(default_factory=list)

    def summary(self) -> Group:
        """The decision and its evidence as terminal tables."""
        d = self.decision
        rows, evidence = report_rows(d)
        t = Table(title=f"loop round {self.round_dir.name}: {d.decision.upper()}" + (" (already decided; nothing changed)" if self.reused else ""))
        t.add_column("")
        t.add_column("")
        for name, value in rows:
            t.add_row(name, str(value))
        if not evidence:
            return Group(t)
        e = Table(title="evidence: candidate vs served model on the same test rows")
        for col in EVIDENCE_COLUMNS:
            e.add_column(col)
        for row in evidence:
            e.add_row(*map(str, row))
        return Group(t, e)


def _sha(path: Path) -> str:
    from tuneloop.data.load import sha256_file

    return sha256_file(str(path)) if path.is_file() else ""


def _fingerprint(cfg: RunConfig, inputs: list[Path], curated: list[Path], frozen: Path | None) -> str:
    """Hash of everything that shapes a candidate; the same fingerprint means the same round.

    `frozen` is the user's own test file; a test split the loop froze itself is a function of the
    inputs and the seed, so it is not hashed again (else the second round would differ from the first).
    """
    shaping = cfg.model_dump(mode="json", exclude={"loop": True, "prepare": {"out"}, "train": {"out", "data"}})
    h = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode())
    for p in [*inputs, *curated] + ([frozen] if frozen else []):
        h.update(f"{p.name}:{_sha(p)}".encode())
    return h.hexdigest()


def _inputs(cfg: RunConfig) -> list[Path]:
    from tuneloop.data.load import expand_inputs

    return [Path(p) for p in expand_inputs(cfg.prepare.inputs)]


def _frozen_test(cfg: RunConfig, out: Path, incumbent: ModelRecord | None) -> Path | None:
    """The test set every round is scored on: the user's test file, else the first round's test split.

    When a model was promoted outside the loop, its own test set becomes the frozen one.
    """
    if cfg.prepare.test_file:
        return Path(cfg.prepare.test_file)
    frozen = out / "frozen_test.jsonl"
    if frozen.is_file():
        return frozen
    if incumbent is not None:
        data = (incumbent.config.get("train") or {}).get("data")
        src = Path(incumbent.metrics.get("test_file") or (Path(data) / "test.jsonl" if data else ""))
        if src.is_file():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, frozen)
            return frozen
    return None  # first round: prepare samples a test split, which is then frozen


def _curate(cfg: RunConfig, rnd: Path, frozen: Path | None) -> tuple[list[Path], dict[str, Any]]:
    """Export the feedback into the folder `rnd`; return the non-empty files and the export's counts."""
    from tuneloop import feedback

    from tuneloop.store import exists

    if not exists(cfg.feedback.db):
        return [], {"note": f"no feedback store at {cfg.feedback.db}"}
    # The export must depend only on the feedback and the frozen test set, not on which model is
    # served, so that a rerun without new feedback is the same round: no `existing` data (prepare
    # removes duplicates anyway), and the labels are those of the frozen test set.
    labels = _test_labels(frozen) if cfg.task == "classify" and frozen else None
    feedback.export(cfg.feedback.db, rnd, task=cfg.task, cfg=cfg.feedback,
                    test_files=[frozen] if frozen else [], labels=labels)
    report = rnd / "report.json"
    counts = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else {}
    files = [p for p in (rnd / "feedback.jsonl", rnd / "preferences.jsonl") if p.is_file() and p.stat().st_size > 0]
    return files, counts


def _test_labels(test: Path) -> list[str] | None:
    from tuneloop.runs import read_jsonl

    return sorted({str(r["label"]) for r in read_jsonl(test) if "label" in r}) or None


def _prepare(cfg: RunConfig, rnd: Path, sft_feedback: list[Path], frozen: Path | None) -> Path:
    from tuneloop import data as data_stage

    out = rnd / "data"
    if (out / "manifest.json").is_file():
        return out
    c = cfg.model_copy(deep=True)
    c.prepare.inputs = [*cfg.prepare.inputs, *(str(_user_fields(cfg, p)) for p in sft_feedback)]
    c.prepare.test_file = str(frozen) if frozen else None
    c.prepare.out = out
    data_stage.run(c)
    return out


def _user_fields(cfg: RunConfig, path: Path) -> Path:
    """Feedback rows under the field names the user's data uses (`prepare.text_field`/`label_field`)."""
    p = cfg.prepare
    if cfg.task != "classify" or (p.text_field, p.label_field) == ("text", "label"):
        return path
    from tuneloop.runs import read_jsonl

    out = path.with_name("feedback.fields.jsonl")
    renamed = [{p.text_field: r.pop("text"), p.label_field: r.pop("label"), **r} for r in read_jsonl(path)]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in renamed), encoding="utf-8")
    return out


def _train(cfg: RunConfig, data: Path, run_dir: Path, pairs: Path | None) -> None:
    from tuneloop import train as train_stage

    if not (run_dir / "train_summary.json").is_file():
        if (run_dir / "checkpoints").is_dir():
            train_stage.resume(run_dir)
        else:
            c = cfg.model_copy(deep=True)
            c.train.data, c.train.out = data, run_dir
            train_stage.run(c)
    if pairs is not None and not (run_dir / "dpo_summary.json").is_file():
        from tuneloop import dpo

        dpo.run(run_dir, pairs)


def _evaluate(run_dir: Path, frozen: Path) -> dict[str, Any]:
    from tuneloop import evaluate

    metrics_path = run_dir / "eval" / "metrics.json"
    if not _scored_on(metrics_path, frozen):
        evaluate.run(run_dir, None, {"eval.data": frozen})
    return json.loads(metrics_path.read_text(encoding="utf-8"))


def _scored_on(metrics_path: Path, test: Path) -> bool:
    """Whether a metrics.json holds scores on exactly this test file's content (the hash recorded when it was scored)."""
    if not metrics_path.is_file():
        return False
    m = json.loads(metrics_path.read_text(encoding="utf-8"))
    return (m.get("data_hashes") or {}).get(m.get("test_file", "")) == _sha(test)


def _served_predictions(cfg: RunConfig, inc: ModelRecord, frozen: Path, rnd: Path) -> list[dict[str, Any]]:
    """The served model's per-example predictions on the frozen test set, under this round's eval settings.

    Scored afresh every round into `rnd/incumbent/` (its run folder is left as it is), so that the
    served model and the candidate are compared like for like: same rows, same generation limits.
    """
    from tuneloop.runs import read_jsonl

    out = _score_into(cfg, inc.path, frozen, rnd / "incumbent")
    return read_jsonl(out / "eval" / "predictions.jsonl")


def _round_settings(cfg: RunConfig, run_dir: Path, frozen: Path) -> RunConfig:
    """The served model's own config (its model, template, lengths) with this round's eval and fairness settings."""
    from tuneloop.runs import load_run_config

    own = load_run_config(run_dir, None, {})
    return own.model_copy(update={
        "eval": cfg.eval.model_copy(update={"data": frozen}),
        "fairness": cfg.fairness.model_copy(update={"data": frozen, "against": None, "base_too": False}),
    })


def _score_into(cfg: RunConfig, run_dir: Path, test: Path, out: Path) -> Path:
    from tuneloop.evaluate.labels import LabelParser
    from tuneloop.evaluate.score import score
    from tuneloop.evaluate.stage import predict_system, write_outputs
    from tuneloop.runs import load_test_set, load_trained

    if (out / "eval" / "metrics.json").is_file():
        return out
    c = _round_settings(cfg, run_dir, test)
    t = load_test_set(run_dir, c, test, None)
    parser = LabelParser(t.labels, c.eval.synonyms) if t.labels else None
    system = predict_system(load_trained(run_dir), t.rows, c, t.labels, parser, "served model")
    if c.task == "generate" and c.eval.semantic_model and system.texts is not None:  # as the candidate's eval has it
        from tuneloop.evaluate.semantic import SentenceEncoder

        references = [r["reference"] for r in t.rows]
        system.scores["semantic"] = SentenceEncoder(c.eval.semantic_model).similarity(system.texts, references)
    scored = score(t.rows, {"tuned": system}, task=c.task, labels=t.labels, n_boot=0, seed=c.seed)
    scored.metrics.update({"test_file": str(test), "data_hashes": {str(test): _sha(test)}})
    write_outputs(out, scored)
    return out


def _fairness(cfg: RunConfig, run_dir: Path, inc: ModelRecord | None, frozen: Path, rnd: Path) -> FairnessVerdict:
    """Audit the candidate (and, in the same round and under the same settings, the served model as its reference)."""
    from tuneloop import fairness as fairness_stage
    from tuneloop.runs import load_run_config

    if not cfg.loop.require_fairness:
        return fairness_verdict(None)
    result_path = run_dir / "fairness" / "result.json"
    if not result_path.is_file():
        against = None
        if inc is not None:
            against = rnd / "incumbent"
            if not (against / "fairness" / "result.json").is_file():
                fairness_stage.audit_run(inc.path, _round_settings(cfg, inc.path, frozen), out=against / "fairness")
        c = load_run_config(run_dir, None, {})
        c = c.model_copy(update={"fairness": cfg.fairness.model_copy(update={"data": frozen, "against": against})})
        fairness_stage.audit_run(run_dir, c)
    return fairness_verdict(json.loads(result_path.read_text(encoding="utf-8")))


def run(cfg: RunConfig) -> LoopResult:
    """Run one round of the feedback loop; see the module docstring.

    Returns:
        The round folder and the decision (with `reused=True` when nothing new had to be done).

    Raises:
        TuneloopError: no input data, or any stage's error (the round can be rerun and resumes).
    """
    if not cfg.prepare.inputs:
        raise TuneloopError("loop: prepare.inputs is empty; name the original training data files in the config")
    threads.claim("loop", cfg.train.threads)  # its stages claim again with their own settings
    reg = Registry(cfg.loop.registry)
    out = Path(cfg.loop.out)
    inc = reg.promoted()
    frozen = _frozen_test(cfg, out, inc)
    staging = out / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    curated, counts = _curate(cfg, staging, frozen)
    fp = _fingerprint(cfg, _inputs(cfg), curated, Path(cfg.prepare.test_file) if cfg.prepare.test_file else None)
    rnd = out / f"round-{fp[:12]}"
    if (rnd / "decision.json").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        return LoopResult(rnd, _read_decision(rnd / "decision.json"), reused=True)
    rnd.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(rnd / "feedback", ignore_errors=True)
    if staging.exists():
        staging.rename(rnd / "feedback")
    sft = [p for p in curated if p.name == "feedback.jsonl"]
    pairs = [p for p in curated if p.name == "preferences.jsonl"]
    data = _prepare(cfg, rnd, [rnd / "feedback" / p.name for p in sft], frozen)
    if frozen is None:  # first round: its test split is frozen for every later round
        frozen = out / "frozen_test.jsonl"
        shutil.copyfile(data / "test.jsonl", frozen)
    run_dir = rnd / "run"
    _train(cfg, data, run_dir, rnd / "feedback" / pairs[0].name if pairs else None)
    gate_path = run_dir / "gate.json"
    if gate_path.is_file():  # decided before a crash: only the recording below may be missing
        decision = _read_decision(gate_path)
    else:
        decision = _decide(cfg, run_dir, rnd, inc, frozen)
        decision = decision.model_copy(update={"candidate": f"{out.name}-{fp[:12]}", "fingerprint": fp, "feedback": counts})
        _write_json(gate_path, decision.model_dump(mode="json"))
    _record(reg, run_dir, decision)  # idempotent: safe to repeat after a crash
    _write_json(rnd / "decision.json", decision.model_dump(mode="json"))  # last: its presence marks the round as decided
    return LoopResult(rnd, decision)


def _read_decision(path: Path) -> GateDecision:
    return GateDecision.model_validate_json(path.read_text(encoding="utf-8"))


def _decide(cfg: RunConfig, run_dir: Path, rnd: Path, inc: ModelRecord | None, frozen: Path) -> GateDecision:
    """Evaluate the candidate and the served model on the frozen test set, audit fairness, and gate."""
    from tuneloop.runs import read_jsonl

    _evaluate(run_dir, frozen)
    fairness = _fairness(cfg, run_dir, inc, frozen, rnd)
    served = _served_predictions(cfg, inc, frozen, rnd) if inc is not None else None
    decision = decide(cfg.task, cfg.loop.metric, cfg.loop.margin, cfg.loop.alpha,
                      read_jsonl(run_dir / "eval" / "predictions.jsonl"), served, fairness,
                      block_unassessed=cfg.fairness.if_not_assessed == "block", method=cfg.eval.paired_test, seed=cfg.seed)
    return decision.model_copy(update={"incumbent": inc.name if inc else None, "frozen_test": str(frozen)})


def _record(reg: Registry, run_dir: Path, decision: GateDecision) -> None:
    from tuneloop.report import write_run_report

    name = decision.candidate or run_dir.name
    reg.register(run_dir, name)
    reason = "; ".join(decision.reasons)
    evidence = decision.model_dump(mode="json")
    if decision.decision == "promote":
        reg.promote(name, reason, evidence)
    elif not any(e["action"] == "keep" and e["name"] == name for e in reg.history()):
        reg.record_event("keep", name, reason, evidence)
    write_run_report(run_dir)


def _write_json(path: Path, obj: Any) -> None:
    from tuneloop.report import write

    write(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
