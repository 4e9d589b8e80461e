"""Jobs and the JobQueue protocol: every task of a run is a job.

Priorities critical > high > medium > low, FIFO within a priority. Lifecycle:

    queued → active → completed
                    → retrying (backoff) → active → … → failed (dead, last error kept)
    queued / retrying / active → cancelled
    queued / retrying / active → failed (given up: its run is gone)

A job is either assigned to one manager (``manager_id``) or waits in the shared pool
(``manager_id is None``) for whichever manager frees a slot first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Protocol

from tcmd.errors import Conflict


class Priority(IntEnum):
    CRITICAL = 0
    HIGH = 1
    MEDIUM = 2
    LOW = 3

    @classmethod
    def parse(cls, name: str | None) -> Priority:
        return cls[(name or "medium").upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


class JobState(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
THROUGHPUT_WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3  # starts in all, the first included
    base_ms: int = 1000
    cap_ms: int = 60_000


@dataclass(slots=True)
class Job:
    job_id: str
    run_id: str
    task_id: str
    task: dict[str, Any]  # the task as given: name, context, instruction, completionPattern, …
    priority: Priority = Priority.MEDIUM
    manager_id: str | None = None  # None: the shared pool
    state: JobState = JobState.QUEUED
    seq: int = 0  # FIFO order within a priority; set by the queue on put
    attempts: int = 0  # starts so far (reruns after a daemon crash included)
    reruns: int = 0  # starts lost to a daemon crash and run again
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    next_retry_at: float | None = None  # unix time
    last_error: str | None = None
    result: str | None = None
    instance_id: str | None = None  # the specialist of the current/last attempt
    created_at: float = field(default_factory=time.time)
    queued_at: float = field(default_factory=time.time)  # last time it (re)entered the queue
    started_at: float | None = None
    finished_at: float | None = None
    duration_ms: float | None = None  # of the last attempt
    extra: dict[str, Any] = field(default_factory=dict)  # branch, worktree, exitCode, …
    node: str | None = None  # the node whose run it belongs to (None: made before nodes)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["priority"] = int(self.priority)
        out["state"] = self.state.value
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Job:
        raw = dict(raw)
        raw["priority"] = Priority(raw["priority"])
        raw["state"] = JobState(raw["state"])
        raw["retry"] = RetryPolicy(**raw["retry"])
        return cls(**raw)

    def public(self) -> dict[str, Any]:
        """What the ``jobs`` tool shows."""
        return {
            "jobId": self.job_id,
            "runId": self.run_id,
            "taskId": self.task_id,
            "managerId": self.manager_id,
            "priority": self.priority.label,
            "state": self.state.value,
            "attempts": self.attempts,
            "reruns": self.reruns,
            "nextRetryAt": self.next_retry_at,
            "lastError": self.last_error,
            "instanceId": self.instance_id,
            "node": self.node,
        }


class JobQueue(Protocol):
    """Where jobs wait, in order, and move through their lifecycle. Persisted on change."""

    def put(self, job: Job) -> Job:
        """Add a new job (state queued); gives it its ``seq``."""

    def take(self, manager_id: str, now: float) -> Job | None:
        """The best ready job for ``manager_id`` (its own or the pool's) → active."""

    def complete(self, job_id: str, result: str | None, extra: dict[str, Any]) -> Job:
        """active → completed."""

    def fail(self, job_id: str, error: str, now: float) -> Job:
        """active → retrying (after a backoff) or, out of attempts, failed."""

    def cancel(self, job_id: str) -> Job:
        """queued/retrying/active → cancelled (final jobs are returned unchanged)."""

    def give_up(self, job_id: str, error: str) -> Job:
        """queued/retrying/active → failed at once, attempts left or not (final: unchanged)."""

    def discard(self, job_id: str) -> None:
        """Drop a job that never started (its run could not be stored), memory then store."""

    def recover(self) -> list[Job]:
        """After a daemon crash: active jobs → queued again, ``reruns`` + 1."""

    def reassign(self, from_manager: str, to_manager: str | None) -> list[Job]:
        """Move ``from_manager``'s waiting (queued/retrying) jobs; returns them."""

    def get(self, job_id: str) -> Job:
        """The job (NotFound when unknown)."""

    def jobs(
        self,
        *,
        state: JobState | None = None,
        run_id: str | None = None,
        manager_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs, oldest first, filtered."""

    def waiting(self, manager_id: str | None) -> int:
        """Queued + retrying jobs assigned to ``manager_id`` (None: the pool)."""

    def finished(self, manager_id: str | None, state: JobState) -> int:
        """Remembered jobs of ``manager_id`` that ended in the final ``state``."""

    def forget(self, job_id: str) -> None:
        """Drop a finished job for good (retention)."""

    def next_wakeup(self) -> float | None:
        """The earliest ``next_retry_at`` of a retrying job (unix time)."""

    def stats(self, now: float) -> dict[str, Any]:
        """``{byState, byPriority, avgWaitMs, avgRunMs, throughputPerMin}``."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed job: the holder proves itself with ``token`` (fencing: each claim gets a
    larger one) until ``expires_at`` (unix seconds, by the queue's clock)."""

    job: Job
    token: int
    expires_at: float


class StaleLease(Conflict):
    """An ack/fail/extend from a lease holder that no longer holds the job: its lease
    expired or the job was reclaimed, finished or cancelled meanwhile. Nothing changed."""


class AsyncJobQueue(Protocol):
    """The job queue as both backends serve it (RedisJobQueue, AsyncLocalJobQueue):
    claims are leased, and a lease holder's calls carry its fencing token."""

    async def new_job_id(self) -> str:
        """A fresh ``job_<n>``, never reused."""

    async def enqueue(self, job: Job) -> Job:
        """Add ``job`` (state queued, its ``seq``); a job id already known changes nothing
        and returns the job as it is."""

    async def claim(self, manager_id: str, node_id: str, n: int = 1) -> list[Lease]:
        """Up to ``n`` best ready jobs of ``manager_id`` or the pool → active, leased to
        ``node_id``; due retries are promoted first and expired leases reaped."""

    async def extend(self, job_id: str, token: int) -> float:
        """Renew the lease for another lease period; the new ``expires_at`` (StaleLease)."""

    async def ack(
        self, job_id: str, token: int, result: str | None, extra: dict[str, Any] | None = None
    ) -> Job:
        """active → completed, by the lease holder only (StaleLease otherwise)."""

    async def fail(self, job_id: str, token: int, error: str) -> Job:
        """active → retrying after the backoff, or failed once out of attempts (StaleLease)."""

    async def cancel(self, job_id: str) -> Job:
        """queued/retrying/active → cancelled (final jobs are returned unchanged)."""

    async def give_up(self, job_id: str, error: str) -> Job:
        """queued/retrying/active → failed at once (final jobs are returned unchanged)."""

    async def reap(self) -> list[str]:
        """Active jobs whose lease expired → queued, ``reruns`` + 1; their ids."""

    async def wait(self, timeout_s: float) -> bool:
        """Block until a job may be ready (True) or ``timeout_s`` passed (False)."""

    async def get(self, job_id: str) -> Job:
        """The job (NotFound when unknown)."""

    async def jobs(
        self,
        *,
        state: JobState | None = None,
        run_id: str | None = None,
        manager_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs, oldest first, filtered."""

    async def waiting(self, manager_id: str | None) -> int:
        """Queued + retrying jobs assigned to ``manager_id`` (None: the pool)."""

    async def stats(self) -> dict[str, Any]:
        """``{byState, byPriority, avgWaitMs, avgRunMs, throughputPerMin}``."""


def stats_of(jobs: Iterable[Job], now: float) -> dict[str, Any]:
    """``JobQueue.stats`` figures over ``jobs`` alone (what an instance sees of its own
    runs): the waits and run times of their last attempts, completions in the last minute."""
    by_state = dict.fromkeys((state.value for state in JobState), 0)
    by_priority = dict.fromkeys((priority.label for priority in Priority), 0)
    waits, runs, completed = [], [], 0
    for job in jobs:
        by_state[job.state.value] += 1
        if job.state in (JobState.QUEUED, JobState.RETRYING):
            by_priority[job.priority.label] += 1
        if job.started_at is not None:
            waits.append((job.started_at - job.queued_at) * 1000)
        if job.duration_ms is not None:
            runs.append(job.duration_ms)
        if job.state is JobState.COMPLETED and (job.finished_at or 0) > now - THROUGHPUT_WINDOW_S:
            completed += 1
    return {
        "byState": by_state,
        "byPriority": by_priority,
        "avgWaitMs": sum(waits) / len(waits) if waits else None,
        "avgRunMs": sum(runs) / len(runs) if runs else None,
        "throughputPerMin": completed,
    }
