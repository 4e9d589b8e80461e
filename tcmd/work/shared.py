"""The shared job queue in the dispatcher (``REDIS_URL`` set): jobs move between nodes.

A node puts its runs' jobs in Redis (RedisJobQueue) and keeps them in its LocalJobQueue as
a view (``extra.shared``: stored and counted, never on a local heap), which the inline
tools read. One claim loop per node claims for its own managers' free slots, then for
other nodes' managers with waiting jobs whose workDir exists here; each claim is a lease
with a fencing token, extended while the attempt runs and acked/failed with the token.
The runner tells the job's origin node of each move (``notice:<node>``), and the origin
reflects it into its view. docs/redis.md ("Shared queue: how a job moves") has the whole
design, fallback included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from redis.exceptions import RedisError

from tcmd.errors import NotFound, TcmError, Unavailable
from tcmd.work.dispatcher import RUN_GONE, Parallel, Run
from tcmd.work.queue.base import FINAL, Job, JobState, Lease, StaleLease
from tcmd.work.queue.local import JOBS_NS
from tcmd.work.queue.redis import RedisJobQueue

log = structlog.get_logger(__name__)
DOWN = (RedisError, OSError, TimeoutError)  # Redis cannot answer now
ENQUEUE_TIMEOUT_S = 2.0  # a run's enqueue takes longer: its jobs go to the local queue
WAIT_S = 10.0  # the longest BLPOP on the wake or notice list
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # between retries of a call Redis did not answer
RUNS_CACHED = 1_000  # other nodes' runs kept in memory (read again from Redis when dropped)


class LeaseTicket:
    """The ticket of an attempt on a job claimed from the shared queue."""

    def __init__(self, work: SharedWork, lease: Lease) -> None:
        self.work = work
        self.job = lease.job
        self.token = lease.token
        self.expires_at = lease.expires_at
        self.own = lease.job.node == work.node and lease.job.run_id in work.p.runs
        self.extra: dict[str, Any] = {}  # annotations: sent with the ack
        self.keeper: asyncio.Task[None] | None = None

    async def annotate(
        self, *, instance_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        self.extra.update(extra or {})
        if self.own:  # the view shows who runs it (found after a crash: start() ends it)
            view = self.work.p.queue.get(self.job.job_id)
            if view.state is JobState.ACTIVE:
                view.extra = {**view.extra, **(extra or {})}
                if instance_id is not None:
                    view.instance_id = instance_id
                self.work.p.queue.reflect(view)

    async def complete(self, result: str | None, extra: dict[str, Any]) -> Job | None:
        extra = {**self.extra, **extra, "ranOn": self.work.node}
        q = self.work.q
        return await self._call(lambda: q.ack(self.job.job_id, self.token, result, extra))

    async def fail(self, error: str) -> Job | None:
        q = self.work.q
        return await self._call(lambda: q.fail(self.job.job_id, self.token, error))

    async def give_up(self, error: str) -> Job | None:
        q = self.work.q
        return await self._call(lambda: q.give_up(self.job.job_id, error))

    async def _call(self, op: Callable[[], Awaitable[Job]]) -> Job | None:
        """``op`` until Redis answers (the lease decides how long), then the origin told."""
        for delay in itertools.chain(BACKOFF_S, itertools.repeat(BACKOFF_S[-1])):
            try:
                job = await op()
            except StaleLease as exc:
                self.stale(exc)
                return None
            except NotFound:  # Redis lost its data: the origin queues the job again
                log.warning("job gone from Redis: this attempt's word is lost",
                            job_id=self.job.job_id)  # fmt: skip
                return None
            except DOWN as exc:
                if time.time() > self.expires_at:
                    log.warning("lease ran out while Redis was away: the job runs again",
                                job_id=self.job.job_id, error=str(exc))  # fmt: skip
                    return None
                await asyncio.sleep(delay)  # a backoff pause before asking again
                continue
            await self.work.moved(job)
            return job
        raise AssertionError("unreachable: the backoff never ends")

    def stale(self, exc: StaleLease) -> None:
        """Another node holds the job now (or it was cancelled): this attempt's word is void."""
        if self.keeper is not None:
            self.keeper.cancel()
        log.warning("stale lease: the job's result is another node's", job_id=self.job.job_id,
                    token=self.token, error=exc.message)  # fmt: skip
        self.work.p.emit("job.stale", jobId=self.job.job_id, node=self.work.node, token=self.token)


class SharedWork:
    """One node's part in the shared queue: submit, claim, run, report, learn."""

    def __init__(self, parallel: Parallel, queue: RedisJobQueue, node: str) -> None:
        self.p = parallel
        self.q = queue
        self.node = node
        self.runs: dict[str, Run] = {}  # "node:run_id" → another node's run it ran jobs of
        self.view_stale = True  # re-read the view's unfinished shared jobs at (re)connection
        self.limits: dict[str, int] = {}  # {q}:limits as the last claim round read it
        self._poked = asyncio.Event()
        self._wake_task: asyncio.Task[bool] | None = None
        self._poke_task: asyncio.Task[Any] | None = None
        parallel.poke = self._poked.set
        parallel.node_names = True

    # -- submitting ---------------------------------------------------------------------------
    async def new_job_ids(self, n: int) -> list[str] | None:
        """``n`` ids unique across the nodes; None when Redis cannot give them now."""
        known = {j.job_id for j in self.p.queue.jobs()}
        above = max((int(i.rpartition("_")[2]) for i in known), default=0)
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                ids = await self.q.new_job_ids(n, above)  # above this node's own ids
        except DOWN:
            return None
        return None if known.intersection(ids) else ids

    async def submit(self, run: Run, jobs: list[Job]) -> None:
        """The run's jobs into the view and Redis; into the local queue if Redis fails."""
        view = self.p.queue
        try:
            for job in jobs:
                job.extra["shared"] = True
                job.queued_at = time.time()
                view.reflect(job)  # before Redis: a notice about it may come back at once
                run.job_ids[job.task_id] = job.job_id
            self.p.save_run(run)
        except Exception:  # nothing queued: the view forgets them (start() fails leftovers)
            for job in jobs:
                view.unreflect(job.job_id)
                with contextlib.suppress(TcmError):
                    self.p.store.delete(JOBS_NS, job.job_id)
            run.job_ids.clear()
            raise
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                await self.q.put_run(self.node, run.run_id, run.to_json())
                # the managers' limits, before any node may claim their jobs
                await self.q.set_limits({m: self.p.limit_for(m) for m in run.manager_ids})
                await self.q.enqueue_many(jobs)
        except DOWN as exc:
            log.warning("shared queue unreachable: the run's jobs go to the local queue",
                        run_id=run.run_id, error=str(exc))  # fmt: skip
            for job in jobs:
                view.unreflect(job.job_id)
                job.extra.pop("shared", None)
            run.job_ids.clear()
            self.p.submit(run, jobs)

    async def cancel(self, job: Job) -> Job:
        """Cancel a shared job in Redis (its holder's lease ends), then here."""
        try:
            done = await self.q.cancel(job.job_id)
        except DOWN as exc:
            raise Unavailable(
                f"{job.job_id} waits in the shared queue, which Redis cannot reach now: "
                "cancel it again when Redis is back",
                data={"jobId": job.job_id, "dependency": "redis"},
            ) from exc
        await self.moved(done)
        self.p.emit_job(done)
        if (attempt := self.p.attempts.get(job.job_id)) is not None:
            attempt.cancel()
        return done

    # -- learning what other nodes did --------------------------------------------------------
    async def moved(self, job: Job) -> None:
        """A job moved: into the view if its run is this node's, else tell its origin."""
        if job.node == self.node:
            self._reflect(job)
        elif job.node:
            with contextlib.suppress(*DOWN):
                await self.q.notify(job.node, job.job_id)

    def _reflect(self, job: Job) -> None:
        try:
            held = self.p.queue.get(job.job_id)
        except NotFound:  # forgotten by retention meanwhile
            return
        if not held.extra.get("shared") or (held.state in FINAL and job.state not in FINAL):
            return
        self.p.queue.reflect(job)
        self.p.job_moved(job)  # the tasks waiting for it (work/waiting.py)
        self.p.instances.changes.fire()
        self.p.finish_runs()

    async def notices(self) -> None:
        """Follow what other nodes did to this node's jobs (BLPOP, no polling)."""
        attempt = 0
        while True:
            try:
                job_id = await self.q.notice(self.node, WAIT_S)
                if job_id is not None:
                    with contextlib.suppress(NotFound):
                        self._reflect(await self.q.get(job_id))
                attempt = 0
            except DOWN:
                attempt += 1
                await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])

    async def _catch_up(self) -> None:
        """Re-read every unfinished shared job of the view (notices lost while away); one
        Redis lost with its data (no persistence) is given them again, queued."""
        for job in self.p.queue.jobs():
            if not job.extra.get("shared") or job.state in FINAL:
                continue
            try:
                self._reflect(await self.q.get(job.job_id))
            except NotFound:
                if (run := self.p.runs.get(job.run_id)) is None:
                    continue
                log.warning("shared job lost by Redis: queued again", job_id=job.job_id)
                again = Job.from_json(job.to_json())  # the view's own object stays counted
                await self.q.put_run(self.node, run.run_id, run.to_json())
                self._reflect(await self.q.enqueue(again))
        self.view_stale = False

    # -- claiming -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Claim whenever a slot is free and work may be ready; wait on Events and BLPOP."""
        attempt = 0
        try:
            while True:
                self._poked.clear()
                try:
                    if self.view_stale:
                        await self._catch_up()
                    await self._round()
                    attempt = 0
                except Exception as exc:  # Redis away (or a bug): the loop must go on
                    if not isinstance(exc, DOWN):
                        log.exception("claim round failed")
                    elif attempt == 0:
                        log.warning("shared queue unreachable: claims wait", error=str(exc))
                    self.view_stale = True
                    attempt += 1
                    await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                    continue
                await self._wait_for_work()
        finally:
            for task in (self._wake_task, self._poke_task):
                if task is not None:
                    task.cancel()

    async def _wait_for_work(self) -> None:
        """Until a local change (a slot freed, a manager came) or, while a slot is free, a
        wake from the shared queue (new work, a retry due, a lease run out)."""
        free = self._free()
        if self._wake_task is not None and not free:  # a wake it cannot use is another's
            self._wake_task.cancel()
            self._wake_task = None
        if self._wake_task is None and free:
            self._wake_task = asyncio.create_task(self.q.wait(WAIT_S))
        if self._poke_task is None:
            self._poke_task = asyncio.create_task(self._poked.wait())
        waiting = {self._poke_task}
        if self._wake_task is not None:
            waiting.add(self._wake_task)
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._poke_task in done:
            self._poke_task = None
        if (wake := self._wake_task) is not None and wake in done:
            self._wake_task = None
            if not wake.cancelled() and wake.exception() is not None:
                self.view_stale = True
                await asyncio.sleep(BACKOFF_S[-1])  # Redis is away: pause before asking again

    def _free(self) -> bool:
        """Whether this node could start one more attempt for some manager."""
        busy = {m for m, n in self.p.active.items() if n > 0}
        if len(busy) < self.p.manager_limit():
            return True
        return any(self.p.active[m] < self.p.limit_for(m) for m in busy)

    async def _round(self) -> None:
        """Clear expired leases (a dead node's jobs wait again, for any node to take, even
        one without managers), then claim for this node's managers, then for other nodes'
        managers with work."""
        _, self.limits = await self.q.reap_and_limits()
        own = sorted(m.id for m in self.p.live_managers())
        for mid in own:
            await self._claim(mid, foreign=False)
        if not self._free():
            return
        for mid in sorted(await self.q.waiting_managers()):
            if self.p.instances.find(mid) is None:
                await self._claim(mid, foreign=True)

    def _full(self, mid: str) -> bool:
        """Whether ``mid`` ran at its limit, on every node, when this round began (its
        CLAIM checks again: this only saves asking)."""
        cap = self.limits.get(f"max:{mid}")
        return cap is not None and self.limits.get(f"active:{mid}", 0) >= cap

    async def _claim(self, mid: str, *, foreign: bool) -> None:
        p = self.p
        busy = {m for m, n in p.active.items() if n > 0}
        if (mid not in busy and len(busy) >= p.manager_limit()) or self._full(mid):
            return
        free = p.limit_for(mid) - p.active.get(mid, 0)
        if free > 0:  # no room for one more (Claude) specialist: claim nothing until there is
            p.claims_held = p.admission.check("claude", p.starting())
            if p.claims_held is not None:
                return
        if free > 0 and foreign:
            free = min(await self._fit(mid, free), p.limit_for(mid) - p.active.get(mid, 0))
        if free <= 0:
            return
        p.active[mid] = p.active.get(mid, 0) + free  # reserved over the await: limits hold
        try:
            leases = await self.q.claim(
                mid, self.node, free, None if foreign else p.limit_for(mid)
            )
        finally:
            p.active[mid] -= free
        for lease in leases:
            self._start(lease, mid)

    async def _fit(self, mid: str, n: int) -> int:
        """How many of ``mid``'s next jobs this node can run (their workDir exists here)."""
        fit = 0
        for node, run_id in await self.q.peek(mid, n):
            run = await self._run_of(node, run_id)
            if run is None or not Path(run.work_dir).is_dir():
                break
            fit += 1
        return fit

    async def _run_of(self, node: str | None, run_id: str) -> Run | None:
        """The run of a job of ``node``: this node's own, or another's (cached)."""
        if node == self.node:
            return self.p.runs.get(run_id)
        if (run := self.runs.get(f"{node}:{run_id}")) is not None:
            return run
        doc = await self.q.get_run(str(node), run_id)
        if doc is None:
            return None
        if len(self.runs) >= RUNS_CACHED:  # other nodes' runs come and go: start afresh
            self.runs.clear()
        run = self.runs[f"{node}:{run_id}"] = Run(**doc)
        return run

    def _start(self, lease: Lease, mid: str) -> None:
        p, job = self.p, lease.job
        ticket = LeaseTicket(self, lease)
        if ticket.own:
            p.queue.reflect(job)
        p.active[mid] = p.active.get(mid, 0) + 1
        p.peak_per_manager[mid] = max(p.peak_per_manager.get(mid, 0), p.active[mid])
        p.peak_managers = max(p.peak_managers, sum(1 for n in p.active.values() if n > 0))
        task = asyncio.get_running_loop().create_task(self._attempt(ticket, mid))
        p.attempts[job.job_id] = task
        task.add_done_callback(functools.partial(p.attempt_done, job.job_id, mid))
        ticket.keeper = asyncio.get_running_loop().create_task(self._keep(ticket, task))
        p.instances.changes.fire()

    async def _attempt(self, ticket: LeaseTicket, mid: str) -> None:
        job = ticket.job
        try:
            if not ticket.own:
                await self.moved(job)  # its origin shows it active, here
            try:
                run = await self._run_of(job.node, job.run_id)
            except DOWN:
                run = None
            if run is None:
                if (gone := await ticket.give_up(RUN_GONE.format(run_id=job.run_id))) is not None:
                    self.p.emit_job(gone)
                return
            await self.p.attempt(job, mid, ticket, run)
        finally:
            if ticket.keeper is not None:
                ticket.keeper.cancel()

    async def _keep(self, ticket: LeaseTicket, attempt: asyncio.Task[None]) -> None:
        """Extend the lease every third of its period; a stale one ends the attempt."""
        while True:
            await asyncio.sleep(self.q.lease_ms / 3000)  # a renewal period, not a poll
            try:
                ticket.expires_at = await self.q.extend(ticket.job.job_id, ticket.token)
            except StaleLease as exc:
                ticket.keeper = None  # this task: stale() must not cancel it mid-report
                ticket.stale(exc)
                attempt.cancel()
                return
            except DOWN as exc:
                log.debug("lease not extended: Redis is away", job_id=ticket.job.job_id,
                          error=str(exc))  # fmt: skip
