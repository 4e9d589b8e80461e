"""Parallel work from the command line: parallel, distribute, jobs, queue, cancel, worktrees.

With waiting, the run is followed as `tcmctl run RUN_ID --follow` does (commands/runs.py).
The exit code is 0 only when every task completed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from tcmctl import render
from tcmctl.commands.runs import announce, finish
from tcmctl.completion import complete_instance_id, complete_run_id
from tcmctl.context import Ctx, json_option, pass_ctx

STRATEGIES = click.Choice(["round-robin", "least-loaded", "capacity-aware"])
FILE_OPTIONS = (
    "agent",
    "isolation",
    "maxConcurrent",
    "timeoutMs",
    "retry",
    "keepSpecialists",
    "maxCostUsd",
    "maxTokens",
)
FLAGS = {
    "workDir": "--workdir",
    "maxConcurrent": "--max-concurrent",
    "agent": "--agent",
    "strategy": "--strategy",
    "managers": "--managers",
}


@dataclass
class _File:
    """A tasks file as loaded: where refusals of its values point."""

    source: str
    tasks: list[dict[str, Any]]
    options: dict[str, Any]

    @property
    def fields(self) -> set[str]:
        return {*self.options, "tasks"}


def _load(path: str) -> _File:
    from tcmctl.tasksfile import TasksFileError, load_tasks

    try:
        loaded = load_tasks(Path(path))
    except TasksFileError as exc:
        raise click.BadParameter(str(exc), param_hint="TASKS_FILE") from None
    source = "<stdin>" if path == "-" else path
    return _File(source, loaded.tasks, loaded.options)


def _params(
    file: _File, given: dict[str, Any], **fixed: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """The call's params (the file's options, then the flags given over them) and the
    flag of each field a flag set, for refusals (FLAGS)."""
    params = {k: file.options[k] for k in FILE_OPTIONS if k in file.options}
    params.update({k: v for k, v in given.items() if v is not None})
    params.update(fixed)
    return params, {k: FLAGS[k] for k, v in given.items() if v is not None}


@click.command()
@click.argument("manager_id", shell_complete=complete_instance_id)
@click.argument("tasks_file", type=click.Path(allow_dash=True))
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--max-concurrent", type=click.IntRange(1, 1000))
@click.option("--agent", help="Agent profile of the specialists (default: claude).")
@click.option("--wait/--no-wait", default=True, show_default=True)
@json_option
@pass_ctx
def parallel(
    obj: Ctx,
    manager_id: str,
    tasks_file: str,
    workdir: Path | None,
    max_concurrent: int | None,
    agent: str | None,
    wait: bool,
) -> None:
    """Run the tasks of TASKS_FILE in parallel under MANAGER_ID."""
    file = _load(tasks_file)
    params, flags = _params(
        file,
        {
            "workDir": str(workdir.resolve()) if workdir else None,
            "maxConcurrent": max_concurrent,
            "agent": agent,
        },
        managerId=manager_id,
        tasks=file.tasks,
        wait=False,
    )
    if "workDir" not in params and "workDir" in file.options:
        params["workDir"] = str(Path(file.options["workDir"]).resolve())
    started = obj.call("executeParallel", params, flags=flags, file=file)
    announce(obj, started, wait)
    finish(obj, started, wait)


@click.command()
@click.argument("tasks_file", type=click.Path(allow_dash=True))
@click.option("--strategy", type=STRATEGIES)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the tasks run (default: the file's workDir, else the current directory).",
)
@click.option("--managers", type=click.IntRange(1, 100), help="Spawn managers up to this many.")
@click.option("--agent", help="Agent profile of new managers and the specialists.")
@click.option("--wait", is_flag=True, help="Follow the run and print its results.")
@json_option
@pass_ctx
def distribute(
    obj: Ctx,
    tasks_file: str,
    strategy: str | None,
    workdir: Path | None,
    managers: int | None,
    agent: str | None,
    wait: bool,
) -> None:
    """Spread the tasks of TASKS_FILE over the managers."""
    file = _load(tasks_file)
    params, flags = _params(
        file,
        {
            "workDir": str(workdir.resolve()) if workdir else None,
            "strategy": strategy,
            "managers": managers,
            "agent": agent,
        },
        tasks=file.tasks,
        wait=False,
    )
    for key in ("strategy", "managers"):
        if key not in params and key in file.options:
            params[key] = file.options[key]
    if "workDir" not in params:
        params["workDir"] = str(Path(file.options.get("workDir", ".")).resolve())
    started = obj.call("distributeWork", params, flags=flags, file=file)
    announce(obj, started, wait)
    if not obj.json:
        for entry in started["distribution"]:
            who = entry["managerId"] or "(first free manager)"
            click.echo(f"{who}: {', '.join(entry['taskIds']) or '-'}")
    finish(obj, started, wait)


@click.command()
@click.option(
    "--state",
    type=click.Choice(["queued", "active", "retrying", "completed", "failed", "cancelled"]),
)
@click.option("--run", "run_id")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@json_option
@pass_ctx
def jobs(obj: Ctx, state: str | None, run_id: str | None, limit: int) -> None:
    """List jobs of the queue."""
    rows = obj.call("jobs", {"state": state, "runId": run_id, "limit": limit})
    obj.emit(
        rows,
        lambda rs: render.table(
            rs,
            ["jobId", "runId", "taskId", "managerId", "priority", "state", "attempts", "lastError"],
        ),
    )


@click.command()
@json_option
@pass_ctx
def queue(obj: Ctx) -> None:
    """Queue statistics: counts by state and priority, wait and run times, throughput."""
    st = obj.call("queueStats")
    obj.emit(
        st,
        lambda s: render.pairs(
            [
                ("by state", " ".join(f"{k}={v}" for k, v in s["byState"].items())),
                ("by priority", " ".join(f"{k}={v}" for k, v in s["byPriority"].items())),
                ("avg wait ms", s["avgWaitMs"]),
                ("avg run ms", s["avgRunMs"]),
                ("per minute", s["throughputPerMin"]),
            ]
        ),
    )


@click.command()
@click.argument("job_or_run_id", shell_complete=complete_run_id)
@json_option
@pass_ctx
def cancel(obj: Ctx, job_or_run_id: str) -> None:
    """Cancel a job (job_N) or every unfinished job of a run (run_N)."""
    key = "runId" if job_or_run_id.startswith("run_") else "jobId"
    out = obj.call("cancel", {key: job_or_run_id})
    obj.emit(out, lambda r: "cancelled " + (", ".join(r["cancelled"]) or "nothing"))


@click.command(name="worktrees")
@click.option("--prune", is_flag=True, help="Remove clean worktrees; keep any with work.")
@json_option
@pass_ctx
def worktrees_(obj: Ctx, prune: bool) -> None:
    """List tcm's git worktrees (or prune the clean ones)."""
    out = obj.call("worktrees", {"prune": prune or None})
    rows = out.get("worktrees", out.get("pruned", []))
    obj.emit(out, lambda r: render.table(rows, sorted({k for row in rows for k in row})))


COMMANDS = [parallel, distribute, jobs, queue, cancel, worktrees_]
