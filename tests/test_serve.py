"""The server on tiny trained runs: the real OpenAI client, classify, auth, limits, feedback, batching, hot swap.

Every test talks HTTP to a real uvicorn server running in a thread of the test process.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
import uvicorn

from tiny import write_data
from tuneloop import train
from tuneloop.config import load_config
from tuneloop.errors import TuneloopError
from tuneloop.runs import load_trained
from tuneloop.serve import ServeSettings, create_app, settings_from
from tuneloop.serve.batcher import Batcher

KEY = "test-key"
FAST = {"seed": 0, "train.threads": 1, "train.precision": "fp32", "train.batch_size": 8, "train.max_steps": 2,
        "train.eval_every": 2, "train.save_every": 2, "train.patience": None}


def _train(base: Path, data: Path, out: Path, **over: object) -> Path:
    train.run(load_config(None, {**FAST, "base": str(base), "train.data": data, "train.out": out, **over}))
    return out


@pytest.fixture(scope="module")
def runs(tiny_llama: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny runs, two steps each: chat (generate), classify head, classify-as-generate."""
    root = tmp_path_factory.mktemp("serve")
    gen, cls = write_data(root / "gen", "generate"), write_data(root / "cls", "classify")
    return {
        "chat": _train(tiny_llama, gen, root / "chat"),
        "head": _train(tiny_bert, cls, root / "head", **{"train.classify_as": "head"}),
        "clslm": _train(tiny_llama, cls, root / "clslm"),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(**settings: Any) -> Iterator[tuple[str, Any]]:
    """A real uvicorn server on a free port in a thread; yields its base URL and the app."""
    port = _free_port()
    app = create_app(ServeSettings(**{"api_keys": [KEY], "port": port, **settings}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


def call(url: str, method: str, path: str, body: Any = None, *, key: str | None = KEY,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request with the standard library; returns status and parsed JSON (or text)."""
    status, _, out = call_with_headers(url, method, path, body, key=key, headers=headers)
    return status, out


def call_with_headers(url: str, method: str, path: str, body: Any = None, *, key: str | None = KEY,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """`call`, also returning the response headers."""
    host, port = url.removeprefix("http://").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=60)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    hdrs = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    con.request(method, path, body=data, headers=hdrs)
    resp = con.getresponse()
    raw = resp.read().decode()
    con.close()
    try:
        return resp.status, dict(resp.getheaders()), json.loads(raw)
    except json.JSONDecodeError:
        return resp.status, dict(resp.getheaders()), raw


@pytest.fixture(scope="module")
def chat_server(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    # A long batch wait makes requests sent together land in one batch however slow the machine is.
    db = tmp_path_factory.mktemp("fb") / "feedback.db"
    with running(model=str(runs["chat"]), feedback_db=db, batch_wait_ms=200) as s:
        yield s


@pytest.fixture(scope="module")
def head_server(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    db = tmp_path_factory.mktemp("fb") / "feedback.db"
    with running(model=str(runs["head"]), feedback_db=db, name="sentiment") as s:
        yield s


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


HELLO = [{"role": "user", "content": "hello, is this good"}]

# ---------------------------------------------------------------- OpenAI compatibility


def test_openai_client_chat_round_trip(chat_server: tuple[str, Any]) -> None:
    url, app = chat_server
    client = _client(url)
    done = client.chat.completions.create(model="anything", messages=HELLO, max_tokens=6, temperature=0)
    assert done.id.startswith("chatcmpl-") and done.model == "chat" and done.object == "chat.completion"
    assert isinstance(done.choices[0].message.content, str) and done.choices[0].message.role == "assistant"
    assert done.usage.completion_tokens <= 6 and done.usage.prompt_tokens > 0
    assert done.choices[0].finish_reason in ("stop", "length")
    stored = app.state.tuneloop.store.get_response(done.id)  # recorded, so feedback can refer to it
    assert stored["kind"] == "chat" and stored["request"]["messages"] == HELLO
    assert [m.id for m in client.models.list().data] == ["chat"]


def test_streaming_gives_the_same_text_as_a_plain_request(chat_server: tuple[str, Any]) -> None:
    client = _client(chat_server[0])
    for settings in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}):
        plain = client.chat.completions.create(model="chat", messages=HELLO, max_tokens=12, **settings)
        chunks = list(client.chat.completions.create(model="chat", messages=HELLO, max_tokens=12, stream=True,
                                                     stream_options={"include_usage": True}, **settings))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == plain.choices[0].message.content
        assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].choices[0].delta.role == "assistant"
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == [plain.choices[0].finish_reason]
        assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_raw_stream_is_server_sent_events_ending_with_done(chat_server: tuple[str, Any]) -> None:
    status, text = call(chat_server[0], "POST", "/v1/chat/completions",
                        {"messages": HELLO, "max_tokens": 3, "stream": True, "temperature": 0})
    events = [e for e in text.split("\n\n") if e]
    assert status == 200 and all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_seed_stop_strings_and_max_tokens(chat_server: tuple[str, Any]) -> None:
    client = _client(chat_server[0])

    def ask(**kw: Any) -> Any:
        return client.chat.completions.create(model="chat", messages=HELLO, temperature=1.0, seed=3, **kw).choices[0]

    long = ask(max_tokens=16)
    assert ask(max_tokens=16).message.content == long.message.content  # same seed, same answer
    text = long.message.content
    assert long.finish_reason == "length" and len(text) >= 4, text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = ask(max_tokens=16, stop=[stop])
    assert cut.finish_reason == "stop" and cut.message.content == text[: text.find(stop)]


def test_concurrent_requests_are_batched_and_answered_as_alone(chat_server: tuple[str, Any]) -> None:
    url, app = chat_server
    prompts = [[{"role": "user", "content": "good " * n}] for n in (1, 4, 9, 2)]

    def ask(i: int) -> tuple[str, str]:
        out = _client(url).chat.completions.create(model="chat", messages=prompts[i], max_tokens=4 + i, temperature=0)
        return out.choices[0].message.content, out.usage.completion_tokens

    alone = [ask(i) for i in range(4)]
    calls_before = len(app.state.tuneloop.batcher.calls)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, range(4)))
    assert together == alone  # left padding and per-row max_tokens do not change an answer
    assert max(app.state.tuneloop.batcher.calls[calls_before:]) > 1


# ---------------------------------------------------------------- classify


def test_classify_head_labels_and_probabilities(head_server: tuple[str, Any]) -> None:
    url, _ = head_server
    status, out = call(url, "POST", "/v1/classify", {"input": ["good movie", "terrible food", "x"]})
    assert status == 200 and out["id"].startswith("cls-") and out["model"] == "sentiment"
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    for d in out["data"]:
        assert set(d["probabilities"]) == {"negative", "positive"}
        assert sum(d["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert d["label"] == max(d["probabilities"], key=d["probabilities"].get)
    status, one = call(url, "POST", "/v1/classify", {"texts": ["good movie"]})
    assert one["data"][0]["probabilities"] == pytest.approx(out["data"][0]["probabilities"], abs=1e-4)


def test_classify_as_generate_scores_each_label_as_the_answer(runs: dict[str, Path], tmp_path: Path) -> None:
    from tuneloop.encode import classify_messages
    from tuneloop.serve.classify import classify

    loaded = load_trained(runs["clslm"])
    texts = ["good movie", "the film was sad and bad"]
    got = classify(loaded, texts)
    tok, model = loaded.tokenizer, loaded.model
    for text, result in zip(texts, got):
        scores = []
        for label in loaded.labels:  # the plain way: full forward, sum the answer tokens' log-probs
            msgs = [*classify_messages(text, loaded.labels), {"role": "assistant", "content": label}]
            prompt = tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(msgs, tokenize=False).rstrip()
            p_ids, ids = tok(prompt, add_special_tokens=False)["input_ids"], tok(full, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
            scores.append(sum(logp[i - 1, ids[i]].item() for i in range(len(p_ids), len(ids))))
        want = torch.tensor(scores).softmax(0).tolist()
        assert list(result["probabilities"].values()) == pytest.approx(want, abs=1e-4)
        alone = classify(loaded, [text])[0]  # no batch-shared prefix: the same numbers
        assert alone["probabilities"] == pytest.approx(result["probabilities"], abs=1e-4)
    with running(model=str(runs["clslm"]), feedback_db=tmp_path / "fb.db") as (url, _):
        status, out = call(url, "POST", "/v1/classify", {"input": texts})
        assert status == 200 and [d["label"] for d in out["data"]] == [r["label"] for r in got]


def test_a_model_serves_only_its_task(chat_server: tuple[str, Any], head_server: tuple[str, Any]) -> None:
    status, out = call(chat_server[0], "POST", "/v1/classify", {"input": ["a"]})
    assert status == 400 and "/v1/chat/completions" in out["error"]["message"]
    status, out = call(head_server[0], "POST", "/v1/chat/completions", {"messages": HELLO})
    assert status == 400 and "/v1/classify" in out["error"]["message"]


# ---------------------------------------------------------------- auth and limits


def test_api_key_is_required(head_server: tuple[str, Any]) -> None:
    url, _ = head_server
    for key, code in ((None, "missing_api_key"), ("wrong", "invalid_api_key")):
        status, out = call(url, "POST", "/v1/classify", {"input": ["a"]}, key=key)
        assert status == 401 and out["error"]["code"] == code
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    status, health = call(url, "GET", "/health", key=None)  # health and docs stay open
    assert status == 200 and health["model"] == "sentiment" and health["status"] == "ok" and health["uptime_s"] >= 0
    assert call(url, "GET", "/openapi.json", key=None)[1]["paths"]["/v1/classify"]


def test_settings_refuse_no_auth_off_loopback_and_bad_options(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TuneloopError, match="loopback"):
        ServeSettings(host="0.0.0.0", no_auth=True).check()
    with pytest.raises(TuneloopError, match="--api-key"):
        ServeSettings().check()
    ServeSettings(host="::1", no_auth=True).check()
    monkeypatch.setenv("TUNELOOP_API_KEYS", "a, b")
    assert ServeSettings(api_keys=["c"]).keys() == ["c", "a", "b"]
    assert settings_from(port=None, max_batch=4).port == 8000  # None: not given
    with pytest.raises(TuneloopError, match="port"):
        settings_from(port=70_000)


@pytest.mark.parametrize("body,status,param", [
    ('{"messages": [', 400, None),                                                    # malformed JSON
    ({"messages": HELLO, "max_tokens": 100_000}, 400, "max_tokens"),                  # over the server limit
    ({"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": HELLO, "max_token": 5}, 400, "max_token"),                          # misspelt field
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": HELLO, "n": 2}, 400, "n"),
    ({"messages": [{"role": "user", "content": "good " * 400}], "max_tokens": 300}, 400, "messages"),  # context
    ({}, 400, "messages"),
    ('{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "messages.0.content"),  # not encodable
    ('{"messages": [{"role": "user", "content": "a\\u0000b"}]}', 400, "messages.0.content"),  # PostgreSQL refuses NUL
    ('[1, 2]', 400, None),
])
def test_bad_chat_requests_get_4xx_with_a_reason(chat_server: tuple[str, Any], body: Any, status: int,
                                                  param: str | None) -> None:
    got, out = call(chat_server[0], "POST", "/v1/chat/completions", body)
    assert got == status and set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["param"] == param and out["error"]["message"]


def test_body_size_limit(head_server: tuple[str, Any]) -> None:
    url, _ = head_server
    big = json.dumps({"input": ["x" * 1_100_000]})
    status, out = call(url, "POST", "/v1/classify", big)
    assert status == 413 and "1,000,000" in out["error"]["message"]
    status, out = call(url, "POST", "/v1/classify", {"input": ["x"] * 300})  # too many texts
    assert status == 400 and out["error"]["code"] == "too_many_inputs"
    assert call(url, "POST", "/v1/classify", {"input": []})[0] == 400


def test_a_client_leaving_a_stream_does_not_break_the_server(chat_server: tuple[str, Any]) -> None:
    url, _ = chat_server
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"messages": HELLO, "max_tokens": 200, "stream": True, "temperature": 0})
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        assert b"200 OK" in sock.recv(200)  # then hang up mid-stream
    status, out = call(url, "POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 2})
    assert status == 200 and out["usage"]["completion_tokens"] <= 2


# ---------------------------------------------------------------- feedback


def test_feedback_is_stored_once_per_idempotency_key(head_server: tuple[str, Any]) -> None:
    url, app = head_server
    store = app.state.tuneloop.store
    _, out = call(url, "POST", "/v1/classify", {"input": ["good movie", "bad food"]})
    before = store.count()
    body = {"response_id": out["id"], "rating": "down", "index": 1, "corrected": "negative", "comment": "wrong"}
    s1, first = call(url, "POST", "/v1/feedback", body, headers={"Idempotency-Key": "k-1"})
    s2, again = call(url, "POST", "/v1/feedback", body, headers={"Idempotency-Key": "k-1"})
    assert s1 == s2 == 200 and first["id"] == again["id"] and first["score"] == 0.0 and store.count() == before + 1
    status, err = call(url, "POST", "/v1/feedback", {"response_id": "cls-nope", "rating": 5})
    assert status == 404 and err["error"]["param"] == "response_id"
    status, err = call(url, "POST", "/v1/feedback", {"response_id": out["id"], "rating": 9, "index": 0})
    assert status == 400 and "rating" in err["error"]["message"]
    status, err = call(url, "POST", "/v1/feedback", {"response_id": out["id"], "rating": 5})  # which of the 2 texts?
    assert status == 400 and "index" in err["error"]["message"]


CLIENT = r"""
import http.client, json, sys
from concurrent.futures import ThreadPoolExecutor
port, key, rid, proc, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def post(i):
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps({"response_id": rid, "rating": 1 + i % 5, "index": 0, "comment": f"{proc}-{i}"})
    con.request("POST", "/v1/feedback", body=body, headers={"Authorization": "Bearer " + key,
                "Content-Type": "application/json", "Idempotency-Key": f"{proc}-{i}"})
    r = con.getresponse(); out = json.loads(r.read()); con.close()
    return r.status, out.get("id")
# every 25th post is sent twice: a retry must not store it again
with ThreadPoolExecutor(8) as pool:
    print(json.dumps(list(pool.map(post, [*range(n), *range(0, n, 25)]))))
"""


def test_1000_concurrent_feedback_posts_from_4_processes_stored_once(head_server: tuple[str, Any]) -> None:
    url, app = head_server
    store = app.state.tuneloop.store
    _, out = call(url, "POST", "/v1/classify", {"input": ["good movie"]})
    before = store.count()
    port = url.rsplit(":", 1)[1]
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, port, KEY, out["id"], f"p{p}", "250"],
                              stdout=subprocess.PIPE, text=True) for p in range(4)]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    flat = [tuple(r) for res in results for r in res]
    assert all(status == 200 for status, _ in flat)
    assert len({fid for _, fid in flat}) == 1000  # the 40 retries returned their first record's id
    assert store.count() - before == 1000


# ---------------------------------------------------------------- batching and hot swap


def test_batcher_groups_concurrent_jobs_by_key() -> None:
    calls: list[tuple[str, list[int]]] = []

    def run(key: str, payloads: list[int]) -> list[Any]:
        calls.append((key, payloads))
        return [ValueError("bad") if p < 0 else p * 10 for p in payloads]

    async def main(max_batch: int) -> list[Any]:
        batcher = Batcher(run, max_batch=max_batch, wait_s=0.5)
        batcher.start()
        jobs = [batcher.submit("a" if p % 2 else "b", p) for p in (1, 2, 3, 4, -5)]
        out = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return out

    out = asyncio.run(main(max_batch=16))
    assert out[:4] == [10, 20, 30, 40] and isinstance(out[4], ValueError)  # one bad job fails alone
    assert calls == [("a", [1, 3, -5]), ("b", [2, 4])]
    calls.clear()
    asyncio.run(main(max_batch=1))  # batching off: one job per model call
    assert [len(p) for _, p in calls] == [1] * 5


def test_promotion_swaps_the_model_under_load_without_failed_requests(runs: dict[str, Path], tmp_path: Path) -> None:
    from tuneloop.registry import Registry

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    shutil.copytree(runs["head"], tmp_path / "head-b")
    registry.register(runs["head"], name="model-a")
    registry.register(tmp_path / "head-b", name="model-b")
    registry.promote("model-a")
    with running(model="promoted", registry=registry.url, feedback_db=tmp_path / "fb.db", reload_interval=0.1) as (url, _):
        seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
        stop = threading.Event()

        def hammer(i: int) -> None:
            while not stop.is_set():
                status, out = call(url, "POST", "/v1/classify", {"input": ["good movie", "bad"]})
                seen[i].append((status, out.get("model") if status == 200 else str(out)))

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        _wait(lambda: all(len(s) >= 5 for s in seen))
        registry.promote("model-b", reason="test")
        _wait(lambda: all(s[-1][1] == "model-b" for s in seen if s))
        n = [len(s) for s in seen]
        _wait(lambda: all(len(s) >= k + 5 for s, k in zip(seen, n)))  # keep going on the new model
        stop.set()
        for t in threads:
            t.join(60)
        for s in seen:
            assert all(status == 200 for status, _ in s), s
            names = [m for _, m in s]
            switch = names.index("model-b")  # each client: old model, then only the new one
            assert switch > 0 and set(names[:switch]) == {"model-a"} and set(names[switch:]) == {"model-b"}
        assert call(url, "GET", "/health")[1]["model"] == "model-b"
        assert call(url, "GET", "/v1/models")[1]["data"][0]["id"] == "model-b"


def _wait(condition: Any, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.02)


# ---------------------------------------------------------------- hardening (issue 13)

BAD_SAMPLING = [  # raw JSON: 2**64 is not representable as a Python-side float literal in every client
    ('{"messages": %s, "max_tokens": 3, "seed": 18446744073709551616}', "seed"),
    ('{"messages": %s, "max_tokens": 3, "seed": 1e20}', "seed"),
    ('{"messages": %s, "max_tokens": 3, "temperature": 1e-300}', "temperature"),
    ('{"messages": %s, "max_tokens": 3, "temperature": 1e-45}', "temperature"),
    ('{"messages": %s, "max_tokens": 3, "top_p": 1e-300}', "top_p"),
    ('{"messages": %s, "max_tokens": 3, "temperature": NaN}', "temperature"),
    ('{"messages": %s, "max_tokens": 3, "top_p": Infinity}', "top_p"),
]


def test_bad_sampling_values_get_400_and_good_requests_sent_with_them_succeed(chat_server: tuple[str, Any]) -> None:
    url, _ = chat_server
    bad = [(raw % json.dumps(HELLO), param) for raw, param in BAD_SAMPLING]
    good = [{"messages": HELLO, "max_tokens": 3, "temperature": t, "seed": s, "top_p": p}
            for t, s, p in ((0, None, 1.0), (1.0, 2**63, 0.5), (0.001, -(2**63), 1e-6), (2.0, 2**64 - 1, 1.0))]
    jobs = [("bad", b, p) for b, p in bad] + [("good", g, None) for g in good]
    with ThreadPoolExecutor(len(jobs)) as pool:  # sent together: they land in one batch
        results = list(pool.map(lambda j: (j, call(url, "POST", "/v1/chat/completions", j[1])), jobs))
    for (kind, _, param), (status, out) in results:
        if kind == "good":
            assert status == 200 and out["usage"]["completion_tokens"] <= 3, out
        else:
            assert status == 400 and out["error"]["param"] == param, out


def test_a_row_that_fails_in_the_model_fails_only_its_own_request(chat_server: tuple[str, Any]) -> None:
    from tuneloop.serve.app import _run_batch
    from tuneloop.serve.generation import ChatRow, sample

    _, app = chat_server
    served = app.state.tuneloop.holder.current
    vocab = served.loaded.model.config.vocab_size
    rows = [ChatRow([1, 2, 3], 3, 0.0), ChatRow([1, vocab + 10], 3, 0.0), ChatRow([4, 5], 3, 1e-300, 1e-300, seed=2**64 - 1)]
    out = _run_batch(("chat", served), rows)  # row 1 is not a token id of this model: the batched call fails
    assert isinstance(out[1], Exception) and not isinstance(out[0], Exception) and not isinstance(out[2], Exception)
    assert out[0].completion_tokens >= 1 and out[2].completion_tokens >= 1
    logits = torch.tensor([0.0, 3.0, 2.9])
    assert {sample(logits, 1e-300, 1.0) for _ in range(20)} == {sample(logits, 1.0, 1e-300) for _ in range(20)} == {1}


def test_the_openai_clients_ordinary_calls_work(chat_server: tuple[str, Any]) -> None:
    client = _client(chat_server[0])
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    # Without max_tokens: as many as the context leaves (the server's limit equals the tiny model's context).
    assert client.chat.completions.create(model="chat", messages=HELLO, temperature=0, stop=["e"]).choices[0]
    done = client.chat.completions.create(
        model="chat", messages=HELLO, max_tokens=3, temperature=0, frequency_penalty=0, presence_penalty=0,
        logprobs=False, response_format={"type": "text"}, store=False, parallel_tool_calls=False, top_p=1,
        tool_choice="none", metadata={"team": "x"}, user="u1")
    assert done.usage.completion_tokens <= 3
    for kw, param in (({"frequency_penalty": 0.5}, "frequency_penalty"), ({"logprobs": True}, "logprobs"),
                      ({"response_format": {"type": "json_object"}}, "response_format"),
                      ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="chat", messages=HELLO, max_tokens=3, **kw)
        assert e.value.body["param"] == param and "not supported" in e.value.body["message"]


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": HELLO, "stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": True}, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": "10"}, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "temperature": "0.5"}, "temperature"),
    ("/v1/feedback", {"response_id": "cls-x", "rating": True}, "rating"),
    ("/v1/feedback", {"response_id": "cls-x", "rating": 5, "index": "0"}, "index"),
    ("/v1/feedback", {"response_id": "cls-x", "rating": 5.0}, "rating"),
])
def test_types_are_strict(chat_server: tuple[str, Any], path: str, body: Any, param: str) -> None:
    status, out = call(chat_server[0], "POST", path, body)
    assert status == 400 and out["error"]["param"] == param and out["error"]["code"] == "invalid_value", out


def test_an_empty_body_says_so(chat_server: tuple[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/classify", "/v1/feedback"):
        status, out = call(chat_server[0], "POST", path, "")
        assert status == 400 and "body is empty" in out["error"]["message"] and "None" not in out["error"]["message"]


def test_models_show_a_name_not_the_runs_path(head_server: tuple[str, Any], runs: dict[str, Path]) -> None:
    url, _ = head_server
    status, raw = call(url, "GET", "/v1/models")
    assert status == 200 and raw["data"][0]["id"] == "sentiment"
    assert str(runs["head"].parent) not in json.dumps(raw) and "path" not in raw["data"][0]


def test_admin_actions_need_an_admin_key(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_ADMIN_KEYS", "admin-2")
    with running(model=str(runs["head"]), feedback_db=tmp_path / "fb.db", admin_keys=["admin-1"]) as (url, _):
        status, out = call(url, "POST", "/admin/reload")  # an ordinary key
        assert status == 403 and out["error"]["code"] == "admin_key_required"
        assert call(url, "POST", "/admin/reload", key=None)[0] == 401
        assert call(url, "POST", "/admin/reload", key="nope")[0] == 401
        for admin in ("admin-1", "admin-2"):
            status, out = call(url, "POST", "/admin/reload", key=admin)
            assert status == 200 and out["swapped"] is False
        assert call(url, "POST", "/v1/classify", {"input": ["a"]}, key="admin-1")[0] == 200
    monkeypatch.delenv("TUNELOOP_ADMIN_KEYS")
    with running(model=str(runs["head"]), feedback_db=tmp_path / "fb2.db") as (url, _):  # no admin key: admin is off
        status, out = call(url, "POST", "/admin/reload")
        assert status == 403 and "--admin-key" in out["error"]["message"]
    with pytest.raises(TuneloopError, match="both"):
        ServeSettings(api_keys=["k"], admin_keys=["k"]).check()
    with pytest.raises(TuneloopError, match="--max-client-queue"):
        ServeSettings(api_keys=["k"], max_inputs=300, max_client_queue=100).check()


def test_a_large_classify_request_runs_in_micro_batches_beside_other_clients() -> None:
    calls: list[list[str]] = []

    def run(key: str, payloads: list[str]) -> list[str]:
        calls.append(payloads)
        return [p.upper() for p in payloads]

    async def main() -> tuple[list[str], list[str]]:
        batcher = Batcher(run, max_batch=8, wait_s=0.0, max_cost=64)
        batcher.start()
        big = asyncio.ensure_future(batcher.submit_many("k", [f"big{i}" for i in range(64)], [16] * 64, client="a"))
        small = asyncio.ensure_future(batcher.submit_many("k", ["s1", "s2"], [4, 4], client="b"))
        await asyncio.sleep(0)
        assert batcher.queued == 66 and batcher.queued_by("a") == 64
        out = await asyncio.gather(big, small)
        assert batcher.queued == 0 and batcher.queued_by("a") == 0
        await batcher.stop()
        return out

    big, small = asyncio.run(main())
    assert big == [f"BIG{i}" for i in range(64)] and small == ["S1", "S2"]
    assert all(len(c) <= 8 and sum(16 if p.startswith("big") else 4 for p in c) <= 64 for c in calls)  # bounded calls
    assert "s1" in calls[0] and "s2" in calls[0]  # the small request did not wait for the big one
    assert sum(p.startswith("big") for p in calls[0]) == 2  # beside it, the big one added only its share (32 of 64)
    assert max(len(c) for c in calls[1:]) == 4  # alone, the big one gets whole batches (64 of cost 16 each)


def test_a_client_over_its_queue_share_gets_429_and_a_full_queue_503_with_retry_after(runs: dict[str, Path],
                                                                                    tmp_path: Path) -> None:
    # A long batch wait keeps the first requests queued while the others arrive.
    with running(model=str(runs["head"]), feedback_db=tmp_path / "fb.db", batch_wait_ms=3000, max_batch=64,
                 max_inputs=4, max_client_queue=6, max_queue=8, admin_keys=["adm"]) as (url, _):
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(call, url, "POST", "/v1/classify", {"input": ["a", "b", "c", "d"]})
            _wait(lambda: call(url, "GET", "/health")[1]["queued"] == 4)
            status, headers, out = call_with_headers(url, "POST", "/v1/classify", {"input": ["e", "f", "g"]})
            assert status == 429 and out["error"]["code"] == "rate_limit_exceeded" and int(headers["retry-after"]) >= 1
            other = pool.submit(call, url, "POST", "/v1/classify", {"input": ["e", "f", "g", "h"]}, key="adm")
            _wait(lambda: call(url, "GET", "/health")[1]["queued"] == 8)
            status, headers, out = call_with_headers(url, "POST", "/v1/classify", {"input": ["i"]})
            assert status == 503 and out["error"]["code"] == "server_busy" and int(headers["retry-after"]) >= 1
            assert first.result()[0] == other.result()[0] == 200  # the queued work was not lost
        assert call(url, "GET", "/health")[1]["queued"] == 0
        assert call(url, "POST", "/v1/classify", {"input": ["e", "f", "g"]})[0] == 200
