"""Request bodies of the API (validated by FastAPI) and errors in the OpenAI shape.

Unknown fields are refused, so a misspelt parameter (`max_token`) is an error rather than ignored,
and types are strict: `"10"` is not a number and `true` is not 1.
Every error a client can cause answers `{"error": {"message", "type", "param", "code"}}` with a 4xx.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class ParamError(ValueError):
    """A request value the server cannot honour, raised inside a validator: the 400 names `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class ApiError(Exception):
    """An error answered to the client in the OpenAI error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: `{"error": {...}}`."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    # strict: no coercion ("10" is not 10, true is not 1 star); no NaN or infinity in any number.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _encodable(text: str) -> str:
    # JSON may carry lone surrogates (\ud800) that no tokenizer or database accepts, and NUL characters
    # that PostgreSQL text refuses: refuse them here, before they can fail a batch or a stored record.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (a lone surrogate such as \\ud800)") from None
    if "\x00" in text:
        raise ValueError("text contains a NUL character (\\u0000): remove it")
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class TextPart(_Strict):
    """A text part of a message's content (other part types are not supported)."""

    type: Literal["text"]
    text: Text


class Message(_Strict):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None

    def as_template_message(self) -> dict[str, str]:
        """`{"role", "content"}` for the chat template (a developer message is a system message)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    """Options of a streamed answer."""

    include_usage: bool = Field(False, description="Send a last chunk with token counts.")


# What the sampler takes: a temperature below this is greedy in all but name (use 0), and a top_p
# below this keeps only the most likely token anyway (float32 probabilities cannot tell them apart).
MIN_TEMPERATURE = 1e-3
MIN_TOP_P = 1e-6
# torch.Generator.manual_seed takes any 64-bit value, signed or unsigned.
SEED_RANGE = (-(2**63), 2**64 - 1)


class ResponseFormat(_Strict):
    """`response_format`: only plain text is produced."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


#: A client's labels for a request, kept in the prediction log: strings, or one level of string maps.
Metadata = dict[Text, Text | dict[Text, Text]]
METADATA_DOC = ('Stored with the prediction log, e.g. {"group": {"gender": "f"}}: `tuneloop monitor` reports '
                "live metrics per group.")


class ChatRequest(_Strict):
    """POST /v1/chat/completions (the OpenAI parameters this server implements).

    Parameters the official client sends with values that change nothing here (penalties of 0,
    `logprobs: false`, a text `response_format`, `store`, `parallel_tool_calls`, ...) are accepted;
    values the server cannot honour are refused with a 400 naming the parameter.
    """

    model: Text | None = Field(None, description="Accepted and ignored: the server serves one model (see GET /v1/models).")
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2, description=f"0: greedy (deterministic); {MIN_TEMPERATURE} to 2: sampling.")
    top_p: float = Field(1.0, ge=MIN_TOP_P, le=1, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (default and limit: the server's --max-tokens).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens (newer OpenAI name); wins if both are given.")
    stop: Text | list[Text] | None = Field(None, description="Up to 4 strings that end the answer (not included).")
    n: int = Field(1, ge=1, le=1, description="Choices per request: only 1 is supported.")
    stream: bool = Field(False, description="Stream the answer as server-sent events.")
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1],
                             description="Seed for sampling (the same seed and prompt give the same answer).")
    user: Text | None = Field(None, description="An end-user id (accepted for OpenAI compatibility; not stored: the feedback store keeps only what export needs).")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="Only 0 (no penalty) is supported.")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="Only 0 (no penalty) is supported.")
    logprobs: bool = Field(False, description="Only false: token log-probabilities are not returned.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Only 0 or absent (see logprobs).")
    logit_bias: dict[str, float] | None = Field(None, description="Only empty: logit bias is not supported.")
    response_format: ResponseFormat | None = Field(None, description='Only {"type": "text"}: answers are plain text.')
    tools: list[dict[str, Any]] | None = Field(None, description="Only empty: tool calls are not supported.")
    tool_choice: Literal["none", "auto"] | None = Field(None, description='"none" or "auto" (there are no tools to call).')
    parallel_tool_calls: bool | None = Field(None, description="Accepted and ignored (there are no tools).")
    store: bool | None = Field(None, description="Accepted; the server records every response so that it can be rated.")
    metadata: Metadata | None = Field(None, description=METADATA_DOC)

    @model_validator(mode="after")
    def _supported(self) -> ChatRequest:
        stops = self.stop_list()
        if len(stops) > 4 or any(not s for s in stops):
            raise ParamError("stop", "stop must be at most 4 non-empty strings")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise ParamError("temperature", f"temperature {self.temperature:g} is too small to sample with: "
                                            f"use 0 for greedy decoding or a value from {MIN_TEMPERATURE:g} to 2")
        unsupported = {
            "frequency_penalty": self.frequency_penalty != 0, "presence_penalty": self.presence_penalty != 0,
            "logprobs": self.logprobs, "top_logprobs": bool(self.top_logprobs), "logit_bias": bool(self.logit_bias),
            "response_format": self.response_format is not None and self.response_format.type != "text",
            "tools": bool(self.tools),
        }
        for param, refused in unsupported.items():
            if refused:
                raise ParamError(param, f"{param} {getattr(self, param)!r:.80} is not supported by this server; "
                                        "leave it out (or send its default)")
        return self

    def stop_list(self) -> list[str]:
        """The stop strings as a list."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ClassifyRequest(_Strict):
    """POST /v1/classify: `{"input": [texts]}` (or one text), or `{"texts": [...]}`."""

    model: Text | None = Field(None, description="Accepted and ignored: the server serves one model.")
    input: Text | list[Text] | None = None
    texts: list[Text] | None = None
    metadata: Metadata | None = Field(None, description=METADATA_DOC)

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.input is None) == (self.texts is None):
            raise ValueError("give the texts as either `input` or `texts`, not both or neither")
        if not self.text_list():
            raise ValueError("no texts to classify: the list is empty")
        return self

    def text_list(self) -> list[str]:
        """The texts to classify."""
        texts = self.texts if self.texts is not None else self.input
        return [texts] if isinstance(texts, str) else list(texts or [])


class FeedbackRequest(_Strict):
    """POST /v1/feedback: a rating of a response this server gave."""

    response_id: Text = Field(min_length=1, max_length=200, description="The `id` of a chat completion or classification.")
    rating: int | Text = Field(description='"up"/"down" or 1..5 stars.')
    index: int | None = Field(None, ge=0, description="Which text of a classify batch the feedback is about.")
    corrected: Text | None = Field(None, description="The right answer (chat) or label (classify).")
    comment: Text | None = Field(None, description="Free text.")


_TYPE_NAMES = {"str", "int", "float", "bool", "function-after"}


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """A 400 naming the first invalid field of a request body (or saying the JSON is malformed)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "not JSON")
        pos = first.get("loc", ())[-1]
        where = f" at character {pos}" if isinstance(pos, int) else ""
        return ApiError(400, f"malformed JSON body{where}: {detail}", code="invalid_json")
    # Drop "body" and the names pydantic gives union members ("str", "list[str]") from the field path.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and p not in _TYPE_NAMES and "[" not in str(p)]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, ParamError):  # a value the server cannot honour, found by a model validator
        return ApiError(400, str(error), param=error.param, code="unsupported_value")
    if first.get("type") == "missing" and param is None:
        return ApiError(400, "the request body is empty: send a JSON object with 'Content-Type: application/json'",
                        code="missing_body")
    if first.get("type") == "missing":
        return ApiError(400, f"missing required field '{param}'", param=param, code="missing_field")
    if first.get("type") == "extra_forbidden":
        return ApiError(400, f"unrecognized field '{param}'", param=param, code="unknown_field")
    if isinstance(first.get("input"), bytes):  # a body FastAPI did not parse as JSON
        return ApiError(400, "the body must be a JSON object sent with 'Content-Type: application/json'", code="invalid_json")
    where = f"field '{param}'" if param else "request body"
    got = "" if "input" not in first or isinstance(first["input"], dict) else f" (got {_short(first['input'])})"
    return ApiError(400, f"{where}: {msg}{got}", param=param, code="invalid_value")


def _short(value: Any) -> str:
    """A value for an error message: its JSON spelling (true, "10"), at most 80 characters."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
