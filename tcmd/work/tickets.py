"""How an attempt reports to its queue: a ticket per attempt.

The dispatcher runs every attempt the same way and tells the ticket what happened. The
local ticket moves the job in this daemon's LocalJobQueue (the embedded path: synchronous
calls, no await inside); the lease ticket of the shared queue (work/shared.py) carries the
fencing token of its Redis lease, and answers None where the lease turned out stale.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from tcmd.work.queue.base import Job
from tcmd.work.queue.local import LocalJobQueue


class Ticket(Protocol):
    """One attempt's link to its job in the queue that handed it out."""

    async def annotate(
        self, *, instance_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        """Record who runs the attempt and what it made (persisted where it can be)."""

    async def complete(self, result: str | None, extra: dict[str, Any]) -> Job | None:
        """active → completed; None: this attempt no longer holds the job."""

    async def fail(self, error: str) -> Job | None:
        """active → retrying or failed; None: this attempt no longer holds the job."""

    async def give_up(self, error: str) -> Job | None:
        """→ failed at once (its run is gone)."""


class LocalTicket:
    """The ticket of a job of this daemon's own LocalJobQueue."""

    def __init__(self, queue: LocalJobQueue, job_id: str) -> None:
        self.queue = queue
        self.job_id = job_id

    async def annotate(
        self, *, instance_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        self.queue.annotate(self.job_id, instance_id=instance_id, extra=extra)

    async def complete(self, result: str | None, extra: dict[str, Any]) -> Job | None:
        return self.queue.complete(self.job_id, result, extra)

    async def fail(self, error: str) -> Job | None:
        return self.queue.fail(self.job_id, error, time.time())

    async def give_up(self, error: str) -> Job | None:
        return self.queue.give_up(self.job_id, error)
