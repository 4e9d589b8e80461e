"""`tcmctl daemon start|stop|status|logs`: manage the tcmd process itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import click

from tcmctl import render
from tcmctl.client import Client, DaemonUnreachable, start_daemon
from tcmctl.context import Ctx, json_option, pass_ctx
from tcmd.errors import TcmError
from tcmd.paths import socket_path_from_env, state_dir_from_env

STOP_TIMEOUT_S = 15.0


@click.group()
def daemon() -> None:
    """Start, stop and inspect the tcmd process."""


def _path(obj: Ctx) -> Path:
    return obj.socket_path or socket_path_from_env(os.environ)


@daemon.command()
@click.option("--foreground", is_flag=True, help="Run tcmd in this terminal (exec).")
@json_option
@pass_ctx
def start(obj: Ctx, foreground: bool) -> None:
    """Start tcmd unless it already runs."""
    path = _path(obj)
    if foreground:
        env = dict(os.environ, TCM_SOCKET=str(path))
        os.execve(sys.executable, [sys.executable, "-m", "tcmd"], env)  # noqa: S606
    try:
        st = Client(path, timeout_s=5).connect().call("status")
        obj.emit(
            {"started": False, "pid": st["pid"]}, lambda r: f"tcmd already running (pid {r['pid']})"
        )
        return
    except DaemonUnreachable:
        pass
    pid = start_daemon(os.environ, path)
    obj.emit({"started": True, "pid": pid}, lambda r: f"tcmd started (pid {r['pid']})")


@daemon.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also cancel every run, terminate every instance and stop the private tmux server.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (--all).")
@json_option
@pass_ctx
def stop(obj: Ctx, everything: bool, yes: bool) -> None:
    """Stop tcmd gracefully (SIGTERM) and wait until its socket is gone.

    Agents outlive tcmd (it adopts them again at its next start); --all ends them too."""
    path = _path(obj)
    try:
        client = Client(path, timeout_s=30).connect()
        st = client.call("status")
    except DaemonUnreachable:
        if everything:
            tmux = os.environ.get("TCM_TMUX_SOCKET", "tcm")
            if not yes:
                click.confirm(f"tcmd is not running. Stop the tmux server {tmux!r}?", abort=True)
            gone = {"stopped": False, "running": False, "tmuxServer": _kill_tmux(tmux)}
            obj.emit(gone, lambda r: f"tcmd is not running; {_tmux_said(tmux, r['tmuxServer'])}")
            return
        obj.emit({"stopped": False, "running": False}, lambda r: "tcmd is not running")
        return
    pid = st["pid"]
    out: dict[str, object] = {"stopped": True, "pid": pid}
    if everything:
        tmux = st.get("settings", {}).get("tmux_socket") or "tcm"
        out.update(_end_everything(client, pid, tmux, yes))
    client.close()
    _stop_pid(pid)
    if everything:
        out["tmuxServer"] = _kill_tmux(str(out["tmux"]))
    obj.emit(out, _stopped)


def _end_everything(client: Client, pid: int, tmux: str, yes: bool) -> dict[str, object]:
    """Cancel the unfinished runs, then terminate every instance, trees first."""
    live = client.call("list", {})
    runs = [r["runId"] for r in client.call("runs", {"limit": 10_000}) if not r["done"]]
    if not yes:
        click.confirm(
            f"This cancels {len(runs)} unfinished run(s), terminates {len(live)} instance(s), "
            f"stops tcmd (pid {pid}) and the tmux server {tmux!r}. Continue?",
            abort=True,
        )
    for run_id in runs:
        client.call("cancel", {"runId": run_id})
    ended: list[str] = []
    for inst in sorted(live, key=lambda r: (r["role"] != "executive", r["instanceId"])):
        if inst["instanceId"] in ended:
            continue
        with contextlib.suppress(TcmError):  # ended meanwhile (a cascade above it, say)
            done = client.call("terminate", {"instanceId": inst["instanceId"], "cascade": True})
            ended += done["terminated"]
    return {"cancelledRuns": runs, "terminated": ended, "tmux": tmux}


def _stop_pid(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.02)  # polling the pid to a deadline: no event tells us it is gone
    raise DaemonUnreachable(f"tcmd (pid {pid}) did not stop within {STOP_TIMEOUT_S}s")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (ended, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _kill_tmux(name: str) -> bool:
    """Stop the private tmux server; whether one was running."""
    done = subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True, check=False)
    return done.returncode == 0


def _tmux_said(name: str, killed: object) -> str:
    return f"tmux server {name!r} " + ("stopped" if killed else "was not running")


def _stopped(r: dict[str, Any]) -> str:
    lines = [f"tcmd stopped (pid {r['pid']})"]
    if "terminated" in r:
        lines.insert(0, "cancelled runs: " + (", ".join(r["cancelledRuns"]) or "none"))
        lines.insert(1, "terminated: " + (", ".join(r["terminated"]) or "none"))
        lines.append(_tmux_said(str(r["tmux"]), r["tmuxServer"]))
    return "\n".join(lines)


@daemon.command(name="install-service")
@click.option("--print", "dry_run", is_flag=True, help="Print the unit; write nothing.")
@json_option
@pass_ctx
def install_service(obj: Ctx, dry_run: bool) -> None:
    """Write the systemd user unit for this install (ExecStart: this install's tcmd)."""
    from tcmctl import service

    text = service.render(os.environ)
    path = service.unit_path(os.environ)
    if dry_run:
        obj.emit({"path": str(path), "unit": text, "written": False}, lambda r: r["unit"])
        return
    from tcmd.atomic import replace_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, text.encode(), 0o644)
    obj.emit(
        {"path": str(path), "unit": text, "written": True},
        lambda r: (
            f"wrote {r['path']}\nnext: systemctl --user daemon-reload && "
            "systemctl --user enable --now tcmd"
        ),
    )


@daemon.command(name="status")
@json_option
@pass_ctx
def daemon_status(obj: Ctx) -> None:
    """Show whether tcmd runs (never starts it; exit 3 when it does not)."""
    st = Client(_path(obj), timeout_s=5).connect().call("status")
    obj.emit(st, render.status)


@daemon.command()
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
def logs(lines: int, follow: bool) -> None:
    """Print the log of a tcmd started by tcmctl (under systemd: journalctl --user -u tcmd)."""
    path = state_dir_from_env(os.environ) / "tcmd.log"
    if not path.exists():
        raise click.ClickException(
            f"no log at {path}; under systemd use: journalctl --user -u tcmd"
        )
    with open(path, "rb") as fh:
        for line in deque(fh, maxlen=lines):
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        while follow:
            line = fh.readline()
            if line:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)  # tail -f: the file offers no event to wait on
