"""The model being served: loaded from a run folder or the registry, and swapped when a new one is promoted.

A request takes `holder.current` once, at its start, and keeps that reference to the end: a swap
only replaces the holder's reference (one assignment, atomic), so requests in flight finish on the
model they started with, and the old model is freed when the last of them is done.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError

log = logging.getLogger("tuneloop.serve")


@dataclass(eq=False)
class ServedModel:
    """A loaded run and what the API says about it."""

    name: str
    run_dir: Path
    loaded: Any  # tuneloop.runs.Loaded; used only in the model thread
    prompt_tokenizer: Any  # a copy for the event loop (fast tokenizers must not be shared across threads)
    loaded_at: float = field(default_factory=time.time)
    temperature: float | None = None  # from `tuneloop eval` (eval/calibration.json): calibrated probabilities

    @property
    def task(self) -> str:
        """`classify` or `generate` (what the run was trained for)."""
        return self.loaded.cfg.task

    @property
    def kind(self) -> str:
        """`head` (classification head) or `lm` (causal LM)."""
        return self.loaded.kind

    @property
    def labels(self) -> list[str] | None:
        """The labels of a classify run."""
        return self.loaded.labels

    @property
    def context(self) -> int | None:
        """Longest prompt + answer the model takes, in tokens (None: not limited)."""
        return getattr(self.loaded.model.config, "max_position_embeddings", None)

    def info(self) -> dict[str, Any]:
        """The model as /v1/models describes it: its name, never where it lies on the server's disk."""
        return {"id": self.name, "object": "model", "created": int(self.loaded_at), "owned_by": "tuneloop",
                "task": self.task, "kind": self.kind, "labels": self.labels}


def load_served(run_dir: Path | str, name: str | None = None) -> ServedModel:
    """Load a finished run for serving.

    Args:
        run_dir: A run folder written by `tuneloop train`.
        name: The model name the API reports (default: the folder's name).

    Raises:
        TuneloopError: the folder is not a finished run.
    """
    from tuneloop.runs import load_trained

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TuneloopError(f"model folder {run_dir} does not exist; pass --model RUN_FOLDER or --model promoted")
    loaded = load_trained(run_dir)
    from tuneloop.evaluate.calibration import read_temperature

    return ServedModel(name or run_dir.resolve().name, run_dir, loaded, copy.deepcopy(loaded.tokenizer),
                       temperature=read_temperature(run_dir) if loaded.cfg.task == "classify" else None)


class ModelHolder:
    """Holds the served model; with a registry, follows its promoted model.

    Args:
        current: The model served now.
        registry: A `tuneloop.registry.Registry` to follow, or None for a fixed run folder.
    """

    def __init__(self, current: ServedModel, registry: Any | None = None) -> None:
        self.current = current
        self.registry = registry
        self.status = "ok"
        self.last_error: str | None = None
        self.swaps = 0
        self._lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """Load the registry's promoted model if it is not the one served, then swap; True if swapped.

        Loading runs in a helper thread, off the request path and outside the model thread, so
        requests keep being answered by the current model meanwhile. A failed load keeps it.
        """
        if self.registry is None:
            return False
        async with self._lock:  # one load at a time (the watcher and /admin/reload may both ask)
            try:
                record = await asyncio.to_thread(self.registry.promoted)
                if record is None or record.name == self.current.name:
                    return False
                self.status = f"loading {record.name}"
                new = await asyncio.to_thread(load_served, record.path, record.name)
            except Exception as e:  # noqa: BLE001 (keep serving the current model whatever went wrong)
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("could not load the promoted model: %s", self.last_error)
                return False
            finally:
                self.status = "ok"
            old, self.current = self.current, new
            self.swaps += 1
            self.last_error = None
            log.info("now serving %s (was %s)", new.name, old.name)
            return True

    async def watch(self, interval: float) -> None:
        """Check the registry every `interval` seconds, forever (a background task)."""
        while True:
            await asyncio.sleep(interval)
            await self.refresh()


def load_initial(model: str, registry_url: str | None, name: str | None) -> tuple[ServedModel, Any | None]:
    """The model to serve at start, and the registry to follow (None for a run folder).

    Raises:
        TuneloopError: `promoted` with no promoted model in the registry, or a bad run folder.
    """
    if model != "promoted":
        return load_served(model, name), None
    from tuneloop.registry import Registry

    registry = Registry(registry_url)
    record = registry.promoted()
    if record is None:
        raise TuneloopError(
            "the registry has no promoted model; promote one with `tuneloop models promote NAME`, "
            "or serve a run folder with --model RUN"
        )
    return load_served(record.path, record.name), registry
