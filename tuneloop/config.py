"""A run's configuration: pydantic models of the YAML, documented and validated where declared.

One `RunConfig` describes a whole run; each stage reads its own section (`prepare`, `train`,
`eval`) plus the shared top-level fields (`task`, `base`, `seed`). A YAML file is a saved config;
the CLI overrides fields by their dotted name (`--set train.lr=1e-4`), and the CLI wins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneloop.errors import TuneloopError


class _Section(BaseModel):
    # Unknown keys are errors: a typo in the YAML must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PrepareConfig(_Section):
    """How raw files become clean, validated, split training data (`tuneloop prepare`)."""

    inputs: list[str] = Field(default_factory=list, description="Data files or globs (JSONL, JSON, CSV/TSV, Parquet).")
    out: Path | None = Field(None, description="Folder for train/val/test.jsonl, rejects.jsonl, manifest.json, report.html.")
    format: Literal["auto", "messages", "alpaca", "sharegpt", "prompt_completion", "text_label"] = Field(
        "auto", description="Record format; `auto` detects it per row from the fields the row has."
    )
    text_field: str = Field("text", description="Field holding the text (classify).")
    label_field: str = Field("label", description="Field holding the label (classify).")
    test_file: str | None = Field(None, description="Use this file as the test split instead of sampling one.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows for validation.")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of rows for test (ignored with test_file).")
    strip_html: bool = Field(True, description="Remove HTML tags and unescape entities.")
    pii: Literal["redact", "drop", "off"] = Field(
        "redact", description="Replace PII with typed placeholders like [EMAIL], drop the row, or leave it."
    )
    pii_region: str = Field(
        "US", min_length=2, max_length=2, description="Country (ISO code) for phone numbers written without a +country code."
    )
    dedup: bool = Field(True, description="Remove exact duplicates (after normalisation).")
    near_dup: bool = Field(True, description="Remove near duplicates (MinHash LSH on word shingles).")
    near_dup_threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity above which rows are near duplicates.")
    near_dup_ngram: int = Field(2, ge=1, le=10, description="Words per shingle for near duplicates (2 suits short rows; 5 long documents).")
    near_dup_num_perm: int = Field(
        64, ge=16, le=512, description="MinHash permutations: more estimate similarity better (error ~0.05 at 64) at 4 bytes a row each."
    )
    label_conflicts: Literal["drop", "keep_majority"] = Field(
        "drop", description="Exact duplicates with different labels: drop them all, or keep the majority label."
    )
    max_chars: int = Field(20_000, gt=0, description="Reject rows whose text is longer than this many characters.")
    max_tokens: int | None = Field(None, gt=0, description="Reject rows longer than this many tokens (of `tokenizer`, else whitespace tokens).")
    tokenizer: str | None = Field(None, description="Base model whose tokenizer measures lengths (`default`, a folder, a hub id).")

    @model_validator(mode="after")
    def _fractions(self) -> PrepareConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 (got {self.val_fraction} + {self.test_fraction}); "
                "lower one of them so rows remain for training"
            )
        return self


class LoraSettings(_Section):
    """LoRA adapter settings (peft)."""

    r: int = Field(16, gt=0, description="Rank of the update matrices.")
    alpha: int = Field(32, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout on the LoRA input (0 by default: on CPU its random masks cost ~20% of a step).",
    )
    target_modules: str | list[str] = Field(
        "all-linear", description="Module names to adapt, or `all-linear` for every linear layer but the output."
    )


class DpoConfig(_Section):
    """Preference tuning (DPO) on (chosen, rejected) pairs, run after SFT when a `preferences.jsonl` is given."""

    beta: float = Field(0.1, gt=0, description="DPO temperature: how far the policy may move from the reference (the SFT model).")
    lr: float = Field(5e-5, gt=0, lt=1, description="Peak learning rate of the DPO phase.")
    epochs: float = Field(1.0, gt=0, description="Passes over the preference pairs.")
    batch_size: int = Field(4, gt=0, description="Pairs per micro-batch.")
    max_length: int | None = Field(None, ge=8, description="Truncate prompt + answer to this many tokens (default: train.max_length).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches of pairs per optimizer step.")
    eval_every: int | None = Field(None, gt=0, description="Validate every this many optimizer steps (None: only at the end).")
    patience: int | None = Field(None, gt=0, description="Stop after this many validations without improvement (None: never).")
    save_every: int = Field(50, gt=0, description="Checkpoint every this many optimizer steps (a rerun on the same pairs resumes).")


class TrainConfig(_Section):
    """How the base model is fine-tuned (`tuneloop train`)."""

    data: Path | None = Field(None, description="Folder written by `tuneloop prepare` (train.jsonl, val.jsonl).")
    out: Path | None = Field(None, description="Run folder: checkpoints/, model/, metrics.jsonl, config.yaml.")
    method: Literal["lora", "full"] = Field("lora", description="Train a LoRA adapter or all weights.")
    classify_as: Literal["head", "generate"] = Field(
        "generate", description="classify with a sequence-classification head, or as a causal LM answering with the label."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate (AdamW).")
    batch_size: int = Field(8, gt=0, description="Examples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_length: int = Field(512, ge=8, description="Truncate sequences to this many tokens.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    warmup: float = Field(0.05, ge=0, lt=1, description="Share of steps for linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (None: no clipping).")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="bf16 autocast or fp32; `auto` uses bf16 where the hardware runs it fast."
    )
    packing: bool = Field(False, description="Pack several examples into one sequence (isolated attention).")
    group_by_length: bool = Field(True, description="Batch examples of similar length to avoid padding waste.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="Attention kernel; auto: eager on CPU while its saved probabilities fit 2.5 GB (faster, more memory), else sdpa.")
    share_prefix: bool = Field(
        True, description="Run a prompt prefix that a whole micro-batch shares once and reuse its keys/values (exact; causal LM without packing or checkpointing)."
    )
    eval_every: int = Field(50, gt=0, description="Validate every this many optimizer steps (and at each epoch end).")
    patience: int | None = Field(3, gt=0, description="Stop after this many validations without improvement (None: never).")
    save_every: int = Field(50, gt=0, description="Checkpoint every this many optimizer steps.")
    keep_last: int = Field(2, gt=0, description="Checkpoints to keep (the best one is always kept).")
    max_eval_examples: int | None = Field(None, gt=0, description="Validate on at most this many examples.")
    system_prompt: str | None = Field(None, description="System message for classify-as-generate prompts.")
    threads: int | None = Field(None, gt=0, description="torch threads (default: this process's share of the cores free to it; see tuneloop/threads.py).")
    nproc: int = Field(1, gt=0, description="Data-parallel processes on this machine (DDP; gloo on CPU, NCCL on GPUs); the global batch is batch_size x grad_accum x nproc.")
    dpo: DpoConfig = Field(default_factory=lambda: DpoConfig())


class EvalConfig(_Section):
    """How a run is evaluated on held-out data (`tuneloop eval`)."""

    data: Path | None = Field(None, description="Test file (default: the run's prepared test.jsonl).")
    base_too: bool = Field(
        True, description="Also evaluate the untuned base model: zero-shot with the same prompt (classify: each label's "
        "likelihood, no unparseable answers) and with `shots` in-context examples from train.")
    shots: int = Field(2, ge=0, description="In-context examples from train for the base k-shot baseline: per label "
                       "(classify) or in all (generate); 0: no k-shot baseline.")
    metric: Literal["auto", "macro_f1", "accuracy", "token_f1", "rouge_l", "semantic", "exact_match", "loss"] = Field(
        "auto", description="Headline metric (and the one that orders most improved/worsened); auto: macro_f1 for "
        "classify, token_f1 for generate.")
    paired_test: Literal["wilcoxon", "bootstrap"] = Field(
        "wilcoxon", description="Paired test of per-example generation scores, tuned vs each other system.")
    semantic_model: str | None = Field(
        "minilm", description="Sentence encoder for the semantic-similarity score (generate; a folder or `minilm`); null: skip it.")
    judge_url: str | None = Field(
        None, description="OpenAI-compatible endpoint (…/v1) of a pairwise judge for generation; null: judging is skipped.")
    judge_model: str = Field("default", description="Model name sent to the judge endpoint.")
    judge_feedback: Path | None = Field(
        None, description="Feedback database whose human ratings measure the judge's agreement (Cohen's kappa).")
    judge_min_kappa: float = Field(
        0.4, ge=-1, le=1, description="Agreement with people (kappa) below which the judge's verdict is not trusted.")
    baseline: bool = Field(True, description="Also train and evaluate TF-IDF + logistic regression (classify).")
    batch_size: int = Field(16, gt=0, description="Examples per generation/prediction batch.")
    max_new_tokens: int = Field(128, gt=0, description="Generation limit for answers (classify: at most the longest label + 8 tokens).")
    max_examples: int | None = Field(None, gt=0, description="Evaluate on at most this many test examples.")
    threads: int | None = Field(None, gt=0, description="torch threads for eval and fairness (default: this process's share of the cores free to it).")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for 95% confidence intervals (0: none).")
    overfit_window: int = Field(3, gt=0, description="Flag overfitting when validation loss rose for this many evaluations.")
    synonyms: dict[str, list[str]] = Field(default_factory=dict, description="Extra answers that map to a label.")


class ParamRange(_Section):
    """A numeric search range: `{low: 1e-5, high: 1e-3, log: true}` (ints stay ints)."""

    low: float = Field(description="Smallest value tried.")
    high: float = Field(description="Largest value tried.")
    log: bool = Field(False, description="Sample on a log scale (learning rates).")
    step: float | None = Field(None, gt=0, description="Grid step (ints default to 1).")

    @model_validator(mode="after")
    def _order(self) -> ParamRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


class TuneConfig(_Section):
    """Hyperparameter search (`tuneloop tune`): Optuna over fields of the `train` section."""

    out: Path | None = Field(None, description="Study folder: study.db, trials/<n>/, best.yaml, tune_report.html.")
    space: dict[str, ParamRange | list[Any]] = Field(
        default_factory=dict,
        description="Parameter → range or list of choices, by `train` field name (`lr`, `lora.r`, `batch_size`, ...). "
        "Empty: a default space for the task.",
    )
    trials: int | None = Field(10, gt=0, description="Trials to finish in this study (counting earlier runs of it).")
    timeout: float | None = Field(None, gt=0, description="Stop starting new trials after this many seconds.")
    max_steps: int | None = Field(None, gt=0, description="Optimizer-step budget per trial.")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="How the next trial's parameters are picked.")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="Stop hopeless trials early.")
    objective: Literal["auto", "val_loss", "macro_f1"] = Field(
        "auto", description="Validation metric to optimise; auto: macro_f1 for classify, val_loss for generate."
    )
    storage: str | None = Field(None, description="Optuna storage URL (default: sqlite in the study folder).")
    study_name: str = Field("tuneloop", description="Study name inside the storage (shared by workers).")
    refit: bool = Field(False, description="Retrain the best config on train+val at the end.")


class DeriveRule(_Section):
    """A group derived by a rule: bins of a numeric `meta` field, or which term group the text mentions."""

    field: str | None = Field(None, description="Numeric field of the rows' `meta` to cut into bins.")
    bins: list[float] | None = Field(None, description="Bin edges for `field`, e.g. [0, 30, 50, 120] (left-closed).")
    terms: str | None = Field(None, description="Term axis (e.g. `gender_names`): the group is which of its groups the text mentions.")

    @model_validator(mode="after")
    def _one_rule(self) -> DeriveRule:
        if (self.field is None) == (self.terms is None):
            raise ValueError("give either `field` with `bins`, or `terms` (a term axis name)")
        if self.field is not None and (not self.bins or len(self.bins) < 2 or self.bins != sorted(self.bins)):
            raise ValueError(f"`bins` must be at least two increasing edges for field {self.field!r} (got {self.bins})")
        return self


class FairnessThresholds(_Section):
    """The fairness gate: a check fails when a value exceeds its threshold (None: not checked)."""

    max_equalized_odds_difference: float | None = Field(0.2, ge=0, description="Worst label's equalized-odds difference, any attribute.")
    max_demographic_parity_difference: float | None = Field(None, ge=0, description="Worst label's demographic-parity difference (off by default: base rates may differ).")
    max_accuracy_gap: float | None = Field(None, ge=0, description="Best group's accuracy minus the worst group's.")
    max_flip_rate: float | None = Field(0.1, ge=0, le=1, description="Share of examples whose prediction changes when identity terms are swapped, any axis.")
    max_output_change: float | None = Field(None, ge=0, le=1, description="Generation: mean 1 - ROUGE-L between original and counterfactual answers.")
    max_stereotype_score: float | None = Field(None, ge=0, le=1, description="CrowS-Pairs share of pairs where the model prefers the stereotype (0.5 is unbiased).")
    max_increase: float | None = Field(0.05, ge=0, description="Largest allowed rise of a value over the reference: every value vs `against`; vs the base only the stereotype score and output change.")


class FairnessConfig(_Section):
    """Bias and fairness audit of a run (`tuneloop fairness`): group metrics, counterfactuals, stereotypes, gate."""

    data: Path | None = Field(None, description="Test file (default: the run's prepared test.jsonl).")
    attributes: list[str] = Field(default_factory=list, description="Sensitive attribute fields of the rows' `meta` (empty: any of gender, sex, race, ethnicity, age, age_band, region, religion, nationality, disability, condition present).")
    expected_groups: dict[str, list[str]] = Field(default_factory=dict, description="Groups an attribute must have in the test data; one with no examples is an error.")
    derive: dict[str, DeriveRule] = Field(default_factory=dict, description="Groups derived by a rule, by name.")
    min_group_size: int = Field(30, gt=0, description="Smaller groups get a confidence interval and a warning, and are left out of disparities.")
    terms: Path | None = Field(None, description="JSON term file for counterfactual swaps (default: bundled lists from wefe and checklist).")
    axes: list[str] = Field(default_factory=list, description="Term axes to swap (empty: all in the file).")
    max_variants: int = Field(3, gt=0, description="Counterfactual variants per example and axis.")
    max_examples: int | None = Field(None, gt=0, description="Audit at most this many test examples.")
    base_too: bool = Field(True, description="Audit the untuned base model too, as the reference for `max_increase`.")
    against: Path | None = Field(None, description="Run folder whose fairness/result.json is the reference (e.g. the served model) instead of the base.")
    benchmark: Literal["crows_pairs", "none"] = Field("crows_pairs", description="Stereotype benchmark for language models (skipped for classification heads).")
    benchmark_max_pairs: int | None = Field(300, gt=0, description="Score at most this many benchmark pairs (a seeded sample).")
    batch_size: int = Field(16, gt=0, description="Examples per prediction batch.")
    max_new_tokens: int = Field(64, gt=0, description="Generation limit for counterfactual answers.")
    thresholds: FairnessThresholds = Field(default_factory=FairnessThresholds)
    if_not_assessed: Literal["warn", "block"] = Field("warn", description="When the audit can make no check (no group attributes, no identity terms in the test inputs, no benchmark): warn and go on, or block (`tuneloop fairness` fails, the loop keeps the served model). Never reported as passed.")


class FeedbackConfig(_Section):
    """Where served responses and user feedback are stored, and how feedback becomes training data."""

    db: str | Path = Field("runs/feedback.db", description="Feedback store the server writes and `feedback export` reads: a SQLite file (WAL) or a postgresql:// URL.")
    retention_days: float | None = Field(30.0, gt=0, description="Delete stored responses nobody rated after this many days (None: keep them).")
    redact_pii: bool = Field(True, description="Replace personal data in stored requests, answers and comments with [EMAIL], [PHONE], ... (the `prepare` redactor).")
    include_positive: bool = Field(True, description="Also turn well-rated responses (score >= positive_score) into training examples.")
    positive_score: float = Field(0.75, ge=0, le=1, description="Normalised rating (thumbs up = 1, 5 stars = 1, 1 star = 0) from which a response counts as good.")
    negative_score: float = Field(0.25, ge=0, le=1, description="Normalised rating up to which a response counts as bad.")


class LoopConfig(_Section):
    """`tuneloop loop`: feedback -> prepare -> train -> eval -> fairness -> gate -> promote."""

    registry: str | None = Field(None, description="Registry URL (SQLAlchemy; default: $TUNELOOP_REGISTRY or sqlite:///runs/registry.db).")
    out: Path = Field(Path("runs/loop"), description="Folder for each round's data/ and candidate run.")
    metric: Literal["auto", "macro_f1", "accuracy", "loss", "token_f1", "rouge_l", "semantic", "exact_match"] = Field(
        "auto", description="Metric the candidate must improve on the frozen test set (auto: macro_f1 for classify, token_f1 for generate)."
    )
    margin: float | None = Field(None, ge=0, description="The candidate must beat the promoted model by more than this (absolute; None: 0.01 for loss, 0 otherwise, where the paired test guards against noise).")
    alpha: float | None = Field(0.05, gt=0, lt=1, description="p-value the paired test on the same test rows must be below (McNemar for right/wrong metrics, eval.paired_test (Wilcoxon or paired bootstrap) for token_f1/rouge_l/semantic/loss; None: no test, margin only).")
    require_fairness: bool = Field(True, description="Run the fairness audit against the promoted model and refuse a candidate that fails it.")

    @model_validator(mode="after")
    def _guards_against_noise(self) -> LoopConfig:
        # Without a paired test only the margin stands between noise and a promotion.
        if self.alpha is None and not self.margin:
            raise ValueError("alpha: null (no paired test) needs a positive margin, else noise could be promoted")
        return self


class MonitorConfig(_Section):
    """`tuneloop monitor`: the window of logged predictions it reads and when it raises an alarm."""

    db: str | Path | None = Field(None, description="Prediction log the server writes (default: feedback.db, where `serve` logs by default).")
    last: int | None = Field(1000, gt=0, description="Window: the newest this many predictions of the served model (with `since`: both limits).")
    since: str | None = Field(None, description="Window: predictions at or after this ISO 8601 time (UTC unless it has an offset).")
    min_predictions: int = Field(100, gt=0, description="Fewer predictions in the window: report that, raise no alarm.")
    alpha: float = Field(0.005, gt=0, lt=1, description="A drift test fires only when its p-value is below this (and its effect size above its limit).")
    max_length_ks: float = Field(0.2, gt=0, le=1, description="Input length: largest Kolmogorov-Smirnov distance between window and reference.")
    max_oov_increase: float = Field(0.1, gt=0, le=1, description="Input words unknown to the training data: largest rise of the mean per-text rate.")
    embedding_model: str | None = Field("minilm", description="Sentence encoder for embedding drift (`minilm`: the bundled all-MiniLM-L6-v2; a folder; None: skip).")
    max_embedded: int = Field(500, gt=1, description="Texts embedded at most per side (window, reference): a seeded sample.")
    permutations: int = Field(1000, ge=100, description="Permutations of the MMD test's p-value.")
    max_psi: float = Field(0.2, gt=0, description="Label mix: largest population stability index between window and reference predictions.")
    max_confidence_ks: float = Field(0.2, gt=0, le=1, description="Confidence: largest Kolmogorov-Smirnov distance between window and reference.")
    max_estimated_drop: float = Field(0.05, gt=0, le=1, description="CBPE: largest fall of estimated accuracy below the reference's.")
    min_feedback: int = Field(30, gt=0, description="Rated predictions needed before realized metrics can raise an alarm.")
    max_realized_drop: float = Field(0.05, gt=0, le=1, description="Realized accuracy on feedback: largest fall below the reference's test accuracy "
                                     "(and the interval's upper end must be below it too).")
    min_group_size: int = Field(30, gt=0, description="Groups with fewer predictions are reported but raise no alarm.")
    max_group_gap: float = Field(0.1, gt=0, le=1, description="Largest gap in estimated accuracy between the groups of one attribute.")
    seed: int = Field(0, description="Seed of the samples, bootstraps and permutations (the same window gives the same report).")
    min_new_feedback: int = Field(50, ge=0, description="`loop --watch/--once`: feedback records that must have arrived since the last "
                                  "triggered round before an alarm starts another.")
    cooldown_minutes: float = Field(60.0, ge=0, description="`loop --watch/--once`: no new round within this many minutes of the last triggered one.")
    max_rounds_per_day: int = Field(3, ge=0, description="`loop --watch/--once`: most rounds alarms may start in any 24 hours.")
    interval_minutes: float = Field(10.0, gt=0, description="`loop --watch`: minutes between checks.")
    rollback_alpha: float | None = Field(0.01, gt=0, lt=1, description="`loop --watch/--once`: roll a promoted model back when its realized "
                                         "accuracy on live feedback is below its predecessor's by more than max_realized_drop with a "
                                         "Fisher exact test p below this (both with min_feedback ratings; None: never).")


class RunConfig(_Section):
    """A whole run: shared fields plus one section per stage."""

    task: Literal["classify", "generate"] = Field("generate", description="Text → label, or instruction/chat SFT.")
    base: str = Field("default", description="Base model: `default`, a local folder, a .gguf file, or a hub id.")
    seed: int = Field(0, description="Seed for splitting, shuffling, initialisation and sampling.")
    trust_remote_code: bool = Field(False, description="Allow a hub model's own Python code to run.")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)


def format_validation_error(err: ValidationError) -> str:
    """Turn a pydantic error into lines naming the field, the bad value and what is allowed."""
    lines: dict[str, str] = {}
    for e in err.errors():
        # Drop pydantic's union/validator markers ("list[any]", "function-after[...]") from the path;
        # for a union, the first alternative's complaint is the one that names the real problem.
        field = ".".join(str(p) for p in e["loc"] if not any(c in str(p) for c in "[(")) or "config"
        got = "" if e["type"] == "missing" else f" (got {_clip(repr(e.get('input')), 60)})"
        msg = _clip(e["msg"].removeprefix("Value error, "), 200)
        lines.setdefault(field, f"config field '{field}'{got}: {msg}")
    shown = list(lines.values())[:_MAX_ERROR_LINES]  # a hostile file can break thousands of fields
    more = len(lines) - len(shown)
    return "\n".join(shown + ([f"... and {more} more"] if more else []))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise TuneloopError(f"config field '{key}': '{p}' is not a section")
    d[parts[-1]] = value


class _Null:
    """The value of an override that sets a field to None (a plain None means "not given")."""

    def __repr__(self) -> str:
        return "null"


NULL = _Null()
_FIELD_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """Turn `--set FIELD=VALUE` options into overrides for `load_config`.

    VALUE is read as YAML, as in a config file: `0.1`, `true`, `null`, `[q_proj, v_proj]`,
    `{rule: value}`; anything else is a string. The fields are checked when the config is loaded,
    with the same errors as a YAML file.

    Raises:
        TuneloopError: an item is not FIELD=VALUE, or VALUE is not valid YAML.

    Example:
        >>> parse_sets(["train.warmup=0.1", "train.max_steps=null", "train.lora.target_modules=[q_proj, v_proj]"])
        {'train.warmup': 0.1, 'train.max_steps': null, 'train.lora.target_modules': ['q_proj', 'v_proj']}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not _FIELD_NAME.fullmatch(key):
            raise TuneloopError(f"--set {item!r}: expected FIELD=VALUE with a dotted field name, e.g. --set train.warmup=0.1")
        try:
            value = yaml.load(text, Loader=_ConfigLoader) if text.strip() else ""  # noqa: S506 (a SafeLoader subclass)
        except (yaml.YAMLError, ValueError, RecursionError):
            raise TuneloopError(f"--set {key}: the value {_clip(text, 60)!r} is not valid YAML; quote it to pass a string") from None
        out[key] = NULL if value is None else value
    return out


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a run config from YAML (optional) and apply CLI overrides by dotted name.

    Args:
        path: A YAML file with a saved config, or None for the defaults.
        overrides: `{"train.lr": 1e-4, ...}`; None values mean "not given" and are skipped, `NULL`
            sets a field to None (`parse_sets` makes both from `--set` options).

    Returns:
        The validated config.

    Raises:
        TuneloopError: the file is missing or not YAML, or a field is invalid (message names it).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        raw = read_yaml_file(p) or {}
        if not isinstance(raw, dict):
            raise TuneloopError(f"config file {p} must hold a mapping of fields, not {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, None if value is NULL else value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        where = f" in {path}" if path else ""
        raise TuneloopError(f"invalid config{where}:\n{format_validation_error(e)}") from None


MAX_CONFIG_BYTES = 1_000_000  # a config is a few KB; anything this big is the wrong file
MAX_YAML_NODES = 10_000  # what anchors and aliases may expand to: a config has ~100 values
_MAX_ERROR_LINES = 20


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also refuses aliases expanding beyond `MAX_YAML_NODES` nodes.

    Aliases share one parsed node, so a few hundred bytes of nested aliases ("billion laughs")
    parse quickly but expand to billions of values in anything that walks the result
    (validation, error messages); the check counts that expansion before anything walks it.
    """

    def compose_document(self) -> yaml.Node:  # noqa: D102 (PyYAML hook)
        node = super().compose_document()
        _check_expansion(node)
        return node


class _YamlTooBig(yaml.YAMLError):
    """Aliases expand too far or refer to themselves."""


def _check_expansion(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}  # node id -> nodes it expands to
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # post-order walk without recursion: the nesting itself may be hostile
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise _YamlTooBig(f"its anchors and aliases expand to more than {MAX_YAML_NODES:,} values; "
                                  "write the values out instead of nesting aliases")
        elif key in on_path:
            raise _YamlTooBig("an alias refers to itself (a recursive anchor); write the values out instead")
        elif key not in sizes:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def read_yaml_file(p: Path) -> Any:
    """Parse a YAML file safely: UTF-8 only, bounded in size, nesting and alias expansion.

    Args:
        p: The file.

    Returns:
        What the YAML holds (None for an empty file).

    Raises:
        TuneloopError: one line saying which file, what is wrong and what to do.
    """
    if not p.is_file():
        raise TuneloopError(f"config file {p} does not exist")
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise TuneloopError(f"config file {p} is {size:,} bytes, over the {MAX_CONFIG_BYTES:,} a config may have; "
                                "is it the right file?")
        data = p.read_bytes()
    except OSError as e:
        raise TuneloopError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte-order mark (Windows editors) is fine
    except UnicodeDecodeError as e:
        raise TuneloopError(f"config file {p} is not UTF-8 text (byte 0x{data[e.start]:02x} at position {e.start}); "
                            "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except _YamlTooBig as e:
        raise TuneloopError(f"config file {p} is refused: {e}") from None
    except yaml.YAMLError as e:
        raise TuneloopError(f"config file {p} is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise TuneloopError(f"config file {p} is nested too deeply to read; a config has sections and fields, "
                            "not deep lists") from None
    except ValueError as e:  # a scalar YAML types but Python cannot hold: a date 2024-13-45, a 5,000-digit number
        raise TuneloopError(f"config file {p} holds a value that cannot be read ({_clip(str(e), 120)}); "
                            "put it in quotes to make it a string") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error as one short line: the problem and where it is."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        where = f" (line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1})" if e.problem_mark else ""
        return _clip(e.problem, 200) + where
    return _clip(str(e).splitlines()[0], 200)


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (paths as strings), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
