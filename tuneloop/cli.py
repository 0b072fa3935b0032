"""`tuneloop <command>`: one thin function per stage — parse, call the stage's `run`, print.

Every option can also come from a YAML config (`-c run.yaml`); an option given here wins.
Stage modules are imported inside the commands so that `tuneloop --help` stays instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from tuneloop.config import RunConfig, load_config, parse_sets
from tuneloop.errors import TuneloopError

app = typer.Typer(add_completion=False, no_args_is_help=True)
console = Console(stderr=False)
err_console = Console(stderr=True)
_debug = False

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML run config; options given here override it.")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="torch threads (default: this process's share of the cores free to it).")
SetOpt = typer.Option(None, "--set", metavar="FIELD=VALUE",
                      help="Set any config field by dotted name, e.g. --set train.warmup=0.1 (repeatable; the value is YAML).")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show stack traces on errors.")) -> None:
    """tuneloop fine-tunes a pre-trained language model on your data and proves it got better."""
    global _debug
    _debug = debug
    # Never reach for a model hub unless the user has explicitly allowed it in their environment.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _config(path: Optional[Path], overrides: dict[str, Any], sets: Optional[list[str]]) -> RunConfig:
    # --set wins over the named options, which win over the file.
    return load_config(path, {**overrides, **parse_sets(sets)})


@app.command()
def prepare(
    data: list[str] = typer.Argument(None, help="Data files or globs (JSONL, JSON, CSV/TSV, Parquet)."),
    task: Optional[str] = typer.Option(None, help="classify or generate."),
    out: Optional[Path] = typer.Option(None, help="Output folder for the splits, rejects, manifest and report."),
    config: Optional[Path] = ConfigOpt,
    format: Optional[str] = typer.Option(None, help="auto, messages, alpaca, sharegpt, prompt_completion, text_label."),
    text_field: Optional[str] = typer.Option(None, help="Field holding the text (classify)."),
    label_field: Optional[str] = typer.Option(None, help="Field holding the label (classify)."),
    test_file: Optional[str] = typer.Option(None, help="Use this file as the test split."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of rows for validation."),
    test_fraction: Optional[float] = typer.Option(None, help="Share of rows for test."),
    pii: Optional[str] = typer.Option(None, help="redact (default), drop or off."),
    strip_html: Optional[bool] = typer.Option(None, "--strip-html/--keep-html", help="Remove HTML tags and entities."),
    dedup: Optional[bool] = typer.Option(None, "--dedup/--no-dedup", help="Remove exact duplicates."),
    near_dup: Optional[bool] = typer.Option(None, "--near-dup/--no-near-dup", help="Remove near duplicates."),
    near_dup_threshold: Optional[float] = typer.Option(None, help="Jaccard threshold for near duplicates."),
    near_dup_ngram: Optional[int] = typer.Option(None, help="Words per shingle for near duplicates."),
    near_dup_num_perm: Optional[int] = typer.Option(None, help="MinHash permutations for near duplicates."),
    label_conflicts: Optional[str] = typer.Option(None, help="Same text, different labels: drop or keep_majority."),
    pii_region: Optional[str] = typer.Option(None, help="Country code for phone numbers without +country code."),
    max_chars: Optional[int] = typer.Option(None, help="Reject rows longer than this many characters."),
    max_tokens: Optional[int] = typer.Option(None, help="Reject rows longer than this many tokens."),
    tokenizer: Optional[str] = typer.Option(None, help="Base model whose tokenizer measures lengths."),
    seed: Optional[int] = typer.Option(None, help="Seed for the split."),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Validate, clean, redact, deduplicate and split data into train/val/test."""
    from tuneloop import data as data_stage

    cfg = _config(config, {
        "task": task, "seed": seed, "prepare.inputs": data or None, "prepare.out": out, "prepare.format": format,
        "prepare.text_field": text_field, "prepare.label_field": label_field, "prepare.test_file": test_file,
        "prepare.val_fraction": val_fraction, "prepare.test_fraction": test_fraction, "prepare.pii": pii,
        "prepare.strip_html": strip_html, "prepare.dedup": dedup, "prepare.near_dup": near_dup,
        "prepare.near_dup_threshold": near_dup_threshold, "prepare.max_chars": max_chars,
        "prepare.max_tokens": max_tokens, "prepare.tokenizer": tokenizer, "prepare.near_dup_ngram": near_dup_ngram,
        "prepare.near_dup_num_perm": near_dup_num_perm, "prepare.label_conflicts": label_conflicts,
        "prepare.pii_region": pii_region,
    }, sets)
    result = data_stage.run(cfg)
    console.print(result.summary())


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, help="Folder written by `tuneloop prepare`."),
    out: Optional[Path] = typer.Option(None, help="Run folder."),
    config: Optional[Path] = ConfigOpt,
    task: Optional[str] = typer.Option(None, help="classify or generate (default: from the data's manifest)."),
    base: Optional[str] = typer.Option(None, help="default, a local folder, a .gguf file or a hub id."),
    method: Optional[str] = typer.Option(None, help="lora or full."),
    classify_as: Optional[str] = typer.Option(None, help="head or generate."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the training data."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per micro-batch."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    max_length: Optional[int] = typer.Option(None, help="Truncate sequences to this many tokens."),
    lora_r: Optional[int] = typer.Option(None, help="LoRA rank."),
    lora_alpha: Optional[int] = typer.Option(None, help="LoRA alpha."),
    precision: Optional[str] = typer.Option(None, help="auto, bf16 or fp32."),
    packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help="Pack examples into sequences."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    attention: Optional[str] = typer.Option(None, help="auto, eager (faster on CPU, more memory) or sdpa."),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N steps."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in validations."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps."),
    seed: Optional[int] = typer.Option(None, help="Seed for everything."),
    nproc: Optional[int] = typer.Option(None, help="Data-parallel processes (DDP); global batch = batch_size x grad_accum x nproc."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder from its last checkpoint."),
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Fine-tune a base model (LoRA or full) with validation, early stopping and checkpoints."""
    from tuneloop import train as train_stage

    if resume is not None:
        if sets:
            raise TuneloopError(f"--set with --resume: a resumed run keeps the config it started with ({resume}/config.yaml)")
        result = train_stage.resume(resume, n_threads=threads)
    else:
        cfg = _config(config, {
            "task": task, "base": base, "seed": seed, "train.data": data, "train.out": out, "train.method": method,
            "train.classify_as": classify_as, "train.epochs": epochs, "train.max_steps": max_steps, "train.lr": lr,
            "train.batch_size": batch_size, "train.grad_accum": grad_accum, "train.max_length": max_length,
            "train.lora.r": lora_r, "train.lora.alpha": lora_alpha, "train.precision": precision,
            "train.packing": packing, "train.gradient_checkpointing": gradient_checkpointing, "train.attention": attention,
            "train.eval_every": eval_every, "train.patience": patience, "train.save_every": save_every,
            "train.nproc": nproc, "train.threads": threads,
        }, sets)
        result = train_stage.run(cfg)
    from tuneloop import distributed

    if distributed.is_main():  # under torchrun every rank returns; one summary is enough
        console.print(result.summary())


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="Run folder written by `tuneloop train`."),
    config: Optional[Path] = ConfigOpt,
    data: Optional[Path] = typer.Option(None, help="Test file (default: the run's prepared test.jsonl)."),
    base_too: Optional[bool] = typer.Option(None, "--base-too/--no-base-too", help="Also evaluate the untuned base."),
    baseline: Optional[bool] = typer.Option(None, "--baseline/--no-baseline", help="Also run TF-IDF + logistic regression."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per generation batch."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Generation limit."),
    max_examples: Optional[int] = typer.Option(None, help="Evaluate on at most this many examples."),
    shots: Optional[int] = typer.Option(None, help="In-context examples for the base k-shot baseline (per label for classify; 0: none)."),
    metric: Optional[str] = typer.Option(None, help="Headline metric: auto, macro_f1, accuracy, token_f1, rouge_l, semantic, exact_match, loss."),
    semantic_model: Optional[str] = typer.Option(None, help="Sentence encoder for semantic similarity (folder or `minilm`)."),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint (…/v1) of a pairwise judge (generate)."),
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Evaluate tuned vs base (zero-shot and k-shot) vs TF-IDF on held-out data; write metrics, predictions, report."""
    from tuneloop import evaluate

    result = evaluate.run(run, config, {
        "eval.data": data, "eval.base_too": base_too, "eval.baseline": baseline, "eval.batch_size": batch_size,
        "eval.max_new_tokens": max_new_tokens, "eval.max_examples": max_examples, "eval.shots": shots,
        "eval.metric": metric, "eval.semantic_model": semantic_model, "eval.judge_url": judge_url, "eval.threads": threads,
        **parse_sets(sets),
    })
    console.print(result.summary())


@app.command()
def fairness(
    run: Path = typer.Argument(..., help="Run folder written by `tuneloop train`."),
    config: Optional[Path] = ConfigOpt,
    data: Optional[Path] = typer.Option(None, help="Test file (default: the run's prepared test.jsonl)."),
    attribute: Optional[list[str]] = typer.Option(None, help="Sensitive attribute field of the rows' meta (repeatable)."),
    terms: Optional[Path] = typer.Option(None, help="JSON term file for counterfactual swaps."),
    base_too: Optional[bool] = typer.Option(None, "--base-too/--no-base-too", help="Also audit the untuned base."),
    against: Optional[Path] = typer.Option(None, help="Run folder whose fairness result is the reference."),
    benchmark: Optional[str] = typer.Option(None, help="crows_pairs or none."),
    max_examples: Optional[int] = typer.Option(None, help="Audit at most this many test examples."),
    if_not_assessed: Optional[str] = typer.Option(None, help="warn or block when no check can be made."),
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Audit bias (group metrics, counterfactual swaps, CrowS-Pairs); exit 1 when a threshold fails (or nothing could be checked, with block)."""
    from tuneloop import fairness as fairness_stage

    result = fairness_stage.run(run, config, {
        "fairness.data": data, "fairness.attributes": attribute or None, "fairness.terms": terms,
        "fairness.base_too": base_too, "fairness.against": against, "fairness.benchmark": benchmark,
        "fairness.max_examples": max_examples, "fairness.if_not_assessed": if_not_assessed,
        "eval.threads": threads, **parse_sets(sets),
    })
    console.print(result.summary())
    if result.status == "failed":
        raise TuneloopError("fairness gate failed: " + "; ".join(result.failures()))
    if result.status == "not_assessed" and result.block_unassessed:
        raise TuneloopError("fairness not assessed: no check could be made (" + "; ".join(result.not_assessed())
                            + "); fairness.if_not_assessed is block")


@app.command()
def tune(
    config: Optional[Path] = ConfigOpt,
    out: Optional[Path] = typer.Option(None, help="Study folder (trials, study.db, best.yaml, report)."),
    data: Optional[Path] = typer.Option(None, help="Folder written by `tuneloop prepare`."),
    trials: Optional[int] = typer.Option(None, help="Trials to finish in the study (all workers together)."),
    timeout: Optional[float] = typer.Option(None, help="Stop starting trials after this many seconds."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer-step budget per trial."),
    sampler: Optional[str] = typer.Option(None, help="tpe, random or grid."),
    pruner: Optional[str] = typer.Option(None, help="median, hyperband or none."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL shared by workers (default: SQLite in --out)."),
    refit: Optional[bool] = typer.Option(None, "--refit/--no-refit", help="Retrain the best config on train+val."),
    seed: Optional[int] = typer.Option(None, help="Seed for the sampler and the trials."),
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Search learning rate, batch size, LoRA rank, epochs... with Optuna; keep the best run."""
    from tuneloop import tune as tune_stage

    cfg = _config(config, {
        "seed": seed, "train.data": data, "tune.out": out, "tune.trials": trials, "tune.timeout": timeout,
        "tune.max_steps": max_steps, "tune.sampler": sampler, "tune.pruner": pruner, "tune.storage": storage,
        "tune.refit": refit, "train.threads": threads,
    }, sets)
    console.print(tune_stage.run(cfg).summary())


models_app = typer.Typer(no_args_is_help=True, help="Registered models: list, show, promote, roll back; the bundled defaults.")
app.add_typer(models_app, name="models")
RegistryOpt = typer.Option(None, "--registry", help="Registry URL (default: $TUNELOOP_REGISTRY or sqlite:///runs/registry.db).")


@models_app.command("list")
def models_list(registry: Optional[str] = RegistryOpt) -> None:
    """Every registered run with its status and headline metrics."""
    from rich.table import Table

    from tuneloop.registry import Registry

    reg = Registry(registry)
    t = Table(title=f"models in {reg.url}", caption="`tuneloop models show NAME`: path, config, metrics, history")
    for col in ("name", "status", "metric", "tuned [95% CI]", "p vs best", "judge win", "loss", "fair", "created"):
        t.add_column(col, no_wrap=True)
    num = lambda v: f"{v:.3f}" if isinstance(v, float) else ""  # noqa: E731
    for r in reg.list():
        h = r.headline()
        ci = f" [{h['ci'][0]:.3f}, {h['ci'][1]:.3f}]" if h["ci"] else ""
        t.add_row(r.name, r.status, h["metric"] or "", num(h["value"]) + ci, f"{h['pvalue']:.2g}" if h["pvalue"] is not None else "",
                  num(h["judge_win_rate"]), num(h["loss"]), {True: "yes", False: "NO", None: ""}[h["fair"]],
                  r.created_at[5:16].replace("T", " "))
    console.print(t)


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="Registered name."), registry: Optional[str] = RegistryOpt) -> None:
    """One model's record and the promotion events that concern it, as JSON."""
    import json

    from tuneloop.registry import Registry

    reg = Registry(registry)
    rec = reg.get(name).to_dict()
    rec["events"] = [e for e in reg.history() if name in (e["name"], e["previous"])]
    console.print_json(json.dumps(rec, default=str))


@models_app.command("register")
def models_register(run: Path = typer.Argument(..., help="Run folder."), name: Optional[str] = typer.Option(None, help="Registry name (default: the folder name)."),
                    registry: Optional[str] = RegistryOpt) -> None:
    """Record a trained (and ideally evaluated and audited) run as a candidate."""
    from tuneloop.registry import Registry

    rec = Registry(registry).register(run, name)
    console.print(f"registered {rec.name} ({rec.status}) from {rec.path}")


@models_app.command("promote")
def models_promote(name: str = typer.Argument(..., help="Registered name."), reason: str = typer.Option("", help="Why (kept in the history)."),
                   registry: Optional[str] = RegistryOpt) -> None:
    """Serve this model from now on (a running `tuneloop serve --model promoted` swaps to it)."""
    from tuneloop.registry import Registry

    rec = Registry(registry).promote(name, reason)
    console.print(f"promoted {rec.name}")


@models_app.command("rollback")
def models_rollback(reason: str = typer.Option("", help="Why (kept in the history)."), registry: Optional[str] = RegistryOpt) -> None:
    """Serve the previously promoted model again."""
    from tuneloop.registry import Registry

    rec = Registry(registry).rollback(reason)
    console.print(f"rolled back: {rec.name} is promoted again")


@models_app.command("bundled")
def models_bundled() -> None:
    """List the embedded default models, what is cached, sizes and parameter counts."""
    from tuneloop import models as models_mod

    console.print(models_mod.summary())


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, help="`promoted` (hot-swapped when the registry promotes another) or a run folder."),
    host: Optional[str] = typer.Option(None, help="Interface to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="TCP port (default 8000)."),
    api_key: Optional[list[str]] = typer.Option(None, help="Accepted bearer key (repeatable; $TUNELOOP_API_KEYS adds more)."),
    admin_key: Optional[list[str]] = typer.Option(None, help="Key for /admin/* such as reload (repeatable; $TUNELOOP_ADMIN_KEYS adds more)."),
    no_auth: Optional[bool] = typer.Option(None, "--no-auth", help="Accept requests without a key (loopback host only)."),
    registry: Optional[str] = RegistryOpt,
    feedback_db: Optional[str] = typer.Option(None, help="Where responses and feedback are stored: a SQLite file (default runs/feedback.db) or a postgresql:// URL."),
    max_tokens: Optional[int] = typer.Option(None, help="Largest max_tokens a chat request may ask for."),
    max_body_bytes: Optional[int] = typer.Option(None, help="Largest request body (413 above)."),
    max_batch: Optional[int] = typer.Option(None, help="Most requests (classify: texts) in one batched model call."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="Tokens one batched call aims at, shared equally by the waiting requests."),
    max_queue: Optional[int] = typer.Option(None, help="Most jobs (chat requests, classify texts) waiting; above: 503 + Retry-After."),
    max_client_queue: Optional[int] = typer.Option(None, help="Most jobs one client may have waiting; above: 429 + Retry-After."),
    batch_wait_ms: Optional[float] = typer.Option(None, help="How long a request waits for others to batch with."),
    batching: Optional[bool] = typer.Option(None, "--batching/--no-batching", help="Gather concurrent requests into batches."),
    reload_interval: Optional[float] = typer.Option(None, help="Seconds between checks for a newly promoted model."),
    threads: Optional[int] = ThreadsOpt,
    log_predictions: Optional[bool] = typer.Option(None, "--log-predictions/--no-log-predictions", help="Record every answer for `tuneloop monitor` (default on)."),
    log_db: Optional[str] = typer.Option(None, help="Prediction log for `tuneloop monitor` (default: the feedback database)."),
    log_inputs: Optional[str] = typer.Option(None, help="What the prediction log keeps of inputs: redacted (default), hash or none."),
    log_retention_days: Optional[float] = typer.Option(None, help="Delete logged predictions after this many days (default 30)."),
    feedback_retention_days: Optional[float] = typer.Option(None, help="Delete stored responses nobody rated after this many days (default 30)."),
) -> None:
    """Serve a model behind an OpenAI-compatible API (+ /v1/classify, /v1/feedback, /health, /docs)."""
    try:
        from tuneloop.serve import serve as serve_app, settings_from
    except ModuleNotFoundError as e:
        raise TuneloopError(f"tuneloop serve needs {e.name}, which is not installed: pip install 'tuneloop[serve]'") from None

    settings = settings_from(model=model, host=host, port=port, api_keys=api_key, admin_keys=admin_key, no_auth=no_auth,
                             registry=registry, feedback_db=feedback_db, max_tokens=max_tokens, max_body_bytes=max_body_bytes,
                             max_batch=max_batch, max_batch_tokens=max_batch_tokens, max_queue=max_queue,
                             max_client_queue=max_client_queue, batch_wait_ms=batch_wait_ms, batching=batching,
                             reload_interval=reload_interval, threads=threads, log_db=log_db, log_inputs=log_inputs, log_predictions=log_predictions,
                             log_retention_days=log_retention_days, feedback_retention_days=feedback_retention_days)
    settings.check()
    serve_app(settings)


feedback_app = typer.Typer(no_args_is_help=True, help="User feedback the server stored: turn it into training data.")
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
def feedback_export(
    out: Path = typer.Option(..., help="Folder for feedback.jsonl, preferences.jsonl and report.json."),
    config: Optional[Path] = ConfigOpt,
    db: Optional[str] = typer.Option(None, help="Feedback store: a SQLite file or a postgresql:// URL (default: feedback.db in the config, runs/feedback.db)."),
    data: Optional[Path] = typer.Option(None, help="Prepared folder: skip examples already in its train/val, never leak its test."),
    task: Optional[str] = typer.Option(None, help="classify or generate (default: the data's manifest, else the config)."),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Curate feedback into SFT/classification examples and DPO preference pairs."""
    from tuneloop import feedback, runs

    cfg = _config(config, {"task": task, "feedback.db": db}, sets)
    prepared = runs.prepared_data(data, task, cfg.task)
    result = feedback.export(cfg.feedback.db, out, task=prepared.task, cfg=cfg.feedback, existing=prepared.seen,
                             test_files=prepared.held_out, labels=prepared.labels)
    console.print(result.summary())


@app.command()
def monitor(
    run: Optional[Path] = typer.Argument(None, help="The served run folder (default: the registry's promoted model)."),
    config: Optional[Path] = ConfigOpt,
    registry: Optional[str] = RegistryOpt,
    db: Optional[str] = typer.Option(None, help="Prediction log the server writes (default: the feedback database)."),
    feedback_db: Optional[str] = typer.Option(None, help="Feedback store for realized metrics, and the prediction log unless --db "
                                              "(default: feedback.db in the config)."),
    last: Optional[int] = typer.Option(None, help="Window: the newest N predictions (default 1000)."),
    since: Optional[str] = typer.Option(None, help="Window: predictions at or after this ISO 8601 time (UTC without an offset)."),
    model: Optional[str] = typer.Option(None, help="Name the predictions were logged under (default: the registry or folder name)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    html: Optional[Path] = typer.Option(None, help="Also write the report as an HTML page with time-series plots."),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Drift, estimated and realized quality, per-group metrics of live traffic; exit 1 on an alarm, 2 on an error."""
    import json

    from tuneloop import monitor as monitor_stage

    try:
        result = monitor_stage.run(run, registry=registry, config=config, feedback_db=feedback_db, model=model, html=html,
                                   overrides={"monitor.db": db, "monitor.last": last, "monitor.since": since, **parse_sets(sets)})
    except TuneloopError as e:  # 2, not 1: a cron job must tell "alarm" from "could not check"
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if json_out:
        print(json.dumps(result.report, ensure_ascii=False))
    else:
        console.print(result.summary(), highlight=False)
    raise typer.Exit(result.exit_code)


@app.command()
def loop(
    config: Path = typer.Option(..., "--config", "-c", help="YAML run config (prepare.inputs, train, loop sections)."),
    registry: Optional[str] = RegistryOpt,
    feedback_db: Optional[str] = typer.Option(None, help="Feedback store the server writes, a file or URL (default: feedback.db in the config)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the rounds (default: loop.out)."),
    threads: Optional[int] = ThreadsOpt,
    once: bool = typer.Option(False, "--once", help="Monitor the promoted model; start a round only if an alarm fires and "
                              "enough new feedback arrived (cool-down, rounds per day: monitor section). For cron."),
    watch: bool = typer.Option(False, "--watch", help="Do --once every monitor.interval_minutes until stopped."),
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """One round: feedback -> prepare -> train -> eval -> fairness -> gate -> promote or keep."""
    from tuneloop import loop as loop_stage

    cfg = _config(config, {"loop.registry": registry, "feedback.db": feedback_db, "loop.out": out,
                           "train.threads": threads, "eval.threads": threads}, sets)
    if once or watch:
        from tuneloop.monitor import watch as watcher

        if watch:
            watcher.watch(cfg, lambda line: console.print(line, highlight=False))
        else:
            console.print(watcher.check(cfg).summary(), highlight=False)
        return
    console.print(loop_stage.run(cfg).summary())


@app.command()
def dpo(
    run: Path = typer.Argument(..., help="Trained run folder (LoRA or full, a language model)."),
    pairs: Optional[Path] = typer.Option(None, help="Preference pairs JSONL ({prompt, chosen, rejected}; `feedback export` writes preferences.jsonl)."),
    beta: Optional[float] = typer.Option(None, help="DPO temperature (default train.dpo.beta)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default train.dpo.lr)."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the pairs."),
    undo: bool = typer.Option(False, "--undo", help="Put the SFT model (RUN/model_sft) back."),
    threads: Optional[int] = ThreadsOpt,
    sets: Optional[list[str]] = SetOpt,
) -> None:
    """Tune a trained run on preference pairs with DPO; the SFT model is kept in RUN/model_sft."""
    from tuneloop import dpo as dpo_stage

    if undo:
        console.print(f"restored {dpo_stage.undo(run)}")
        return
    if pairs is None:
        raise TuneloopError("give --pairs FILE with preference pairs (or --undo)")
    from tuneloop.runs import load_run_config

    cfg = load_run_config(run, None, {"train.dpo.beta": beta, "train.dpo.lr": lr, "train.dpo.epochs": epochs, **parse_sets(sets)})
    console.print(dpo_stage.run(run, pairs, cfg.train.dpo, n_threads=threads or cfg.train.threads).summary())


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN/merged)."),
    merge: bool = typer.Option(True, "--merge/--adapter", help="Merge the LoRA adapter into a full model."),
) -> None:
    """Export a trained model as a folder plain transformers (or vLLM) loads."""
    from tuneloop import runs

    path = runs.export(run, out, merge=merge)
    console.print(f"exported to {path}")


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one clear message."""
    try:
        app()
    except TuneloopError as e:
        if _debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
