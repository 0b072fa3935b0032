"""`tuneloop feedback export`: turn stored feedback into training data and preference pairs.

Rules (each feedback record refers to one item: a classified text, or a chat prompt):
- A record with a correction votes for the corrected label/answer, whatever its rating.
- A record without one votes for the served answer when its score is >= `positive_score` (and
  `include_positive` is on); one with score <= `negative_score` marks the served answer as bad;
  anything between is neutral. A bad rating without a correction makes no example.
- Items are grouped by content: the same text (classify) or the same conversation before the
  answer (chat), after the cleaning and normalisation `tuneloop prepare` applies, even across
  responses. Conflicting votes on one item are settled by majority (answers compared
  normalised); a tie goes to the answer voted for most recently (commit order). Each item yields
  one example.
- Generate only: each distinct served answer rated bad gives a DPO pair with the item's winning
  answer as `chosen` (so a correction of a badly-rated answer is a pair too).
- Never exported: an example whose content (or, for chat, whose prompt without system turns) is
  in a test file, counted `test_leak`; an example already in the existing data, counted
  `in_existing` (or `conflicts_existing` when the training data has that text with another label).
  Both ids are compared before and after PII redaction, since prepared files are redacted.

Output (all deterministic: same database, same bytes): `feedback.jsonl` (always written, maybe
empty: `{"text", "label"}` or `{"messages"}` rows with `"origin": "feedback"`, sorted by content id),
`preferences.jsonl` (only when there are pairs; a stale one is removed), `report.json`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from tuneloop.config import FeedbackConfig
from tuneloop.data.clean import clean_text, normalise_for_key
from tuneloop.data.dedup import content_id
from tuneloop.data.load import read_rows
from tuneloop.data.pii import find_pii, redact
from tuneloop.data.validate import Invalid, detect_format, to_example
from tuneloop.errors import TuneloopError
from tuneloop.store import FeedbackStore
from tuneloop.store import exists as store_exists
from tuneloop.store.items import Unreadable, chat_answer, classify_labels, classify_texts

Messages = list[dict[str, str]]


@dataclass
class ExportResult:
    """What `export` wrote.

    Attributes:
        out: The output folder.
        feedback: `feedback.jsonl`: rows `tuneloop prepare` reads (may be empty).
        preferences: `preferences.jsonl` (DPO pairs), or None when there were none.
        report: The counts written to `report.json`.
    """

    out: Path
    feedback: Path
    preferences: Path | None
    report: dict[str, Any]

    @property
    def examples(self) -> int:
        """Training examples written."""
        return self.report["examples"]["written"]

    @property
    def pairs(self) -> int:
        """Preference pairs written."""
        return self.report["pairs"]["written"]

    def summary(self) -> Table:
        """A rich table: feedback read by outcome, then what was written and skipped."""
        r = self.report
        table = Table(title=f"tuneloop feedback export ({r['task']})", title_justify="left")
        table.add_column("")
        table.add_column("count", justify="right")
        table.add_column("detail")
        table.add_row("feedback read", f"{r['feedback_read']:,}", f"on {r['responses']:,} stored responses")
        for reason, n in r["feedback"].items():
            table.add_row(f"  {reason.replace('_', ' ')}", f"{n:,}", "")
        table.add_row("items", f"{r['items']:,}", f"{r['conflicting_items']:,} with conflicting votes "
                      f"({r['overruled_votes']:,} votes overruled: majority, then latest)")
        for what, path in (("examples", self.feedback), ("pairs", self.preferences)):
            skipped = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in r[what]["skipped"].items())
            table.add_row(f"{what} written", f"{r[what]['written']:,}", f"{path or '-'}" + (f"; skipped {skipped}" if skipped else ""))
        return table


@dataclass
class _Item:
    prompt: str | Messages  # the classified text, or the chat turns before the answer
    votes: list[tuple[int, str]] = field(default_factory=list)  # (commit seq, answer)
    bad: list[tuple[int, str]] = field(default_factory=list)  # served answers rated bad


@dataclass
class _References:
    ids: dict[str, str | None] = field(default_factory=dict)  # existing content id -> its label
    test_ids: set[str] = field(default_factory=set)  # test content ids, and chat prompt ids


def export(db: Path | str, out: Path | str, *, task: str, cfg: FeedbackConfig, existing: Sequence[Path] = (),
           test_files: Sequence[Path] = (), labels: Sequence[str] | None = None) -> ExportResult:
    """Turn the feedback in `db` into training data in `out` (see the module docstring for the rules).

    Args:
        db: The feedback store the server writes (a SQLite file or a database URL).
        out: Folder for feedback.jsonl, preferences.jsonl and report.json (created if missing).
        task: `classify` (uses classify responses) or `generate` (uses chat responses).
        cfg: Thresholds for good and bad ratings, and whether good ratings make examples.
        existing: Prepared data files (train/val jsonl) whose examples must not be exported again.
        test_files: Test files no exported example or pair may overlap.
        labels: Classify: the labels training knows; others are skipped (matched ignoring case).

    Returns:
        The files written and the counts.

    Raises:
        TuneloopError: the database or a data file is missing, a test file has no readable row,
            the thresholds overlap, or the task is unknown.
    """
    if task not in ("classify", "generate"):
        raise TuneloopError(f"task {task!r} is not one of classify, generate")
    if cfg.negative_score >= cfg.positive_score:
        raise TuneloopError(f"feedback.negative_score ({cfg.negative_score}) must be below feedback.positive_score "
                            f"({cfg.positive_score}), or a rating would count as both good and bad")
    if not store_exists(db):
        raise TuneloopError(f"no feedback store at {db}: serve a model first (it records feedback there), "
                            "or pass --db / set feedback.db")
    store = FeedbackStore(db, redact_pii=False)  # reading only
    try:
        n_responses, records = store.snapshot()
    finally:
        store.close()
    read_counts: Counter[str] = Counter()
    items = _collect(records, task, cfg, labels, read_counts)
    refs = _references(existing, test_files, task)
    report: dict[str, Any] = {"task": task, "feedback_read": len(records), "responses": n_responses,
                              "feedback": dict(sorted(read_counts.items())), "items": len(items),
                              "config": cfg.model_dump(mode="json", exclude={"db"})}
    rows, pairs = _curate(items, task, refs, report)
    return _write(Path(out), rows, pairs, report)


def _collect(records: Iterable[dict[str, Any]], task: str, cfg: FeedbackConfig, labels: Sequence[str] | None,
             counts: Counter[str]) -> dict[str, _Item]:
    want = "classify" if task == "classify" else "chat"
    items: dict[str, _Item] = {}
    for rec in records:
        if rec["kind"] != want:
            counts["other_task"] += 1
            continue
        try:
            key, prompt, served = _read_classify(rec) if task == "classify" else _read_chat(rec)
            corrected = _clean_answer(rec["corrected"], task) if rec["corrected"] is not None else None
        except (Unreadable, Invalid, IndexError):
            counts["unreadable"] += 1
            continue
        item = items.setdefault(key, _Item(prompt))
        counts[_vote(item, rec, served, corrected, cfg, labels)] += 1
    return items


def _vote(item: _Item, rec: dict[str, Any], served: str | None, corrected: str | None, cfg: FeedbackConfig,
          labels: Sequence[str] | None) -> str:
    """Add a record's vote (or bad mark) to its item; return how the record was counted."""
    bad = rec["score"] <= cfg.negative_score
    if bad and served is not None:
        item.bad.append((rec["seq"], served))
    if corrected is not None:
        answer, outcome = corrected, "correction"
    elif rec["score"] >= cfg.positive_score and served is not None:
        if not cfg.include_positive:
            return "positive_not_included"
        answer, outcome = served, "positive"
    else:
        return "negative_without_correction" if bad else "neutral"
    if labels is not None:
        known = {label.casefold(): label for label in labels}
        if answer not in labels and answer.casefold() not in known:
            return "unknown_label"
        answer = answer if answer in labels else known[answer.casefold()]
    item.votes.append((rec["seq"], answer))
    return outcome


def _read_classify(rec: dict[str, Any]) -> tuple[str, str, str | None]:
    text = clean_text(classify_texts(rec["request"])[rec["index"]])
    if not text:
        raise Unreadable("empty text")
    try:
        served: str | None = _clean_answer(classify_labels(rec["response"])[rec["index"]], "classify")
    except (Unreadable, Invalid, IndexError):
        served = None  # a correction still teaches the right label
    return content_id(text=text), text, served


def _read_chat(rec: dict[str, Any]) -> tuple[str, Messages, str | None]:
    request = rec["request"]
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        raise Unreadable("chat request has no messages")
    # The placeholder answer lets prepare's own validator check the turns (roles, content parts).
    ex = to_example({"messages": [*request["messages"], {"role": "assistant", "content": "-"}]}, "messages")
    prompt = ex.messages[:-1]
    for m in prompt:
        m["content"] = clean_text(m["content"], keep_lines=True)
        if not m["content"]:
            raise Invalid("empty after cleaning")
    try:
        served: str | None = _clean_answer(chat_answer(rec["response"]), "generate")
    except (Unreadable, Invalid):
        served = None
    return content_id(messages=prompt), prompt, served


def _clean_answer(answer: str, task: str) -> str:
    cleaned = clean_text(answer, keep_lines=task != "classify")
    if not cleaned:
        raise Invalid("empty after cleaning")
    return cleaned


def _winner(votes: list[tuple[int, str]]) -> tuple[str, int]:
    """The answer with most votes (compared normalised); a tie goes to the latest vote. Also the overruled votes."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for seq, answer in votes:
        groups.setdefault(normalise_for_key(answer), []).append((seq, answer))
    best = max(groups.values(), key=lambda g: (len(g), max(g)[0]))
    return max(best)[1], len(votes) - len(best)  # the latest spelling of the winning answer


def _curate(items: dict[str, _Item], task: str, refs: _References, report: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    rows: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    pair_skipped: Counter[str] = Counter()
    conflicting = overruled = 0
    for key in sorted(items):
        item = items[key]
        if not item.votes:
            continue
        answer, lost = _winner(item.votes)
        conflicting, overruled = conflicting + (lost > 0), overruled + lost
        row, ids, leak_ids = _example(item.prompt, answer)
        if leak_ids & refs.test_ids:
            skipped["test_leak"] += 1
            pair_skipped["test_leak"] += len(_rejected(item, answer))
            continue
        seen = [refs.ids[i] for i in ids if i in refs.ids]
        if seen:
            skipped["conflicts_existing" if task == "classify" and answer not in seen else "in_existing"] += 1
        else:
            rows.append(row)
        if task == "generate":
            pairs += [{"prompt": item.prompt, "chosen": answer, "rejected": bad} for bad in _rejected(item, answer)]
    report.update({"conflicting_items": conflicting, "overruled_votes": overruled,
                   "examples": {"written": len(rows), "skipped": dict(sorted(skipped.items()))},
                   "pairs": {"written": len(pairs), "skipped": dict(sorted(pair_skipped.items()))}})
    return rows, pairs


def _rejected(item: _Item, chosen: str) -> list[str]:
    """The distinct badly-rated served answers of an item other than `chosen` (latest spelling, sorted)."""
    bad = {normalise_for_key(a): a for _, a in sorted(item.bad)}
    bad.pop(normalise_for_key(chosen), None)
    return [bad[k] for k in sorted(bad)]


def _example(prompt: str | Messages, answer: str) -> tuple[dict[str, Any], set[str], set[str]]:
    """The output row, its content ids (dedup) and the ids a test file must not hold (leakage)."""
    if isinstance(prompt, str):  # classify
        ids = _text_ids(prompt)
        return {"text": prompt, "label": answer, "origin": "feedback"}, ids, ids
    messages = [*prompt, {"role": "assistant", "content": answer}]
    ids = _message_ids(messages)
    return {"messages": messages, "origin": "feedback"}, ids, ids | _prompt_ids(messages)


def _scrub(text: str) -> str:
    hits = find_pii(text)
    return redact(text, hits) if hits else text


def _text_ids(text: str) -> set[str]:
    return {content_id(text=text), content_id(text=_scrub(text))}


def _message_ids(messages: Messages) -> set[str]:
    scrubbed = [{"role": m["role"], "content": _scrub(m["content"])} for m in messages]
    return {content_id(messages=messages), content_id(messages=scrubbed)}


def _prompt_ids(messages: Messages) -> set[str]:
    # A conversation ending with an answer: its prompt is what comes before; system turns are left
    # out so that a different system prompt does not hide a leaked question.
    prompt = [m for m in messages[:-1] if m["role"] != "system"]
    return _message_ids(prompt) if prompt else set()


def _references(existing: Sequence[Path], test_files: Sequence[Path], task: str) -> _References:
    refs = _References()
    for path in existing:
        for text, messages, label in _read_reference(Path(path), task):
            for i in _text_ids(text) if messages is None else _message_ids(messages):
                refs.ids[i] = label
    for path in test_files:
        rows = list(_read_reference(Path(path), task))
        if not rows:
            raise TuneloopError(f"test file {path} has no readable {task} row, so leakage cannot be ruled out; "
                                "pass the prepared test.jsonl")
        for text, messages, _ in rows:
            refs.test_ids |= _text_ids(text) if messages is None else _message_ids(messages) | _prompt_ids(messages)
    return refs


def _read_reference(path: Path, task: str) -> Iterable[tuple[str, Messages | None, str | None]]:
    """(text, messages, label) of each readable row of a data file, cleaned like `tuneloop prepare` cleans."""
    if not path.is_file():
        raise TuneloopError(f"data file {path} does not exist")
    for raw in read_rows(str(path)):
        if raw.obj is None:
            continue
        try:
            fmt = "text_label" if task == "classify" else detect_format(raw.obj)
            ex = to_example(raw.obj, fmt or "messages")
        except Invalid:
            continue
        if task == "classify":
            yield clean_text(ex.text), None, clean_text(ex.label or "", html_tags=False)
        else:
            yield "", [{"role": m["role"], "content": clean_text(m["content"], keep_lines=True)} for m in ex.messages], None


def _write(out: Path, rows: list[dict], pairs: list[dict], report: dict[str, Any]) -> ExportResult:
    out.mkdir(parents=True, exist_ok=True)
    feedback, preferences = out / "feedback.jsonl", out / "preferences.jsonl"
    _atomic_write(feedback, "".join(_jsonl(r) for r in rows))
    if pairs:
        _atomic_write(preferences, "".join(_jsonl(p) for p in pairs))
    else:
        preferences.unlink(missing_ok=True)  # a stale file from an earlier export would train DPO on old pairs
    report["files"] = {"feedback": feedback.name, "preferences": preferences.name if pairs else None}
    _atomic_write(out / "report.json", json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False) + "\n")
    return ExportResult(out, feedback, preferences if pairs else None, report)


def _jsonl(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
