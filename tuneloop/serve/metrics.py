"""`GET /metrics` in Prometheus' text format (prometheus-client): requests, errors, latency, batches, model, log.

Each app has its own `CollectorRegistry` (several servers in one process, as in the tests, do not
share counters). Like /health, the endpoint needs no key: it says which model is served and how
the server is doing, nothing about requests' contents.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Paths counted by name; any other path is counted as `other` (a scanner must not create a series per URL).
PATHS = ("/v1/classify", "/v1/chat/completions", "/v1/feedback", "/v1/models", "/health", "/metrics", "/admin/reload")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    """The server's Prometheus metrics; gauges read the live state when scraped.

    Args:
        state: The app's state (`holder`, `batcher`, `predlog`), read at scrape time.
    """

    def __init__(self, state: Any) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tuneloop_requests", "HTTP requests answered, by path and status code.", ["path", "status"], registry=r)
        self.latency = Histogram("tuneloop_request_seconds", "Time to answer a request (seconds), by path.", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.model = Gauge("tuneloop_model_info", "1 for the model being served.", ["model", "task", "kind"], registry=r)
        Gauge("tuneloop_queued_jobs", "Jobs waiting for the model thread.", registry=r).set_function(lambda: state.batcher.queued)
        Gauge("tuneloop_recent_batch_size", "Mean jobs per model call over the last 100 calls.", registry=r).set_function(
            lambda: sum(c := state.batcher.calls) / len(c) if state.batcher.calls else 0)
        Gauge("tuneloop_model_swaps", "Hot swaps to a newly promoted model since start.", registry=r).set_function(
            lambda: state.holder.swaps)
        log = Gauge("tuneloop_prediction_log_rows", "Prediction-log rows by outcome (written, dropped: queue full, "
                    "failed: database error, queued).", ["outcome"], registry=r)
        for outcome in ("written", "dropped", "failed", "queued"):
            log.labels(outcome).set_function(lambda o=outcome: state.predlog.status()[o] if state.predlog else 0)
        Gauge("tuneloop_prediction_log_ok", "1 if the last prediction-log write succeeded.", registry=r).set_function(
            lambda: 1 if state.predlog is None or state.predlog.last_error is None else 0)
        self._state = state

    def render(self) -> Response:
        """The scrape response (the model-info gauge follows a hot swap)."""
        served = self._state.holder.current
        self.model.clear()
        self.model.labels(served.name, served.task, served.kind).set(1)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)



class MetricsMiddleware:
    """ASGI middleware counting every HTTP request's status and latency (401s from the key check included).

    Args:
        app: The wrapped application.
        metrics: Where to count.
    """

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in PATHS else "other"
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text format."""
    return request.app.state.metrics.render()
