"""Catalogue entries for parallel work: executeParallel, getParallelStatus, distributeWork,
jobs, queueStats, cancel, worktrees (their parameters: ``parallel_params``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcmd.api import Caller, NoParams, Tool
from tcmd.changes import run_key
from tcmd.errors import Conflict, Forbidden, InvalidParams, NotFound, TcmError
from tcmd.instances.agents.registry import profile
from tcmd.instances.authz import check_target, may_see
from tcmd.model import LIVE, Instance, Role, State
from tcmd.work import distribution, graph, handoff, worktrees
from tcmd.work.dispatcher import Parallel, Run
from tcmd.work.overlap import Overlaps, annotate
from tcmd.work.params import (
    CancelParams,
    DistributeParams,
    ExecuteParallelParams,
    JobsParams,
    RunOptions,
    RunsParams,
    StatusParams,
    TaskSpec,
    WorktreesParams,
)
from tcmd.work.queue.base import FINAL, Job, JobState, Priority, RetryPolicy, stats_of
from tcmd.work.runmerge import MergeTool
from tcmd.work.runview import run_row, run_tasks, task_row
from tcmd.work.waiting import SharedRelease

if TYPE_CHECKING:  # Redis is imported only with REDIS_URL
    from tcmd.work.shared import SharedWork

_UNSET_GRAPH_FIELDS = {"dependsOn", "runIfDependencyFails"}  # kept out of a job without them


class ParallelTools:
    def __init__(self, parallel: Parallel, shared: SharedWork | None = None) -> None:
        self.p = parallel
        self.shared = shared  # the shared queue (REDIS_URL set)
        self.overlaps = Overlaps(self._emit)
        if shared is not None:  # a task whose dependencies ended goes into Redis then
            parallel.waiting.to_shared = SharedRelease(shared.q.enqueue, self._catch_up_later)

    def _emit(self, kind: str, **fields: Any) -> None:
        self.p.emit(kind, **fields)  # looked up at each event: the daemon wires it late

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "executeParallel",
                "Run tasks in parallel, each in a fresh specialist under the "
                "manager, within its concurrency limit; waits for the results unless wait=false.",
                ExecuteParallelParams,
                self.execute_parallel,
            ),
            Tool(
                "getParallelStatus",
                "Progress of a run (runId) or of a manager's tasks "
                "(managerId): counts, limit and every task.",
                StatusParams,
                self.status,
                read_only=True,
                long_poll=True,
            ),
            Tool(
                "runs",
                "Runs, newest first: counts of their tasks by state, when they started "
                "and ended, their managers (an instance sees the runs of its subtree).",
                RunsParams,
                self.runs,
                {"type": "array", "items": {"type": "object"}},
                inline=True,
                read_only=True,
            ),
            Tool(
                "distributeWork",
                "Spread tasks over the live managers with a strategy "
                "(round-robin, least-loaded, capacity-aware); spawns missing managers when "
                "`managers` asks for more.",
                DistributeParams,
                self.distribute,
            ),
            Tool(
                "jobs",
                "Jobs of the queue, oldest first, filtered by state, run or manager.",
                JobsParams,
                self.jobs,
                {"type": "array", "items": {"type": "object"}},
                inline=True,
                read_only=True,
            ),
            Tool(
                "queueStats",
                "Counts by state and priority, average wait and run time, throughput; with "
                "Redis, shared.limits: each manager's attempts on every node and its limit.",
                NoParams,
                self.queue_stats,
                inline=True,
                read_only=True,
            ),
            Tool(
                "cancel",
                "Cancel a job or every unfinished job of a run.",
                CancelParams,
                self.cancel,
                destructive=True,
            ),
            Tool(
                "worktrees",
                "tcm's git worktrees (one per task); prune=true removes the clean "
                "ones and keeps every one with work in it.",
                WorktreesParams,
                self.worktrees,
                destructive=True,
                operator_only=True,
            ),
            MergeTool(self.p, self._run_is_mine).tool(),
        ]

    def _catch_up_later(self) -> None:
        """Redis did not take a ready task: the claim loop's catch-up puts it there."""
        if self.shared is not None:
            self.shared.view_stale = True
        if self.p.poke is not None:
            self.p.poke()

    # -- runs ---------------------------------------------------------------------------------
    async def _new_run(
        self,
        opts: RunOptions,
        tasks: list[TaskSpec],
        manager_ids: list[str],
        work_dir: str,
    ) -> Run:
        ids = [t.id for t in tasks]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise InvalidParams(f"tasks: duplicate task ids {', '.join(dupes)}")
        _check_graph(tasks)
        profile(opts.agent).check(self.p.settings)  # a missing agent fails the run at once
        path = Path(work_dir)
        if not path.is_absolute() or not path.is_dir():
            raise InvalidParams(f"workDir: {work_dir} is not an absolute path to a directory")
        isolation = opts.isolation
        if isolation is None:
            isolation = "worktree" if await worktrees.repo_root(path) else "shared"
        elif isolation == "worktree" and await worktrees.repo_root(path) is None:
            raise InvalidParams(
                f"isolation: worktree needs a git repository; {work_dir} is not in one"
            )
        return Run(
            run_id=self.p.new_run_id(),
            work_dir=str(path),
            agent=opts.agent,
            isolation=isolation,
            max_concurrent=opts.maxConcurrent,
            timeout_ms=opts.timeoutMs,
            keep_specialists=opts.keepSpecialists,
            manager_ids=manager_ids,
            max_cost_usd=opts.maxCostUsd,
            max_tokens=opts.maxTokens,
            node=self.p.instances.node,
        )

    async def _enqueue(
        self, run: Run, tasks: list[TaskSpec], opts: RunOptions, assignment: dict[str, str | None]
    ) -> None:
        retry = RetryPolicy(
            **(
                {
                    "attempts": opts.retry.attempts,
                    "base_ms": opts.retry.baseMs,
                    "cap_ms": opts.retry.capMs,
                }
                if opts.retry
                else {}
            )
        )
        ids = None if self.shared is None else await self.shared.new_job_ids(len(tasks))
        shared = ids is not None
        if ids is None:
            ids = [self.p.queue.new_job_id() for _ in tasks]
        jobs = [
            Job(
                job_id=job_id,
                run_id=run.run_id,
                task_id=task.id,
                task=task.model_dump(exclude=_UNSET_GRAPH_FIELDS if not task.dependsOn else None),
                priority=Priority.parse(task.priority),
                manager_id=assignment[task.id],
                retry=retry,
                node=self.p.instances.node,
            )
            for task, job_id in zip(tasks, ids, strict=True)
        ]
        ready = [j for j in jobs if not j.task.get("dependsOn")]
        if len(ready) < len(jobs):  # a graph: the others wait in the run (work/waiting.py)
            run.job_ids.update((j.task_id, j.job_id) for j in jobs)  # every task, in order
            later = [j for j in jobs if j.task.get("dependsOn")]
            self.p.waiting.add(run.run_id, run.agent, run.job_ids, later)
        for manager_id in run.manager_ids:  # before the shared queue stores the limits
            if opts.maxConcurrent is not None:
                self.p.limits[manager_id] = opts.maxConcurrent
        try:
            if shared and self.shared is not None:
                await self.shared.submit(run, ready)
            else:
                self.p.submit(run, ready)
        except BaseException:
            if len(ready) < len(jobs):
                with contextlib.suppress(TcmError):  # a graph left behind: dropped at start
                    self.p.waiting.drop(run.run_id)
            raise
        if len(ready) < len(jobs):
            if len(run.job_ids) < len(jobs):  # the shared queue fell back to the local one
                run.job_ids.clear()
                run.job_ids.update((j.task_id, j.job_id) for j in jobs)
                self.p.save_run(run)
            self.p.waiting.submitted(run.run_id, shared=bool(ready[0].extra.get("shared")))
        self.p.dispatch()

    async def _await_run(self, run: Run) -> dict[str, Any]:
        # run_done is O(1) amortised: it is checked at every move of one of the run's jobs
        await self.p.instances.changes.wait_for(
            lambda: self.p.run_done(run), None, run_key(run.run_id)
        )
        return self.summary(run)

    def summary(self, run: Run) -> dict[str, Any]:
        jobs = self.p.run_jobs(run)
        return {
            "runId": run.run_id,
            "total": len(run.job_ids),
            "completed": sum(j.state == JobState.COMPLETED for j in jobs),
            "failed": sum(j.state == JobState.FAILED for j in jobs),
            "cancelled": sum(j.state == JobState.CANCELLED for j in jobs),
            "done": self.p.run_done(run),
            "budgetReached": run.budget_reached,
            "results": run_tasks(self.p, run),
        }

    async def execute_parallel(self, caller: Caller, p: ExecuteParallelParams) -> dict[str, Any]:
        manager = self.p.instances.get(p.managerId)
        check_target(caller, manager, self.p.instances.find, "run tasks under", itself=True)
        if manager.role != Role.MANAGER:
            raise InvalidParams(f"managerId: {manager.id} is {manager.role.value}, not a manager")
        if manager.status not in LIVE:
            raise Conflict(f"managerId: {manager.id} has {manager.status.value}")
        run = await self._new_run(p, p.tasks, [manager.id], p.workDir or manager.work_dir)
        await self._enqueue(run, p.tasks, p, {t.id: manager.id for t in p.tasks})
        if not p.wait:
            return {"runId": run.run_id, "total": len(p.tasks)}
        return await self._await_run(run)

    async def distribute(self, caller: Caller, p: DistributeParams) -> dict[str, Any]:
        if caller.role in (Role.MANAGER.value, Role.SPECIALIST.value):
            raise Forbidden(f"a {caller.role} may not distribute work across managers")
        managers = await self._managers(caller, p)
        loads = [
            distribution.ManagerLoad(
                m.id,
                self.p.active.get(m.id, 0),
                self.p.queue.waiting(m.id),
                p.maxConcurrent or self.p.limit_for(m.id),
            )
            for m in managers
        ]
        start = int(self.p.store.get("meta", "roundRobinPosition") or 0)
        assignments, nxt = distribution.distribute(
            p.strategy, [t.id for t in p.tasks], loads, start
        )
        self.p.store.put("meta", "roundRobinPosition", nxt)
        work_dir = p.workDir or managers[0].work_dir
        run = await self._new_run(p, p.tasks, [m.id for m in managers], work_dir)
        run.strategy = p.strategy
        where = {tid: a.manager_id for a in assignments for tid in a.task_ids}
        await self._enqueue(run, p.tasks, p, where)
        out: dict[str, Any] = {
            "runId": run.run_id,
            "strategy": p.strategy,
            "managers": [m.id for m in managers],
            "totalTasks": len(p.tasks),
            "distribution": [
                {"managerId": a.manager_id, "taskIds": a.task_ids} for a in assignments
            ],
        }
        if p.wait:
            out.update(await self._await_run(run))
        return out

    async def _managers(self, caller: Caller, p: DistributeParams) -> list[Instance]:
        """The live managers work may go to; spawns the missing ones when asked."""
        inst = self.p.instances

        def mine(m: Instance) -> bool:
            return caller.is_operator or m.parent_id == caller.instance_id

        managers = [m for m in self.p.live_managers() if mine(m)]
        want = p.managers or 0
        if len(managers) < want:
            executive = (
                inst.get(str(caller.instance_id))
                if not caller.is_operator
                else await self._executive(p)
            )
            while len(managers) < want:
                mgr = await inst.spawn(  # rolled back whole if it fails
                    Role.MANAGER,
                    executive,
                    work_dir=executive.work_dir,
                    agent=p.agent,
                    context="distributeWork manager",
                    model=None,
                )
                await _until_started(inst, mgr)
                managers.append(mgr)
        if not managers:
            raise Conflict("no live manager to distribute to (say `managers: N` to spawn some)")
        return sorted(managers, key=lambda m: m.id)

    async def _executive(self, p: DistributeParams) -> Instance:
        inst = self.p.instances
        for candidate in sorted(inst.by_id.values(), key=lambda i: i.created):
            if candidate.role == Role.EXECUTIVE and candidate.status in LIVE:
                return candidate
        work_dir = p.workDir or str(Path.cwd())
        exe = await inst.spawn(  # numbered across nodes with Redis, rolled back if it fails
            Role.EXECUTIVE,
            None,
            work_dir=work_dir,
            agent=p.agent,
            context="distributeWork executive",
            model=None,
        )
        await _until_started(inst, exe)
        return exe

    # -- observing ----------------------------------------------------------------------------
    async def status(self, caller: Caller, p: StatusParams) -> dict[str, Any]:
        """A run's or a manager's progress, for the operator or the manager (or an ancestor
        of it; of a run: of each of its managers)."""
        run = None
        if p.runId:
            run = self.p.runs.get(p.runId)
            if run is None:
                raise NotFound(f"no run {p.runId!r}")
            if not self._run_is_mine(caller, run):
                raise Forbidden(f"{caller.instance_id} may not watch {run.run_id}: not its run")
        elif p.managerId:
            manager = self.p.instances.get(p.managerId)
            check_target(caller, manager, self.p.instances.find, "watch", itself=True)
        else:
            raise InvalidParams("params: give managerId or runId")
        changes = self.p.instances.changes
        if p.sinceChange is not None and p.waitMs:
            since = p.sinceChange
            await changes.wait_for(lambda: changes.count != since, p.waitMs / 1000)
        if run is not None:
            jobs, managers = self.p.run_jobs(run), run.manager_ids
            rows, waiting = run_tasks(self.p, run), self.p.waiting.pending(run.run_id)
        else:
            jobs, managers = self.p.queue.jobs(manager_id=p.managerId), [str(p.managerId)]
            held = self.p.waiting.of_manager(str(p.managerId))
            rows = [task_row(j, self.p.held_of(j)) for j in jobs]
            rows += [self.p.waiting.row(*w) for w in held]
            waiting = len(held)
        by = {s: sum(j.state == s for j in jobs) for s in JobState}
        status = {
            "runId": p.runId,
            "managerId": p.managerId,
            "activeSpecialists": by[JobState.ACTIVE],
            "queuedTasks": by[JobState.QUEUED] + by[JobState.RETRYING],
            "waitingTasks": waiting,
            "completedTasks": by[JobState.COMPLETED],
            "failedTasks": by[JobState.FAILED],
            "cancelledTasks": by[JobState.CANCELLED],
            "maxConcurrent": sum(self.p.limit_for(m) for m in managers),
            "peakActive": max((self.p.peak_per_manager.get(m, 0) for m in managers), default=0),
            "done": not waiting and all(j.state in FINAL for j in jobs),
            "change": changes.count,
            "tasks": rows,
        }
        if run is not None and run.isolation == "worktree":  # files changed, overlaps
            annotate(status, await self.overlaps.look(run.run_id, jobs))
            if len(self.overlaps) > len(self.p.runs):
                self.overlaps.forget(self.p.runs)
        return status

    def runs(self, caller: Caller, p: RunsParams) -> list[dict[str, Any]]:
        mine = [r for r in self.p.runs.values() if self._run_is_mine(caller, r)]
        if p.unfinishedFirst:  # top's runs line: what still runs, whatever its age
            newest = sorted(
                mine, key=lambda r: (r.finished_at is None, r.created_at), reverse=True
            )[: p.limit]
        else:
            newest = sorted(mine, key=lambda r: r.created_at, reverse=True)[: p.limit]
        return [run_row(self.p, r) for r in newest]

    def _mine(self, caller: Caller, job: Job) -> bool:
        """Whether ``caller`` may see and cancel ``job``: the operator; an instance for the
        jobs of its own runs (it is the manager, or the manager is below it)."""
        return caller.is_operator or self._manages(caller, job.manager_id)

    def _run_is_mine(self, caller: Caller, run: Run) -> bool:
        """Whether ``caller`` may watch ``run``: the operator; an instance that is each of
        the run's managers or above each of them."""
        if caller.is_operator:
            return True
        return bool(run.manager_ids) and all(self._manages(caller, m) for m in run.manager_ids)

    def _manages(self, caller: Caller, manager_id: str | None) -> bool:
        """Whether the manager is known and ``caller`` is it or above it."""
        manager = self.p.instances.find(manager_id) if manager_id else None
        return manager is not None and may_see(caller, manager, self.p.instances.find)

    def jobs(self, caller: Caller, p: JobsParams) -> list[dict[str, Any]]:
        state = JobState(p.state) if p.state else None
        found = self.p.queue.jobs(
            state=state,
            run_id=p.runId,
            manager_id=p.managerId,
            limit=None if not caller.is_operator else p.limit,
        )
        held = self.p.held_of
        return [
            {**j.public(), **({"held": why} if (why := held(j)) is not None else {})}
            for j in found
            if self._mine(caller, j)
        ][: p.limit]

    def queue_stats(self, caller: Caller, p: NoParams) -> dict[str, Any]:
        """The whole queue for the operator; for an instance, the same figures over the
        jobs of its own runs (and no daemon-wide ``peakManagers``)."""
        now = time.time()
        if caller.is_operator:
            stats = self.p.queue.stats(now)
            stats["peakManagers"] = self.p.peak_managers
            stats["peakPerManager"] = dict(self.p.peak_per_manager)
            if self.shared is not None:  # every node's attempts per manager, and the limits
                stats["shared"] = {"limits": dict(self.shared.limits)}
            return stats
        stats = stats_of([j for j in self.p.queue.jobs() if self._mine(caller, j)], now)
        stats["peakPerManager"] = {
            m: n for m, n in self.p.peak_per_manager.items() if self._manages(caller, m)
        }
        return stats

    async def cancel(self, caller: Caller, p: CancelParams) -> dict[str, Any]:
        if bool(p.jobId) == bool(p.runId):
            raise InvalidParams("params: give exactly one of jobId or runId")
        waiting: list[Job] = []  # tasks waiting for their dependencies (no job yet)
        if p.jobId:
            try:
                targets = [self.p.queue.get(p.jobId)]
            except NotFound:
                if (held := self.p.waiting.find(p.jobId)) is None:
                    raise
                targets, waiting = [], [held]
        else:
            run = self.p.runs.get(str(p.runId))
            if run is None:
                raise NotFound(f"no run {p.runId!r}")
            targets, waiting = self.p.run_jobs(run), self.p.waiting.waiting_jobs(run.run_id)
        if not all(self._mine(caller, j) for j in [*targets, *waiting]):
            raise Forbidden(f"{caller.instance_id} may cancel only the jobs of its own runs")
        if p.jobId and waiting:
            cancelled = self.p.waiting.cancel_task(p.jobId)
            self.p.finish_runs()
            return {"cancelled": [cancelled.job_id] if cancelled else []}
        done = [j.job_id for j in self.p.waiting.cancel_run(str(p.runId))] if waiting else []
        for job in targets:
            if job.state in FINAL:
                continue
            if self.shared is not None and job.extra.get("shared"):
                done.append((await self.shared.cancel(job)).job_id)
            else:
                done.append(self.p.cancel(job).job_id)
        self.p.finish_runs()
        return {"cancelled": done}

    async def worktrees(self, caller: Caller, p: WorktreesParams) -> dict[str, Any]:
        root = self.p.worktree_root
        if p.prune:
            return {"pruned": await worktrees.prune(root, self.p.repo_guard)}
        return {"worktrees": await worktrees.list_worktrees(root)}


def _check_graph(tasks: list[TaskSpec]) -> None:
    """Refuse a run whose dependencies cannot run (-32602, naming the field); and a
    placeholder ``{{X.result}}`` whose X is not among the task's dependsOn."""
    try:
        graph.check([(t.id, t.dependsOn) for t in tasks])
    except graph.GraphError as exc:
        raise InvalidParams(str(exc), data={"field": exc.field}) from None
    for i, task in enumerate(tasks):
        for name in handoff.named(task.instruction):
            if name not in task.dependsOn:
                raise InvalidParams(
                    f"tasks[{i}].instruction: {{{{{name}.result}}}} names {name}, which is not "
                    f"in its dependsOn",
                    data={"field": f"tasks[{i}].instruction"},
                )


async def _until_started(instances: Any, inst: Instance) -> None:
    await instances.changes.wait_for(lambda: inst.status != State.STARTING, 60)
    if inst.status not in LIVE:
        raise Conflict(f"{inst.id} did not start ({inst.status.value})")
