"""tcmctl as a user runs it: real processes, exit codes, output, autostart."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import DaemonProcess, wait_until

TCMCTL = [sys.executable, "-m", "tcmctl"]


def run(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        TCMCTL + args, env=env, capture_output=True, text=True, timeout=30, input=stdin, check=False
    )


def test_status_json_and_table(module_daemon: DaemonProcess) -> None:
    out = run(["status", "--json"], module_daemon.env)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["pid"] == module_daemon.proc.pid  # type: ignore[union-attr]
    table = run(["status"], module_daemon.env)
    assert table.returncode == 0
    assert f"pid {st['pid']}" in table.stdout
    assert "jsonfile ok" in table.stdout


def test_exit_codes(module_daemon: DaemonProcess, tmp_path: Path) -> None:
    assert run(["no-such-command"], module_daemon.env).returncode == 2
    refused = run(["call", "describe", '{"name": 3}'], module_daemon.env)
    assert refused.returncode == 4
    assert "name:" in refused.stderr
    assert "-32602" in refused.stderr
    gone = dict(module_daemon.env, TCM_SOCKET=str(tmp_path / "none.sock"))
    unreachable = run(["--no-autostart", "status"], gone)
    assert unreachable.returncode == 3
    assert "not running" in unreachable.stderr
    assert run(["call", "ping", "not json"], module_daemon.env).returncode == 2


def test_call_reads_params_from_stdin(module_daemon: DaemonProcess) -> None:
    out = run(["call", "describe", "-"], module_daemon.env, stdin='{"name": "status"}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == "status"


def test_autostart_then_daemon_stop(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "state")
    env = d.env
    try:
        out = run(["status", "--json"], env)
        assert out.returncode == 0, out.stderr
        assert "started tcmd" in out.stderr
        pid = json.loads(out.stdout)["pid"]
        again = run(["status", "--json"], env)
        assert "started" not in again.stderr
        assert json.loads(again.stdout)["pid"] == pid
        assert run(["daemon", "status"], env).returncode == 0
        stop = run(["daemon", "stop", "--json"], env)
        assert stop.returncode == 0, stop.stderr
        assert json.loads(stop.stdout) == {"stopped": True, "pid": pid}
        assert not d.socket.exists()
        assert run(["daemon", "status"], env).returncode == 3
        logs = run(["daemon", "logs", "-n", "5"], env)
        assert "tcmd stopped" in logs.stdout
    finally:
        run(["daemon", "stop"], env)
        d.cleanup()


def test_no_autostart_from_inside_an_instance(tmp_path: Path) -> None:
    """An agent's own tcmctl call must not bring back a daemon the operator stopped."""
    d = DaemonProcess(tmp_path / "state")
    try:
        inside = dict(d.env, TCM_INSTANCE_TOKEN="tok-of-a-live-instance")
        out = run(["list"], inside)
        assert out.returncode == 3, out.stderr
        assert "not running" in out.stderr
        assert not d.socket.exists()  # nothing was started
    finally:
        d.cleanup()


def test_concurrent_autostarts_make_one_daemon(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "state")
    try:
        procs = [
            subprocess.Popen(
                [*TCMCTL, "status", "--json"],
                env=d.env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(4)
        ]
        results = [p.communicate(timeout=30) for p in procs]
        assert all(p.returncode == 0 for p in procs), results
        assert len({json.loads(out)["pid"] for out, _ in results}) == 1
    finally:
        run(["daemon", "stop"], d.env)
        d.cleanup()


def test_tcmctl_does_not_import_heavy_modules(tmp_path: Path) -> None:
    code = (
        "import sys; from tcmctl import cli; "
        "heavy = ('redis', 'mcp', 'uvloop', 'pydantic', 'structlog'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_hook_exits_fast_and_zero_when_daemon_is_down(tmp_path: Path) -> None:
    env = dict(os.environ, TCM_SOCKET=str(tmp_path / "absent.sock"))
    out = subprocess.run(
        [*TCMCTL, "hook"],
        env=env,
        input=b'{"hook_event_name":"Stop"}',
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert out.returncode == 0
    assert out.stdout == b""
    wait_until(lambda: True)


def test_instance_commands_end_to_end(daemon: DaemonProcess, tmp_path: Path) -> None:
    env = daemon.env
    spawned = run(
        [
            "spawn",
            "executive",
            "--agent",
            "shell",
            "--workdir",
            str(tmp_path),
            "--context",
            "cli test",
            "--json",
        ],
        env,
    )
    assert spawned.returncode == 0, spawned.stderr
    assert json.loads(spawned.stdout)["instanceId"] == "exec_1"
    sent = run(["send", "exec_1", "-"], env, stdin="echo 'from stdin' $((6*7))")
    assert sent.returncode == 0, sent.stderr
    assert "delivered to exec_1" in sent.stdout
    waited = run(["wait", "exec_1", "--timeout", "20", "--json"], env)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["instances"][0]["lastResult"] == "from stdin 42"
    read = run(["read", "exec_1", "-n", "10"], env)
    assert "── exec_1 (ready)" in read.stdout
    assert "from stdin 42" in read.stdout
    listed = json.loads(run(["list", "--json"], env).stdout)
    assert [(r["instanceId"], r["status"]) for r in listed] == [("exec_1", "ready")]
    table = run(["list", "--role", "executive"], env).stdout
    assert table.splitlines()[0].split()[:3] == ["INSTANCEID", "ROLE", "PARENTID"]
    refused = run(["spawn", "manager", "--agent", "shell", "--workdir", str(tmp_path)], env)
    assert refused.returncode == 4
    assert "--parent: a manager needs an executive parent" in refused.stderr
    assert run(["attach", "exec_9"], env).returncode == 4
    restarted = run(["restart", "exec_1", "--json"], env)
    assert json.loads(restarted.stdout)["status"] == "ready"
    term = run(["terminate", "exec_1"], env)
    assert term.returncode == 0
    assert term.stdout.strip() == "terminated exec_1"
    gone = run(["send", "exec_1", "echo no"], env)
    assert gone.returncode == 4
    assert "terminated" in gone.stderr


REPO = Path(__file__).resolve().parents[2]


def test_distribute_quickstart_waits_and_reports(daemon: DaemonProcess, tmp_path: Path) -> None:
    out = run(
        [
            "distribute",
            str(REPO / "examples" / "quickstart.toml"),
            "--workdir",
            str(tmp_path),
            "--wait",
        ],
        daemon.env,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "12 completed, 0 failed, 0 cancelled" in out.stdout
    finished = [ln for ln in out.stderr.splitlines() if ln.startswith("completed")]
    assert len(finished) == 12  # one line per finished task when not on a terminal
    assert any(ln.split()[1] == "t07" and "attempts=2" in ln for ln in finished)
    managers = list(json.loads(run(["list", "--json", "--role", "manager"], daemon.env).stdout))
    assert len(managers) == 2
    assert sum(m["parallelExecution"]["completed"] for m in managers) == 12
    jobs = json.loads(run(["jobs", "--json"], daemon.env).stdout)
    assert {j["state"] for j in jobs} == {"completed"}
    stats = json.loads(run(["queue", "--json"], daemon.env).stdout)
    assert stats["byState"]["completed"] == 12
    prom = run(["metrics", "--prometheus"], daemon.env).stdout
    assert re.search(r'^tcm_tasks_total\{node="[^"]+",outcome="completed"\} 12\.0$', prom, re.M)
    assert re.search(r'^tcm_task_duration_seconds_count\{node="[^"]+"\} 12\.0$', prom, re.M)
    events = [
        json.loads(line) for line in run(["events", "--json"], daemon.env).stdout.splitlines()
    ]
    assert sum(e["kind"] == "job.state" and e["state"] == "completed" for e in events) == 12


def test_parallel_failure_exit_code_cancel_and_bad_files(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    env = daemon.env
    run(["spawn", "executive", "--agent", "shell", "--workdir", str(tmp_path)], env)
    run(
        ["spawn", "manager", "--agent", "shell", "--workdir", str(tmp_path), "--parent", "exec_1"],
        env,
    )
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        '{"id": "ok", "instruction": "echo fine"}\n{"id": "bad", "instruction": "exit 3"}\n'
    )
    failing = tmp_path / "opts.json"
    failing.write_text(
        json.dumps(
            {
                "agent": "shell",
                "retry": {"attempts": 1},
                "tasks": [
                    {"id": "ok", "instruction": "echo fine"},
                    {"id": "bad", "instruction": "exit 3"},
                ],
            }
        )
    )
    out = run(["parallel", "mgr_1_1", str(failing), "--workdir", str(tmp_path)], env)
    assert out.returncode == 1
    assert "1 completed, 1 failed" in out.stdout
    slow = tmp_path / "slow.json"
    slow.write_text(
        json.dumps(
            {
                "agent": "shell",
                "tasks": [{"id": f"s{i}", "instruction": "sleep 30"} for i in range(3)],
            }
        )
    )
    started = json.loads(run(["parallel", "mgr_1_1", str(slow), "--no-wait", "--json"], env).stdout)
    cancelled = run(["cancel", started["runId"], "--json"], env)
    assert len(json.loads(cancelled.stdout)["cancelled"]) == 3
    broken = tmp_path / "broken.toml"
    broken.write_text('[[tasks]]\nid = "x"\n')
    bad = run(["distribute", str(broken)], env)
    assert bad.returncode == 2
    assert "instruction" in bad.stderr
    assert run(["parallel", "mgr_1_1", str(tasks), "--agent", "nope"], env).returncode == 4


def test_health_command(daemon: DaemonProcess, tmp_path: Path) -> None:
    run(["spawn", "executive", "--agent", "shell", "--workdir", str(tmp_path)], daemon.env)
    out = wait_until(
        lambda: (
            (r := run(["health", "--json"], daemon.env)).returncode == 0
            and json.loads(r.stdout)["total"] == 1
            and r
        ),
        15,
        what="a health sweep",
    )
    row = json.loads(out.stdout)["instances"][0]
    assert (row["instanceId"], row["verdict"], row["score"]) == ("exec_1", "healthy", 100)
    table = run(["health"], daemon.env).stdout
    assert "1/1 healthy" in table
