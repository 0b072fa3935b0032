"""Dynamic batching with fair shares: concurrent jobs run as one model call in one worker thread.

torch runs one model call at a time here (a second thread would only fight the first for the same
cores), so every call goes through a single worker thread. While it runs, new jobs queue up; the
next batch takes them at once, and a lone job waits at most `wait_s` for company.

Each job belongs to a flow (one request: a chat request is one job, a classify request one job per
text). Batches are filled by deficit round robin over the flows, weighed by each job's cost (its
tokens): every batch gives each waiting flow an equal share of `max_cost`, so a request of 256 long
texts runs as many small micro-batches, each holding about its share of long texts beside the other
clients' requests, instead of holding the model thread for minutes. A flow alone gets whole batches. Jobs with the same key
(same model, same kind of call) share a call; a batch with several keys runs one call per key.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
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
    cost: float
    client: Hashable
    future: asyncio.Future = field(repr=False)


@dataclass
class _Flow:
    jobs: deque[_Job] = field(default_factory=deque)
    credit: float = 0.0  # the deficit counter of deficit round robin


class Batcher:
    """Gathers submitted jobs into fair batches and runs them in one worker thread.

    Args:
        run: Called in the worker thread with a key and the payloads of the jobs sharing it.
        max_batch: Most jobs (requests, or texts for classify) in one call; 1 turns batching off.
        wait_s: Longest a batch's first job waits for more jobs.
        max_cost: Cost (tokens) one batch aims at; every waiting flow gets an equal share of it.
    """

    def __init__(self, run: RunBatch, *, max_batch: int, wait_s: float, max_cost: float = 1024) -> None:
        self._run, self.max_batch, self.wait_s, self.max_cost = run, max_batch, wait_s, max_cost
        self._flows: dict[Hashable, _Flow] = {}  # insertion order is the round-robin order
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-model")
        self.calls: list[int] = []  # jobs per model call, most recent last (for /health and tests)
        self.queued = 0  # jobs waiting or running
        self.queued_cost = 0.0
        self._by_client: dict[Hashable, int] = {}
        self._rate = 0.0  # cost per second of recent model calls (for Retry-After)
        self._recent_flows: deque[int] = deque([0], maxlen=8)  # requests with jobs in each of the last batches

    def start(self) -> None:
        """Start gathering (inside the running event loop)."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop gathering and let the worker thread finish its call."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def queued_by(self, client: Hashable) -> int:
        """Jobs of `client` waiting or running."""
        return self._by_client.get(client, 0)

    def wait_estimate(self, extra_cost: float = 0.0) -> int:
        """Seconds until the queue (plus `extra_cost`) is likely worked off, 1..60: a Retry-After value."""
        if self._rate <= 0:
            return 1
        return max(1, min(60, math.ceil((self.queued_cost + extra_cost) / self._rate)))

    async def submit(self, key: Hashable, payload: Any, cost: float = 1.0, client: Hashable = None) -> Any:
        """Queue one job as its own flow and wait for its result (its exception is raised here)."""
        return (await self.submit_many(key, [payload], [cost], client=client))[0]

    async def submit_many(self, key: Hashable, payloads: Sequence[Any], costs: Sequence[float],
                          client: Hashable = None) -> list[Any]:
        """Queue the jobs of one request as one flow and wait for all their results.

        Raises:
            Exception: the first failed job's exception (the request's jobs not yet run are dropped).
        """
        assert self._wake is not None, "Batcher.start() was not called"
        loop, flow = asyncio.get_running_loop(), _Flow()
        jobs = [_Job(key, p, max(float(c), 1e-9), client, loop.create_future()) for p, c in zip(payloads, costs)]
        flow.jobs.extend(jobs)
        self._flows[object()] = flow
        self._account(jobs, +1)
        self._wake.set()
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        finally:
            for j in jobs:  # a client that left: its jobs that did not run yet are skipped
                j.future.cancel()

    def _account(self, jobs: Sequence[_Job], sign: int) -> None:
        for j in jobs:
            self.queued += sign
            self.queued_cost += sign * j.cost
            self._by_client[j.client] = self._by_client.get(j.client, 0) + sign
            if not self._by_client[j.client]:
                del self._by_client[j.client]

    def _take(self) -> list[_Job]:
        """One batch: one round of deficit round robin over the flows, at most `max_batch` jobs.

        The round gives every waiting flow `max_cost / flows` of credit (flows: those waiting, or
        as many as one of the last 8 batches served if more: clients that send request after
        request are often between two when a batch forms) and lets it add jobs while its credit covers them, at most its share of
        the batch's places. One round only, so a request of long texts adds about its share to each
        batch, not as much as fits; a flow keeps unused credit while it has jobs waiting. Rounds
        repeat only while the batch is empty.
        """
        for fid in [fid for fid, f in self._flows.items() if all(j.future.done() for j in f.jobs)]:
            self._account(list(self._flows.pop(fid).jobs), -1)  # every job's client left
        batch: list[_Job] = []
        served: set[Hashable] = set()
        while self._flows and not batch:
            # Shares count the requests of recent batches too: clients not back yet still get theirs.
            flows = max(len(self._flows), *self._recent_flows)
            quantum, places = self.max_cost / flows, -(-self.max_batch // len(self._flows))
            for fid in list(self._flows):
                flow = self._flows.pop(fid)
                flow.credit += quantum
                for _ in range(places):
                    if not flow.jobs or len(batch) >= self.max_batch or flow.jobs[0].cost > flow.credit:
                        break
                    job = flow.jobs.popleft()
                    flow.credit -= job.cost
                    if job.future.done():  # its client left
                        self._account([job], -1)
                    else:
                        batch.append(job)
                        served.add(fid)
                if flow.jobs:  # back of the line, keeping its credit
                    self._flows[fid] = flow
        self._recent_flows.append(len(served))
        return batch

    async def _gather(self) -> list[_Job]:
        assert self._wake is not None
        while not self._flows:
            self._wake.clear()
            await self._wake.wait()
        # Wait (at most wait_s) for company: while a batch would be small, or would hold fewer
        # requests than recent ones did (their clients are sending their next requests right now,
        # and a batch formed without them would be all long texts of the one that stayed).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while self._waiting() < self.max_batch or len(self._flows) < max(self._recent_flows):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
            except TimeoutError:
                break
        return self._take()

    def _waiting(self) -> int:
        return sum(len(f.jobs) for f in self._flows.values())

    async def _loop(self) -> None:
        while True:
            groups: dict[Hashable, list[_Job]] = {}
            for job in await self._gather():
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                await self._call(key, group)

    async def _call(self, key: Hashable, jobs: list[_Job]) -> None:
        self.calls = [*self.calls[-99:], len(jobs)]
        loop, started = asyncio.get_running_loop(), time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._run, key, [j.payload for j in jobs])
        except Exception as e:  # noqa: BLE001 (a failed call fails its jobs, never the loop)
            log.exception("model call failed")
            results = [e] * len(jobs)
        rate = sum(j.cost for j in jobs) / max(time.perf_counter() - started, 1e-6)
        self._rate = rate if self._rate <= 0 else 0.8 * self._rate + 0.2 * rate
        self._account(jobs, -1)
        for job, result in zip(jobs, results):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
