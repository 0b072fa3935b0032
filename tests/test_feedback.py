"""Feedback store (durable, validated, idempotent, many writers) and its export into training data."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tuneloop import feedback
from tuneloop.config import FeedbackConfig, load_config
from tuneloop.errors import TuneloopError
# Only the store at import time: spawned writer processes import this module, and curation
# (feedback.export) pulls in the whole data pipeline.
from tuneloop.feedback import MAX_TEXT_CHARS, FeedbackError, FeedbackStore, parse_rating
from postgres import pg_server, pg_url  # noqa: F401  (fixtures: a real PostgreSQL server)

LABELS = ["negative", "positive"]
SYSTEM = {"role": "system", "content": "Answer briefly."}


def _classify(store: FeedbackStore, texts: list[str], labels: list[str]) -> str:
    response = {"object": "classification", "data": [{"index": i, "label": lab} for i, lab in enumerate(labels)]}
    return store.record_response(model="m1", kind="classify", request={"input": texts}, response=response)


def _chat(store: FeedbackStore, question: str, answer: str, system: dict | None = SYSTEM) -> str:
    messages = ([system] if system else []) + [{"role": "user", "content": question}]
    response = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    return store.record_response(model="m1", kind="chat", request={"messages": messages, "max_tokens": 32}, response=response)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- the store -----------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a SQLite file (the default), or a database on a real PostgreSQL server."""
    return str(tmp_path / "fb" / "feedback.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_round_trip_survives_reopening(target: str) -> None:
    db = target
    store = FeedbackStore(db)
    chat_id = _chat(store, "What is 2+2?", "4")
    cls_id = _classify(store, ["great film"], ["positive"])
    given = store.record_response(model="m1", kind="chat", request={"messages": []}, response={}, response_id="chatcmpl-mine")
    assert chat_id.startswith("chatcmpl-") and cls_id.startswith("cls-") and given == "chatcmpl-mine"
    rec = store.add_feedback(response_id=chat_id, rating="down", corrected="Four.", comment="be precise")
    assert rec["id"].startswith("fb-") and rec["score"] == 0.0 and rec["index"] == 0 and rec["corrected"] == "Four."
    store.close()

    again = FeedbackStore(db)  # a new process would see the same: every write was committed
    assert again.count() == 1
    stored = again.get_response(chat_id)
    assert stored["kind"] == "chat" and stored["model"] == "m1" and stored["n_items"] == 1
    assert stored["request"]["messages"][1]["content"] == "What is 2+2?"
    assert stored["response"]["choices"][0]["message"]["content"] == "4"
    assert again.get_response("chatcmpl-unknown") is None
    _, records = again.snapshot()
    assert [(r["response_id"], r["rating"], r["comment"]) for r in records] == [(chat_id, "down", "be precise")]
    if again.engine.dialect.name == "sqlite":
        with again.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: every commit fsynced


@pytest.mark.parametrize("rating, canonical, score", [
    ("up", "up", 1.0), ("thumbs_up", "up", 1.0), ("DOWN", "down", 0.0), ("thumbs_down", "down", 0.0),
    (5, 5, 1.0), (1, 1, 0.0), (3, 3, 0.5), ("4", 4, 0.75),
])
def test_ratings_are_normalised_to_a_score(rating: object, canonical: object, score: float) -> None:
    assert parse_rating(rating) == (canonical, score)


@pytest.mark.parametrize("rating", [0, 6, -1, True, 2.5, "meh", None, "0"])
def test_bad_ratings_are_rejected(rating: object) -> None:
    with pytest.raises(FeedbackError, match="not valid: use 'up' or 'down'"):
        parse_rating(rating)


def test_invalid_feedback_is_rejected_with_a_reason(target: str) -> None:
    store = FeedbackStore(target)
    rid = _classify(store, ["a", "b", "c"], ["positive", "negative", "positive"])
    cases = [
        ({"response_id": "cls-nope", "rating": "up", "index": 0}, "unknown response id 'cls-nope': feedback must refer to an id this server returned"),
        ({"response_id": rid, "rating": "up"}, "index is required: .* holds 3 answers; say which one \\(0 to 2\\)"),
        ({"response_id": rid, "rating": "up", "index": 3}, "index 3 is out of range"),
        ({"response_id": rid, "rating": "up", "index": True}, "index True is out of range"),
        ({"response_id": rid, "rating": 9, "index": 0}, "rating 9 is not valid"),
        ({"response_id": rid, "rating": "up", "index": 0, "corrected": "x" * (MAX_TEXT_CHARS + 1)},
         "corrected has 8,001 characters, over the limit of 8,000"),
        ({"response_id": rid, "rating": "up", "index": 0, "comment": "y" * (MAX_TEXT_CHARS + 1)}, "comment has 8,001 characters"),
        ({"response_id": rid, "rating": "up", "index": 0, "corrected": "  "}, "corrected is empty"),
        ({"response_id": rid, "rating": "up", "index": 0, "comment": 5}, "comment must be a string"),
        ({"response_id": 12, "rating": "up"}, "response_id must be a non-empty string"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FeedbackError, match=message):
            store.add_feedback(**kwargs)
    assert store.count() == 0
    ok = store.add_feedback(response_id=rid, rating=2, index=2, corrected="x" * MAX_TEXT_CHARS)  # at the limit
    assert ok["index"] == 2 and ok["score"] == 0.25
    with pytest.raises(FeedbackError, match="already recorded"):
        store.record_response(model="m", kind="chat", request={}, response={}, response_id=rid)
    with pytest.raises(FeedbackError, match="kind 'embed' is not one of chat, classify"):
        store.record_response(model="m", kind="embed", request={}, response={})


def test_same_idempotency_key_is_stored_once(target: str) -> None:
    store = FeedbackStore(target)
    rid = _chat(store, "hi", "hello")
    first = store.add_feedback(response_id=rid, rating="up", idempotency_key="retry-1")
    again = store.add_feedback(response_id=rid, rating="down", comment="changed my mind", idempotency_key="retry-1")
    other = store.add_feedback(response_id=rid, rating="down", idempotency_key="retry-2")
    assert again == first and again["rating"] == "up"
    assert other["id"] != first["id"] and store.count() == 2


def test_the_same_key_posted_at_once_by_many_threads_is_stored_once(target: str) -> None:
    store = FeedbackStore(target)
    rid = _chat(store, "hi", "hello")
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: store.add_feedback(response_id=rid, rating=1 + i % 5, idempotency_key="same"), range(32)))
    assert len({r["id"] for r in got}) == 1 and store.count() == 1


def _post_feedback(args: tuple[str, list[str], int, int]) -> int:
    """One client process: threads post `n` feedback records, then retry the first 25 (same keys)."""
    db, response_ids, start, n = args
    store = FeedbackStore(db)

    def post(i: int) -> str:
        rid = response_ids[i % len(response_ids)]
        return store.add_feedback(response_id=rid, rating=1 + i % 5, comment=f"c{i}", idempotency_key=f"key-{i}")["id"]

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(post, range(start, start + n)))
        retried = list(pool.map(post, range(start, start + 25)))
    store.close()
    assert retried == ids[:25]  # a retry gets the first record back
    return len(set(ids))


def test_concurrent_writers_from_several_processes_store_each_record_once(target: str) -> None:
    db = target
    store = FeedbackStore(db)
    response_ids = [_chat(store, f"question {i}", f"answer {i}") for i in range(10)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        done = pool.map(_post_feedback, [(str(db), response_ids, k * 250, 250) for k in range(4)])
    assert done == [250] * 4
    assert store.count() == 1000
    _, records = store.snapshot()
    assert len({r["id"] for r in records}) == 1000
    assert sorted(r["idempotency_key"] for r in records) == sorted(f"key-{i}" for i in range(1000))
    assert sorted(r["comment"] for r in records) == sorted(f"c{i}" for i in range(1000))



WRITER = """
import sys
from tuneloop.feedback import FeedbackStore
store = FeedbackStore(sys.argv[1])
for i in range(100_000):
    rec = store.add_feedback(response_id=sys.argv[2], rating="up", comment=f"c{i}", idempotency_key=f"k{i}")
    print(rec["id"], flush=True)  # acknowledged: add_feedback returned
"""


def test_a_killed_writer_loses_no_acknowledged_record(target: str) -> None:
    store = FeedbackStore(target)
    rid = _chat(store, "q", "a")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, target, rid], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    for line in proc.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 200:
            proc.send_signal(signal.SIGKILL)  # mid-write, as a crash would
            break
    acknowledged += proc.stdout.read().split()  # what it printed before it died
    proc.wait()
    _, records = FeedbackStore(target).snapshot()
    assert set(acknowledged) <= {r["id"] for r in records}
    assert len(acknowledged) >= 200


def test_only_what_export_needs_is_stored_and_personal_data_is_redacted(target: str) -> None:
    store = FeedbackStore(target)
    big = {"messages": [{"role": "user", "content": "Mail me at ann@example.com or call +1 415 555 2671", "name": "ann"}],
           "max_tokens": 32, "temperature": 0.3, "user": "customer-42", "metadata": {"x": "y" * 10_000}}
    answer = {"id": "x", "object": "chat.completion", "usage": {"prompt_tokens": 9},
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Wrote to ann@example.com."}}]}
    rid = store.record_response(model="m1", kind="chat", request=big, response=answer)
    stored = store.get_response(rid)
    assert stored["request"] == {"messages": [{"role": "user", "content": "Mail me at [EMAIL] or call [PHONE]"}]}
    assert stored["response"] == {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Wrote to [EMAIL]."}}]}
    cls = _classify(store, ["call 415-555-2671 now", "fine"], ["spam", "ham"])
    assert store.get_response(cls)["request"] == {"input": ["call [PHONE] now", "fine"]}
    assert store.get_response(cls)["response"] == {"labels": ["spam", "ham"]}
    rec = store.add_feedback(response_id=rid, rating="down", comment="reach me at bob@example.org")
    assert rec["comment"] == "reach me at [EMAIL]"


def test_unrated_responses_are_purged_after_the_retention_period(target: str) -> None:
    store = FeedbackStore(target, retention_days=30)
    old_unrated, old_rated = _chat(store, "old", "a"), _chat(store, "old rated", "b")
    store.add_feedback(response_id=old_rated, rating="up")
    with store.engine.begin() as c:  # age them: 31 days ago
        c.exec_driver_sql("UPDATE responses SET created = '2000-01-01T00:00:00.000000+00:00'")
    fresh = _chat(store, "new", "c")
    assert store.purge() == 1
    assert store.get_response(old_unrated) is None
    assert store.get_response(old_rated) is not None and store.get_response(fresh) is not None
    assert FeedbackStore(target, retention_days=None).purge() == 0  # keep everything


@pytest.mark.parametrize("bad", ["postgresql:/user@host/db", "mysql://u:pw@host/db", "postgres:x", "http://host/db"])
def test_a_target_that_is_neither_a_path_nor_a_supported_url_is_refused(bad: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TuneloopError, match="the feedback store: .*(neither a file path nor|not supported)") as err:
        FeedbackStore(bad)
    assert "pw" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # never a local file named after the URL


def test_a_store_from_before_versioning_opens_and_keeps_its_records(tmp_path: Path) -> None:
    import sqlite3

    con = sqlite3.connect(tmp_path / "old.db")  # the schema of the SQLite-only store, ratings untyped
    con.executescript("""
        CREATE TABLE responses (id TEXT PRIMARY KEY, created TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL,
            n_items INTEGER NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL);
        CREATE TABLE feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            response_id TEXT NOT NULL REFERENCES responses(id), idx INTEGER NOT NULL, rating NOT NULL,
            score REAL NOT NULL, corrected TEXT, comment TEXT, idempotency_key TEXT UNIQUE, created TEXT NOT NULL);
        INSERT INTO responses VALUES ('cls-1', '2026-01-01T00:00:00+00:00', 'm', 'classify', 1, '{"input": ["hi"]}', '{"labels": ["x"]}');
        INSERT INTO feedback (id, response_id, idx, rating, score, created) VALUES ('fb-1', 'cls-1', 0, 4, 0.75, '2026-01-01');
    """)
    con.close()
    store = FeedbackStore(tmp_path / "old.db")
    _, records = store.snapshot()
    assert [(r["id"], r["rating"], r["request"]) for r in records] == [("fb-1", 4, {"input": ["hi"]})]
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT version FROM tuneloop_schema WHERE component = 'feedback'").scalar() == 2


def _open_store(target: str) -> str:
    FeedbackStore(target).close()
    return "ok"


def test_many_processes_opening_an_empty_database_at_once_create_the_schema_once(target: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert pool.map(_open_store, [target] * 8) == ["ok"] * 8
    store = FeedbackStore(target)
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT component, version FROM tuneloop_schema").all() == [("feedback", 2)]


# --- export: classify ----------------------------------------------------------------------------

@pytest.fixture()
def classify_db(target: str) -> str:
    db = target  # SQLite and PostgreSQL: export reads both the same way
    store = FeedbackStore(db)
    batch = _classify(store, ["I loved this film", "What a bad day", "It was a waste of time"],
                      ["negative", "negative", "negative"])
    store.add_feedback(response_id=batch, index=0, rating="down", corrected="positive")  # correction
    store.add_feedback(response_id=batch, index=1, rating="up")  # served label confirmed
    store.add_feedback(response_id=batch, index=2, rating=1)  # bad, no correction: nothing
    # Conflicting corrections on one text (asked twice, spelled differently): majority wins.
    for label in ["positive", "negative", "POSITIVE"]:
        rid = _classify(store, ["the  ending was OK"], ["negative"])
        store.add_feedback(response_id=rid, index=0, rating="down", corrected=label)
    # A tie: the latest vote wins.
    for label in ["positive", "negative"]:
        rid = _classify(store, ["meh movie"], ["positive"])
        store.add_feedback(response_id=rid, rating=3, corrected=label)
    rid = _classify(store, ["so so", "write to ann@example.com now", "popcorn was cold"], ["positive"] * 3)
    store.add_feedback(response_id=rid, index=0, rating="down", corrected="neutral")  # not a known label
    store.add_feedback(response_id=rid, index=1, rating="down", corrected="negative")  # a test row (redacted there)
    store.add_feedback(response_id=rid, index=2, rating="down", corrected="Negative")  # already in training data
    store.add_feedback(response_id=_chat(store, "hi", "hello"), rating="up")  # not this task
    store.close()
    return db


def test_export_classify_turns_feedback_into_labelled_rows(classify_db: str, tmp_path: Path) -> None:
    test = _write_jsonl(tmp_path / "test.jsonl", [{"text": "write to [EMAIL] now", "label": "negative"}])
    train = _write_jsonl(tmp_path / "train.jsonl", [{"text": "Popcorn  was cold", "label": "negative"},
                                                    {"text": "unrelated", "label": "positive"}])
    res = feedback.export(classify_db, tmp_path / "out", task="classify", cfg=FeedbackConfig(), existing=[train],
                 test_files=[test], labels=LABELS)
    rows = _jsonl(res.feedback)
    got = {r["text"]: r["label"] for r in rows}
    assert got == {"I loved this film": "positive", "What a bad day": "negative",
                   "the ending was OK": "positive", "meh movie": "negative"}
    assert all(r["origin"] == "feedback" for r in rows)
    assert res.preferences is None and not (tmp_path / "out" / "preferences.jsonl").exists()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report == res.report
    assert report["feedback_read"] == 12 and report["responses"] == 8
    assert report["feedback"] == {"correction": 8, "negative_without_correction": 1, "other_task": 1, "positive": 1,
                                  "unknown_label": 1}
    assert report["conflicting_items"] == 2 and report["overruled_votes"] == 2
    assert report["examples"] == {"written": 4, "skipped": {"in_existing": 1, "test_leak": 1}}
    assert "feedback export (classify)" in res.summary().title


def test_export_skips_a_correction_that_contradicts_training_data(classify_db: str, tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", [{"text": "i loved this film", "label": "negative"}])
    res = feedback.export(classify_db, tmp_path / "out", task="classify", cfg=FeedbackConfig(), existing=[train])
    assert "I loved this film" not in {r["text"] for r in _jsonl(res.feedback)}
    assert res.report["examples"]["skipped"] == {"conflicts_existing": 1}


def test_export_without_positive_examples(classify_db: str, tmp_path: Path) -> None:
    res = feedback.export(classify_db, tmp_path / "out", task="classify", cfg=FeedbackConfig(include_positive=False))
    assert "What a bad day" not in {r["text"] for r in _jsonl(res.feedback)}
    assert res.report["feedback"]["positive_not_included"] == 1


# --- export: generate ----------------------------------------------------------------------------

@pytest.fixture()
def chat_db(tmp_path: Path) -> Path:
    db = tmp_path / "feedback.db"
    store = FeedbackStore(db)
    rid = _chat(store, "Capital of France?", "Berlin.")
    store.add_feedback(response_id=rid, rating=1, corrected="Paris.")  # correction of a bad answer
    rid = _chat(store, "Name a primary colour.", "Red.")
    store.add_feedback(response_id=rid, rating="up")
    rid = _chat(store, "name a  primary colour.", "Purple.")  # same prompt, normalised
    store.add_feedback(response_id=rid, rating="down")
    rid = _chat(store, "Is this happy: the film was great", "no", system={"role": "system", "content": "Other."})
    store.add_feedback(response_id=rid, rating="down", corrected="yes")  # the prompt is a test question
    rid = _chat(store, "Say hello.", "Hello!")
    store.add_feedback(response_id=rid, rating=5)  # already in the training data
    rid = _chat(store, "Tell a joke.", "No.")
    store.add_feedback(response_id=rid, rating=2)  # 2 stars = 0.25 <= negative_score: bad, no correction
    store.close()
    return db


def test_export_generate_makes_sft_rows_and_preference_pairs(chat_db: Path, tmp_path: Path) -> None:
    test = _write_jsonl(tmp_path / "test.jsonl", [{"messages": [
        SYSTEM, {"role": "user", "content": "Is this happy: the film was great"}, {"role": "assistant", "content": "yes"}]}])
    train = _write_jsonl(tmp_path / "train.jsonl", [{"messages": [
        SYSTEM, {"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}]}])
    res = feedback.export(chat_db, tmp_path / "out", task="generate", cfg=FeedbackConfig(), existing=[train], test_files=[test])
    answers = {r["messages"][1]["content"]: r["messages"][-1]["content"] for r in _jsonl(res.feedback)}
    assert answers == {"Capital of France?": "Paris.", "Name a primary colour.": "Red."}
    assert all(r["messages"][0] == SYSTEM and r["messages"][-1]["role"] == "assistant" for r in _jsonl(res.feedback))
    pairs = _jsonl(res.preferences)
    assert {(p["prompt"][-1]["content"], p["chosen"], p["rejected"]) for p in pairs} == {
        ("Capital of France?", "Paris.", "Berlin."), ("Name a primary colour.", "Red.", "Purple.")}
    assert all(p["prompt"][0] == SYSTEM and p["prompt"][-1]["role"] == "user" for p in pairs)
    assert res.report["examples"] == {"written": 2, "skipped": {"in_existing": 1, "test_leak": 1}}
    assert res.report["pairs"] == {"written": 2, "skipped": {"test_leak": 1}}
    assert res.report["feedback"]["negative_without_correction"] == 2  # "Purple." and "No."


def test_export_is_deterministic_and_removes_stale_pairs(chat_db: Path, tmp_path: Path) -> None:
    a = feedback.export(chat_db, tmp_path / "a", task="generate", cfg=FeedbackConfig())
    b = feedback.export(chat_db, tmp_path / "b", task="generate", cfg=FeedbackConfig())
    for name in ("feedback.jsonl", "preferences.jsonl", "report.json"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes()
    # Exporting into the same folder a set with no pairs must not leave the old pairs behind.
    again = feedback.export(chat_db, tmp_path / "a", task="classify", cfg=FeedbackConfig())
    assert again.preferences is None and not (tmp_path / "a" / "preferences.jsonl").exists()
    assert again.feedback.read_text() == "" and again.report["feedback"] == {"other_task": 6}
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_export_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="no feedback store at .*missing.db"):
        feedback.export(tmp_path / "missing.db", tmp_path / "out", task="classify", cfg=FeedbackConfig())
    FeedbackStore(tmp_path / "f.db").close()
    empty_test = _write_jsonl(tmp_path / "test.jsonl", [{"something": "else"}])
    with pytest.raises(TuneloopError, match="test file .* has no readable classify row"):
        feedback.export(tmp_path / "f.db", tmp_path / "out", task="classify", cfg=FeedbackConfig(), test_files=[empty_test])
    with pytest.raises(TuneloopError, match="negative_score .* must be below"):
        feedback.export(tmp_path / "f.db", tmp_path / "out", task="classify",
               cfg=FeedbackConfig(positive_score=0.5, negative_score=0.5))


def test_export_counts_responses_it_cannot_read(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.db")
    for kind, request, response in [("classify", {"foo": 1}, {}), ("classify", ["x"], None), ("chat", {"messages": "hi"}, {}),
                                    ("chat", {"messages": [{"role": "robot", "content": "hi"}]}, {})]:
        rid = store.record_response(model="m", kind=kind, request=request, response=response)
        store.add_feedback(response_id=rid, rating="up", corrected="positive")
    store.close()
    for task in ("classify", "generate"):
        res = feedback.export(tmp_path / "f.db", tmp_path / task, task=task, cfg=FeedbackConfig())
        assert res.report["feedback"] == {"other_task": 2, "unreadable": 2} and res.examples == 0


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f.db").write_text("not a database, just text" * 100)
    with pytest.raises(TuneloopError, match="cannot open the feedback store .*f.db"):
        FeedbackStore(tmp_path / "f.db")


@pytest.mark.parametrize("task", ["classify", "generate"])
def test_exported_rows_pass_prepare_cleanly(task: str, classify_db: str, chat_db: Path, tmp_path: Path) -> None:
    db = classify_db if task == "classify" else chat_db
    res = feedback.export(db, tmp_path / "fb", task=task, cfg=FeedbackConfig(), labels=LABELS if task == "classify" else None)
    cfg = load_config(None, {"task": task, "prepare.inputs": [str(res.feedback)], "prepare.out": tmp_path / "prep",
                             "prepare.val_fraction": 0.0, "prepare.test_fraction": 0.0})
    from tuneloop import data

    prepared = data.run(cfg)
    assert prepared.counts["read"] == res.examples and prepared.counts["rejected"] == 0
    assert prepared.splits["train"] == res.examples
