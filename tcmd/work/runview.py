"""How runs and their tasks are shown: one row per task, one row per run (the `runs` tool)."""

from __future__ import annotations

from typing import Any

from tcmd.work.dispatcher import Parallel, Run
from tcmd.work.queue.base import Job, JobState


def task_row(job: Job, held: str | None = None) -> dict[str, Any]:
    """A task of a run as getParallelStatus and executeParallel show it; ``held``: why a
    queued task may not start now (``held: memory (…)``)."""
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
    if held is not None:
        row["held"] = held
    if job.task.get("dependsOn"):
        row["dependsOn"] = list(job.task["dependsOn"])
    return row


def run_tasks(parallel: Parallel, run: Run) -> list[dict[str, Any]]:
    """Every task of a run in task order: its job's row, or what it waits for."""
    waiting = parallel.waiting
    if not waiting.pending(run.run_id):
        return [task_row(j, parallel.held_of(j)) for j in parallel.run_jobs(run)]
    return [
        waiting.row(run.run_id, task_id)
        if waiting.is_waiting(run.run_id, task_id)
        else task_row(job := parallel.queue.get(job_id), parallel.held_of(job))
        for task_id, job_id in run.job_ids.items()
    ]


def run_row(parallel: Parallel, run: Run) -> dict[str, Any]:
    """A run in one row: its counts by state, when it started and ended, its managers."""
    jobs = parallel.run_jobs(run)
    by = {s: sum(j.state == s for j in jobs) for s in JobState}
    return {
        "runId": run.run_id,
        "createdAt": run.created_at,
        "finishedAt": run.finished_at,
        "done": parallel.run_done(run),
        "total": len(run.job_ids),
        "waiting": parallel.waiting.pending(run.run_id),
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
