"""`tuneloop eval RUN`: score the tuned model against the strongest baselines a user could have
without fine-tuning — the base model zero-shot and k-shot, and (classification) TF-IDF — on held-out
data; write `RUN/eval/{metrics.json, predictions.jsonl, fixed_broken.json}` and `RUN/report.html`.
"""

from __future__ import annotations

import gc
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from tuneloop import threads
from tuneloop.config import RunConfig
from tuneloop.evaluate.curves import curve_summary
from tuneloop.evaluate.labels import LabelParser
from tuneloop.evaluate.metrics import f1_score
from tuneloop.evaluate.score import Scored, SystemOutput, score
from tuneloop.runs import eval_rows, load_run_config, load_test_set, load_trained, read_curves, read_jsonl

#: Packages whose versions the report records.
VERSIONED = ("torch", "transformers", "peft", "accelerate", "scikit-learn", "numpy", "tuneloop")


def environment(cfg: RunConfig) -> dict[str, Any]:
    """Python and package versions, platform and seed, for the report's reproducibility section."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "seed": cfg.seed,
                           "threads": threads.reason()}
    for pkg in VERSIONED:
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    return env


@dataclass
class EvalResult:
    """What `run` produced: the metrics (as written to metrics.json) and where the files are."""

    run_dir: Path
    metrics: dict[str, Any]
    report: Path

    def summary(self) -> Group:
        """A table of tuned vs every baseline with 95% intervals, the headline verdict, and the report path."""
        return Group(summary_table(self.metrics), headline_line(self.metrics), f"report: {self.report}")


def _ci(ci: Sequence[float] | None) -> str:
    return f"{ci[0]:.2f}–{ci[1]:.2f}" if ci else "—"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def headline_line(metrics: dict[str, Any]) -> str:
    """One line: the tuned model's headline metric with its interval, vs the strongest baseline with the p-value."""
    from tuneloop.report import METRICS, system_name, verdict_word

    h = metrics.get("headline") or {}
    if h.get("value") is None:
        return ""
    line = f"tuned {METRICS.get(h['metric'], h['metric'])}: {h['value']:.3f} [{_ci(h.get('ci'))}]"
    vs = h.get("vs", {}).get(h.get("strongest") or "")
    if vs and vs.get("value") is not None and vs.get("pvalue") is not None:
        diff = h["value"] - vs["value"]
        line += (f" vs strongest baseline {system_name(h['strongest'])} {vs['value']:.3f}: {diff:+.3f}, "
                 f"{vs['test']} p = {vs['pvalue']:.3g} → {verdict_word(diff, vs['pvalue'], h['higher_is_better'])}")
    return line


def summary_table(metrics: dict[str, Any]) -> Table:
    """Rich table: one row per system with its headline metrics and 95% bootstrap intervals."""
    from tuneloop.report import system_name

    # Short system names keep the table within 80 columns; the caption spells them out.
    caption = "intervals: 95% bootstrap; " + ", ".join(f"{n} = {system_name(n)}" for n in metrics["systems"] if n != "tuned")
    table = Table(title=f"tuneloop eval — {metrics['n']:,} test examples", caption=caption)
    classify = metrics.get("labels") is not None
    cols = (["accuracy", "95% CI", "macro-F1", "95% CI", "unparsed"] if classify
            else ["token F1", "95% CI", "ROUGE-L", "95% CI", "semantic"])
    table.add_column("system")
    for col in [*cols, "loss"]:
        table.add_column(col, justify="right")
    for name, m in metrics["systems"].items():
        cls, gen = m.get("classification", {}), m.get("generation", {})
        if classify:
            cells = [_num(cls.get("accuracy")), _ci(cls.get("ci", {}).get("accuracy")), _num(cls.get("macro", {}).get("f1")),
                     _ci(cls.get("ci", {}).get("macro_f1")), f"{cls['unparseable_rate']:.1%}" if cls else "—"]
        else:
            ci = gen.get("ci", {})
            cells = [_num(gen.get("token_f1")), _ci(ci.get("token_f1")), _num(gen.get("rouge_l")), _ci(ci.get("rouge_l")),
                     _num(gen.get("semantic"))]
        table.add_row(name + ("*" if m.get("note") else ""), *cells, _num(m.get("loss")))
    notes = [f"*{n}: {m['note']}" for n, m in metrics["systems"].items() if m.get("note")]
    if notes:
        table.caption += "; " + "; ".join(notes)
    return table


def _answer_budget(loaded: Any, labels: list[str], limit: int) -> int:
    # Labels are short: stop a few tokens after the longest one instead of generating `limit`
    # tokens of explanation (the first clause decides the label anyway).
    longest = max(len(loaded.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    return min(limit, longest + 8)


def predict_system(loaded: Any, rows: list[dict[str, Any]], cfg: RunConfig, labels: list[str] | None,
                   parser: LabelParser | None, desc: str, shots: list[list[dict[str, str]]] | None = None) -> SystemOutput:
    """Run one loaded model (tuned or base) over the rows: head argmax, or generate and parse.

    Generation (task generate) also measures each example's loss of the reference answer after the
    same prompt; `shots` (chat turns of in-context examples) go before every prompt.
    """
    from tuneloop.encode import classify_messages, render_prompt
    from tuneloop.evaluate.likelihood import answer_losses
    from tuneloop.evaluate.predict import generate, predict_head
    from tuneloop.evaluate.shots import with_shots
    from tuneloop.losses import validation_loss

    if loaded.kind == "head":
        texts = [r["input"] for r in rows]
        return SystemOutput(labels=predict_head(loaded, texts, batch_size=cfg.eval.batch_size, desc=desc),
                            loss=validation_loss(loaded, [r["row"] for r in rows]))
    if cfg.task == "classify":
        assert labels is not None
        msgs = [classify_messages(r["input"], labels, system_prompt=cfg.train.system_prompt) for r in rows]
        budget = _answer_budget(loaded, labels, cfg.eval.max_new_tokens)
    else:
        msgs = [with_shots(r["row"]["messages"][:-1], shots or []) for r in rows]
        budget = cfg.eval.max_new_tokens
    prompts = [render_prompt(loaded.tokenizer, m) for m in msgs]
    texts = generate(loaded, prompts, batch_size=cfg.eval.batch_size, max_new_tokens=budget, desc=desc)
    out = SystemOutput(texts=texts, labels=[parser(t) for t in texts] if parser else None)
    if cfg.task == "generate":  # per-example losses: their mean is the loss, and they get a paired test
        out.scores["loss"] = answer_losses(loaded, [[*m, r["row"]["messages"][-1]] for m, r in zip(msgs, rows)])
    else:
        out.loss = validation_loss(loaded, [r["row"] for r in rows])
    return out


def score_labels(loaded: Any, rows: list[dict[str, Any]], shots: list[list[dict[str, str]]] | None = None) -> SystemOutput:
    """Classify by each label's likelihood as the answer (as `/v1/classify` does): never unparseable."""
    from tuneloop.evaluate.likelihood import label_log_probs

    scores = label_log_probs(loaded, [r["input"] for r in rows], shots=shots or [])
    return SystemOutput(labels=[loaded.labels[int(i)] for i in scores.argmax(dim=-1)])


def _shots(cfg: RunConfig, train: list[dict[str, Any]], labels: list[str] | None) -> list[list[dict[str, str]]]:
    """The in-context examples of the k-shot baseline, as chat turns (the same for every test row)."""
    from tuneloop.evaluate.shots import pick_shots, shot_turns

    if cfg.task == "classify":
        chosen = pick_shots(train, cfg.eval.shots, labels=labels, seed=cfg.seed)
    else:
        # Shots come from the shorter half of train: a few long answers would otherwise fill the
        # context and multiply generation time, and short worked examples show the format as well.
        cap = sorted(len(r["reference"]) for r in train)[len(train) // 2] if train else 0
        chosen = pick_shots([r for r in train if len(r["reference"]) <= cap], cfg.eval.shots, seed=cfg.seed)
    return [shot_turns(r, cfg.task) for r in chosen]


def _base_outputs(run_dir: Path, rows: list[dict[str, Any]], cfg: RunConfig, labels: list[str] | None,
                  parser: LabelParser | None, train: list[dict[str, Any]]) -> dict[str, SystemOutput]:
    """The base model's baselines: zero-shot, and k-shot with examples from train."""
    from tuneloop.losses import validation_loss

    base = load_trained(run_dir, base_only=True)
    if base.kind == "head":
        out = {"base": predict_system(base, rows, cfg, labels, parser, "base model (untrained head)")}
        out["base"].note = "untrained head (chance)"
        return out
    shots = _shots(cfg, train, labels) if cfg.eval.shots and train else []
    if cfg.task == "classify":
        out = {"base": score_labels(base, rows)}
        out["base"].loss = validation_loss(base, [r["row"] for r in rows])
        out["base"].note = "each label's likelihood as the answer"
        if shots:
            out["base_kshot"] = score_labels(base, rows, shots)
    else:
        out = {"base": predict_system(base, rows, cfg, labels, parser, "base model (zero-shot)")}
        if shots:
            out["base_kshot"] = predict_system(base, rows, cfg, labels, parser, f"base model ({len(shots)}-shot)", shots)
    if "base_kshot" in out:
        out["base_kshot"].note = f"{len(shots)} in-context examples from train"
    return out


def _semantic(systems: dict[str, SystemOutput], rows: list[dict[str, Any]], model: str) -> None:
    """Add each generating system's per-example semantic similarity to the references (one encoder load)."""
    from tuneloop.evaluate.semantic import SentenceEncoder

    encoder = SentenceEncoder(model)
    references = [r["reference"] for r in rows]
    for out in systems.values():
        if out.texts is not None:
            out.scores["semantic"] = encoder.similarity(out.texts, references)


def _model_outputs(run_dir: Path, rows: list[dict[str, Any]], cfg: RunConfig, labels: list[str] | None,
                   train: list[dict[str, Any]]) -> dict[str, SystemOutput]:
    parser = LabelParser(labels, cfg.eval.synonyms) if labels else None
    loaded = load_trained(run_dir)
    systems = {"tuned": predict_system(loaded, rows, cfg, labels, parser, "tuned model")}
    del loaded
    gc.collect()  # free the tuned weights before loading the base model
    if cfg.eval.base_too:
        systems.update(_base_outputs(run_dir, rows, cfg, labels, parser, train))
        gc.collect()
    if cfg.task == "generate" and cfg.eval.semantic_model:
        _semantic(systems, rows, cfg.eval.semantic_model)
    return systems


def _train_rows(data_dir: Path | None, task: str) -> list[dict[str, Any]]:
    """The prepared train split as `eval_rows` ([] when there is none): shots and the TF-IDF baseline learn from it."""
    train_file = data_dir / "train.jsonl" if data_dir else None
    if train_file is None or not train_file.is_file():
        return []
    return eval_rows(read_jsonl(train_file), task, train_file)


def _baseline(train: list[dict[str, Any]], rows: list[dict[str, Any]], seed: int) -> SystemOutput | None:
    from tuneloop.evaluate.baseline import fit_baseline

    if not train:
        return None  # nothing to train it on; the report says the baseline was skipped
    model = fit_baseline([r["input"] for r in train], [r["label"] for r in train], seed=seed)
    return SystemOutput(labels=model.predict([r["input"] for r in rows]).tolist())


def _write_json(path: Path, obj: Any) -> None:
    from tuneloop.report import write

    write(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_outputs(run_dir: Path, scored: Scored) -> Path:
    """Write `RUN/eval/metrics.json`, `predictions.jsonl` and `fixed_broken.json`; return the folder."""
    from tuneloop.report import write

    out = run_dir / "eval"
    _write_json(out / "metrics.json", scored.metrics)
    write(out / "predictions.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in scored.predictions))
    _write_json(out / "fixed_broken.json", scored.examples())
    return out


def run(run_dir: Path, config: Path | None = None, overrides: dict[str, Any] | None = None) -> EvalResult:
    """Evaluate a trained run on held-out data and write its metrics, predictions and report.

    Args:
        run_dir: Folder written by `tuneloop train`.
        config: Optional extra YAML applied over `RUN/config.yaml`.
        overrides: Dotted config fields from the CLI (`eval.batch_size`); None values are ignored.

    Returns:
        The metrics and the report path; `.summary()` is a table for the terminal.
    """
    from tuneloop.report import write_run_report

    from tuneloop.data.load import sha256_file

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, config, overrides or {})
    threads.claim("eval", cfg.eval.threads)
    data_dir = cfg.train.data
    test = load_test_set(run_dir, cfg, cfg.eval.data, cfg.eval.max_examples)
    train = _train_rows(data_dir, cfg.task) if (cfg.eval.base_too and cfg.eval.shots) or cfg.eval.baseline else []
    systems = _model_outputs(run_dir, test.rows, cfg, test.labels, train)
    if cfg.task == "classify" and cfg.eval.baseline and (bl := _baseline(train, test.rows, cfg.seed)) is not None:
        systems["baseline"] = bl
    scored = score(test.rows, systems, task=cfg.task, labels=test.labels, n_boot=cfg.eval.bootstrap, seed=cfg.seed,
                   metric=cfg.eval.metric, paired_method=cfg.eval.paired_test)
    if cfg.task == "generate":  # classification needs no judge: labels are scored exactly
        from tuneloop.evaluate.judge import judge_systems

        texts = {n: out.texts for n, out in systems.items() if out.texts is not None}
        scored.metrics["judge"] = judge_systems(cfg, [r["input"] for r in test.rows], texts, seed=cfg.seed)
    used = [test.file] + ([data_dir / "train.jsonl"] if {"baseline", "base_kshot"} & set(systems) and data_dir else [])
    summary_path = run_dir / "train_summary.json"
    scored.metrics.update({
        "run": str(run_dir), "test_file": str(test.file), "data_hashes": {str(p): sha256_file(str(p)) for p in used},
        "train_summary": json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {},
        "manifest": test.manifest, "curves": curve_summary(read_curves(run_dir / "metrics.jsonl"), cfg.eval.overfit_window),
        "environment": environment(cfg), "config": cfg.model_dump(mode="json"),
    })
    if cfg.task == "classify":  # temperature on val, ECE on test, the monitor's reference predictions
        from tuneloop.evaluate.calibration import calibrate_run

        scored.metrics["calibration"] = calibrate_run(run_dir, cfg, test.rows)
    write_outputs(run_dir, scored)
    return EvalResult(run_dir, scored.metrics, write_run_report(run_dir))


def validation_macro_f1(run_dir: Path) -> float:
    """Macro-F1 of a trained classify run on its validation split — what `tuneloop tune` optimises.

    The test split is never looked at here, so a search cannot overfit it. Unparseable answers
    count as wrong, as in `run`.
    """
    loaded = load_trained(run_dir)
    cfg, labels = loaded.cfg, loaded.labels or []
    path = Path(cfg.train.data) / "val.jsonl"
    rows = eval_rows(read_jsonl(path), "classify", path)
    out = predict_system(loaded, rows, cfg, labels, LabelParser(labels, cfg.eval.synonyms), "validation")
    preds = ["" if p is None else p for p in out.labels or []]
    return float(f1_score([r["label"] for r in rows], preds, labels=labels, average="macro"))
