"""Parallel work from the command line: parallel, distribute, jobs, queue, cancel, worktrees.

With waiting, progress comes from `getParallelStatus` long-polls (the daemon answers when
something changed): a live line on a terminal, one line per finished task otherwise, then
a final table. The exit code is 0 only when every task completed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tcmctl import render
from tcmctl.context import EXIT_FAILED, Ctx, json_option, pass_ctx

STRATEGIES = click.Choice(["round-robin", "least-loaded", "capacity-aware"])
RESULT_COLUMNS = ["taskId", "status", "priority", "managerId", "attempts", "durationMs", "result"]
FILE_OPTIONS = ("agent", "isolation", "maxConcurrent", "timeoutMs", "retry", "keepSpecialists")


def _load(path: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from tcmctl.tasksfile import TasksFileError, load_tasks

    try:
        loaded = load_tasks(Path(path))
    except TasksFileError as exc:
        raise click.BadParameter(str(exc), param_hint="TASKS_FILE") from None
    return loaded.tasks, loaded.options


def _params(options: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    params = {k: options[k] for k in FILE_OPTIONS if k in options}
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


@click.command()
@click.argument("manager_id")
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
    tasks, options = _load(tasks_file)
    workdir = workdir or (Path(options["workDir"]) if "workDir" in options else None)
    params = _params(
        options,
        managerId=manager_id,
        tasks=tasks,
        wait=False,
        workDir=str(workdir.resolve()) if workdir else None,
        maxConcurrent=max_concurrent,
        agent=agent,
    )
    started = obj.call("executeParallel", params)
    _finish(obj, started, wait)


@click.command()
@click.argument("tasks_file", type=click.Path(allow_dash=True))
@click.option("--strategy", type=STRATEGIES)
@click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), default=".", show_default=True
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
    workdir: Path,
    managers: int | None,
    agent: str | None,
    wait: bool,
) -> None:
    """Spread the tasks of TASKS_FILE over the managers."""
    tasks, options = _load(tasks_file)
    params = _params(
        options,
        tasks=tasks,
        wait=False,
        workDir=str(workdir.resolve()),
        strategy=strategy or options.get("strategy"),
        managers=managers or options.get("managers"),
        agent=agent,
    )
    started = obj.call("distributeWork", params)
    if not obj.json:
        for entry in started["distribution"]:
            who = entry["managerId"] or "(first free manager)"
            click.echo(f"{who}: {', '.join(entry['taskIds']) or '-'}")
    _finish(obj, started, wait)


def _finish(obj: Ctx, started: dict[str, Any], wait: bool) -> None:
    if not wait:
        obj.emit(
            started, lambda r: f"{r['runId']} started ({r.get('total', r.get('totalTasks'))} tasks)"
        )
        return
    final = _follow(obj, started["runId"])
    obj.emit(
        final,
        lambda r: (
            render.table(r["tasks"], RESULT_COLUMNS, max_width=50)
            + f"\n{r['completedTasks']} completed, {r['failedTasks']} failed, "
            f"{r['cancelledTasks']} cancelled"
        ),
    )
    if final["completedTasks"] != len(final["tasks"]):
        raise click.exceptions.Exit(EXIT_FAILED)


def _follow(obj: Ctx, run_id: str) -> dict[str, Any]:
    """Long-poll the run until it is done, showing progress on stderr."""
    live = sys.stderr.isatty() and not obj.json
    reported: set[str] = set()
    change = None
    client = obj.client(timeout_s=None)
    while True:
        st = client.call(
            "getParallelStatus",
            {"runId": run_id, "sinceChange": change, "waitMs": 1000 if change is not None else 0},
        )
        change = st["change"]
        if live:
            sys.stderr.write("\r\x1b[K" + _progress_line(st))
            sys.stderr.flush()
        elif not obj.json:
            for task in st["tasks"]:
                if (
                    task["status"] in ("completed", "failed", "cancelled")
                    and task["taskId"] not in reported
                ):
                    reported.add(task["taskId"])
                    click.echo(
                        f"{task['status']:9} {task['taskId']}  attempts={task['attempts']}"
                        f"  {render.cell(task.get('error') or task.get('result'))[:80]}",
                        err=True,
                    )
        if st["done"]:
            if live:
                sys.stderr.write("\n")
            return dict(st)


def _progress_line(st: dict[str, Any]) -> str:
    total = len(st["tasks"]) or 1
    done = st["completedTasks"] + st["failedTasks"] + st["cancelledTasks"]
    width = 30
    filled = int(width * done / total)
    running = [t["instanceId"] for t in st["tasks"] if t["status"] == "active" and t["instanceId"]]
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  "
        f"active {st['activeSpecialists']} queued {st['queuedTasks']} "
        f"done {st['completedTasks']} failed {st['failedTasks']}  "
        f"{' '.join(running[:6])}"
    )


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
@click.argument("job_or_run_id")
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
