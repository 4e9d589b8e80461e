"""Retention: what has ended is kept for ``TCM_RETENTION_MS``, then forgotten.

A finished run goes with its jobs (a job whose run is gone, by its own end time); a
terminated instance goes once none of its children is remembered (children first, so a
remembered instance's parent is always there).
Forgetting drops the memory, the store records and the instance's files, so a daemon
that runs for months stays as small and as fast as one that runs for a week. Ids are
never reused: their counters (the executive counter, each parent's ``next_child``, the
job and run counters) live apart from what is forgotten. 0 keeps everything forever.

With the shared queue (``REDIS_URL``), a forgotten run's jobs and description are forgotten
in Redis too (``prune``: the PRUNE script, the run's own job ids, never a key scan), under
the lock service's ``retention`` lock: one node prunes at a time; a node that finds it held
(or Redis away) keeps its list for the next sweep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from tcmd.config import Settings
from tcmd.instances.registry import Instances
from tcmd.model import State
from tcmd.store.locks import LockBusy, LockService
from tcmd.work.dispatcher import Parallel

log = structlog.get_logger(__name__)
MAX_INTERVAL_S = 60.0
LOCK = "retention"
LOCK_TTL_MS = 30_000
PENDING_MAX = 10_000  # forgotten runs still to prune in Redis; past it the oldest stay there
Prune = Callable[[str, list[str]], Awaitable[int]]  # run id, job ids → jobs forgotten


class Retention:
    def __init__(
        self,
        settings: Settings,
        instances: Instances,
        parallel: Parallel,
        emit: Callable[..., Any] = lambda kind, **fields: None,
    ) -> None:
        self.keep_s = settings.retention_ms / 1000
        self.instances = instances
        self.parallel = parallel
        self.emit = emit
        self.locks: LockService | None = None  # with prune: the shared queue's retention
        self.prune: Prune | None = None
        self.pending: list[tuple[str, list[str]]] = []  # (run id, job ids) to prune in Redis

    def sweep(self, now: float) -> tuple[int, int]:
        """Forget what ended before ``now - keep``; how many runs and instances went."""
        runs = [
            run
            for run in self.parallel.runs.values()
            if run.finished_at is not None and now - run.finished_at > self.keep_s
        ]
        for run in runs:
            if self.prune is not None:
                self.pending.append((run.run_id, list(run.job_ids.values())))
            self.parallel.forget_run(run)
        if len(self.pending) > PENDING_MAX:
            dropped = len(self.pending) - PENDING_MAX
            log.warning("runs left in Redis: too many to prune", runs=dropped)
            del self.pending[: len(self.pending) - PENDING_MAX]
        if runless := self.parallel.forget_runless(now - self.keep_s):
            log.info("forgotten jobs whose run is gone", jobs=runless)
        forgotten = 0
        while old := self._old_leaves(now):  # a parent becomes a leaf once its children go
            for inst in old:
                self.instances.forget(inst)
            forgotten += len(old)
        if runs or forgotten:
            log.info("forgotten", runs=len(runs), instances=forgotten)
            self.emit("retention.forgotten", runs=len(runs), instances=forgotten)
        return len(runs), forgotten

    async def prune_shared(self) -> int:
        """Forget the runs forgotten here in Redis too, one node at a time (the ``retention``
        lock); held by another node or Redis away: kept for the next sweep. → jobs gone."""
        if not self.pending or self.prune is None or self.locks is None:
            return 0
        gone = 0
        try:
            async with self.locks.hold(LOCK, LOCK_TTL_MS) as lease:
                while self.pending and lease.held:
                    run_id, job_ids = self.pending[0]
                    gone += await self.prune(run_id, job_ids)
                    self.pending.pop(0)
        except LockBusy:
            log.debug("retention: another node prunes now")
        except Exception as exc:  # Redis away (or a bug): the next sweep tries again
            log.warning("retention: runs not pruned in Redis", error=str(exc),
                        runs=len(self.pending))  # fmt: skip
        if gone:
            log.info("pruned in Redis", jobs=gone)
        return gone

    def _old_leaves(self, now: float) -> list[Any]:
        by_id = self.instances.by_id
        parents = {inst.parent_id for inst in by_id.values()}
        return [
            inst
            for inst in by_id.values()
            if inst.status == State.TERMINATED
            and now - inst.updated > self.keep_s
            and inst.id not in parents
        ]

    async def run(self) -> None:
        """Sweep every half retention period (at most every minute) for the daemon's life."""
        if self.keep_s <= 0:
            return
        interval = min(MAX_INTERVAL_S, max(0.05, self.keep_s / 2))
        while True:
            self.sweep(time.time())
            await self.prune_shared()
            await asyncio.sleep(interval)
