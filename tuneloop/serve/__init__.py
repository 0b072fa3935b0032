"""`tuneloop serve`: the OpenAI-compatible API of a fine-tuned model, with feedback and hot swap.

    POST /v1/chat/completions   chat (generate runs): OpenAI request/response, `stream: true` as SSE
    GET  /v1/models             the served model
    POST /v1/classify           classify runs: {"input": [texts]} -> label + probabilities per text
    POST /v1/feedback           a rating of a response id this server returned
    POST /admin/reload          check the registry's promoted model now
    GET  /health, /docs         liveness and OpenAPI docs (no key needed)

Modules: `settings` (ServeSettings), `app` (routes, create_app, serve), `guard` (keys, size limit,
errors), `batcher` (dynamic batching in one model thread), `generation` and `classify` (the batched
model calls), `models` (loading and hot swap), `schemas` (request bodies).
"""

from tuneloop.serve.app import create_app, serve
from tuneloop.serve.settings import ServeSettings, settings_from

__all__ = ["ServeSettings", "create_app", "serve", "settings_from"]
