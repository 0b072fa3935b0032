"""Dynamic batching: concurrent requests are gathered and run as one model call in one worker thread.

torch runs one model call at a time here (a second thread would only fight the first for the same
cores), so every call goes through a single worker thread. While it runs, new requests queue up;
the next batch takes them at once (up to `max_batch`), and a lone request waits at most `wait_s`
for company. Jobs with the same key (same model, same kind of call) share a call; a gathered batch
with several keys runs one call per key, in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("tuneloop.serve")

# run(key, payloads) -> one result per payload; a result that is an exception fails only its job.
RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]


@dataclass
class _Job:
    key: Hashable
    payload: Any
    size: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers submitted jobs into batches and runs them in one worker thread.

    Args:
        run: Called in the worker thread with a key and the payloads of the jobs sharing it.
        max_batch: Most job sizes (requests, or texts for classify) in one call; 1 turns batching off.
        wait_s: Longest a batch's first job waits for more jobs.
    """

    def __init__(self, run: RunBatch, *, max_batch: int, wait_s: float) -> None:
        self._run, self.max_batch, self.wait_s = run, max_batch, wait_s
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-model")
        self.calls: list[int] = []  # jobs per model call, most recent last (for /health and tests)

    def start(self) -> None:
        """Start gathering (inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop gathering and let the worker thread finish its call."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, key: Hashable, payload: Any, size: int = 1) -> Any:
        """Queue one job and wait for its result (its exception is raised here)."""
        assert self._queue is not None, "Batcher.start() was not called"
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(key, payload, size, future))
        return await future

    async def _gather(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        size = jobs[0].size
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while size < self.max_batch:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                job = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            jobs.append(job)
            size += job.size
        return jobs

    async def _loop(self) -> None:
        while True:
            jobs = [j for j in await self._gather() if not j.future.done()]  # drop jobs whose client left
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                await self._call(key, group)

    async def _call(self, key: Hashable, jobs: list[_Job]) -> None:
        self.calls = [*self.calls[-99:], len(jobs)]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._run, key, [j.payload for j in jobs])
        except Exception as e:  # noqa: BLE001 (a failed call fails its jobs, never the loop)
            log.exception("model call failed")
            results = [e] * len(jobs)
        for job, result in zip(jobs, results):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
