"""`tuneloop monitor`: a window of the served classifier's logged predictions against its reference.

The reference is the model's own calibrated test-set predictions (`RUN/eval/reference.jsonl`,
written by `tuneloop eval`). The report holds the window, input and prediction drift, CBPE estimates,
realized metrics from feedback, per-group metrics, and the alarms — each with the metric, its value
and the threshold it crossed. No alarm is raised on a window with too few predictions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import MonitorConfig, RunConfig
from tuneloop.errors import TuneloopError
from tuneloop.monitor import drift
from tuneloop.monitor.estimate import by_group, cbpe, realized


@dataclass
class MonitorResult:
    """What `run` found: the report (as `--json` prints it) and the run it watched."""

    report: dict[str, Any]
    run_dir: Path
    html: Path | None = None
    alarms: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.alarms = self.report["alarms"]

    @property
    def exit_code(self) -> int:
        """1 when an alarm fired, else 0."""
        return 1 if self.alarms else 0

    def summary(self) -> str:
        """A few lines for the terminal: the window, the estimates and every alarm."""
        r = self.report
        lines = [f"model {r['model']} · window {r['window']['n']} predictions "
                 f"({r['window'].get('first') or '—'} → {r['window'].get('last') or '—'})"]
        if r.get("message"):
            lines.append(r["message"])
        est, real = r.get("estimated") or {}, r.get("realized") or {}
        if est.get("accuracy") is not None:
            lines.append(f"estimated accuracy {est['accuracy']:.3f} [{est['accuracy_ci'][0]:.3f}, {est['accuracy_ci'][1]:.3f}] "
                         f"(reference {est['reference_accuracy']:.3f}), macro-F1 {est['macro_f1']:.3f}")
        if real.get("accuracy") is not None:
            lines.append(f"realized accuracy {real['accuracy']:.3f} [{real['accuracy_ci'][0]:.3f}, {real['accuracy_ci'][1]:.3f}] "
                         f"on {real['n_rated']} rated")
        for a in self.alarms:
            lines.append(f"ALARM {a['kind']}: {a['metric']} = {a['value']:.4g} (threshold {a['threshold']:.4g})")
        if not self.alarms and r["status"] == "ok":
            lines.append("no alarm")
        if self.html:
            lines.append(f"report: {self.html}")
        return "\n".join(lines)


def resolve_model(run_dir: Path | None, registry: str | None) -> tuple[Path, str]:
    """The run to watch and the model name it is logged under: a folder, or the registry's promoted model.

    Raises:
        TuneloopError: no folder given and no promoted model in the registry.
    """
    if run_dir is not None:
        return Path(run_dir), Path(run_dir).resolve().name
    from tuneloop.registry import Registry

    record = Registry(registry).promoted()
    if record is None:
        raise TuneloopError("no run given and the registry has no promoted model: pass the served run folder, "
                            "or promote one with `tuneloop models promote NAME`")
    return Path(record.path), record.name


def read_reference(run_dir: Path) -> list[dict[str, Any]]:
    """The model's own calibrated test-set predictions.

    Raises:
        TuneloopError: the run has not been evaluated (the message names the command that writes them).
    """
    path = run_dir / "eval" / "reference.jsonl"
    if not path.is_file():
        raise TuneloopError(f"{path} is missing: the monitor compares live traffic with the model's own test-set "
                            f"predictions; write them with `tuneloop eval {run_dir}` (a classify run)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def utc_time(text: str | None) -> str | None:
    """An ISO 8601 time as the log stores it (UTC, microseconds); a time without an offset is taken as UTC.

    Raises:
        TuneloopError: not an ISO 8601 time.
    """
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TuneloopError(f"monitor.since {text!r} is not an ISO 8601 time; write e.g. 2026-12-03T14:00 or 2026-12-03T14:00+01:00") from None
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return t.isoformat(timespec="microseconds")


def _vocabulary(cfg: RunConfig) -> set[str] | None:
    path = Path(cfg.train.data) / "train.jsonl" if cfg.train.data else None
    if path is None or not path.is_file():
        return None
    vocab: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line).get("text") if line.strip() else None
            if isinstance(text, str):
                vocab.update(drift.words(text))
    return vocab


def _rated(rows: list[dict[str, Any]], cfg: RunConfig, feedback_db: str | Path | None, labels: list[str]) -> None:
    """Set `correct` (True/False/None) and `label` (the true label when known) on each row from its latest feedback."""
    from tuneloop.store import FeedbackStore, exists

    target = feedback_db or cfg.feedback.db
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    if exists(target):
        store = FeedbackStore(target, retention_days=None)
        try:
            latest = {(f["response_id"], f["index"]): f for f in store.snapshot()[1]}  # commit order: the last wins
        finally:
            store.close()
    fb = cfg.feedback
    for r in rows:
        f = latest.get((r["response_id"], r["idx"]))
        r["correct"] = r["label"] = None
        if f is None:
            continue
        if f.get("corrected") in labels:
            r["label"] = f["corrected"]
            r["correct"] = f["corrected"] == r["output"]
        elif f["score"] >= fb.positive_score:
            r["correct"], r["label"] = True, r["output"]
        elif f["score"] <= fb.negative_score:
            r["correct"] = False


def realized_of(run_dir: Path, name: str, settings: MonitorConfig, feedback_db: str | Path | None = None) -> dict[str, Any]:
    """Realized metrics (`estimate.realized`) of one model's newest `settings.last` logged predictions."""
    from tuneloop.runs import load_run_config
    from tuneloop.store.predictions import read_window

    cfg = load_run_config(run_dir)
    labels = list(read_reference(run_dir)[0]["probabilities"])
    rows = read_window(settings.db or feedback_db or cfg.feedback.db, model=name, last=settings.last, kind="classify")
    _rated(rows, cfg, feedback_db, labels)
    return realized([{"prediction": r["output"], "correct": r["correct"], "label": r["label"]}
                     for r in rows if r["correct"] is not None], labels, seed=settings.seed)


def _probs(rows: list[dict[str, Any]], labels: list[str]) -> np.ndarray:
    return np.array([[(r.get("probabilities") or {}).get(lab, 0.0) for lab in labels] for r in rows], dtype=np.float64)


def _reference_embeddings(encoder: Any, texts: list[str], m: MonitorConfig, run_dir: Path) -> np.ndarray:
    """The reference sample's embeddings, cached in `RUN/eval/` (they are the same at every check: half the work)."""
    key = hashlib.sha256(json.dumps([str(m.embedding_model), texts]).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    path = run_dir / "eval" / f"reference_embeddings-{key}.npy"
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        pass
    emb = encoder.encode(texts).numpy()
    try:  # a read-only run folder only costs the cache
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb, allow_pickle=False)
        tmp.replace(path)
    except OSError:
        pass
    return emb


def _input_drift(m: MonitorConfig, cfg: RunConfig, ref: list[dict[str, Any]], rows: list[dict[str, Any]],
                 run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"length": drift.ks([len(r["text"]) for r in ref], [r["input_chars"] or 0 for r in rows])}
    texts = [r["input"] for r in rows if r.get("input")]
    ref_texts = [r["text"] for r in ref]
    if len(texts) < m.min_predictions:
        out["note"] = "inputs not stored (--log-inputs hash|none): only the length is compared"
        return out
    vocab = _vocabulary(cfg)
    if vocab is not None:
        out["oov"] = drift.oov_shift(ref_texts, texts, vocab)
    if m.embedding_model:
        from tuneloop.evaluate.semantic import SentenceEncoder

        rng = np.random.default_rng(m.seed)
        pick = lambda xs: [xs[i] for i in sorted(rng.choice(len(xs), min(len(xs), m.max_embedded), replace=False))]  # noqa: E731
        encoder = SentenceEncoder(m.embedding_model)
        ref_sample = pick(ref_texts)
        out["embedding"] = drift.mmd_test(_reference_embeddings(encoder, ref_sample, m, run_dir),
                                          encoder.encode(pick(texts)).numpy(), permutations=m.permutations, seed=m.seed)
        out["embedding"]["model"] = m.embedding_model
    return out


def _alarms(m: MonitorConfig, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every check whose effect passed its threshold (and, for tests, whose p-value is below alpha)."""
    out: list[dict[str, Any]] = []

    def fire(kind: str, metric: str, value: float | None, threshold: float, significant: bool = True, **detail: Any) -> None:
        if value is not None and value > threshold and significant:
            out.append({"kind": kind, "metric": metric, "value": round(float(value), 6), "threshold": threshold, **detail})

    inp, pred = report["drift"]["input"], report["drift"]["prediction"]
    fire("input_drift", "length_ks", inp["length"]["statistic"], m.max_length_ks, inp["length"]["pvalue"] < m.alpha,
         pvalue=inp["length"]["pvalue"])
    if "oov" in inp:
        fire("input_drift", "oov_increase", inp["oov"]["increase"], m.max_oov_increase, inp["oov"]["pvalue"] < m.alpha,
             pvalue=inp["oov"]["pvalue"])
    if "embedding" in inp and inp["embedding"]["pvalue"] < m.alpha:  # MMD² has no natural scale: the p-value is the test
        out.append({"kind": "input_drift", "metric": "embedding_mmd_pvalue", "value": inp["embedding"]["pvalue"],
                    "threshold": m.alpha, "mmd2": inp["embedding"]["mmd2"], "note": "fires below the threshold"})
    fire("prediction_drift", "label_psi", pred["labels"]["psi"], m.max_psi, pred["labels"]["pvalue"] < m.alpha,
         pvalue=pred["labels"]["pvalue"])
    fire("prediction_drift", "confidence_ks", pred["confidence"]["statistic"], m.max_confidence_ks,
         pred["confidence"]["pvalue"] < m.alpha, pvalue=pred["confidence"]["pvalue"])
    est = report["estimated"]
    fire("performance", "estimated_accuracy_drop", est["reference_accuracy"] - est["accuracy"], m.max_estimated_drop,
         estimated=est["accuracy"], reference=est["reference_accuracy"])
    real = report["realized"]
    if real["n_rated"] >= m.min_feedback and real["accuracy"] is not None:
        ref_acc = report["reference"]["accuracy"]
        fire("performance", "realized_accuracy_drop", ref_acc - real["accuracy"], m.max_realized_drop,
             real["accuracy_ci"][1] < ref_acc, realized=real["accuracy"], reference=ref_acc, n_rated=real["n_rated"])
    for attr, g in report["fairness"].items():
        fire("fairness", f"estimated_accuracy_gap[{attr}]", g["estimated_gap"], m.max_group_gap)
    return out


def run(run_dir: Path | None = None, *, registry: str | None = None, config: Path | None = None,
        overrides: dict[str, Any] | None = None, feedback_db: str | Path | None = None, model: str | None = None,
        html: Path | None = None, settings: MonitorConfig | None = None) -> MonitorResult:
    """Compare a window of logged predictions with the served model's reference and raise alarms.

    Args:
        run_dir: The served run folder (None: the registry's promoted model).
        registry: Registry URL (when `run_dir` is None).
        config: Extra YAML over the run's config (its `monitor:` section holds the thresholds).
        overrides: Dotted config fields (`monitor.last`, `monitor.since`, ...).
        feedback_db: Feedback store for realized metrics (default: the config's `feedback.db`).
        model: The name the predictions were logged under (default: the registry name or folder name).
        html: Also write the report as an HTML page here.
        settings: Use these thresholds instead of the run config's `monitor:` section (the loop's own config).

    Returns:
        The report; `.exit_code` is 1 when an alarm fired.

    Raises:
        TuneloopError: no reference (names `tuneloop eval`), an unreadable log, a bad `since`.
    """
    from tuneloop.runs import load_run_config
    from tuneloop.store.predictions import models_in, read_window

    run_dir, name = resolve_model(run_dir, registry)
    name = model or name
    cfg = load_run_config(run_dir, config, overrides or {})
    m = settings or cfg.monitor
    ref = read_reference(run_dir)
    labels = list(ref[0]["probabilities"]) if ref else []
    target = m.db or feedback_db or cfg.feedback.db
    rows = read_window(target, model=name, last=m.last, since=utc_time(m.since), kind="classify")
    window = {"n": len(rows), "series": _series(rows), "first": rows[0]["created"] if rows else None, "last": rows[-1]["created"] if rows else None,
              "last_n": m.last, "since": m.since, "db": str(target)}
    report: dict[str, Any] = {"model": name, "run": str(run_dir), "window": window, "status": "ok", "message": None,
                              "drift": {}, "estimated": {}, "realized": {}, "fairness": {}, "alarms": []}
    if len(rows) < m.min_predictions:
        others = {k: v for k, v in models_in(target).items() if k != name}
        report.update(status="too_few", message=f"only {len(rows)} predictions of {name!r} in the window; at least "
                      f"{m.min_predictions} are needed (monitor.min_predictions): no alarm"
                      + (f"; the log also holds {others}" if others else ""))
        return _finish(report, run_dir, html)
    ref_probs, probs = _probs(ref, labels), _probs(rows, labels)
    _rated(rows, cfg, feedback_db, labels)
    ref_right = [r["prediction"] == r["label"] for r in ref]
    report["reference"] = {"n": len(ref), "accuracy": float(np.mean(ref_right)),
                           "estimated_accuracy": float(ref_probs.max(1).mean())}
    report["drift"] = {
        "input": _input_drift(m, cfg, ref, rows, run_dir),
        "prediction": {"labels": drift.label_shift([r["prediction"] for r in ref], [r["output"] for r in rows], labels),
                       "confidence": drift.ks(ref_probs.max(1), probs.max(1))},
    }
    # Like for like: the window's CBPE against the reference's own mean calibrated confidence.
    report["estimated"] = {**cbpe(probs, seed=m.seed), "reference_accuracy": report["reference"]["estimated_accuracy"]}
    report["realized"] = realized([{"prediction": r["output"], "correct": r["correct"], "label": r["label"]}
                                   for r in rows if r["correct"] is not None], labels, seed=m.seed)
    report["fairness"] = by_group(rows, m.min_group_size)
    report["alarms"] = _alarms(m, report)
    return _finish(report, run_dir, html)


def _series(rows: list[dict[str, Any]], buckets: int = 20) -> list[dict[str, Any]]:
    """The window in up to `buckets` consecutive slices: time, count and mean confidence of each (for the plots)."""
    out = []
    for part in np.array_split(np.arange(len(rows)), min(buckets, len(rows))) if rows else []:
        conf = [rows[i]["confidence"] for i in part if rows[i]["confidence"] is not None]
        out.append({"time": rows[part[-1]]["created"], "n": len(part), "mean_confidence": float(np.mean(conf)) if conf else None})
    return out


def _finish(report: dict[str, Any], run_dir: Path, html: Path | None) -> MonitorResult:
    if report["alarms"]:
        report["status"] = "alarm"
    if html is not None:
        from tuneloop.monitor.page import write_page

        write_page(html, report)
    return MonitorResult(report, run_dir, html)
