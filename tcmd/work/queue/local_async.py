"""AsyncLocalJobQueue: the AsyncJobQueue face of LocalJobQueue, for one daemon alone.

Leases are kept here, in memory, beside the queue: a claim hands out a fencing token,
and ack/fail/extend with any other token are refused as stale, exactly as on Redis. They
never expire: this daemon is the only node, and the jobs of a daemon that died come back
through ``LocalJobQueue.recover()`` at its next start, so ``reap()`` finds nothing.
Enqueueing a known job id changes nothing, as on Redis (LocalJobQueue.put refuses it).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

from tcmd.errors import NotFound
from tcmd.work.queue.base import Job, JobState, Lease, StaleLease
from tcmd.work.queue.local import LocalJobQueue


class AsyncLocalJobQueue:
    """The AsyncJobQueue over a loaded LocalJobQueue."""

    def __init__(self, queue: LocalJobQueue, *, clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self._clock = clock
        self._tokens = itertools.count(1)
        self._leases: dict[str, int] = {}  # active job id → its holder's token
        self._ready = asyncio.Event()

    async def new_job_id(self) -> str:
        """A fresh ``job_<n>`` from the queue's persisted counter."""
        return self.queue.new_job_id()

    async def enqueue(self, job: Job) -> Job:
        """Add ``job`` as queued; a known job id changes nothing (the stored job returned)."""
        try:
            return self.queue.get(job.job_id)
        except NotFound:
            pass
        self.queue.put(job)
        self._ready.set()
        return job

    async def claim(self, manager_id: str, node_id: str, n: int = 1) -> list[Lease]:
        """Up to ``n`` best ready jobs of ``manager_id`` or the pool; ``node_id`` is this
        daemon's, so it is not recorded."""
        leases = []
        for _ in range(n):
            job = self.queue.take(manager_id, self._clock())
            if job is None:
                break
            token = next(self._tokens)
            self._leases[job.job_id] = token
            leases.append(Lease(job, token, math.inf))
        return leases

    async def extend(self, job_id: str, token: int) -> float:
        """Check the token; a local lease never runs out."""
        self._check(job_id, token)
        return math.inf

    async def ack(
        self, job_id: str, token: int, result: str | None, extra: dict[str, Any] | None = None
    ) -> Job:
        """active → completed, by the lease holder only (StaleLease otherwise)."""
        self._check(job_id, token)
        job = self.queue.complete(job_id, result, extra or {})
        del self._leases[job_id]
        return job

    async def fail(self, job_id: str, token: int, error: str) -> Job:
        """active → retrying after the backoff, or failed once out of attempts."""
        self._check(job_id, token)
        job = self.queue.fail(job_id, error, self._clock())
        del self._leases[job_id]
        return job

    async def cancel(self, job_id: str) -> Job:
        """queued/retrying/active → cancelled; its lease, if any, ends."""
        job = self.queue.cancel(job_id)
        self._leases.pop(job_id, None)
        return job

    async def give_up(self, job_id: str, error: str) -> Job:
        """queued/retrying/active → failed at once; its lease, if any, ends."""
        job = self.queue.give_up(job_id, error)
        self._leases.pop(job_id, None)
        return job

    async def reap(self) -> list[str]:
        """Nothing: local leases do not expire (see the module docstring)."""
        return []

    async def wait(self, timeout_s: float) -> bool:
        """Until a job is enqueued (True), or ``timeout_s`` or the next retry (False/True)."""
        if (due := self.queue.next_wakeup()) is not None:
            left = due - self._clock()
            if left <= 0:
                return True
            timeout_s = min(timeout_s, left)
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            return due is not None and self._clock() >= due
        self._ready.clear()
        return True

    async def get(self, job_id: str) -> Job:
        """The job (NotFound when unknown)."""
        return self.queue.get(job_id)

    async def jobs(
        self,
        *,
        state: JobState | None = None,
        run_id: str | None = None,
        manager_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs, oldest first, filtered."""
        return self.queue.jobs(state=state, run_id=run_id, manager_id=manager_id, limit=limit)

    async def waiting(self, manager_id: str | None) -> int:
        """Queued + retrying jobs assigned to ``manager_id`` (None: the pool)."""
        return self.queue.waiting(manager_id)

    async def stats(self) -> dict[str, Any]:
        """LocalJobQueue.stats now."""
        return self.queue.stats(self._clock())

    def _check(self, job_id: str, token: int) -> None:
        job = self.queue.get(job_id)
        holder = self._leases.get(job_id)
        if job.state is not JobState.ACTIVE or holder != token:
            raise StaleLease(
                f"stale lease on {job_id}: token {token} no longer holds it (job "
                f"{job.state.value}, held by token {holder or 'none'}); nothing was changed",
                data={"jobId": job_id, "state": job.state.value, "token": token,
                      "holder": holder},
            )  # fmt: skip
