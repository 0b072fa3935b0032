"""The FastAPI application: OpenAI-compatible chat, classification, feedback, health and hot swap.

create_app(settings) loads the model (or the registry's promoted one) and the feedback store, and
returns the app; its lifespan starts the batcher and, with `--model promoted`, the registry watcher.
Every response a client can give feedback on is recorded in the feedback store before it is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPBearer

from tuneloop import threads
from tuneloop.encode import render_prompt
from tuneloop.serve.batcher import Batcher
from tuneloop.serve.classify import classify
from tuneloop.serve.generation import ChatOut, ChatRow, generate_rows
from tuneloop.serve.guard import Guard, install_error_handlers
from tuneloop.serve.metrics import MetricsMiddleware, ServeMetrics, metrics_endpoint
from tuneloop.serve.models import ModelHolder, ServedModel, load_initial
from tuneloop.serve.schemas import ApiError, ChatRequest, ClassifyRequest, FeedbackRequest
from tuneloop.serve.settings import ServeSettings
from tuneloop.store.predictions import PredictionLog, chat_row, classify_rows

log = logging.getLogger("tuneloop.serve")


@dataclass
class _State:
    settings: ServeSettings
    holder: ModelHolder
    store: Any  # tuneloop.feedback.FeedbackStore
    batcher: Batcher
    started: float
    predlog: Any = None  # tuneloop.store.predictions.PredictionLog


def _state(request: Request) -> _State:
    return request.app.state.tuneloop


def _run_batch(key: Hashable, payloads: list[Any]) -> list[Any]:
    """Run one batch in the model thread: key = (kind, served model); one payload per row.

    If the batched call fails, every row runs alone, so a row that cannot run fails only its own
    request (its result is the exception) and the rows batched with it are answered.
    """
    try:
        return _run_rows(key, payloads)
    except Exception:
        if len(payloads) == 1:
            raise
        log.exception("a batch of %d rows failed; running its rows one at a time", len(payloads))
        return [_run_alone(key, p) for p in payloads]


def _run_rows(key: Hashable, payloads: list[Any]) -> list[Any]:
    kind, served = key
    if kind == "chat":
        return generate_rows(served.loaded, payloads)
    return classify(served.loaded, payloads, temperature=served.temperature)


def _run_alone(key: Hashable, payload: Any) -> Any:
    if isinstance(payload, ChatRow) and payload.streamed:  # running it again would send its text twice
        return RuntimeError("the batch failed after this answer had started streaming")
    try:
        return _run_rows(key, [payload])[0]
    except Exception as e:  # noqa: BLE001 (this row's own failure: answered to its request alone)
        log.exception("a row failed on its own")
        return e


def _text_cost(text: str, max_length: int) -> int:
    """Tokens a text will take, estimated without the tokenizer (about 4 characters a token, cut at max_length)."""
    return min(len(text) // 4 + 8, max_length)


def _admit(st: _State, request: Request, jobs: int) -> Hashable:
    """The client of a request that may queue `jobs` more jobs; 429 or 503 (with Retry-After) if it may not."""
    batcher, settings = st.batcher, st.settings
    client = getattr(request.state, "client", None)
    retry = {"Retry-After": str(batcher.wait_estimate())}
    if batcher.queued_by(client) + jobs > settings.max_client_queue:
        raise ApiError(429, f"too much work queued for this client ({batcher.queued_by(client)} jobs waiting, limit "
                            f"{settings.max_client_queue}): retry after {retry['Retry-After']} s",
                       code="rate_limit_exceeded", type="rate_limit_error", headers=retry)
    if batcher.queued + jobs > settings.max_queue:
        raise ApiError(503, f"the server is busy ({batcher.queued} jobs waiting, limit {settings.max_queue}): "
                            f"retry after {retry['Retry-After']} s", code="server_busy", type="server_error", headers=retry)
    return client


# ---------------------------------------------------------------- routes

public = APIRouter()
# The keys are checked by `Guard` before the body is read; this only documents them in /docs.
api = APIRouter(dependencies=[Depends(HTTPBearer(auto_error=False))])


@public.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness and what is served: model name, status, uptime."""
    st = _state(request)
    served = st.holder.current
    return {"status": st.holder.status, "model": served.name, "task": served.task, "kind": served.kind,
            "uptime_s": round(time.time() - st.started, 1), "loaded_at": int(served.loaded_at),
            "swaps": st.holder.swaps, "last_reload_error": st.holder.last_error,
            "batching": st.settings.batching, "max_batch": st.batcher.max_batch, "queued": st.batcher.queued,
            "recent_mean_batch": round(sum(calls) / len(calls), 2) if (calls := st.batcher.calls) else None,
            "prediction_log": st.predlog.status() if st.predlog else None}


@api.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served model (OpenAI list shape)."""
    return {"object": "list", "data": [_state(request).holder.current.info()]}


@api.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    """The served model, if `model_id` is its name (OpenAI's `client.models.retrieve`)."""
    served = _state(request).holder.current
    if model_id != served.name:
        raise ApiError(404, f"model {model_id!r} is not served here; this server serves {served.name!r} (GET /v1/models)",
                       param="model", code="model_not_found")
    return served.info()


def _wrong_task(served: ServedModel, wanted: str) -> ApiError:
    other = "/v1/classify" if served.task == "classify" else "/v1/chat/completions"
    what = "a classification" if served.task == "classify" else "a chat (generate)"
    return ApiError(400, f"model {served.name!r} is {what} model and cannot serve {wanted}; use POST {other}",
                    param="model", code="wrong_model_task")


def _prompt_ids(served: ServedModel, body: ChatRequest) -> list[int]:
    tok = served.prompt_tokenizer
    try:
        prompt = render_prompt(tok, [m.as_template_message() for m in body.messages])
    except Exception as e:  # noqa: BLE001 (templates raise anything, e.g. jinja's "roles must alternate")
        raise ApiError(400, f"the model's chat template rejected the messages: {e}", param="messages") from None
    return tok(prompt, add_special_tokens=False)["input_ids"]


def _chat_row(st: _State, served: ServedModel, body: ChatRequest) -> ChatRow:
    limit = st.settings.max_tokens
    asked = body.max_completion_tokens or body.max_tokens
    if asked and asked > limit:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{param} {asked} is above this server's limit of {limit}; ask for at most {limit}",
                       param=param, code="max_tokens_too_large")
    ids = _prompt_ids(served, body)
    # Not asked: as many as the server allows and the context leaves room for.
    max_tokens = asked or (min(limit, served.context - len(ids)) if served.context else limit)
    if served.context and (max_tokens < 1 or len(ids) + max_tokens > served.context):
        raise ApiError(400, f"the prompt has {len(ids)} tokens; with max_tokens {max_tokens} that exceeds the model's "
                            f"context of {served.context} tokens: shorten the messages or lower max_tokens",
                       param="messages", code="context_length_exceeded")
    return ChatRow(ids, max_tokens, body.temperature, body.top_p, body.stop_list(), body.seed)


def _completion(rid: str, served: ServedModel, created: int, out: ChatOut) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": served.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                         "finish_reason": out.finish_reason, "logprobs": None}],
            "usage": _usage(out)}


def _usage(out: ChatOut) -> dict[str, int]:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}


@api.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    """OpenAI chat completions (n=1); `stream: true` answers with server-sent events."""
    st = _state(request)
    served = st.holder.current  # this request runs on this model even if a new one is swapped in meanwhile
    if served.task != "generate":
        raise _wrong_task(served, "chat completions")
    started = time.perf_counter()
    row = _chat_row(st, served, body)
    client = _admit(st, request, 1)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        return StreamingResponse(_stream(st, served, body, row, rid, created, client, started), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    out = await st.batcher.submit(("chat", served), row, client=client)
    response = _completion(rid, served, created, out)
    await _record(st, served, "chat", body.model_dump(exclude_none=True), response, rid)
    _log_chat(st, served, body, response, started)
    return response


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(st: _State, served: ServedModel, body: ChatRequest, row: ChatRow, rid: str,
                  created: int, client: Hashable, started: float) -> AsyncIterator[str]:
    """Chunks as the model thread produces text; the record of the full answer is stored before [DONE]."""
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    row.emit = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    job = asyncio.ensure_future(st.batcher.submit(("chat", served), row, client=client))

    def finished(task: asyncio.Future) -> None:
        # The job's result arrives after every piece it emitted: None marks the end of the text.
        pieces.put_nowait(None)
        if not task.cancelled():
            task.exception()  # retrieved here too: a client that left must not leave an unread error

    job.add_done_callback(finished)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        while (text := await pieces.get()) is not None:
            yield chunk({"content": text})
        try:
            out: ChatOut = job.result()
        except Exception as e:  # noqa: BLE001 (the 200 is sent: the error can only be an event)
            error = e if isinstance(e, ApiError) else ApiError(500, f"generation failed ({type(e).__name__})", type="server_error")
            yield _sse(error.body())
        else:
            full = _completion(rid, served, created, out)
            await _record(st, served, "chat", body.model_dump(exclude_none=True), full, rid)
            _log_chat(st, served, body, full, started)
            yield chunk({}, out.finish_reason)
            if body.stream_options and body.stream_options.include_usage:
                yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                            "choices": [], "usage": _usage(out)})
        yield "data: [DONE]\n\n"
    finally:
        row.cancelled = True  # a client that went away stops its row at the next token


@api.post("/v1/classify")
async def classify_texts(body: ClassifyRequest, request: Request) -> dict[str, Any]:
    """Labels and per-label probabilities for a batch of texts."""
    st = _state(request)
    started = time.perf_counter()
    served = st.holder.current
    if served.task != "classify":
        raise _wrong_task(served, "classification")
    texts = body.text_list()
    if len(texts) > st.settings.max_inputs:
        raise ApiError(400, f"{len(texts)} texts in one request; the limit is {st.settings.max_inputs}: split the batch",
                       param="input", code="too_many_inputs")
    # One job per text: long requests run as micro-batches interleaved with other clients' work.
    max_length = served.loaded.cfg.train.max_length
    client = _admit(st, request, len(texts))
    results = await st.batcher.submit_many(("classify", served), texts, [_text_cost(t, max_length) for t in texts],
                                           client=client)
    rid = f"cls-{uuid.uuid4().hex}"
    response = {"id": rid, "object": "classification", "created": int(time.time()), "model": served.name,
                "data": [{"index": i, **r} for i, r in enumerate(results)]}
    await _record(st, served, "classify", body.model_dump(exclude_none=True), response, rid)
    if st.predlog:
        st.predlog.log(classify_rows(response_id=rid, model=served.name, version=served.run_dir.name, texts=texts,
                                     results=results, latency_ms=_ms(started), metadata=body.metadata))
    return response


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _log_chat(st: _State, served: ServedModel, body: ChatRequest, response: dict[str, Any], started: float) -> None:
    """Queue the prediction-log row of a chat answer (never blocks, never fails the request)."""
    if st.predlog:
        st.predlog.log([chat_row(response_id=response["id"], model=served.name, version=served.run_dir.name,
                                 messages=[m.as_template_message() for m in body.messages],
                                 answer=response["choices"][0]["message"]["content"], usage=response["usage"],
                                 latency_ms=_ms(started), metadata=body.metadata)])


async def _record(st: _State, served: ServedModel, kind: str, request: dict, response: dict, rid: str) -> None:
    await asyncio.to_thread(st.store.record_response, model=served.name, kind=kind, request=request,
                            response=response, response_id=rid)


@api.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request,
                   idempotency_key: str | None = Header(None, description="Send the same key again: stored once.")) -> dict[str, Any]:
    """Rate a response this server gave (thumbs or 1-5 stars), optionally with the right answer and a comment."""
    from tuneloop.feedback import FeedbackError

    st = _state(request)
    if await asyncio.to_thread(st.store.get_response, body.response_id) is None:
        raise ApiError(404, f"unknown response id {body.response_id!r}: give the `id` of a response this server returned",
                       param="response_id", code="unknown_response_id")
    try:
        record = await asyncio.to_thread(st.store.add_feedback, **body.model_dump(), idempotency_key=idempotency_key)
    except FeedbackError as e:
        raise ApiError(400, str(e), code="invalid_feedback") from None
    return {"object": "feedback", **record}


@api.post("/admin/reload")
async def reload(request: Request) -> dict[str, Any]:
    """Check the registry's promoted model now (instead of at the next interval); swap if it changed (admin key)."""
    st = _state(request)
    swapped = await st.holder.refresh()
    return {"model": st.holder.current.name, "swapped": swapped, "last_reload_error": st.holder.last_error}


# ---------------------------------------------------------------- app


def create_app(settings: ServeSettings) -> FastAPI:
    """Build the server: load the model and feedback store, wire the routes, batching and hot swap.

    Args:
        settings: What to serve and how.

    Returns:
        The FastAPI app (run it with uvicorn, or `serve`).

    Raises:
        TuneloopError: unsafe auth settings, no promoted model, a bad run folder or feedback file.
    """
    from tuneloop.feedback import FeedbackStore

    settings.check()
    threads.claim("serve", settings.threads)  # the model thread re-takes its share as trainers come and go
    current, registry = load_initial(settings.model, settings.registry, settings.name)
    holder = ModelHolder(current, registry)
    batcher = Batcher(threads.tracking(_run_batch), max_batch=settings.max_batch if settings.batching else 1,
                      wait_s=settings.batch_wait_ms / 1000, max_cost=settings.max_batch_tokens)
    store = FeedbackStore(settings.feedback_db, retention_days=settings.feedback_retention_days)
    predlog = PredictionLog(settings.log_db or settings.feedback_db, inputs=settings.log_inputs,
                            retention_days=settings.log_retention_days,
                            max_rows=settings.log_max_rows) if settings.log_predictions else None
    state = _State(settings, holder, store, batcher, time.time(), predlog)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        watcher = asyncio.create_task(holder.watch(settings.reload_interval)) if registry else None
        yield
        if watcher:
            watcher.cancel()
        await batcher.stop()
        state.store.close()
        if predlog:
            predlog.close()

    app = FastAPI(title="tuneloop", summary="OpenAI-compatible API of a model fine-tuned with tuneloop",
                  lifespan=lifespan)
    app.state.tuneloop = state
    app.add_middleware(Guard, settings=settings)
    app.state.metrics = ServeMetrics(state)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: counts what Guard refuses too
    app.add_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    install_error_handlers(app, settings)
    app.include_router(public)
    app.include_router(api)
    return app


def serve(settings: ServeSettings) -> None:
    """Start the server with uvicorn and block until it is stopped (Ctrl-C)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
