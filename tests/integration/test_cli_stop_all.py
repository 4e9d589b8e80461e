"""`tcmctl daemon stop --all`: every run cancelled, every instance ended, tcmd and its
tmux server stopped; asked first unless --yes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.integration.test_cli import run
from tests.support import DaemonProcess, wait_until


def _tmux_runs(daemon: DaemonProcess) -> bool:
    done = subprocess.run(
        ["tmux", "-L", daemon.tmux_socket, "list-sessions"], capture_output=True, check=False
    )
    return done.returncode == 0


def test_stop_all_asks_then_ends_everything(daemon: DaemonProcess, tmp_path: Path) -> None:
    env = daemon.env
    for args in (["executive"], ["manager", "--parent", "exec_1"]):
        assert run(["spawn", *args, "--agent", "shell", "--workdir", str(tmp_path)], env)
    tasks = tmp_path / "t.json"
    tasks.write_text(
        json.dumps({"agent": "shell", "tasks": [{"id": "s", "instruction": "sleep 60"}]})
    )
    assert run(["parallel", "mgr_1_1", str(tasks), "--no-wait"], env).returncode == 0
    wait_until(
        lambda: any(r["role"] == "specialist" for r in daemon.call("list")), 15, what="a specialist"
    )
    declined = run(["daemon", "stop", "--all"], env, stdin="n\n")
    assert declined.returncode == 1
    assert "terminates 3 instance(s)" in declined.stdout
    assert "cancels 1 unfinished run(s)" in declined.stdout
    assert len(daemon.call("list")) == 3  # nothing was touched
    out = run(["daemon", "stop", "--all", "--yes", "--json"], env)
    assert out.returncode == 0, out.stderr
    said = json.loads(out.stdout)
    assert said["cancelledRuns"] == ["run_1"]
    assert sorted(said["terminated"]) == ["exec_1", "mgr_1_1", "spec_1_1_1"]
    assert said["tmuxServer"] is True
    assert not daemon.socket.exists()
    assert not _tmux_runs(daemon)
    assert daemon.proc is not None
    assert daemon.proc.wait(5) == 0
    daemon.start()  # nothing comes back at the next start
    assert daemon.call("list") == []
    assert {j["state"] for j in daemon.call("jobs", {})} == {"cancelled"}
    again = run(["daemon", "stop", "--all", "--yes"], env)
    assert again.returncode == 0
    assert "tcmd stopped" in again.stdout
    assert not _tmux_runs(daemon)
    gone = run(["daemon", "stop", "--all", "--yes"], env)  # never starts tcmd to stop it
    assert gone.returncode == 0
    assert gone.stdout.strip() == (
        f"tcmd is not running; tmux server {daemon.tmux_socket!r} was not running"
    )
