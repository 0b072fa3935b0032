"""Replay the hostile request corpus (tests/fuzz/requests.jsonl) against real servers on tiny runs.

Expected of every hostile request: no 5xx, no traceback in the answer, every 4xx in OpenAI's error
shape; and the good requests sent between them, from other threads at the same time, are all answered.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from test_serve import HELLO, KEY, call, running, runs  # noqa: F401 (runs is a fixture)

FUZZ = Path(__file__).with_name("fuzz")
sys.path.insert(0, str(FUZZ))
from make_requests import body_bytes  # noqa: E402

ADMIN = "fuzz-admin"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def servers(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:  # noqa: F811
    db = tmp_path_factory.mktemp("fuzz")
    with running(model=str(runs["chat"]), feedback_db=db / "chat.db", admin_keys=[ADMIN]) as (chat, _), \
            running(model=str(runs["head"]), feedback_db=db / "cls.db", admin_keys=[ADMIN]) as (cls, _):
        yield {"chat": chat, "classify": cls}


def _send(url: str, req: dict[str, Any], rid: str) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split(":")
    key = {"user": KEY, "admin": ADMIN, "none": None}.get(req["key"], req["key"])
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **req["headers"]}
    body = body_bytes(req["body"]).replace(b"{RID}", rid.encode())
    con = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        con.request(req["method"], req["path"], body=body or None, headers=headers)
        resp = con.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        con.close()


def _check(req: dict[str, Any], status: int, text: str) -> str | None:
    """What is wrong with a hostile request's answer, or None."""
    if status >= 500:
        return f"{status}: {text[:300]}"
    if "Traceback" in text or 'File "' in text:
        return f"traceback in the answer: {text[:300]}"
    if 400 <= status < 500 and not req.get("protocol"):
        try:
            error = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            return f"{status} not in OpenAI's error shape: {text[:300]}"
        if set(error) != ERROR_KEYS or not isinstance(error["message"], str) or not error["message"]:
            return f"{status} error fields {sorted(error)}: {text[:300]}"
    return None


def _good(servers: dict[str, str], i: int) -> bool:
    """One ordinary request (chat or classify, alternating) answered as it should be."""
    if i % 2:
        status, out = call(servers["chat"], "POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 2, "temperature": 0})
        return status == 200 and out["usage"]["completion_tokens"] <= 2
    status, out = call(servers["classify"], "POST", "/v1/classify", {"input": ["good movie", "bad food"]})
    return status == 200 and len(out["data"]) == 2


def test_corpus_is_current_and_large_enough() -> None:
    out = subprocess.run([sys.executable, str(FUZZ / "make_requests.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sum(1 for _ in (FUZZ / "requests.jsonl").open()) >= 200


def test_hostile_requests_get_clean_4xx_and_never_hurt_good_ones(servers: dict[str, str]) -> None:
    corpus = [json.loads(line) for line in (FUZZ / "requests.jsonl").open()]
    status, out = call(servers["classify"], "POST", "/v1/classify", {"input": ["a real response to rate"]})
    rid = out["id"]
    with ThreadPoolExecutor(8) as pool:  # a good request after every 4 hostile ones, all in flight together
        hostile, good = [], []
        for i, r in enumerate(corpus):
            hostile.append(pool.submit(lambda r=r: (r, *_send(servers[r["server"]], r, rid))))
            if i % 4 == 3:
                good.append(pool.submit(_good, servers, i // 4))
        answers, good = [f.result() for f in hostile], [f.result() for f in good]
    problems = [f"{r['name']}: {p}" for r, status, text in answers if (p := _check(r, status, text))]
    assert not problems, "\n".join(problems[:20])
    assert all(good), f"{good.count(False)} of {len(good)} good requests failed"
    statuses = Counter(status for _, status, _ in answers)
    print(f"\n{len(answers)} hostile requests: {dict(sorted(statuses.items()))}; {len(good)} good requests all answered")
