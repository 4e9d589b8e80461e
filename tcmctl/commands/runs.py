"""Runs you can come back to: `runs`, `run RUN_ID [--follow]`, and the follower that
`parallel` and `distribute --wait` use.

Following long-polls `getParallelStatus` (the daemon answers when something changed). Each
task starting, retrying and ending is one line on stderr with the time since the follow
began; on a terminal a live progress line sits under them. Ctrl-C stops the follower, not
the run: it says how to follow or cancel it again and exits with EXIT_INTERRUPTED.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from tcmctl import render
from tcmctl.completion import complete_run_id
from tcmctl.context import EXIT_FAILED, EXIT_INTERRUPTED, Ctx, json_option, pass_ctx

RESULT_COLUMNS = ["taskId", "status", "priority", "managerId", "attempts", "durationMs", "result"]
RUNS_COLUMNS = [
    "runId",
    "state",
    "total",
    "active",
    "queued",
    "waiting",
    "completed",
    "failed",
    "cancelled",
    "age",
    "managers",
]
FINAL = ("completed", "failed", "cancelled")


def final_table(st: dict[str, Any]) -> str:
    """The tasks of a run, a failed task's reason in its result column, then the counts."""
    rows = [
        dict(t, result=t["result"] if t["status"] == "completed" else _reason(t))
        for t in st["tasks"]
    ]
    return (
        render.table(rows, RESULT_COLUMNS, max_width=60)
        + f"\n{st['completedTasks']} completed, {st['failedTasks']} failed, "
        f"{st['cancelledTasks']} cancelled" + overlap_lines(st)
    )


def overlap_lines(st: dict[str, Any]) -> str:
    """A worktree run's changed files per task and the paths more than one task changed."""
    if "overlap" not in st:
        return ""
    counts = [f"{t['taskId']} {t['changedCount']}" for t in st["tasks"] if "changedCount" in t]
    text = f"\nfiles changed: {', '.join(counts) or 'none yet'}"
    if st["overlap"]:
        text += f"\nchanged by more than one task ({st['overlapCount']}):"
        text += "".join(f"\n  {o['path']}  {', '.join(o['taskIds'])}" for o in st["overlap"])
    return text


def _reason(task: dict[str, Any]) -> str | None:
    if task["status"] == "waiting":
        return f"waiting on {', '.join(task.get('waitingOn') or ())}"
    if task.get("error"):
        return f"error: {task['error']}"
    if task.get("held"):
        return str(task["held"])
    return task.get("result")


def follow(obj: Ctx, run_id: str) -> dict[str, Any]:
    """Long-poll the run until it is done, telling what happens on stderr."""
    live = sys.stderr.isatty() and not obj.json
    seen: dict[str, tuple[str, int]] = {}  # task id -> (status, attempts) last told
    overlaps: set[str] = set()  # paths told as changed by more than one task
    began = time.monotonic()
    change = None
    client = obj.client(timeout_s=None)
    try:
        while True:
            st = client.call(
                "getParallelStatus",
                {"runId": run_id, "sinceChange": change, "waitMs": 1000 if change else 0},
            )
            change = st["change"]
            if not obj.json:
                news = _news(st["tasks"], seen, time.monotonic() - began)
                news += _overlap_news(st, overlaps, time.monotonic() - began)
                if live:
                    sys.stderr.write("\r\x1b[K" + "".join(f"{line}\n" for line in news))
                    sys.stderr.write(_progress_line(st) + ("\n" if st["done"] else ""))
                    sys.stderr.flush()
                else:
                    for line in news:
                        click.echo(line, err=True)
            if st["done"]:
                return dict(st)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: {run_id} goes on in tcmd.\n"
            f"  follow it:  tcmctl run {run_id} --follow\n"
            f"  cancel it:  tcmctl cancel {run_id}",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def _news(tasks: list[dict[str, Any]], seen: dict[str, tuple[str, int]], at_s: float) -> list[str]:
    """One line per task that started, is to be retried or ended since the last look."""
    lines = []
    for task in tasks:
        held = task["status"] == "queued" and bool(task.get("held"))
        key = (task["status"] + (" held" if held else ""), task["attempts"])
        if seen.get(task["taskId"]) == key or task["status"] == "waiting":
            continue
        if task["status"] == "queued" and not held:
            continue
        seen[task["taskId"]] = key
        tid, status, attempts = task["taskId"], task["status"], task["attempts"]
        when = f"(+{render.duration(at_s)})"
        if held:  # once per hold: the reason says what it waits for
            lines.append(f"{'held':9} {tid}  {render.cell(task['held'])[:80]}  {when}")
        elif status == "active":
            where = (
                f"on {task['instanceId']}"
                if task.get("instanceId")
                else f"under {task.get('managerId') or 'the first free manager'}"
            )
            lines.append(f"{'started':9} {tid}  {where}  attempt {attempts}  {when}")
        elif status == "retrying":
            why = render.cell(task.get("error"))[:80]
            lines.append(f"{'retrying':9} {tid}  attempt {attempts} failed: {why}  {when}")
        elif status in FINAL:
            took = (
                f"took {render.duration(task['durationMs'] / 1000)}  "
                if task.get("durationMs") is not None
                else ""
            )
            text = task.get("result") if status == "completed" else _reason(task)
            lines.append(
                f"{status:9} {tid}  attempts={attempts}  {took}{when}  {render.cell(text)[:80]}"
            )
    return lines


def _overlap_news(st: dict[str, Any], told: set[str], at_s: float) -> list[str]:
    """One line per path that more than one task has now changed (worktree runs)."""
    lines = []
    for o in st.get("overlap", ()):
        if o["path"] not in told:
            told.add(o["path"])
            lines.append(f"{'overlap':9} {o['path']}  changed by {', '.join(o['taskIds'])}  "
                         f"(+{render.duration(at_s)})")  # fmt: skip
    return lines


def _progress_line(st: dict[str, Any]) -> str:
    total = len(st["tasks"]) or 1
    done = st["completedTasks"] + st["failedTasks"] + st["cancelledTasks"]
    width = 30
    filled = int(width * done / total)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  "
        f"active {st['activeSpecialists']} queued {st['queuedTasks']} "
        f"waiting {st.get('waitingTasks', 0)} "
        f"done {st['completedTasks']} failed {st['failedTasks']}"
    )


def finish(obj: Ctx, started: dict[str, Any], wait: bool) -> None:
    """After a run was started: print its id, or follow it to the end and print its table."""
    run_id = started["runId"]
    if not wait:
        total = started.get("total", started.get("totalTasks"))
        obj.emit(started, lambda r: f"{run_id} started ({total} tasks)")
        return
    show(obj, follow(obj, run_id))


def show(obj: Ctx, st: dict[str, Any]) -> None:
    """The final table of a finished run; exit 1 unless every task completed."""
    obj.emit(st, final_table)
    if st["completedTasks"] != len(st["tasks"]):
        raise click.exceptions.Exit(EXIT_FAILED)


def announce(obj: Ctx, started: dict[str, Any], wait: bool) -> None:
    """The run id first, on stderr, before anything else the command prints."""
    if wait and not obj.json:
        run_id = started["runId"]
        total = started.get("total", started.get("totalTasks"))
        click.echo(
            f"{run_id}: {total} tasks (Ctrl-C leaves it running; "
            f"tcmctl run {run_id} --follow follows it again)",
            err=True,
        )


@click.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@pass_ctx
def runs(obj: Ctx, limit: int) -> None:
    """List runs, newest first, with their tasks counted by state."""
    rows = obj.call("runs", {"limit": limit})
    now = time.time()
    for row in rows:
        row["state"] = "done" if row["done"] else "running"
        row["age"] = render.duration(max(0.0, now - row["createdAt"]))
    obj.emit(rows, lambda rs: render.table(rs, RUNS_COLUMNS))


@click.command(name="run")
@click.argument("run_id", shell_complete=complete_run_id)
@click.option("-f", "--follow", "follow_it", is_flag=True, help="Follow it to the end (--wait).")
@json_option
@pass_ctx
def run_(obj: Ctx, run_id: str, follow_it: bool) -> None:
    """Show one run: every task, a failed task's reason, what a waiting task waits on
    (--follow: until it ends)."""
    if follow_it:
        show(obj, follow(obj, run_id))
        return
    st = obj.call("getParallelStatus", {"runId": run_id})
    state = "done" if st["done"] else f"running ({st['activeSpecialists']} active, "
    waiting = f", {st['waitingTasks']} waiting" if st.get("waitingTasks") else ""
    state += "" if st["done"] else f"{st['queuedTasks']} queued{waiting})"
    obj.emit(st, lambda r: f"{run_id}  {state}\n{final_table(r)}")


COMMANDS = [runs, run_]
