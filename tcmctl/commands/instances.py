"""Instance commands: spawn, send, read, list, terminate, restart, wait, attach."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from tcmctl import render
from tcmctl.completion import complete_instance_id
from tcmctl.context import EXIT_FAILED, EXIT_TIMEOUT, Ctx, json_option, pass_ctx

ROLES = click.Choice(["executive", "manager", "specialist"])
SPAWN_FLAGS = {
    "workDir": "--workdir",
    "context": "--context",
    "parentId": "--parent",
    "agent": "--agent",
    "model": "--model",
    "wait": "--no-wait",
}
LIST_COLUMNS = [
    "instanceId",
    "role",
    "parentId",
    "status",
    "agent",
    "memoryMb",
    "load",
    "workDir",
    "lastResult",
]


@click.command()
@click.argument("role", type=ROLES)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Directory the agent works in.",
)
@click.option("--context", default="", help="What the instance is for (its assignment).")
@click.option(
    "--parent",
    "parent_id",
    help="Parent instance id (managers: an executive).",
    shell_complete=complete_instance_id,
)
@click.option("--agent", default="claude", show_default=True, help="Agent profile (claude, shell).")
@click.option("--model", help="Model name passed to the agent.")
@click.option("--no-wait", is_flag=True, help="Return at once instead of when it is ready.")
@json_option
@pass_ctx
def spawn(
    obj: Ctx,
    role: str,
    workdir: Path,
    context: str,
    parent_id: str | None,
    agent: str,
    model: str | None,
    no_wait: bool,
) -> None:
    """Start an agent instance in tmux."""
    result = obj.call(
        "spawn",
        {
            "role": role,
            "workDir": str(workdir.resolve()),
            "context": context,
            "parentId": parent_id,
            "agent": agent,
            "model": model,
            "wait": not no_wait,
        },
        flags=SPAWN_FLAGS,
    )
    obj.emit(
        result,
        lambda r: (
            f"{r['instanceId']}  {r['role']}  {r['status']}  "
            f"(watch it: tcmctl attach {r['instanceId']} --ro)"
        ),
    )
    if result["status"] in ("exited", "errored", "terminated"):  # it did not start
        if result.get("lastError"):
            click.echo(f"tcmctl: {result['instanceId']}: {result['lastError']}", err=True)
        raise click.exceptions.Exit(EXIT_FAILED)


@click.command()
@click.argument("instance_id", shell_complete=complete_instance_id)
@click.argument("text")
@json_option
@pass_ctx
def send(obj: Ctx, instance_id: str, text: str) -> None:
    """Send TEXT as a prompt ('-' reads it from stdin)."""
    if text == "-":
        text = sys.stdin.read()
    result = obj.call("send", {"instanceId": instance_id, "text": text})
    obj.emit(result, _render_send)
    if not result["delivered"] and not result["queued"]:
        raise click.exceptions.Exit(EXIT_FAILED)


def _render_send(r: dict[str, Any]) -> str:
    if r["delivered"]:
        return f"delivered to {r['instanceId']} ({r['status']})"
    if r["queued"]:
        return f"queued for {r['instanceId']} at position {r.get('position')} ({r['status']})"
    return f"NOT delivered to {r['instanceId']} ({r['status']})"


@click.command()
@click.argument("instance_id", shell_complete=complete_instance_id)
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(1, 50_000))
@json_option
@pass_ctx
def read(obj: Ctx, instance_id: str, lines: int) -> None:
    """Show the last lines of an instance's screen and its last result."""
    out = obj.call("read", {"instanceId": instance_id, "lines": lines}, flags={"lines": "--lines"})
    obj.emit(out, _render_read)


def _render_read(r: dict[str, Any]) -> str:
    head = f"── {r['instanceId']} ({r['status']})"
    if r.get("lastError"):
        head += f"  last error: {r['lastError']}"
    return f"{head}\n{r['output'].rstrip()}"


@click.command(name="list")
@click.option("--role", type=ROLES)
@click.option("--parent", "parent_id", shell_complete=complete_instance_id)
@click.option("--all", "include_terminated", is_flag=True, help="Include terminated ones.")
@click.option("--all-nodes", is_flag=True, help="Every node sharing this Redis, with its node.")
@json_option
@pass_ctx
def list_(
    obj: Ctx, role: str | None, parent_id: str | None, include_terminated: bool, all_nodes: bool
) -> None:
    """List instances."""
    rows = obj.call(
        "list",
        {
            "role": role,
            "parentId": parent_id,
            "includeTerminated": include_terminated or None,
            "allNodes": all_nodes or None,
        },
        flags={
            "role": "--role",
            "parentId": "--parent",
            "includeTerminated": "--all",
            "allNodes": "--all-nodes",
        },
    )
    columns = [*LIST_COLUMNS, "node", "nodeAlive"] if all_nodes else LIST_COLUMNS
    obj.emit(rows, lambda rs: render.table([_with_load(r) for r in rs], columns, max_width=40))


def _with_load(row: dict[str, Any]) -> dict[str, Any]:
    """A manager's parallelExecution as one cell: active/limit, queued, done, failed."""
    pe = row.get("parallelExecution")
    if not pe:
        return row
    load = (
        f"{pe['active']}/{pe['maxConcurrent']} active, {pe['queued']} queued, "
        f"{pe['completed']} done, {pe['failed']} failed"
    )
    return {**row, "load": load}


@click.command()
@click.argument("instance_id", shell_complete=complete_instance_id)
@click.option("--cascade", is_flag=True, help="End the whole subtree, children first.")
@click.option("--force", is_flag=True, help="End it even though it has live children.")
@json_option
@pass_ctx
def terminate(obj: Ctx, instance_id: str, cascade: bool, force: bool) -> None:
    """End an instance."""
    result = obj.call(
        "terminate",
        {"instanceId": instance_id, "cascade": cascade or None, "force": force or None},
        flags={"cascade": "--cascade", "force": "--force"},
    )
    obj.emit(result, _terminated)


def _terminated(r: dict[str, Any]) -> str:
    """What ended, and each prompt that was dropped with it."""
    lines = ["terminated " + ", ".join(r["terminated"])]
    for d in r.get("dropped", []):
        if d["running"] is not None:
            lines.append(f"  {d['instanceId']}: dropped running prompt {d['running']!r}")
        lines += [f"  {d['instanceId']}: dropped queued prompt {q!r}" for q in d["queued"]]
    return "\n".join(lines)


@click.command()
@click.argument("instance_id", shell_complete=complete_instance_id)
@json_option
@pass_ctx
def restart(obj: Ctx, instance_id: str) -> None:
    """Relaunch an instance's agent (resuming its conversation when it can)."""
    result = obj.call("restart", {"instanceId": instance_id})
    obj.emit(
        result,
        lambda r: f"{r['instanceId']} {r['status']}" + (" (resumed)" if r["resumed"] else ""),
    )


@click.command()
@click.argument("instance_ids", nargs=-1, required=True, shell_complete=complete_instance_id)
@click.option("--any", "any_idle", is_flag=True, help="Return when the first one is idle.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0, 86_400),
    default=600,
    show_default=True,
    help="Seconds to wait at most.",
)
@json_option
@pass_ctx
def wait(obj: Ctx, instance_ids: tuple[str, ...], any_idle: bool, timeout_s: float) -> None:
    """Block until the instances finish their turn (exit 5 when --timeout passes first)."""
    result = obj.call(
        "wait",
        {
            "instanceIds": list(instance_ids),
            "until": "any-idle" if any_idle else "idle",
            "timeoutMs": int(timeout_s * 1000),
        },
        flags={"timeoutMs": "--timeout", "until": "--any", "instanceIds": "INSTANCE_IDS"},
        timeout_s=timeout_s + 30,
    )
    obj.emit(
        result,
        lambda r: render.table(r["instances"], ["instanceId", "status", "idle", "lastResult"]),
    )
    if result["timedOut"]:
        busy = [r["instanceId"] for r in result["instances"] if not r.get("idle")]
        click.echo(
            f"tcmctl: timed out after {render.cell(timeout_s)}s (--timeout); "
            f"still busy: {', '.join(busy) or '-'}",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_TIMEOUT)


@click.command()
@click.argument("instance_id", shell_complete=complete_instance_id)
@click.option("--ro", is_flag=True, help="Read-only: watch without typing into it.")
@pass_ctx
def attach(obj: Ctx, instance_id: str, ro: bool) -> None:
    """Attach this terminal to an instance's tmux session (detach: C-b d)."""
    st = obj.call("status")
    obj.call("read", {"instanceId": instance_id, "lines": 1})  # exists, and we may see it
    # an instance's status has no settings: then the server named where tcmctl runs
    name = st.get("settings", {}).get("tmux_socket") or os.environ.get("TCM_TMUX_SOCKET", "tcm")
    argv = ["tmux", "-L", name, "attach-session", "-t", f"={instance_id}"]
    if ro:
        argv.append("-r")
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}  # allow attaching from tmux
    os.execvpe("tmux", argv, env)  # noqa: S606


@click.command()
@click.argument("instance_id", required=False, shell_complete=complete_instance_id)
@json_option
@pass_ctx
def health(obj: Ctx, instance_id: str | None) -> None:
    """Health of the instances: score, verdict, reasons, recoveries."""
    out = obj.call("health", {"instanceId": instance_id})
    obj.emit(
        out,
        lambda r: (
            render.table(
                [{**row, "reasons": "; ".join(row["reasons"])} for row in r["instances"]],
                ["instanceId", "score", "verdict", "memoryMb", "recoveries", "reasons"],
                max_width=70,
            )
            + f"\n{r['healthy']}/{r['total']} healthy, {r['recovering']} recovering, "
            f"{r['dead']} dead; last sweep {r['lastSweepMs']} ms"
            + "".join(f"; {p} estimate {e['estimateMb']:.0f} MB"
                      for p, e in r.get("memoryEstimates", {}).items())
        ),
    )


COMMANDS = [spawn, send, read, list_, terminate, restart, wait, attach, health]
