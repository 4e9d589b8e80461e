"""How runs and their tasks are shown: one row per task, one row per run (the `runs` tool)."""

from __future__ import annotations

from typing import Any

from tcmd.work.dispatcher import Parallel, Run
from tcmd.work.queue.base import FINAL, Job, JobState


def task_row(job: Job) -> dict[str, Any]:
    """A task of a run as getParallelStatus and executeParallel show it."""
    row = {
        "taskId": job.task_id,
        "jobId": job.job_id,
        "name": job.task.get("name"),
        "status": job.state.value,
        "priority": job.priority.label,
        "managerId": job.manager_id,
        "instanceId": job.instance_id or job.extra.get("instanceId"),
        "attempts": job.attempts,
        "reruns": job.reruns,
        "startedAt": job.started_at,
        "durationMs": job.duration_ms,
        "result": job.result,
        "error": job.last_error if job.state != JobState.COMPLETED else None,
        "nextRetryAt": job.next_retry_at,
    }
    for key in ("branch", "hasCommits", "dirty", "worktree", "exitCode", "ranOn"):
        if key in job.extra:
            row[key] = job.extra[key]
    return row


def run_row(parallel: Parallel, run: Run) -> dict[str, Any]:
    """A run in one row: its counts by state, when it started and ended, its managers."""
    jobs = parallel.run_jobs(run)
    by = {s: sum(j.state == s for j in jobs) for s in JobState}
    return {
        "runId": run.run_id,
        "createdAt": run.created_at,
        "finishedAt": run.finished_at,
        "done": all(j.state in FINAL for j in jobs),
        "total": len(jobs),
        "active": by[JobState.ACTIVE],
        "queued": by[JobState.QUEUED] + by[JobState.RETRYING],
        "completed": by[JobState.COMPLETED],
        "failed": by[JobState.FAILED],
        "cancelled": by[JobState.CANCELLED],
        "managers": list(run.manager_ids),
        "agent": run.agent,
        "strategy": run.strategy,
        "workDir": run.work_dir,
        "budgetReached": run.budget_reached,
    }
