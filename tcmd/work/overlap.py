"""Overlap while running: which files each task of a worktree run has changed, and which
files more than one task changed, so a conflict shows before the run ends.

A task's files are those that differ from the commit its worktree started from: committed,
staged, unstaged and untracked (not ignored) while its worktree is on disk; once the
worktree is gone (finished clean), its branch against that commit.

Cost is bounded: git runs only when a run's status is asked for, at most once per task per
``REFRESH_S`` while the task runs (or per ``REFRESH_PER_TASK_S`` x the run's running tasks,
when that is longer: about 10 % of a core at most however many run), and once more after it
ended (then never again for that attempt): two git calls for a worktree, one for a branch
(``rev-parse`` and ``diff``), at most ``PARALLEL_GIT`` at a time.
The first time a path is seen changed by two tasks of a run, a ``run.overlap`` event says so
(``runId, path, taskIds``; at most ``EVENTS_PER_LOOK`` per look, the rest counted in
``more``). What was reported lives in memory: after a restart an overlap is reported again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from tcmd.errors import TcmError
from tcmd.work.merge import shown
from tcmd.work.queue.base import FINAL, Job, JobState
from tcmd.work.worktrees import Worktree, git, git_answer

log = structlog.get_logger(__name__)

REFRESH_S = 2.0
REFRESH_PER_TASK_S = 0.1  # with many running tasks, each is looked at less often
PARALLEL_GIT = 4
EVENTS_PER_LOOK = 20
SHOWN_PER_TASK = 200  # changedFiles in a status answer; changedCount has the full number
SHOWN_OVERLAPS = 200


def shared_paths(files: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Each path changed by more than one task -> those tasks (in the mapping's order)."""
    by_path: dict[str, list[str]] = {}
    for task_id, paths in files.items():
        for path in paths:
            by_path.setdefault(path, []).append(task_id)
    return {p: ts for p, ts in sorted(by_path.items()) if len(ts) > 1}


async def changed_files(wt: Worktree) -> list[str]:
    """The paths (from the repository's top) the task changed against its base."""
    if wt.path.is_dir():
        diff = await git(wt.path, "diff", "--name-only", "--no-renames", "-z", wt.base, "--")
        new = await git(wt.path, "ls-files", "--others", "--exclude-standard", "-z")
        names = diff.split("\0") + new.split("\0")
    else:
        ref = f"refs/heads/{wt.branch}"
        rc, tip = await git_answer(wt.repo, "rev-parse", "--verify", "--quiet", ref, ok=(0, 1))
        if rc == 1:  # deleted: it had no commits
            return []
        out = await git(wt.repo, "diff", "--name-only", "--no-renames", "-z", wt.base,
                        tip.strip(), "--")  # fmt: skip
        names = out.split("\0")
    return sorted({shown(n) for n in names if n})


@dataclass(slots=True)
class _Seen:
    key: tuple[Any, ...]  # (attempts, final) of the job when looked at
    at: float  # monotonic
    files: list[str]


class Overlaps:
    """The changed files of the tasks of worktree runs, cached; ``run.overlap`` events."""

    def __init__(self, emit: Callable[..., Any]) -> None:
        self.emit = emit
        self._seen: dict[str, dict[str, _Seen]] = {}  # run id -> job id ->
        self._reported: dict[str, set[str]] = {}  # run id -> paths already announced
        self._locks: dict[str, asyncio.Lock] = {}  # run id -> one look at a time
        self._git = asyncio.Semaphore(PARALLEL_GIT)

    async def look(self, run_id: str, jobs: list[Job]) -> dict[str, Any]:
        """``{"files": {taskId: [path]}, "shared": {path: [taskId]}}`` for a run's tasks."""
        async with self._locks.setdefault(run_id, asyncio.Lock()):
            now, known = time.monotonic(), self._seen.setdefault(run_id, {})
            running = sum(j.state not in FINAL and "worktreeInfo" in j.extra for j in jobs)
            every = max(REFRESH_S, running * REFRESH_PER_TASK_S)
            stale = [j for j in jobs if self._stale(known.get(j.job_id), j, now, every)]
            await asyncio.gather(*(self._refresh(known, j, now) for j in stale))
            files = {j.task_id: seen.files for j in jobs if (seen := known.get(j.job_id))}
            shared = shared_paths(files)
            self._announce(run_id, shared)
            return {"files": files, "shared": shared}

    def forget(self, runs: Container[str]) -> None:
        """Drop what is kept for runs not in ``runs`` (retention forgot them)."""
        for run_id in [r for r in self._locks if r not in runs]:
            if self._locks[run_id].locked():
                continue
            del self._locks[run_id]
            self._seen.pop(run_id, None)
            self._reported.pop(run_id, None)

    def __len__(self) -> int:
        """How many runs something is kept for."""
        return len(self._locks)

    @staticmethod
    def _stale(seen: _Seen | None, job: Job, now: float, every: float) -> bool:
        if "worktreeInfo" not in job.extra or job.state == JobState.QUEUED:
            return False
        if seen is None or seen.key != _key(job):
            return True
        return job.state not in FINAL and now - seen.at >= every

    async def _refresh(self, known: dict[str, _Seen], job: Job, now: float) -> None:
        key = _key(job)  # before the await: a later state is looked at again
        try:
            wt = Worktree.from_json(job.extra["worktreeInfo"])
            async with self._git:
                files = await changed_files(wt)
        except (TcmError, KeyError, TypeError, OSError) as exc:  # e.g. removed meanwhile
            log.debug("changed files unknown", job_id=job.job_id, error=str(exc))
            return  # the last answer stays; looked at again next time
        known[job.job_id] = _Seen(key, now, files)

    def _announce(self, run_id: str, shared: dict[str, list[str]]) -> None:
        reported = self._reported.setdefault(run_id, set())
        new = [p for p in shared if p not in reported]
        if not new:
            return
        reported.update(new)
        told = new[:EVENTS_PER_LOOK]
        for i, path in enumerate(told, start=1):
            more = len(new) - len(told) if i == len(told) else 0  # the last one counts the rest
            self.emit("run.overlap", runId=run_id, path=path, taskIds=shared[path], more=more)
        log.info("tasks overlap", run_id=run_id, paths=len(new))


def _key(job: Job) -> tuple[Any, ...]:
    return (job.attempts, job.state in FINAL, bool(job.extra.get("removed")))


def annotate(status: dict[str, Any], seen: dict[str, Any]) -> None:
    """Put a look's findings into a getParallelStatus answer (capped)."""
    files: dict[str, list[str]] = seen["files"]
    for row in status["tasks"]:
        if (changed := files.get(row["taskId"])) is not None:
            row["changedFiles"] = changed[:SHOWN_PER_TASK]
            row["changedCount"] = len(changed)
    shared = seen["shared"]
    status["overlap"] = [{"path": p, "taskIds": ts} for p, ts in
                         list(shared.items())[:SHOWN_OVERLAPS]]  # fmt: skip
    status["overlapCount"] = len(shared)
