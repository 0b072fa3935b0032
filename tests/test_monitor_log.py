"""The prediction log: what the server records of every answer, off the request path, and when the database is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from test_serve import _train, call, running
from tiny import write_data
from tuneloop.store.predictions import PredictionLog, chat_row, classify_rows, read_window

DOWN = "postgresql://nobody:secret@127.0.0.1:1/none"  # nothing listens on port 1


@pytest.fixture(scope="module")
def head_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predlog")
    return _train(tiny_bert, write_data(root / "cls", "classify"), root / "head", **{"train.classify_as": "head"})


def _rows(n: int, text: str = "call me at ann@example.com") -> list[dict[str, Any]]:
    results = [{"label": "positive", "probabilities": {"negative": 0.2, "positive": 0.8}}] * n
    return classify_rows(response_id="cls-1", model="m", version="v1", texts=[text] * n, results=results,
                         latency_ms=3.0, metadata={"group": {"gender": "f"}})


def test_classify_answers_are_logged_with_probabilities_metadata_and_redacted_inputs(head_run: Path, tmp_path: Path) -> None:
    db = tmp_path / "fb.db"
    with running(model=str(head_run), feedback_db=db, name="sentiment") as (url, app):
        status, out = call(url, "POST", "/v1/classify", {"input": ["good film, mail ann@example.com", "bad food"],
                                                          "metadata": {"group": {"gender": "f"}, "source": "web"}})
        assert status == 200
        assert app.state.tuneloop.predlog.flush()
        _, health = call(url, "GET", "/health")
    rows = read_window(db)
    assert [r["idx"] for r in rows] == [0, 1] and {r["response_id"] for r in rows} == {out["id"]}
    first = rows[0]
    assert first["model"] == "sentiment" and first["kind"] == "classify"
    assert first["input"] == "good film, mail [EMAIL]" and len(first["input_hash"]) == 64
    assert first["output"] == out["data"][0]["label"]
    assert first["probabilities"] == out["data"][0]["probabilities"]
    assert first["confidence"] == max(out["data"][0]["probabilities"].values())
    assert first["metadata"] == {"group": {"gender": "f"}, "source": "web"} and first["latency_ms"] > 0
    assert health["prediction_log"]["written"] == 2 and health["prediction_log"]["ok"]


def test_hash_mode_keeps_only_the_hash_and_length(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.db", inputs="hash")
    log.log(_rows(1))
    assert log.flush()
    log.close()
    (row,) = read_window(tmp_path / "p.db")
    assert row["input"] is None and row["input_hash"] and row["input_chars"] == len("call me at ann@example.com")


def test_chat_rows_keep_the_last_user_message_and_token_counts(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.db")
    log.log([chat_row(response_id="chatcmpl-1", model="m", version=None, latency_ms=5.0, metadata=None,
                      messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
                      answer="hello", usage={"prompt_tokens": 7, "completion_tokens": 2})])
    assert log.flush()
    log.close()
    (row,) = read_window(tmp_path / "p.db", kind="chat")
    assert (row["input"], row["output"], row["prompt_tokens"], row["completion_tokens"]) == ("hi there", "hello", 7, 2)


def test_a_database_that_is_down_loses_rows_without_raising_and_says_so(head_run: Path, tmp_path: Path) -> None:
    with running(model=str(head_run), feedback_db=tmp_path / "fb.db", log_db=DOWN) as (url, app):
        status, _ = call(url, "POST", "/v1/classify", {"input": "good"})
        assert status == 200
        assert app.state.tuneloop.predlog.flush()
        _, health = call(url, "GET", "/health")
    state = health["prediction_log"]
    assert not state["ok"] and state["failed"] == 1 and state["written"] == 0
    assert "127.0.0.1" in state["last_error"] and "secret" not in state["last_error"]


def test_retention_keeps_the_newest_rows_within_the_size_bound(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.db", max_rows=10)
    for i in range(5):
        log.log(_rows(5, text=f"text {i}"))
        assert log.flush()
    assert log.purge() == 15
    log.close()
    rows = read_window(tmp_path / "p.db")
    assert len(rows) == 10 and rows[-1]["input"] == "text 4"
    assert len(read_window(tmp_path / "p.db", last=3)) == 3


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    log = PredictionLog(DOWN, queue_size=1)
    log.log(_rows(50))  # the writer can take at most a couple before the queue is full
    assert log.dropped >= 40
    log.close(timeout=10)


def test_metrics_endpoint_counts_requests_errors_and_the_log(head_run: Path, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with running(model=str(head_run), feedback_db=tmp_path / "fb.db", name="sentiment") as (url, app):
        assert call(url, "POST", "/v1/classify", {"input": ["good", "bad"]})[0] == 200
        assert call(url, "POST", "/v1/classify", {"input": "good"}, key="wrong")[0] == 401
        assert app.state.tuneloop.predlog.flush()
        status, text = call(url, "GET", "/metrics", key=None)
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("tuneloop_requests_total", (("path", "/v1/classify"), ("status", "200")))] == 1
    assert samples[("tuneloop_requests_total", (("path", "/v1/classify"), ("status", "401")))] == 1
    assert samples[("tuneloop_model_info", (("kind", "head"), ("model", "sentiment"), ("task", "classify")))] == 1
    assert samples[("tuneloop_prediction_log_rows", (("outcome", "written"),))] == 2
    assert samples[("tuneloop_request_seconds_count", (("path", "/v1/classify"),))] == 2


def test_the_log_can_be_turned_off(head_run: Path, tmp_path: Path) -> None:
    with running(model=str(head_run), feedback_db=tmp_path / "fb.db", log_predictions=False) as (url, app):
        assert call(url, "POST", "/v1/classify", {"input": "good"})[0] == 200
        _, health = call(url, "GET", "/health")
    assert health["prediction_log"] is None and app.state.tuneloop.predlog is None
