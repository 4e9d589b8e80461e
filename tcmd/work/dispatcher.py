"""Parallel execution: the dispatcher that turns queued jobs into running specialists.

Limits hold by construction: a job starts only in ``dispatch()``, which counts what runs.
At most ``limit_for(manager)`` specialists run under a manager (the run's maxConcurrent,
never above MAX_SPECIALISTS_PER_MANAGER) and at most MAX_MANAGER_CONCURRENCY managers run
tasks at once; PHASE=2 makes both 1. ``dispatch()`` is called on every change that can
free or fill a slot (a job added or finished, a retry due, a manager appearing or dying).

One job = one attempt in a fresh specialist: spawn under the manager, deliver the task,
wait for the turn to end, judge the result, terminate the specialist, ack or fail the job
(the queue decides retry or dead). The manager's slot is freed when the attempt's task is
done, however it ended (an exception, or cancelled before it began).

A stored run always has its jobs: ``submit`` stores the jobs before the run and
``forget_run`` deletes the run before its jobs, so a crash or a failed write in between
can only leave jobs whose run is gone. ``start`` fails those that had not finished (they
could never run) and retention forgets them like a run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import regex
import structlog

from tcmd.changes import run_key
from tcmd.config import Settings
from tcmd.errors import TcmError
from tcmd.instances.agents.registry import profile
from tcmd.instances.delivery import Delivery
from tcmd.instances.registry import Instances
from tcmd.model import IDLE, LIVE, Instance, Role, State
from tcmd.store import StateStore
from tcmd.work import worktrees
from tcmd.work.admission import RECHECK_S, Admission, ProcFigures
from tcmd.work.queue.base import FINAL, Job, JobState
from tcmd.work.queue.local import LocalJobQueue
from tcmd.work.tickets import LocalTicket, Ticket
from tcmd.work.waiting import Waiting

log = structlog.get_logger(__name__)
RUNS = "runs"
SPAWN_TIMEOUT_S = 60.0
DELIVERY_SLACK_S = 10.0  # beyond the longest a delivery takes: tmux calls on a busy machine
PATTERN_TIMEOUT_S = 0.2  # a completionPattern's match is given up after this (event loop time)
RUN_GONE = "its run {run_id} was lost (never stored, or its record is gone): the task cannot run"


class TaskFailed(Exception):
    """An attempt ended without a result the task accepts; the message says why."""


@dataclass(slots=True)
class Run:
    run_id: str
    work_dir: str
    agent: str
    isolation: str  # "worktree" | "shared"
    max_concurrent: int | None
    timeout_ms: int
    keep_specialists: bool
    manager_ids: list[str]
    job_ids: dict[str, str] = field(default_factory=dict)  # task id -> job id, in task order
    strategy: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    node: str | None = None  # the node that took the run (None: made before nodes)
    max_cost_usd: float | None = None  # budgets (work/budget.py)
    max_tokens: int | None = None
    budget_reached: str | None = None  # why its waiting tasks were cancelled, once they were

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Parallel:
    """Owns the runs, the dispatch of jobs to slots, and the running attempts."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        queue: LocalJobQueue,
        instances: Instances,
        delivery: Delivery,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.instances = instances
        self.delivery = delivery
        self.runs: dict[str, Run] = {}
        self._final_upto: dict[str, int] = {}  # run id -> its first jobs known final (run_done)
        self.active: dict[str, int] = {}  # manager id -> attempts running now
        self.limits: dict[str, int] = {}  # manager id -> its current maxConcurrent
        self.attempts: dict[str, asyncio.Task[None]] = {}  # job id -> running attempt
        self.specialists: set[str] = set()  # instances running an attempt (health leaves them)
        self.runless: set[str] = set()  # jobs whose run is gone, until retention forgets them
        self.peak_per_manager: dict[str, int] = {}
        self.peak_managers = 0
        self.worktree_root = settings.state_dir / "worktrees"
        self.repo_guard: worktrees.Guard = worktrees.unguarded  # repolocks.RepoLocks.hold
        self.node_names = False  # with Redis: worktrees named <node>.<run> (run ids are per node)
        self._wake = asyncio.Event()
        self.poke: Callable[[], None] | None = None  # the shared queue's claim loop (Redis)
        self._numbering = asyncio.Lock()  # Redis: a shared number, then its instance, in order
        self.emit: Callable[..., Any] = lambda kind, **fields: None  # the event log, when wired
        # "may this job start now?": None, or the reason it is cancelled instead (budgets)
        self.may_start: Callable[[Job], str | None] = lambda job: None
        # memory: a job starts only while its specialist fits (work/admission.py)
        self.admission = Admission(settings, ProcFigures(settings.memory_figures))
        self.held: dict[str, str] = {}  # job id -> why it waits now (held: memory …)
        self._told: set[str] = set()  # held jobs whose job.held event went out (once each)
        self.claims_held: str | None = None  # REDIS_URL: why the claim loop claims nothing
        # "is the account of this profile held?" (a failed login: health/loop.py)
        self.account_held: Callable[[str], str | None] = lambda agent: None
        # tasks waiting for their dependencies (work/waiting.py): queued when they are ready
        self.waiting = Waiting(store, queue, self._live_manager)
        self.waiting.emit = self.emit_job
        self.waiting.released = self.kick
        instances.listeners.append(self._on_instance)

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Load runs and jobs; fail the jobs whose run is gone; re-queue what was running
        when the daemon died."""
        for raw in self.store.items(RUNS).values():
            run = Run(**raw)
            self.runs[run.run_id] = run
        self.queue.load()
        orphans = [j.instance_id for j in self.queue.jobs(state=JobState.ACTIVE) if j.instance_id]
        self.waiting.load({r.run_id: (r.agent, r.job_ids) for r in self.runs.values()})
        self._heal()
        for job in self.queue.recover():
            log.info("job re-queued after a restart", job_id=job.job_id, reruns=job.reruns)
        for instance_id in orphans:
            inst = self.instances.find(instance_id)
            if inst is not None and inst.status != State.TERMINATED:
                await self.instances.terminate(inst)  # its attempt runs again from the start
        self.dispatch()

    def _heal(self) -> None:
        """Mend what a crash or a failed write left between runs and jobs: a job whose run
        is gone fails with the reason (it would sit queued for ever, or die in every
        attempt); a run forgets the ids of jobs that are gone (retention cut short); a run
        whose jobs all ended is finished (the daemon died before it said so)."""
        known: set[str] = set()
        for job in self.queue.jobs():
            known.add(job.job_id)
            if job.run_id in self.runs:
                continue
            self.runless.add(job.job_id)
            if job.state in FINAL:
                continue
            try:
                self.emit_job(self.queue.give_up(job.job_id, RUN_GONE.format(run_id=job.run_id)))
            except TcmError as exc:  # still queued: its attempt gives up when it is taken
                log.warning("cannot fail a job whose run is gone", job_id=job.job_id,
                            error=exc.message)  # fmt: skip
                continue
            log.warning("job failed: its run is gone", job_id=job.job_id, run_id=job.run_id)
        for run in self.runs.values():
            gone = [
                task for task, job_id in run.job_ids.items()
                if job_id not in known and not self.waiting.holds(run.run_id, task)
            ]  # fmt: skip
            for task in gone:
                del run.job_ids[task]
            if gone:
                log.warning("run lost jobs", run_id=run.run_id, tasks=gone)
                with contextlib.suppress(TcmError):  # mended in memory; again at the next start
                    self.store.put(RUNS, run.run_id, run.to_json())
        with contextlib.suppress(TcmError):
            self.finish_runs()

    async def timer(self) -> None:
        """Dispatch when a retry falls due or something changed (never a busy loop)."""
        while True:
            wake_at = self.queue.next_wakeup()
            delay = None if wake_at is None else max(0.0, wake_at - time.time())
            if self.held or self.claims_held:  # held: look again soon, memory may have freed
                delay = RECHECK_S if delay is None else min(delay, RECHECK_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self.dispatch()
            except Exception:  # e.g. the store refused a write: try again at the next wake
                log.exception("dispatch failed")

    # -- limits -----------------------------------------------------------------------------
    def limit_for(self, manager_id: str) -> int:
        if self.settings.phase == 2:
            return 1
        cap = self.settings.max_specialists_per_manager
        return min(self.limits.get(manager_id, cap), cap)

    def manager_limit(self) -> int:
        return 1 if self.settings.phase == 2 else self.settings.max_manager_concurrency

    def live_managers(self) -> list[Instance]:
        return [
            i for i in self.instances.by_id.values()
            if i.role == Role.MANAGER and i.status in LIVE and i.status != State.STARTING
        ]  # fmt: skip

    # -- dispatch ---------------------------------------------------------------------------
    def dispatch(self) -> None:
        """Start every job that may start now, under the limits."""
        if self.waiting.stalled:
            self.waiting.retry_stalled()
        now = time.time()
        held: dict[str, str] = {}  # what this round finds held: the jobs next in line
        busy = {m for m, n in self.active.items() if n > 0}
        for manager in sorted(self.live_managers(), key=lambda m: m.id):
            mid = manager.id
            while self.active.get(mid, 0) < self.limit_for(mid):
                if mid not in busy and len(busy) >= self.manager_limit():
                    break
                job = self.queue.peek(mid, now)
                if job is None:
                    break
                if (why := self.held_reason(job)) is not None:
                    self._hold(job, why, held)
                    break  # this manager's next job waits; another profile may still fit
                job = self.queue.take(mid, now)
                if job is None:  # never: peek said it is there
                    break
                if (refused := self.may_start(job)) is not None:
                    self.emit_job(self.queue.cancel(job.job_id, refused))
                    continue
                busy.add(mid)
                self.active[mid] = self.active.get(mid, 0) + 1
                self.peak_per_manager[mid] = max(
                    self.peak_per_manager.get(mid, 0), self.active[mid]
                )
                self.peak_managers = max(self.peak_managers, len(busy))
                task = asyncio.get_running_loop().create_task(self.attempt(job, mid))
                self.attempts[job.job_id] = task
                task.add_done_callback(functools.partial(self.attempt_done, job.job_id, mid))
        self.held = held
        if self._told:  # a job that left the queue is never held again
            self._told = {j for j in self._told if self._queued(j)}
        self.instances.changes.fire()
        if self.poke is not None:
            self.poke()

    # -- held tasks: the account, memory (work/admission.py) -------------------------------
    def held_reason(self, job: Job) -> str | None:
        """Why ``job`` may not start now: its account's login failed, or memory is short
        (None: it may start)."""
        run = self.runs.get(job.run_id)
        agent = run.agent if run else "claude"
        return self.account_held(agent) or self.admission.check(agent, self.starting())

    def held_of(self, job: Job) -> str | None:
        """Why a waiting ``job`` does not start now, if it is held (shown with the task)."""
        if (why := self.held.get(job.job_id)) is not None:
            return why
        if self.claims_held and job.state == JobState.QUEUED and job.extra.get("shared"):
            return self.claims_held  # REDIS_URL: nothing is claimed while memory is short
        return None

    def starting(self) -> list[tuple[str, str | None]]:
        """(profile, specialist id or None) of every attempt running now."""
        out: list[tuple[str, str | None]] = []
        for job_id in self.attempts:
            try:
                job = self.queue.get(job_id)
            except TcmError:  # another node's job, not reflected here
                out.append(("claude", None))
                continue
            run = self.runs.get(job.run_id)
            out.append((run.agent if run else "claude", job.instance_id))
        return out

    def _hold(self, job: Job, why: str, held: dict[str, str]) -> None:
        if job.job_id not in self._told:
            self._told.add(job.job_id)
            log.info("job held", job_id=job.job_id, reason=why)
            self.emit("job.held", jobId=job.job_id, taskId=job.task_id, runId=job.run_id,
                      managerId=job.manager_id, reason=why)  # fmt: skip
        held[job.job_id] = why

    def _queued(self, job_id: str) -> bool:
        try:
            return self.queue.get(job_id).state in (JobState.QUEUED, JobState.RETRYING)
        except TcmError:
            return False

    def emit_job(self, job: Job) -> None:
        """A ``job.state`` event: what finished (or will retry), how long it took and waited."""
        wait_ms = None
        if job.started_at is not None:
            wait_ms = round((job.started_at - job.queued_at) * 1000, 1)
        self.emit("job.state", jobId=job.job_id, taskId=job.task_id, runId=job.run_id,
                  state=job.state.value, attempts=job.attempts, durationMs=job.duration_ms,
                  waitMs=wait_ms, error=job.last_error if job.state != JobState.COMPLETED
                  else None)  # fmt: skip
        self.job_moved(job)

    def job_moved(self, job: Job) -> None:
        """A job of this node's runs moved (here, or on another node: the shared queue's
        notice): a final one releases or cancels the tasks that wait for it."""
        self.instances.changes.fire(run_key(job.run_id))  # for those waiting on its run
        try:
            self.waiting.ended(job)
        except Exception:  # the store refused: the next start replays the job states
            log.exception("dependents of a finished job not released", job_id=job.job_id)

    def _live_manager(self, manager_id: str) -> bool:
        inst = self.instances.find(manager_id)
        return inst is not None and inst.status in LIVE

    def kick(self) -> None:
        """Have the timer dispatch soon and re-read the next retry time."""
        self._wake.set()

    def attempt_done(self, job_id: str, manager_id: str, task: asyncio.Task[None]) -> None:
        """The end of an attempt, however it ended (even cancelled before it began): free
        the manager's slot, then fill it."""
        if self.attempts.get(job_id) is task:
            del self.attempts[job_id]
        self.active[manager_id] -= 1
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("attempt crashed", job_id=job_id, exc_info=exc)
        try:
            self.dispatch()
        except Exception:  # e.g. the store refused a write: the timer tries again
            log.exception("dispatch failed")
        self.kick()  # a retry may now be due later than the timer knows

    def _on_instance(self, inst: Instance, old: State) -> None:
        if inst.role != Role.MANAGER:
            return
        if inst.status not in LIVE:
            moved = self.queue.reassign(inst.id, None)
            if moved:
                log.info(
                    "manager gone: its waiting jobs go to the others",
                    manager_id=inst.id,
                    jobs=len(moved),
                )
        self._wake.set()

    # -- one attempt --------------------------------------------------------------------------
    async def attempt(
        self, job: Job, manager_id: str, ticket: Ticket | None = None, run: Run | None = None
    ) -> None:
        """One attempt; ``ticket`` and ``run`` come with a job of the shared queue."""
        if ticket is None:
            ticket = LocalTicket(self.queue, job.job_id)
            run = self.runs.get(job.run_id)
        if run is None:  # start() fails such jobs; this holds should one still come by
            self.runless.add(job.job_id)
            if (gone := await ticket.give_up(RUN_GONE.format(run_id=job.run_id))) is not None:
                self.emit_job(gone)
            return
        spec: Instance | None = None
        wt: worktrees.Worktree | None = None
        started = time.monotonic()
        try:
            work_dir = Path(run.work_dir)
            if run.isolation == "worktree":
                wt = await self._worktree(job, run, ticket)
                work_dir = wt.workdir
            spec = await self._specialist(manager_id, run, job, str(work_dir))
            self.specialists.add(spec.id)
            await ticket.annotate(instance_id=spec.id)  # persisted: found after a crash
            result, extra = await self._run_task(job, run, spec)
            extra["instanceId"] = spec.id
            await self._release(spec, run)
            if wt is not None:  # the agent is gone: nothing can write into it any more
                extra.update(await worktrees.finish(wt, self.repo_guard))
            if (done := await ticket.complete(result, extra)) is not None:
                self.emit_job(done)
            log.info("task completed", job_id=job.job_id, task_id=job.task_id,
                     ms=round((time.monotonic() - started) * 1000))  # fmt: skip
        except (TaskFailed, TcmError) as exc:
            await self._release(spec, run)
            await self._failed(job, ticket, wt, exc)
        except Exception as exc:  # a bug must not leave the job active forever
            log.exception("attempt failed unexpectedly", job_id=job.job_id)
            if (failed := await ticket.fail(f"internal error: {exc!r}")) is not None:
                self.emit_job(failed)
        finally:  # the slot is freed by attempt_done, whatever happens here
            await self._release(spec, run)
            if spec is not None:
                self.specialists.discard(spec.id)
            if self.runs.get(run.run_id) is run:  # not another node's run
                self._finish_run_if_done(run)

    async def _failed(
        self, job: Job, ticket: Ticket, wt: worktrees.Worktree | None, exc: TaskFailed | TcmError
    ) -> None:
        reason = exc.message if isinstance(exc, TcmError) else str(exc)
        if wt is not None and job.attempts >= job.retry.attempts:  # the last attempt
            await ticket.annotate(extra=await worktrees.finish(wt, self.repo_guard))
        if (failed := await ticket.fail(reason)) is not None:
            self.emit_job(failed)
            log.info("task attempt failed", job_id=job.job_id, task_id=job.task_id,
                     error=reason, state=failed.state)  # fmt: skip

    async def _specialist(self, manager_id: str, run: Run, job: Job, work_dir: str) -> Instance:
        """The attempt's specialist under its manager. With Redis its number comes from the
        manager's counter shared by every node: it may run on a node that is not its
        manager's (then only the id's number is the manager's: the record lives here)."""
        fields: dict[str, Any] = {"work_dir": work_dir, "agent": run.agent, "model": None,
                                  "context": str(job.task.get("context") or ""),
                                  "run_id": run.run_id}  # fmt: skip
        number = self.instances.number_child
        if number is None:
            return self.instances.create(Role.SPECIALIST, self.instances.get(manager_id), **fields)
        async with self._numbering:  # numbers taken in order, each used before the next
            manager = self.instances.find(manager_id)
            if manager is None:  # another node's manager: its job came from the shared queue
                n = await number(manager_id, 0)
                if n is None:
                    raise TaskFailed(f"no number for a specialist of {manager_id}: Redis is away")
                return self.instances.create_under(manager_id, n, **fields)
            n = await number(manager_id, manager.next_child - 1)
            return self.instances.create(Role.SPECIALIST, manager, at_least=n or 0, **fields)

    async def _release(self, spec: Instance | None, run: Run) -> None:
        """Terminate the attempt's specialist (unless the run keeps them for inspection)."""
        if spec is not None and not run.keep_specialists and spec.status != State.TERMINATED:
            with contextlib.suppress(TcmError):
                await self.instances.terminate(spec)

    async def _worktree(self, job: Job, run: Run, ticket: Ticket) -> worktrees.Worktree:
        existing = job.extra.get("worktreeInfo")
        if existing:  # a retry works on in the same worktree: nothing is thrown away
            return worktrees.Worktree.from_json(existing)
        # with Redis a run id is its node's (its jobs may even have fallen back to the local
        # queue): qualified, so two nodes never pick one branch in a repository both use
        key = run.run_id
        if self.node_names and job.node:
            key = worktrees.node_run(job.node, run.run_id)
        wt = await worktrees.create(
            Path(run.work_dir), self.worktree_root, key, job.task_id, self.repo_guard
        )
        await ticket.annotate(extra={"worktreeInfo": wt.to_json(), "branch": wt.branch})
        return wt

    async def _run_task(self, job: Job, run: Run, spec: Instance) -> tuple[str, dict[str, Any]]:
        changes = self.instances.changes
        await self.instances.launch(spec, resume=False)
        await changes.wait_for(lambda: spec.status != State.STARTING, SPAWN_TIMEOUT_S, spec.id)
        if spec.status != State.READY:
            raise TaskFailed(f"specialist {spec.id} did not start ({spec.status.value})")
        task = job.task
        text = profile(run.agent).task_prompt(
            str(task.get("context") or ""), str(task["instruction"])
        )
        acks, acked, turns = self.instances.acks, self.instances.acks.get(spec.id, 0), spec.turns
        sent = await self.delivery.send(spec, text, self.delivery.longest_s + DELIVERY_SLACK_S)
        if not sent["delivered"] and not sent.get("submitted"):
            raise TaskFailed(f"the task prompt was not acknowledged by {spec.id}")

        def took_it() -> bool:
            """Whether the agent has visibly started on the prompt. One that left the input
            box unacknowledged (a starved machine runs hooks late) is the agent's all the
            same: retrying it elsewhere would run the work twice, so it is awaited."""
            return acks.get(spec.id, 0) > acked or spec.turns > turns or spec.status != State.READY

        timeout_ms = int(task.get("timeoutMs") or run.timeout_ms)
        finished = await changes.wait_for(
            lambda: took_it() and spec.status in IDLE and not self.delivery.pending(spec.id),
            timeout_ms / 1000,
            spec.id,  # its state, its hooks, and its prompts leaving the outbox fire with its id
        )
        if not finished:
            why = "" if took_it() else f": the prompt left its box, but {spec.id} never took it up"
            raise TaskFailed(f"timed out after {timeout_ms} ms (still {spec.status.value}){why}")
        return self._judge(job, spec)

    @staticmethod
    def _judge(job: Job, spec: Instance) -> tuple[str, dict[str, Any]]:
        result = spec.last_result or ""
        extra: dict[str, Any] = {"exitCode": spec.last_exit_code}
        if spec.status == State.ERRORED:
            raise TaskFailed(f"agent error: {spec.last_error}")
        if spec.status == State.EXITED:
            how = f"signal {spec.exit_signal}" if spec.exit_signal else f"status {spec.exit_status}"
            raise TaskFailed(f"specialist {spec.id} exited ({how}) before finishing")
        if spec.status == State.WAITING:
            raise TaskFailed(f"specialist {spec.id} stopped to wait for a person")
        if spec.last_exit_code not in (None, 0):
            raise TaskFailed(f"exit status {spec.last_exit_code}: {result[-500:]}")
        pattern = job.task.get("completionPattern")
        if pattern:
            try:  # `regex`, not `re`: a pattern that backtracks for ever must not stall tcmd
                found = regex.search(str(pattern), result, timeout=PATTERN_TIMEOUT_S)
            except TimeoutError:
                raise TaskFailed(
                    f"completionPattern {pattern!r} took longer than {PATTERN_TIMEOUT_S} s "
                    "on the result (a pattern that backtracks too much): not completed"
                ) from None
            if not found:
                raise TaskFailed(f"completionPattern {pattern!r} did not match the result")
        return result, extra

    # -- runs ---------------------------------------------------------------------------------
    def run_jobs(self, run: Run) -> list[Job]:
        """The run's jobs, in task order; a task waiting for its dependencies has none yet."""
        if not self.waiting.pending(run.run_id):
            return [self.queue.get(j) for j in run.job_ids.values()]
        return [
            self.queue.get(j) for t, j in run.job_ids.items()
            if not self.waiting.is_waiting(run.run_id, t)
        ]  # fmt: skip

    def run_done(self, run: Run) -> bool:
        """Whether every job of ``run`` is final. Checked at every move of one of its jobs:
        a final job stays final, so the jobs known final are not looked at again (what is
        left per call is a copy of the job ids, in C)."""
        if self.waiting.pending(run.run_id):
            return False
        job_ids = list(run.job_ids.values())
        done = self._final_upto.get(run.run_id, 0)
        while done < len(job_ids) and self.queue.get(job_ids[done]).state in FINAL:
            done += 1
        self._final_upto[run.run_id] = done
        return done == len(job_ids)

    def finish_runs(self) -> None:
        for run in self.runs.values():
            self._finish_run_if_done(run)

    def load_of(self, manager_id: str) -> dict[str, int]:
        """A manager's ``parallelExecution`` figures, as ``list`` shows them."""
        return {
            "active": self.active.get(manager_id, 0),
            "queued": self.queue.waiting(manager_id),
            "completed": self.queue.finished(manager_id, JobState.COMPLETED),
            "failed": self.queue.finished(manager_id, JobState.FAILED),
            "maxConcurrent": self.limit_for(manager_id),
        }

    def _finish_run_if_done(self, run: Run) -> None:
        if run.finished_at is None and self.run_done(run):
            run.finished_at = time.time()
            self.store.put(RUNS, run.run_id, run.to_json())
            log.info("run finished", run_id=run.run_id)

    def forget_run(self, run: Run) -> None:
        """Drop a finished run and its jobs for good (retention): the run first, so a
        failure or a crash half-way leaves jobs without a run, forgotten later."""
        self.store.delete(RUNS, run.run_id)
        del self.runs[run.run_id]
        self._final_upto.pop(run.run_id, None)
        jobs = list(run.job_ids.values())
        self.runless.update(jobs)  # what a failure below leaves, forget_runless takes later
        for job_id in jobs:
            self.queue.forget(job_id)
            self.runless.discard(job_id)
        self.waiting.drop(run.run_id)  # a graph left by a crash here: dropped at the next start

    def forget_runless(self, ended_before: float) -> int:
        """Forget the finished jobs whose run is gone that ended before ``ended_before``."""
        old = [
            job_id
            for job_id in self.runless
            if (job := self.queue.get(job_id)).state in FINAL
            and (job.finished_at or 0.0) < ended_before
        ]
        for job_id in old:
            self.queue.forget(job_id)
            self.runless.discard(job_id)
        return len(old)

    def submit(self, run: Run, jobs: list[Job]) -> None:
        """Queue a new run's jobs, then store the run: all of it or nothing.

        When a write fails, the jobs already queued are discarded and the error says
        that nothing was queued. Nothing is dispatched in between (no ``await``)."""
        queued: list[Job] = []
        try:
            for job in jobs:
                self.queue.put(job)
                queued.append(job)
                run.job_ids[job.task_id] = job.job_id
            self.save_run(run)
        except Exception as exc:
            for job in queued:
                with contextlib.suppress(TcmError):  # left in the store: start() fails it
                    self.queue.discard(job.job_id)
            run.job_ids.clear()
            if not isinstance(exc, TcmError):
                raise
            raise type(exc)(
                f"{run.run_id} could not be stored, none of its tasks was queued: {exc.message}",
                data={"runId": run.run_id, **(exc.data or {})},
            ) from exc

    def save_run(self, run: Run) -> None:
        self.store.put(RUNS, run.run_id, run.to_json())
        self.runs[run.run_id] = run

    def new_run_id(self) -> str:
        n = int(self.store.get("counters", "run") or 0) + 1
        self.store.put("counters", "run", n)
        return f"run_{n}"

    def cancel(self, job: Job, reason: str | None = None) -> Job:
        cancelled = self.queue.cancel(job.job_id, reason)
        self.emit_job(cancelled)
        if (attempt := self.attempts.get(job.job_id)) is not None:
            attempt.cancel()  # its finally terminates the specialist
        self.kick()
        return cancelled
