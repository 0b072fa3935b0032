"""How `tuneloop serve` runs: which model, where feedback goes, who may call it, and its limits."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.config import FeedbackConfig, format_validation_error
from tuneloop.errors import TuneloopError

API_KEYS_ENV = "TUNELOOP_API_KEYS"
ADMIN_KEYS_ENV = "TUNELOOP_ADMIN_KEYS"


class ServeSettings(BaseModel):
    """Settings of the OpenAI-compatible server; every field is also a `tuneloop serve` option."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("promoted", description="`promoted` (the registry's promoted model, hot-swapped when it changes) or a run folder.")
    registry: str | None = Field(None, description="Registry URL (default: $TUNELOOP_REGISTRY or sqlite:///runs/registry.db).")
    feedback_db: str | Path = Field(FeedbackConfig().db, description="Where responses and feedback are stored: a SQLite file or a postgresql:// URL.")
    feedback_retention_days: float | None = Field(FeedbackConfig().retention_days, gt=0, description="Delete stored responses nobody rated after this many days.")
    log_predictions: bool = Field(True, description="Record every answer in the prediction log (`tuneloop monitor` reads it).")
    log_db: str | Path | None = Field(None, description="Prediction log (every answer, for `tuneloop monitor`): a SQLite file or a "
                                      "postgresql:// URL (default: the feedback database).")
    log_inputs: Literal["redacted", "hash", "none"] = Field("redacted", description="What the prediction log keeps of each input: "
                                                           "the text with personal data redacted, only its SHA-256, or nothing.")
    log_retention_days: float | None = Field(30.0, gt=0, description="Delete logged predictions after this many days (None: keep).")
    log_max_rows: int | None = Field(1_000_000, gt=0, description="Keep at most this many logged predictions (the oldest go first).")
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    api_keys: list[str] = Field(default_factory=list, description=f"Accepted bearer keys; ${API_KEYS_ENV} (comma-separated) adds more.")
    admin_keys: list[str] = Field(default_factory=list, description=f"Keys for /admin/* (reload); ${ADMIN_KEYS_ENV} adds more. "
                                  "Ordinary keys get 403 there.")
    no_auth: bool = Field(False, description="Accept requests without a key (only on a loopback host).")
    max_body_bytes: int = Field(1_000_000, gt=0, description="Largest request body accepted (413 above).")
    max_tokens: int = Field(512, gt=0, description="Largest `max_tokens` a chat request may ask for.")
    max_inputs: int = Field(256, gt=0, description="Most texts in one /v1/classify request.")
    max_batch: int = Field(16, gt=0, description="Most requests (classify: texts) run in one batched model call.")
    max_batch_tokens: int = Field(1024, gt=0, description="Classify: tokens one batched call aims at, shared equally by the "
                                  "waiting requests (lower: long texts delay other clients less).")
    max_queue: int = Field(4096, gt=0, description="Most jobs (chat requests, classify texts) waiting in all; above: 503 with Retry-After.")
    max_client_queue: int = Field(1024, gt=0, description="Most jobs one client (API key, or address without auth) may have waiting; above: 429 with Retry-After.")
    batch_wait_ms: float = Field(25.0, ge=0, description="How long a batch waits for company (requests of clients that "
                                 "were in recent batches and are sending their next one).")
    batching: bool = Field(True, description="Gather concurrent requests into batches (off: one request per model call).")
    reload_interval: float = Field(2.0, gt=0, description="Seconds between checks of the registry's promoted model.")
    name: str | None = Field(None, description="Model name reported for a run folder (default: the folder's name).")
    threads: int | None = Field(None, gt=0, description="torch threads for model calls (default: this process's share of the free cores, re-split as other tuneloop processes come and go).")

    def keys(self) -> list[str]:
        """The accepted API keys: `api_keys` plus those in $TUNELOOP_API_KEYS."""
        return _with_env(self.api_keys, API_KEYS_ENV)

    def admin_key_list(self) -> list[str]:
        """The admin keys: `admin_keys` plus those in $TUNELOOP_ADMIN_KEYS."""
        return _with_env(self.admin_keys, ADMIN_KEYS_ENV)


    def check(self) -> None:
        """Refuse settings that would expose the model without authentication, or limits that cannot hold.

        Raises:
            TuneloopError: `no_auth` on a non-loopback host, no API key without `no_auth`, a key that
                is both an API and an admin key, or a queue limit smaller than one request.
        """
        if self.no_auth and not is_loopback(self.host):
            raise TuneloopError(
                f"--no-auth is only allowed on a loopback host (127.0.0.1, ::1, localhost), not {self.host!r}; "
                f"give --api-key KEY (or set {API_KEYS_ENV}) to serve on {self.host}"
            )
        if not self.max_inputs <= self.max_client_queue <= self.max_queue:
            raise TuneloopError(f"--max-inputs ({self.max_inputs}) <= --max-client-queue ({self.max_client_queue}) <= "
                                f"--max-queue ({self.max_queue}) must hold, or a request could never fit in the queue")
        if set(self.keys()) & set(self.admin_key_list()):
            raise TuneloopError("a key is both an API key and an admin key: give admin keys that are not API keys")
        if not self.no_auth and not self.keys() and not self.admin_key_list():
            raise TuneloopError(
                f"no API key: give --api-key KEY (or set {API_KEYS_ENV}=key1,key2), "
                "or --no-auth to serve without keys on 127.0.0.1"
            )


def _with_env(keys: list[str], env: str) -> list[str]:
    extra = [k.strip() for k in os.environ.get(env, "").split(",")]
    return [k for k in dict.fromkeys([*keys, *extra]) if k]


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from(**options: Any) -> ServeSettings:
    """ServeSettings from command-line options; None means "not given" (the default applies).

    Raises:
        TuneloopError: an option is invalid (the message names it and what is allowed).
    """
    try:
        return ServeSettings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as e:
        raise TuneloopError(f"invalid serve options:\n{format_validation_error(e)}") from None
