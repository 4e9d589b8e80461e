"""Refusals in the user's words: flags rather than JSON fields, the tasks file named, and
`wait` that times out saying so with its own exit code."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_cli import run
from tests.support import DaemonProcess


def _tree(daemon: DaemonProcess, work: Path) -> None:
    for args in (["executive"], ["manager", "--parent", "exec_1"]):
        out = run(["spawn", *args, "--agent", "shell", "--workdir", str(work)], daemon.env)
        assert out.returncode == 0, out.stderr


def test_refusals_name_the_flag_not_the_json_field(daemon: DaemonProcess, tmp_path: Path) -> None:
    _tree(daemon, tmp_path)
    term = run(["terminate", "exec_1"], daemon.env)
    assert term.returncode == 4
    assert "use --cascade or --force" in term.stderr
    assert "cascade or force" not in term.stderr.replace("--cascade or --force", "")
    orphan = run(["spawn", "manager", "--agent", "shell", "--workdir", str(tmp_path)], daemon.env)
    assert "tcmctl: --parent: a manager needs an executive parent" in orphan.stderr
    too_long = run(["wait", "exec_1", "--timeout", "100000"], daemon.env)
    assert too_long.returncode == 2
    assert "'--timeout'" in too_long.stderr
    assert "timeoutMs" not in too_long.stderr


def test_refusals_of_a_files_values_name_the_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    _tree(daemon, tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "agent": "shell",
                "maxConcurrent": 0,
                "tasks": [
                    {"id": "a", "instruction": "true"},
                    {"id": "b", "instruction": "true", "bogus": 1},
                ],
            }
        )
    )
    out = run(["parallel", "mgr_1_1", str(bad)], daemon.env)
    assert out.returncode == 4
    assert out.stderr.startswith(f"tcmctl: {bad}: invalid params: maxConcurrent:"), out.stderr
    assert "tasks[1] (id 'b'): bogus: unexpected field" in out.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('agnet = "shell"\n[[tasks]]\nid = "a"\ninstruction = "true"\n')
    refused = run(["distribute", str(unknown)], daemon.env)
    assert refused.returncode == 2
    assert f"{unknown}: agnet: unexpected field" in refused.stderr
    assert run(["jobs", "--json"], daemon.env).stdout.strip() == "[]"  # nothing was queued


def test_wait_that_times_out_says_so_and_exits_5(daemon: DaemonProcess, tmp_path: Path) -> None:
    _tree(daemon, tmp_path)
    assert run(["send", "exec_1", "sleep 30"], daemon.env).returncode == 0
    out = run(["wait", "exec_1", "--timeout", "0.5"], daemon.env)
    assert out.returncode == 5
    assert "tcmctl: timed out after 0.5s (--timeout); still busy: exec_1" in out.stderr
    as_json = run(["wait", "exec_1", "--timeout", "0.2", "--json"], daemon.env)
    assert as_json.returncode == 5
    assert json.loads(as_json.stdout)["timedOut"] is True


def test_autostart_says_why_tcmd_refused_its_configuration(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "state", {"MAX_MANAGER_CONCURRENCY": "zero"})
    try:
        d.state_dir.mkdir(parents=True)
        (d.state_dir / "tcmd.log").write_text("tcmd: an old failure, not this one\n")
        out = run(["status"], d.env)
        assert out.returncode == 3
        assert (
            "tcmctl: tcmd exited with code 2 at start: invalid configuration: "
            "MAX_MANAGER_CONCURRENCY: must be an integer between 1 and 1000, got 'zero' "
            f"(log: {d.state_dir / 'tcmd.log'})"
        ) in out.stderr
        assert "old failure" not in out.stderr
        assert not d.socket.exists()
    finally:
        d.cleanup()
