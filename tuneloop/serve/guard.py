"""What stands before the routes: API keys, the body size limit, and every error in the OpenAI shape.

`Guard` is an ASGI middleware that answers 401 (no or wrong key), 403 (an ordinary key on an admin
path) and 413 (declared body too large) before a byte of the body is read, so an unauthenticated
client cannot make the server parse anything. A body without a Content-Length is counted as it
arrives and refused once past the limit. It also names the client (its key, or its address without
auth) in `request.state.client`, so that queue limits apply per client.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneloop.errors import TuneloopError
from tuneloop.serve.schemas import ApiError, validation_error
from tuneloop.serve.settings import ADMIN_KEYS_ENV, ServeSettings

# Paths that need a key (admin paths an admin key); /health and the OpenAPI docs stay open.
PROTECTED = "/v1/"
ADMIN = "/admin/"


def check_key(authorization: str, keys: list[str]) -> ApiError | None:
    """The 401 for an `Authorization` header value, or None if it carries one of `keys`.

    Example:
        >>> check_key("Bearer k1", ["k1"]) is None, check_key("", ["k1"]).code
        (True, 'missing_api_key')
    """
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return ApiError(401, "missing API key: send the header 'Authorization: Bearer YOUR_KEY'", code="missing_api_key")
    given = key.strip().encode()
    # Compare with every key: the time taken does not tell how much of a key matched.
    if not any([hmac.compare_digest(given, k.encode()) for k in keys]):
        return ApiError(401, "invalid API key: it is not one of the keys this server was started with", code="invalid_api_key")
    return None


def client_id(scope: Scope) -> str:
    """Who sent a request, for queue limits: a digest of its key (the key itself is never kept), else its address."""
    _, _, key = Headers(scope=scope).get("authorization", "").partition(" ")
    if key.strip():
        return "key:" + hashlib.sha256(key.strip().encode()).hexdigest()[:16]
    return f"addr:{(scope.get('client') or ('?',))[0]}"


def _content_length(headers: Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


class Guard:
    """ASGI middleware: API keys on protected paths, then the declared body size."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings
        self.admin_keys = settings.admin_key_list()
        self.keys = [*settings.keys(), *self.admin_keys]  # an admin key may also call the API

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self._check(scope)
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
            receive = self._counting(receive)
            scope.setdefault("state", {})["client"] = client_id(scope)
        await self.app(scope, receive, send)

    def _counting(self, receive: Receive) -> Receive:
        total = 0

        async def counted() -> Message:
            nonlocal total
            message = await receive()
            total += len(message.get("body", b""))
            if total > self.settings.max_body_bytes:
                raise HTTPException(413)  # answered by the HTTPException handler below
            return message

        return counted

    def _check(self, scope: Scope) -> ApiError | None:
        headers = Headers(scope=scope)
        if scope["path"].startswith(ADMIN):
            error = self._check_admin(headers.get("authorization", ""))
            if error is not None:
                return error
        elif not self.settings.no_auth and scope["path"].startswith(PROTECTED):
            error = check_key(headers.get("authorization", ""), self.keys)
            if error is not None:
                return error
        size = _content_length(headers)
        if size is not None and size > self.settings.max_body_bytes:
            return _too_large(self.settings)
        return None


    def _check_admin(self, authorization: str) -> ApiError | None:
        """Admin paths need an admin key; without any, only a --no-auth server (loopback) is open."""
        if not self.admin_keys:
            if self.settings.no_auth:
                return None
            return ApiError(403, "admin actions are disabled: start the server with --admin-key KEY "
                                 f"(or ${ADMIN_KEYS_ENV}) and call them with that key", code="admin_key_required")
        error = check_key(authorization, self.admin_keys)
        if error is not None and check_key(authorization, self.keys) is None:  # a valid key, but not an admin key
            return ApiError(403, "this key may not run admin actions: use an admin key (--admin-key)",
                            code="admin_key_required")
        return error


def _too_large(settings: ServeSettings) -> ApiError:
    return ApiError(413, f"request body too large: the limit is {settings.max_body_bytes:,} bytes",
                    code="request_too_large")


def error_response(e: ApiError) -> JSONResponse:
    """The JSON response for an API error (401s say which scheme to use)."""
    headers = {"WWW-Authenticate": "Bearer", **e.headers} if e.status == 401 else e.headers
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def install_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """Make every error, FastAPI's and ours, answer in the OpenAI shape; user mistakes are 4xx."""

    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(list(e.errors())))

    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 413:  # a body without Content-Length that grew past the limit
            return error_response(_too_large(settings))
        if e.status_code == 400 and e.detail == "There was an error parsing the body":  # FastAPI's words for it
            return error_response(ApiError(400, "the body could not be parsed as JSON: not UTF-8, nested too deeply, "
                                                 "or a number with too many digits", code="invalid_json"))
        message = str(e.detail)
        if e.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif e.status_code == 405:
            allowed = (e.headers or {}).get("Allow", "another method")
            message = f"{request.method} is not allowed on {request.url.path}: use {allowed}"
        return error_response(ApiError(e.status_code, message, code=f"http_{e.status_code}"))

    async def user_error(request: Request, e: TuneloopError) -> JSONResponse:
        return error_response(ApiError(400, str(e), code="invalid_request"))

    async def internal(request: Request, e: Exception) -> JSONResponse:
        return error_response(ApiError(500, f"internal error ({type(e).__name__}); see the server log", type="server_error"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(TuneloopError, user_error)
    app.add_exception_handler(Exception, internal)

