"""An agent that cannot start: a command not found is refused before anything is made; an
agent that ends in its first seconds shows what it last wrote as its lastError."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tcmd.errors import InvalidParams
from tcmd.tmux_control import CONTROL_SESSION
from tests.integration.test_cli import run
from tests.support import DaemonProcess, wait_until


def test_a_missing_claude_command_is_refused_and_leaves_nothing(
    daemon_factory: type[DaemonProcess], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    missing = str(tmp_path / "no-such-claude")
    daemon = daemon_factory(
        extra_env={"HOME": str(home), "TCM_CLAUDE_COMMAND": f"{missing} --flag"}
    ).start()
    out = run(["spawn", "executive", "--workdir", str(tmp_path)], daemon.env)
    assert out.returncode == 4
    assert "[-32602]" in out.stderr
    assert repr(missing) in out.stderr
    assert "TCM_CLAUDE_COMMAND" in out.stderr
    with pytest.raises(InvalidParams) as info:
        daemon.call(
            "spawn",
            {"role": "executive", "workDir": str(tmp_path), "agent": "claude", "context": "x"},
        )
    assert info.value.data == {"command": missing, "variable": "TCM_CLAUDE_COMMAND"}
    assert daemon.call("list", {"includeTerminated": True}) == []  # no instance, not even ended
    assert not (home / ".claude.json").exists()  # nothing written to Claude's config
    sessions = subprocess.run(
        ["tmux", "-L", daemon.tmux_socket, "list-sessions", "-F", "#{session_name}"],
        capture_output=True,
        text=True,
        check=False,  # no session at all: tmux says so and exits 1
    ).stdout.split()
    assert [s for s in sessions if s != CONTROL_SESSION] == []  # tcmd's control client's own
    tasks = tmp_path / "t.json"
    tasks.write_text(json.dumps({"managers": 1, "tasks": [{"id": "a", "instruction": "x"}]}))
    refused = run(["distribute", str(tasks), "--workdir", str(tmp_path)], daemon.env)
    assert refused.returncode == 4
    assert "TCM_CLAUDE_COMMAND" in refused.stderr
    assert daemon.call("list", {"includeTerminated": True}) == []
    shell = run(["spawn", "executive", "--agent", "shell", "--workdir", str(tmp_path)], daemon.env)
    assert shell.returncode == 0, shell.stderr  # other agents are not affected
    assert shell.stdout.startswith("exec_1 ")  # and no id was used up by the refusals


def test_an_agent_that_exits_at_once_shows_its_last_lines(
    daemon_factory: type[DaemonProcess], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    broken = tmp_path / "broken-claude"
    broken.write_text(
        "#!/bin/sh\necho 'starting up'\necho 'error: no API key configured' >&2\nexit 2\n"
    )
    broken.chmod(0o755)
    daemon = daemon_factory(
        extra_env={"HOME": str(home), "TCM_CLAUDE_COMMAND": str(broken)}
    ).start()
    out = run(["spawn", "executive", "--workdir", str(tmp_path), "--no-wait"], daemon.env)
    assert out.returncode == 0, out.stderr

    def ended() -> dict[str, object] | None:
        [row] = daemon.call("list", {"includeTerminated": True})
        return row if row["status"] == "exited" else None

    row = wait_until(ended, 15, what="the agent to exit")
    error = str(row["lastError"])
    assert error.startswith("exited (status 2)"), error
    assert error.endswith("starting up ⏎ error: no API key configured"), error
    read = run(["read", "exec_1"], daemon.env)
    assert "last error: exited (status 2)" in read.stdout
    waited = run(["spawn", "executive", "--workdir", str(tmp_path)], daemon.env)
    assert waited.returncode == 1  # spawn that waits says the agent did not start, and why
    assert waited.stdout.startswith("exec_2  executive  exited")
    assert "tcmctl: exec_2: exited (status 2)" in waited.stderr
    assert "error: no API key configured" in waited.stderr
