"""The run folder: what every stage reads and writes under `runs/<name>/`, in one place.

    config.yaml           the resolved RunConfig (`load_run_config` adds a YAML file and CLI fields)
    metrics.jsonl         one JSON record per train/val step (`append_metrics`, `rewrite_metrics`)
    model/                the trained adapter or weights + tokenizer + tuneloop.json (`write_model`)
    train_summary.json    what `tuneloop train` reports

and the prepared data folder a run trains on (`manifest.json`, `train/val/test.jsonl`). Stages load
a trained model with `load_trained` and export it with `export`. torch and transformers are
imported only by the functions that load models, so reading a run's files stays cheap.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from tuneloop.config import NULL, RunConfig, load_config
from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    import torch

META = "tuneloop.json"  # in RUN/model: kind, method, labels, resolved base
Kind = Literal["lm", "head"]


# ---------------------------------------------------------------- JSONL and the data folder


def read_jsonl(path: Path, *, missing: str = "run `tuneloop prepare` or pass --data FILE.jsonl") -> list[dict[str, Any]]:
    """Rows of a JSONL file (blank lines skipped).

    Args:
        path: The file.
        missing: What the user should do when the file does not exist (ends the error message).

    Raises:
        TuneloopError: the file is missing or a line is not a JSON object (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise TuneloopError(f"{path} does not exist; {missing}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TuneloopError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TuneloopError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_split(data_dir: Path, name: str) -> list[dict[str, Any]]:
    """The rows of `DATA/<name>.jsonl` of a prepared data folder; it must hold at least one.

    Raises:
        TuneloopError: the split is missing, bad or empty.
    """
    path = Path(data_dir) / f"{name}.jsonl"
    rows = read_jsonl(path, missing=f"run `tuneloop prepare --out {path.parent}` first or fix --data")
    if not rows:
        raise TuneloopError(f"{path} has no rows; prepare more data or raise the split's fraction in `tuneloop prepare`")
    return rows


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """`DATA/manifest.json` of a folder written by `tuneloop prepare`.

    Raises:
        TuneloopError: there is none.
    """
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise TuneloopError(f"{path} does not exist; --data must be a folder written by `tuneloop prepare`")
    return json.loads(path.read_text(encoding="utf-8"))


def manifest_or_empty(data_dir: Path | None) -> dict[str, Any]:
    """`DATA/manifest.json`, or `{}` when there is no data folder or no manifest in it."""
    path = Path(data_dir) / "manifest.json" if data_dir else None
    return json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}


@dataclass
class PreparedData:
    """What a prepared data folder offers a stage that only reads it (e.g. `feedback export`).

    Attributes:
        task: The task the data was prepared for, else the given fallback.
        labels: The manifest's labels for a classify task, else None.
        splits: The split files that exist, by name (`train`, `val`, `test`).
    """

    task: str
    labels: list[str] | None
    splits: dict[str, Path]

    @property
    def seen(self) -> list[Path]:
        """The train and val files: rows a model has already been fitted or tuned on."""
        return [self.splits[s] for s in ("train", "val") if s in self.splits]

    @property
    def held_out(self) -> list[Path]:
        """The test file, which nothing may leak into."""
        return [self.splits["test"]] if "test" in self.splits else []


def prepared_data(data_dir: Path | None, task: str | None, default_task: str) -> PreparedData:
    """The task, labels and split files of an optional prepared folder; an explicit `task` wins."""
    manifest = manifest_or_empty(data_dir)
    name = task or manifest.get("task") or default_task
    splits = {s: Path(data_dir) / f"{s}.jsonl" for s in ("train", "val", "test")} if data_dir else {}
    return PreparedData(name, manifest.get("labels") if name == "classify" else None,
                        {s: p for s, p in splits.items() if p.is_file()})


# ---------------------------------------------------------------- metrics.jsonl


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record to `RUN/metrics.jsonl`."""
    with (Path(run_dir) / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def rewrite_metrics(run_dir: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep only the records of `RUN/metrics.jsonl` for which `keep(record)` is true (atomically)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and keep(json.loads(ln))]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    tmp.replace(path)


@dataclass
class Curves:
    """Loss curves of a run: `(step, loss)` pairs for training and validation, in step order."""

    train: list[tuple[int, float]] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)


def read_curves(path: Path) -> Curves:
    """Read the train and val loss records of a run's `metrics.jsonl` (other kinds are skipped).

    A missing file gives empty curves (a run may not have validated yet).

    Raises:
        TuneloopError: a line is not JSON or a train/val record lacks a numeric step or loss.
    """
    curves = Curves()
    if not path.is_file():
        return curves
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec: dict[str, Any] = json.loads(line)
            kind = rec.get("kind")
            if kind in ("train", "val"):
                getattr(curves, kind).append((int(rec["step"]), float(rec["loss"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise TuneloopError(
                f"{path}, line {lineno}: not a metrics record ({type(e).__name__}: {e}); expected JSON like "
                '{"kind": "val", "step": 10, "epoch": 0.5, "loss": 1.2}'
            ) from None
    curves.train.sort()
    curves.val.sort()
    return curves



# ---------------------------------------------------------------- config


def _fields_set(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """The fields a YAML file set, by dotted name; sections recurse, dict-valued fields stay whole."""
    out: dict[str, Any] = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out.update(_fields_set(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = NULL if value is None else value  # the file set it to null: keep that
    return out


def load_run_config(run_dir: Path, config: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The run's saved config, then an optional extra YAML file, then CLI overrides (later wins).

    Raises:
        TuneloopError: RUN is not a run folder, or a file or field is invalid.
    """
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise TuneloopError(f"{run_dir} is not a run folder: {saved} is missing; pass the folder `tuneloop train` wrote")
    extra: dict[str, Any] = {}
    if config is not None:
        extra = _fields_set(load_config(config))
    return load_config(saved, {**extra, **{k: v for k, v in (overrides or {}).items() if v is not None}})


def model_kind(cfg: RunConfig) -> Kind:
    """`head` for a classification head, else `lm` (a causal LM, also when it answers with labels)."""
    return "head" if cfg.task == "classify" and cfg.train.classify_as == "head" else "lm"


# ---------------------------------------------------------------- the test set


def eval_rows(rows: list[dict[str, Any]], task: str, path: Path) -> list[dict[str, Any]]:
    """Turn prepared rows into `{"id", "input", "reference", "label", "row"}` for scoring.

    Raises:
        TuneloopError: a row lacks a field its task needs (names file, row and field).
    """
    out = []
    for i, row in enumerate(rows, start=1):
        where = f"{path}, row {i}"
        if task == "classify":
            if not isinstance(row.get("text"), str) or not isinstance(row.get("label"), str):
                raise TuneloopError(f"{where}: a classify row needs string fields 'text' and 'label'")
            out.append({"id": row.get("id", str(i)), "input": row["text"], "reference": row["label"],
                        "label": row["label"], "row": row})
            continue
        msgs = row.get("messages")
        if not isinstance(msgs, list) or len(msgs) < 2 or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
            raise TuneloopError(f"{where}: field 'messages' must be a conversation ending with the assistant's answer")
        user = [m.get("content", "") for m in msgs[:-1] if m.get("role") == "user"]
        out.append({"id": row.get("id", str(i)), "input": user[-1] if user else "", "reference": msgs[-1].get("content", ""),
                    "label": msgs[-1].get("content", "").strip(), "row": row})
    return out


@dataclass
class TestSet:
    """The held-out rows a run is scored on, with the task's labels and where they came from.

    Attributes:
        rows: `eval_rows` output.
        labels: The manifest's labels plus any unseen test labels; None for open generation.
        file: The test file.
        manifest: The data folder's manifest.json ({} when there is none).
    """

    __test__ = False  # not a pytest test class, despite the name

    rows: list[dict[str, Any]]
    labels: list[str] | None
    file: Path
    manifest: dict[str, Any]


def load_test_set(run_dir: Path, cfg: RunConfig, data: Path | None, max_examples: int | None) -> TestSet:
    """Read the test rows of a run: `data` if given, else the prepared `test.jsonl` of `cfg.train.data`.

    Raises:
        TuneloopError: no test file can be found, it is bad, or it has no rows.
    """
    data_dir = cfg.train.data
    manifest = manifest_or_empty(data_dir)
    test_file = data or (data_dir / "test.jsonl" if data_dir else None)
    if test_file is None:
        raise TuneloopError(f"{run_dir}/config.yaml names no data folder (train.data); pass --data TEST.jsonl")
    rows = eval_rows(read_jsonl(test_file), cfg.task, test_file)[:max_examples]
    if not rows:
        raise TuneloopError(f"{test_file} has no examples to evaluate on")
    known = list(manifest.get("labels") or [])
    labels = None if cfg.task == "generate" and not known else known + sorted({r["label"] for r in rows} - set(known))
    return TestSet(rows, labels, Path(test_file), manifest)


# ---------------------------------------------------------------- the trained model


@dataclass
class Loaded:
    """A trained (or base) model ready for evaluation: eval mode, on the best device."""

    model: torch.nn.Module
    tokenizer: Any
    cfg: RunConfig
    labels: list[str] | None
    kind: Kind


def model_meta(run_dir: Path) -> dict[str, Any]:
    """`RUN/model/tuneloop.json`: the trained model's kind, method, labels, base, task.

    Raises:
        TuneloopError: the run has no trained model yet.
    """
    path = Path(run_dir) / "model" / META
    if not path.is_file():
        raise TuneloopError(f"{run_dir} has no trained model (no model/{META}); finish `tuneloop train` first")
    return json.loads(path.read_text())


def write_model(run_dir: Path, model: Any, tokenizer: Any, meta: dict[str, Any]) -> None:
    """Replace `RUN/model/` atomically with the model's weights (or adapter), tokenizer and `meta`."""
    from tuneloop import checkpoint

    def write(d: Path) -> None:
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        (d / META).write_text(json.dumps(meta, indent=1))

    checkpoint.atomic_dir(Path(run_dir) / "model", write)


def _merged(run_dir: Path, meta: dict[str, Any], cfg: RunConfig) -> torch.nn.Module:
    """The trained model as a plain transformers model (a LoRA adapter merged into its base)."""
    from tuneloop import models

    folder = Path(run_dir) / "model"
    if meta["method"] == "full":
        return models.load_model(folder, meta["kind"], labels=meta["labels"], trust_remote_code=cfg.trust_remote_code)
    from peft import PeftModel

    base = models.load_model(meta["base"], meta["kind"], labels=meta["labels"], trust_remote_code=cfg.trust_remote_code,
                             pad_token_id=models.load_tokenizer(folder).pad_token_id)
    return PeftModel.from_pretrained(base, folder).merge_and_unload()


def export(run_dir: Path, out: Path | None = None, merge: bool = True) -> Path:
    """Write the trained model as a folder plain transformers (or vLLM) loads.

    Args:
        run_dir: A finished run folder.
        out: Where to write (default `RUN/merged`, or `RUN/adapter` without merging).
        merge: Merge a LoRA adapter into the base weights (a full model in safetensors); False copies the adapter.

    Returns:
        The folder written.
    """
    from tuneloop import checkpoint, models

    models.quiet_transformers()
    run_dir = Path(run_dir)
    meta, cfg = model_meta(run_dir), load_config(run_dir / "config.yaml")
    out = Path(out) if out else run_dir / ("merged" if merge else "adapter")
    folder = run_dir / "model"
    if not merge or meta["method"] == "full":
        checkpoint.atomic_dir(out, lambda d: shutil.copytree(folder, d, dirs_exist_ok=True))
        return out
    from tuneloop import threads

    threads.claim("export")  # merging multiplies the adapter's matrices into every layer
    model = _merged(run_dir, meta, cfg)
    tok = models.load_tokenizer(folder)

    def write(d: Path) -> None:
        model.save_pretrained(d)
        tok.save_pretrained(d)

    checkpoint.atomic_dir(out, write)
    return out


def load_trained(run_dir: Path, *, base_only: bool = False) -> Loaded:
    """Load a trained run (or, with `base_only`, its untuned base prepared the same way) for evaluation.

    The model is in eval mode on the best device; a LoRA adapter is merged for speed. For a causal
    LM the tokenizer pads on the left (batched generation). `base_only` with a head gives the base
    with a fresh, untrained head (seeded).
    """
    import torch

    from tuneloop import models

    models.quiet_transformers()
    run_dir = Path(run_dir)
    meta, cfg = model_meta(run_dir), load_config(run_dir / "config.yaml")
    tok = models.load_tokenizer(run_dir / "model")
    if base_only:
        torch.manual_seed(cfg.seed)
        model = models.load_model(meta["base"], meta["kind"], labels=meta["labels"], pad_token_id=tok.pad_token_id,
                                  trust_remote_code=cfg.trust_remote_code)
    else:
        model = _merged(run_dir, meta, cfg)
    if meta["kind"] == "lm":
        tok.padding_side = "left"
    return Loaded(model.to(models.device()).eval(), tok, cfg, meta["labels"], meta["kind"])
