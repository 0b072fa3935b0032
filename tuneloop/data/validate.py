"""Recognise a record's format and turn it into the one internal schema, or say why it is invalid.

Generate data becomes chat messages (`system`/`user`/`assistant`), classify data becomes
text + label. Each problem raises `Invalid` with a short `kind` (counted in the manifest) and a
sentence a person understands (written to rejects.jsonl).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GENERATE_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant")
# ShareGPT dumps use several names for the same speaker.
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system",
}
# The fields each generate format consumes; everything else that is scalar goes to `meta`.
FORMAT_FIELDS = {
    "messages": {"messages"},
    "sharegpt": {"conversations", "system"},
    "alpaca": {"instruction", "input", "output", "system"},
    "prompt_completion": {"prompt", "completion", "system"},
}


class Invalid(Exception):
    """A row that cannot be used.

    Attributes:
        kind: A short, stable category for counting (`missing field 'label'`).
        reason: The full sentence for the rejects file.
        raw: What the rejects file shows instead of the source record (e.g. a redacted copy), or None.
    """

    def __init__(self, kind: str, reason: str | None = None, raw: Any = None) -> None:
        super().__init__(reason or kind)
        self.kind = kind
        self.reason = reason or kind
        self.raw = raw


@dataclass(slots=True)
class Example:
    """A valid row in the internal schema.

    Attributes:
        messages: Chat turns (generate), each `{"role", "content"}`; empty for classify.
        text: The text (classify); empty for generate.
        label: The label as a string (classify), else None.
        meta: Other scalar fields of the source row.
        trimmed: Turns dropped after the last assistant turn (they teach nothing).
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    text: str = ""
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    trimmed: int = 0


def detect_format(obj: dict[str, Any]) -> str | None:
    """The generate format a record looks like, from the fields it has, or None.

    >>> detect_format({"instruction": "Add 2 and 2.", "input": "", "output": "4"})
    'alpaca'
    """
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return None


def to_example(obj: dict[str, Any], fmt: str, text_field: str = "text", label_field: str = "label") -> Example:
    """Validate a parsed record of format `fmt` and convert it to the internal schema.

    Args:
        obj: The record.
        fmt: One of `messages`, `sharegpt`, `alpaca`, `prompt_completion`, `text_label`.
        text_field: The text's field name (text_label).
        label_field: The label's field name (text_label).

    Raises:
        Invalid: the record breaks the format (missing or empty field, wrong type, unknown role, ...).
    """
    if fmt == "text_label":
        return _text_label(obj, text_field, label_field)
    if fmt == "messages":
        ex = Example(messages=_messages(obj))
    elif fmt == "sharegpt":
        ex = Example(messages=_sharegpt(obj))
    elif fmt == "alpaca":
        ex = Example(messages=_alpaca(obj))
    else:
        ex = Example(messages=_prompt_completion(obj))
    ex.messages, ex.trimmed = _end_with_assistant(ex.messages)
    ex.meta = scalar_meta(obj, FORMAT_FIELDS[fmt])
    return ex


def scalar_meta(obj: dict[str, Any], exclude: set[str]) -> dict[str, Any]:
    """The scalar fields of a record not in `exclude` (nested values and NaN are left out)."""
    meta = {}
    for key, value in obj.items():
        if key in exclude or value is None or isinstance(value, (dict, list, tuple)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue  # NaN is how pandas/Parquet spell "missing"; it is not valid JSON either
        meta[str(key)] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return meta


def _missing(name: str, hint: str = "") -> Invalid:
    return Invalid(f"missing field '{name}'", f"missing field '{name}'{hint}")


def require_text(obj: dict[str, Any], name: str, hint: str = "") -> str:
    """The non-empty string in `obj[name]`; `hint` is added to the "missing" message.

    Raises:
        Invalid: the field is missing, not a string, or empty.
    """
    if name not in obj or obj[name] is None:
        raise _missing(name, hint)
    value = obj[name]
    if not isinstance(value, str):
        raise _wrong_type(name, value, "a string")
    if not value.strip():
        raise Invalid(f"empty field '{name}'", f"field '{name}' is empty")
    return value


def _wrong_type(name: str, value: Any, expected: str, subject: str | None = None) -> Invalid:
    reason = f"{subject or f'field {name!r}'} must be {expected}, got {type(value).__name__} ({_short(value)})"
    return Invalid(f"wrong type for '{name}'", reason)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text_label(obj: dict[str, Any], text_field: str, label_field: str) -> Example:
    text = require_text(obj, text_field, " (set --text-field if the text is stored under another name)")
    label = label_string(obj.get(label_field), label_field)
    return Example(text=text, label=label, meta=scalar_meta(obj, {text_field, label_field}))


def label_string(value: Any, name: str = "label") -> str:
    """A label as a string: `1` and `1.0` become `"1"`, `True` becomes `"true"`.

    Raises:
        Invalid: the label is missing, empty, fractional or not a scalar.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _missing(name, " (every classification row needs a label; set --label-field if it is named differently)")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not value.is_integer():
            reason = f"label {value!r} is a fraction, not a class; labels are strings or integers"
            raise Invalid(f"wrong type for '{name}'", reason)
        return str(int(value))
    if isinstance(value, str):
        if not value.strip():
            raise Invalid(f"empty field '{name}'", f"field '{name}' is empty")
        return value.strip()
    raise _wrong_type(name, value, "a string or integer")


def _content(value: Any, where: str) -> str:
    # OpenAI allows content as a list of typed parts; the text parts are what we train on.
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                reason = f"{where} has a content part of type {kind!r}; only text parts are supported"
                raise Invalid("unsupported content", reason)
            parts.append(part["text"])
        value = "".join(parts)
    if value is None:
        raise Invalid("missing field 'content'", f"{where} has no content")
    if not isinstance(value, str):
        raise _wrong_type("content", value, "a string", f"{where} content")
    if not value.strip():
        raise Invalid("empty field 'content'", f"{where} has empty content")
    return value


def _turn_list(obj: dict[str, Any], name: str) -> list[Any]:
    if name not in obj or obj[name] is None:
        raise _missing(name)
    turns = obj[name]
    if not isinstance(turns, list):
        raise _wrong_type(name, turns, "a list of turns")
    if not turns:
        raise Invalid(f"empty field '{name}'", f"field '{name}' is an empty list")
    return turns


def _messages(obj: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for i, msg in enumerate(_turn_list(obj, "messages"), 1):
        where = f"message {i}"
        if not isinstance(msg, dict):
            raise _wrong_type("messages", msg, "an object with role and content", where)
        role = msg.get("role")
        if role not in ROLES:
            raise _unknown_role(where, role, ROLES)
        out.append({"role": role, "content": _content(msg.get("content"), where)})
    return out


def _unknown_role(where: str, role: Any, allowed: Iterable[str]) -> Invalid:
    if role is None:
        return Invalid("missing field 'role'", f"{where} has no role")
    return Invalid("unknown role", f"{where} has unknown role {role!r} (allowed: {', '.join(allowed)})")


def _sharegpt(obj: dict[str, Any]) -> list[dict[str, str]]:
    out = _system(obj)
    for i, turn in enumerate(_turn_list(obj, "conversations"), 1):
        where = f"turn {i}"
        if not isinstance(turn, dict):
            raise _wrong_type("conversations", turn, "an object with from and value", where)
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise _unknown_role(where, speaker, sorted(SHAREGPT_ROLES))
        out.append({"role": role, "content": _content(turn.get("value"), where)})
    return out


def _system(obj: dict[str, Any]) -> list[dict[str, str]]:
    value = obj.get("system")
    if isinstance(value, str) and value.strip():
        return [{"role": "system", "content": value}]
    return []


def _alpaca(obj: dict[str, Any]) -> list[dict[str, str]]:
    instruction = require_text(obj, "instruction")
    extra = obj.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _wrong_type("input", extra, "a string")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    output = require_text(obj, "output")
    return _system(obj) + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _prompt_completion(obj: dict[str, Any]) -> list[dict[str, str]]:
    prompt = require_text(obj, "prompt")
    completion = require_text(obj, "completion")
    return _system(obj) + [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def _end_with_assistant(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise Invalid("no assistant turn", "the conversation has no assistant turn, so there is no answer to learn")
    return messages[: last + 1], len(messages) - last - 1
