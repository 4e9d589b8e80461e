"""The ``mergeRun`` tool: a worktree run's task branches into one branch (work/merge.py).

Who may merge: the operator, or an instance that may watch the run (each of its managers
or above each of them), as for ``cancel``; a specialist never. One merge per repository
at a time in this daemon; the target only moves from the value its plan started from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from tcmd.api import Caller, Params, Tool
from tcmd.errors import Forbidden, InvalidParams, NotFound
from tcmd.work import merge
from tcmd.work.dispatcher import Parallel, Run
from tcmd.work.queue.base import Job, JobState


class MergeParams(Params):
    runId: str = Field(min_length=1, max_length=100)
    into: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Target branch (default: the branch checked out in the run's repository)",
    )
    squash: bool = Field(default=False, description="One commit per task instead of a merge")
    dryRun: bool = Field(default=False, description="Plan only: change nothing")
    skipConflicting: bool = Field(
        default=False,
        description="Merge the clean tasks and leave out the conflicting ones (and their "
        "dependents) instead of stopping",
    )


class MergeTool:
    def __init__(self, parallel: Parallel, may_watch: Callable[[Caller, Run], bool]) -> None:
        self.p = parallel
        self.may_watch = may_watch
        self._locks: dict[Path, asyncio.Lock] = {}  # repository -> one merge at a time

    def tool(self) -> Tool[MergeParams]:
        return Tool(
            "mergeRun",
            "Merge (or squash) each completed task's branch of a worktree run into a "
            "branch, dependencies first; every merge is computed before anything changes, "
            "and conflicts stop it (unless skipConflicting) with the tasks and paths named.",
            MergeParams,
            self.merge_run,
            destructive=True,
        )

    async def merge_run(self, caller: Caller, p: MergeParams) -> dict[str, Any]:
        run = self.p.runs.get(p.runId)
        if run is None:
            raise NotFound(f"no run {p.runId!r}")
        if not self.may_watch(caller, run):
            raise Forbidden(f"{caller.instance_id} may not merge {run.run_id}: not its run")
        if run.isolation != "worktree":
            raise InvalidParams(
                f"runId: {run.run_id} ran with isolation={run.isolation}: no branches to merge",
                data={"field": "runId"},
            )
        jobs = self.p.run_jobs(run)
        repo = _repo_of(jobs)
        if repo is None:
            raise InvalidParams(f"runId: no task of {run.run_id} has a worktree yet",
                                data={"field": "runId"})  # fmt: skip
        if not repo.is_dir():
            raise InvalidParams(f"runId: its repository {repo} is not here (another node's?)",
                                data={"field": "runId"})  # fmt: skip
        async with self._locks.setdefault(repo, asyncio.Lock()):
            target = p.into or await merge.current_branch(repo)
            merge.check_branch_name(target)
            if any(target == j.extra.get("branch") for j in jobs):
                raise InvalidParams(f"into: {target} is a task branch of the run",
                                    data={"field": "into"})  # fmt: skip
            plan = await merge.plan(
                repo, target, run.run_id, [_candidate(j) for j in jobs], squash=p.squash
            )
            out = {"runId": run.run_id, "dryRun": p.dryRun, **plan.to_json()}
            stop = bool(plan.conflicting) and not p.skipConflicting
            if p.dryRun or stop:
                how = None
            else:
                how = await merge.apply(plan, run.run_id)
        merged = [s.task_id for s in plan.steps if s.status == merge.CLEAN]
        out.update(merged=[] if how is None else merged, applied=how is not None, how=how,
                   stoppedByConflicts=stop)  # fmt: skip
        return out


def _repo_of(jobs: list[Job]) -> Path | None:
    for job in jobs:
        info = job.extra.get("worktreeInfo")
        if isinstance(info, dict) and info.get("repo"):
            return Path(str(info["repo"]))
    return None


def _candidate(job: Job) -> merge.Candidate:
    info = job.extra.get("worktreeInfo") or {}
    depends = job.task.get("dependsOn") or ()
    kept = job.extra.get("removed") is False  # finished, and kept because it holds work
    return merge.Candidate(
        task_id=job.task_id,
        branch=job.extra.get("branch") or info.get("branch"),
        completed=job.state == JobState.COMPLETED,
        state=job.state.value,
        base=info.get("base"),
        depends_on=tuple(str(d) for d in depends),
        name=job.task.get("name"),
        worktree=job.extra.get("worktree") if kept else None,
        dirty=bool(job.extra.get("dirty")),
    )
