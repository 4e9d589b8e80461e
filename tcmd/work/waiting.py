"""Tasks that wait for their dependencies: held by the run's node, queued when ready.

A task with ``dependsOn`` is not a job until it may run: the queues (local and Redis)
know nothing of graphs. At submit every task gets its job id; the tasks with
dependencies are stored once as a graph record (ns ``graphs``, one per run: each waiting
task's job id, manager and task), and only the tasks without dependencies are queued.
When a job of the run ends here (this node is the run's origin: its own attempts, and
the notices of other nodes' attempts on the shared queue), ``ended`` asks the run's
``Graph`` which dependents that makes ready (O(their number)): each is queued then, its
dependencies' results handed over (``handoff``), or cancelled with its reason (stored
as a final job, so its state is the queue's like every other task's).

Nothing but the graph record is written for the graph: a task's state is its job's. So
after a restart (``kill -9`` included) ``load`` rebuilds each graph from the job states:
a task with a job was released (a completed one never runs again), a task without one
waits, and the ends of the final jobs are replayed to release what was ready when the
daemon died. docs/architecture.md ("Task graphs") has the whole design.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from tcmd.errors import NotFound, TcmError
from tcmd.store.base import StateStore
from tcmd.work import handoff
from tcmd.work.graph import Graph
from tcmd.work.queue.base import FINAL, Job, JobState, Priority, RetryPolicy
from tcmd.work.queue.local import LocalJobQueue

log = structlog.get_logger(__name__)
GRAPHS = "graphs"
WAITING = "waiting"  # a task's status before it is a job (then its job's state is)
ENQUEUE_TIMEOUT_S = 2.0


@dataclass(slots=True)
class RunGraph:
    """One run's graph: its waiting tasks as jobs to be, and the readiness bookkeeping."""

    run_id: str
    agent: str
    job_ids: dict[str, str]  # every task of the run → its job id (the run's own dict)
    templates: dict[str, Job]  # tasks with dependencies → their job as it will be queued
    graph: Graph
    shared: bool = False  # its jobs go through the shared queue (Redis)
    node: str | None = None  # the node whose run it is
    order: dict[str, int] = field(default_factory=dict)  # task id → place in the run

    def record(self) -> dict[str, Any]:
        first = next(iter(self.templates.values()))
        return {
            "runId": self.run_id,
            "agent": self.agent,
            "node": first.node,
            "retry": asdict(first.retry),
            "tasks": {
                t: [j.job_id, j.manager_id, int(j.priority), j.task]
                for t, j in self.templates.items()
            },
        }


class Waiting:
    """The waiting tasks of this node's runs."""

    def __init__(
        self,
        store: StateStore,
        queue: LocalJobQueue,
        live_manager: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.queue = queue
        self.live_manager = live_manager
        self.graphs: dict[str, RunGraph] = {}
        self.emit: Callable[[Job], None] = lambda job: None  # a job.state event
        self.released: Callable[[], None] = lambda: None  # something may start now
        self.to_shared: Callable[[Job], None] | None = None  # a ready job into Redis
        self.stalled: list[tuple[RunGraph, Job]] = []  # ready, but the store refused it

    # -- submit, load, forget -------------------------------------------------------------
    def add(self, run_id: str, agent: str, job_ids: dict[str, str], waiting: list[Job]) -> None:
        """Hold a new run's tasks with dependencies (stored before its run is)."""
        rg = self._graph(run_id, agent, job_ids, waiting, pending=[j.task_id for j in waiting])
        self.store.put(GRAPHS, run_id, rg.record())
        self.graphs[run_id] = rg

    def submitted(self, run_id: str, shared: bool) -> None:
        """The run's first jobs are queued (``shared``: in Redis)."""
        if (rg := self.graphs.get(run_id)) is not None:
            rg.shared = shared

    def drop(self, run_id: str) -> None:
        """Forget a run's graph (its run could not be stored, or retention forgets it)."""
        self.graphs.pop(run_id, None)
        self.store.delete(GRAPHS, run_id)

    def load(self, runs: Mapping[str, tuple[str, dict[str, str]]]) -> None:
        """Rebuild every graph from its record and the job states, then release what is
        ready. ``runs``: run id → (agent, its job ids), for the runs that still exist."""
        for run_id, raw in self.store.items(GRAPHS).items():
            if run_id not in runs:  # its run is gone: nothing of it can run
                with contextlib.suppress(TcmError):
                    self.store.delete(GRAPHS, run_id)
                continue
            agent, job_ids = runs[run_id]
            retry = RetryPolicy(**raw["retry"])
            waiting = [
                Job(
                    job_id,
                    run_id,
                    task_id,
                    task,
                    Priority(prio),
                    manager,
                    retry=retry,
                    node=raw["node"],
                )
                for task_id, (job_id, manager, prio, task) in raw["tasks"].items()
            ]
            pending = [j.task_id for j in waiting if self._job(j.job_id) is None]
            rg = self._graph(run_id, agent, job_ids, waiting, pending=pending)
            self.graphs[run_id] = rg
            for job_id in job_ids.values():
                job = self._job(job_id)
                if job is None:
                    continue
                rg.shared = rg.shared or bool(job.extra.get("shared"))
                if job.state in FINAL:
                    self._ended(rg, job)
        log.info("task graphs loaded", runs=len(self.graphs))

    @staticmethod
    def _graph(
        run_id: str, agent: str, job_ids: dict[str, str], waiting: list[Job], pending: list[str]
    ) -> RunGraph:
        deps = {j.task_id: list(j.task.get("dependsOn") or ()) for j in waiting}
        anyway = [j.task_id for j in waiting if j.task.get("runIfDependencyFails")]
        return RunGraph(
            run_id,
            agent,
            job_ids,
            {j.task_id: j for j in waiting},
            Graph(deps, pending=pending, run_anyway=anyway),
            order={t: i for i, t in enumerate(job_ids)},
            node=waiting[0].node,
        )

    # -- ends -----------------------------------------------------------------------------
    def ended(self, job: Job) -> None:
        """A job moved: when it is final and of one of this node's graphs (run ids are
        per node: another node's run_1 is not ours), release or cancel what waited for it."""
        if job.state not in FINAL or (rg := self.graphs.get(job.run_id)) is None:
            return
        if job.node == rg.node and rg.job_ids.get(job.task_id) == job.job_id:
            self._ended(rg, job)

    def _ended(self, rg: RunGraph, job: Job) -> None:
        if job.state is JobState.COMPLETED:
            why = ""
        elif job.state is JobState.FAILED:
            why = f"dependency {job.task_id} failed"
        elif (job.last_error or "").startswith("dependency "):  # cancelled for its own
            why = str(job.last_error)
        else:
            why = f"dependency {job.task_id} was cancelled"
        ready, cancelled = rg.graph.end(
            job.task_id, completed=job.state is JobState.COMPLETED, why=why
        )
        for task_id, reason in cancelled:
            self._settle(rg, task_id, reason)
        for task_id in ready:
            self._release(rg, task_id)
        if ready:
            self.released()

    def _settle(self, rg: RunGraph, task_id: str, reason: str | None) -> Job:
        """A waiting task → a cancelled job (``reason`` as its error), held like any job."""
        job = _copy(rg.templates[task_id])
        now = time.time()
        job.state, job.finished_at, job.last_error = JobState.CANCELLED, now, reason
        job.queued_at = now
        if rg.shared:
            job.extra["shared"] = True
        self.queue.reflect(job)  # one write: final at once, on no heap
        self.emit(job)
        return job

    def _release(self, rg: RunGraph, task_id: str) -> None:
        template = rg.templates[task_id]
        job = _copy(template)
        deps = dict.fromkeys(template.task.get("dependsOn") or ())  # each once, in order
        outcomes = [self._outcome(rg, dep) for dep in deps]
        job.task = handoff.hand_over(template.task, outcomes, for_shell=rg.agent == "shell")
        if job.manager_id is not None and not self.live_manager(job.manager_id):
            job.manager_id = None  # its manager is gone: the first free one takes it
        try:
            self._queue(rg, job)
        except TcmError as exc:  # the store refused: tried again at the next dispatch
            log.warning("ready task not queued yet", job_id=job.job_id, error=exc.message)
            self.stalled.append((rg, job))

    def _queue(self, rg: RunGraph, job: Job) -> None:
        if not rg.shared:
            self.queue.put(job)
            return
        job.extra["shared"] = True
        job.queued_at = time.time()
        self.queue.reflect(job)  # the view first: a notice about it may come back at once
        if self.to_shared is not None:
            self.to_shared(job)
        # else (at start-up): the shared queue's catch-up puts what Redis lacks

    def retry_stalled(self) -> None:
        """Queue the ready tasks the store refused before."""
        stalled, self.stalled = self.stalled, []
        for rg, job in stalled:
            try:
                self._queue(rg, job)
            except TcmError:
                self.stalled.append((rg, job))

    def _outcome(self, rg: RunGraph, task_id: str) -> handoff.Outcome:
        job = self.queue.get(rg.job_ids[task_id])
        if job.state is JobState.COMPLETED:
            return handoff.Outcome(task_id, True, job.result or "")
        return handoff.Outcome(task_id, False, job.last_error or "", job.state.value)

    # -- a run's waiting tasks ------------------------------------------------------------
    def cancel_run(self, run_id: str, reason: str | None = None) -> list[Job]:
        """Cancel every waiting task of the run (the run is cancelled, or its budget is
        reached: ``reason`` is then their error)."""
        rg = self.graphs.get(run_id)
        if rg is None:
            return []
        gone = sorted(rg.graph.cancel_all(), key=rg.order.__getitem__)
        return [self._settle(rg, task_id, reason) for task_id in gone]

    def find(self, job_id: str) -> Job | None:
        """The waiting task with this job id (as it will be queued), or None."""
        for rg in self.graphs.values():
            for task_id in rg.graph.pending:
                if (job := rg.templates[task_id]).job_id == job_id:
                    return job
        return None

    def cancel_task(self, job_id: str) -> Job | None:
        """Cancel one waiting task by its job id (its dependents as if it failed); None
        when no task waits under that id."""
        if (template := self.find(job_id)) is None:
            return None
        rg = self.graphs[template.run_id]
        rg.graph.pending.discard(template.task_id)
        rg.graph.unmet.pop(template.task_id, None)
        job = self._settle(rg, template.task_id, None)  # its end reaches _ended through emit
        self._ended(rg, job)  # (or here, when nothing is wired to emit)
        return job

    def waiting_jobs(self, run_id: str) -> list[Job]:
        """The run's waiting tasks as they will be queued, in run order."""
        rg = self.graphs.get(run_id)
        if rg is None:
            return []
        return [rg.templates[t] for t in sorted(rg.graph.pending, key=rg.order.__getitem__)]

    def pending(self, run_id: str) -> int:
        """How many of the run's tasks wait."""
        rg = self.graphs.get(run_id)
        return 0 if rg is None else len(rg.graph.pending)

    def is_waiting(self, run_id: str, task_id: str) -> bool:
        rg = self.graphs.get(run_id)
        return rg is not None and task_id in rg.graph.pending

    def holds(self, run_id: str, task_id: str) -> bool:
        """Whether the task is one of the run's tasks with dependencies."""
        rg = self.graphs.get(run_id)
        return rg is not None and task_id in rg.templates

    def row(self, run_id: str, task_id: str) -> dict[str, Any]:
        """A waiting task as getParallelStatus shows it: on what it waits."""
        rg = self.graphs[run_id]
        job = rg.templates[task_id]
        deps = list(job.task.get("dependsOn") or ())
        return {
            "taskId": task_id,
            "jobId": job.job_id,
            "name": job.task.get("name"),
            "status": WAITING,
            "priority": job.priority.label,
            "managerId": job.manager_id,
            "instanceId": None,
            "attempts": 0,
            "reruns": 0,
            "startedAt": None,
            "durationMs": None,
            "result": None,
            "error": None,
            "nextRetryAt": None,
            "dependsOn": deps,
            "waitingOn": [d for d in deps if not self._final(rg.job_ids[d])],
        }

    def of_manager(self, manager_id: str) -> list[tuple[str, str]]:
        """(run id, task id) of every waiting task assigned to the manager."""
        return [
            (rg.run_id, task_id)
            for rg in self.graphs.values()
            for task_id in sorted(rg.graph.pending, key=rg.order.__getitem__)
            if rg.templates[task_id].manager_id == manager_id
        ]

    def _final(self, job_id: str) -> bool:
        job = self._job(job_id)
        return job is not None and job.state in FINAL

    def _job(self, job_id: str) -> Job | None:
        try:
            return self.queue.get(job_id)
        except NotFound:
            return None


def _copy(job: Job) -> Job:
    """A fresh job from a template (the template stays as the graph record says)."""
    return Job(
        job.job_id, job.run_id, job.task_id, dict(job.task), job.priority, job.manager_id,
        retry=job.retry, node=job.node, extra={},
    )  # fmt: skip


class SharedRelease:
    """Puts a ready job of a shared run into Redis; while Redis is away the shared queue's
    catch-up puts it (the job waits queued in the view meanwhile)."""

    def __init__(self, enqueue: Callable[[Job], Any], on_down: Callable[[], None]) -> None:
        self.enqueue = enqueue
        self.on_down = on_down
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._put(Job.from_json(job.to_json())))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("shared queue unreachable: a ready task waits for the catch-up",
                        error=repr(exc))  # fmt: skip
            self.on_down()

    async def _put(self, job: Job) -> None:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_S):  # any failure: _done calls on_down
            await self.enqueue(job)
