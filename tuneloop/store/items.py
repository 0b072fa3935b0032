"""Read what a stored request/response pair says: the texts and labels of a classify call, the
prompt and answer of a chat call. Standard library only: the server imports this with the store.

The shapes read are those the server speaks:
- classify request: `{"input": str | [str, ...]}` or `{"texts": [str, ...]}`
- classify response: `{"data": [{"index": i, "label": str, ...}, ...]}` or `{"labels": [str, ...]}`
- chat request: OpenAI `{"messages": [{"role": ..., "content": ...}, ...]}`
- chat response: OpenAI chat.completion `{"choices": [{"message": {"content": str}}]}`
"""

from __future__ import annotations

from typing import Any

KINDS = ("chat", "classify")


class Unreadable(ValueError):
    """A stored request or response does not have the shape this module reads."""


def classify_texts(request: dict[str, Any]) -> list[str]:
    """The texts a classify request asked about, in order.

    >>> classify_texts({"input": "hello"})
    ['hello']
    """
    if not isinstance(request, dict):
        raise Unreadable("classify request is not an object")
    texts = request.get("input", request.get("texts"))
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise Unreadable("classify request has no 'input' or 'texts' list of strings")
    return texts


def classify_labels(response: dict[str, Any]) -> list[str]:
    """The labels a classify response gave, in the order of the request's texts.

    >>> classify_labels({"data": [{"index": 1, "label": "b"}, {"index": 0, "label": "a"}]})
    ['a', 'b']
    """
    if not isinstance(response, dict):
        raise Unreadable("classify response is not an object")
    if isinstance(response.get("labels"), list):
        labels = response["labels"]
    elif isinstance(response.get("data"), list) and all(isinstance(d, dict) for d in response["data"]):
        data = response["data"]
        if all(isinstance(d.get("index"), int) for d in data):
            data = sorted(data, key=lambda d: d["index"])
        labels = [d.get("label") for d in data]
    else:
        raise Unreadable("classify response has no 'data' list of {'label': ...} or 'labels' list")
    if not all(isinstance(label, str) for label in labels):
        raise Unreadable("classify response has a label that is not a string")
    return labels


def chat_answer(response: dict[str, Any]) -> str:
    """The assistant's answer in an OpenAI chat.completion response (its first choice)."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise Unreadable("chat response has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise Unreadable("chat response content is not a string")
    return content


def n_items(kind: str, request: dict[str, Any], response: dict[str, Any]) -> int:
    """How many answers a response holds (a classify batch has one per text; chat has one).

    Lenient on purpose: recording a response must not fail a request the server already answered,
    so an unreadable classify call counts as one item (and curation later skips it).
    """
    if kind != "classify":
        return 1
    for read, part in ((classify_texts, request), (classify_labels, response)):
        try:
            return max(len(read(part)), 1)
        except Unreadable:
            continue
    return 1
