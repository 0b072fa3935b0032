"""`tuneloop serve`: the OpenAI-compatible API of a fine-tuned model, with feedback and hot swap.

    POST /v1/chat/completions   chat (generate runs): OpenAI request/response, `stream: true` as SSE
    GET  /v1/models             the served model (its name, never its path); /v1/models/{name} for one
    POST /v1/classify           classify runs: {"input": [texts]} -> label + probabilities per text
    POST /v1/feedback           a rating of a response id this server returned
    POST /admin/reload          check the registry's promoted model now (an admin key: --admin-key)
    GET  /health, /docs         liveness and OpenAPI docs (no key needed)

Modules: `settings` (ServeSettings), `app` (routes, create_app, serve, queue limits), `guard` (keys,
admin keys, size limit, errors), `batcher` (fair dynamic batching in one model thread), `generation`
and `classify` (the batched model calls), `models` (loading and hot swap), `schemas` (strict request
bodies, OpenAI errors).
"""

from tuneloop.serve.app import create_app, serve
from tuneloop.serve.settings import ServeSettings, settings_from

__all__ = ["ServeSettings", "create_app", "serve", "settings_from"]
