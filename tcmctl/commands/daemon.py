"""`tcmctl daemon start|stop|status|logs`: manage the tcmd process itself."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from pathlib import Path

import click

from tcmctl import render
from tcmctl.client import Client, DaemonUnreachable, start_daemon
from tcmctl.context import Ctx, json_option, pass_ctx
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
@json_option
@pass_ctx
def stop(obj: Ctx) -> None:
    """Stop tcmd gracefully (SIGTERM) and wait until its socket is gone."""
    path = _path(obj)
    try:
        pid = Client(path, timeout_s=5).connect().call("status")["pid"]
    except DaemonUnreachable:
        obj.emit({"stopped": False, "running": False}, lambda r: "tcmd is not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            obj.emit({"stopped": True, "pid": pid}, lambda r: f"tcmd stopped (pid {r['pid']})")
            return
        time.sleep(0.02)  # polling the pid to a deadline: no event tells us it is gone
    raise DaemonUnreachable(f"tcmd (pid {pid}) did not stop within {STOP_TIMEOUT_S}s")


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
