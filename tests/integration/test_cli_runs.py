"""Runs you can come back to: `runs`, `run RUN_ID [--follow]`, and what `--wait` tells."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.integration.test_cli import TCMCTL, run
from tests.support import DaemonProcess, wait_until


def _manager(daemon: DaemonProcess, work: Path) -> None:
    for args in (["executive"], ["manager", "--parent", "exec_1"]):
        out = run(["spawn", *args, "--agent", "shell", "--workdir", str(work)], daemon.env)
        assert out.returncode == 0, out.stderr


def _tasks(path: Path, tasks: list[dict[str, str]], attempts: int = 1) -> Path:
    path.write_text(
        json.dumps(
            {"agent": "shell", "retry": {"attempts": attempts, "baseMs": 10}, "tasks": tasks}
        )
    )
    return path


def test_wait_tells_the_run_id_first_starts_and_a_failures_reason(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    _manager(daemon, tmp_path)
    tasks = _tasks(
        tmp_path / "t.json",
        [
            {"id": "ok", "instruction": "sleep 1; echo fine"},
            {"id": "bad", "instruction": "echo 'disk on fire' >&2; exit 3"},
        ],
        attempts=2,
    )
    out = run(["parallel", "mgr_1_1", str(tasks), "--workdir", str(tmp_path)], daemon.env)
    assert out.returncode == 1
    err = out.stderr.splitlines()
    assert err[0].startswith("run_1: 2 tasks"), out.stderr
    assert "tcmctl run run_1 --follow" in err[0]
    started = [ln.split() for ln in err if ln.startswith("started")]
    assert [(f[1], f[3], f[5]) for f in started if f[1] == "ok"] == [("ok", "spec_1_1_1", "1")]
    assert all(f[-1].startswith("(+") for f in started)  # the time since the follow began
    done = next(ln for ln in err if ln.startswith("completed ok"))
    assert "attempts=1  took 1." in done
    bad_row = next(ln for ln in out.stdout.splitlines() if ln.startswith("bad "))
    assert "error: exit status 3: disk on fire" in bad_row  # the reason, in the table
    assert "1 completed, 1 failed, 0 cancelled" in out.stdout


def test_runs_lists_and_run_shows_and_follows(daemon: DaemonProcess, tmp_path: Path) -> None:
    _manager(daemon, tmp_path)
    quick = _tasks(tmp_path / "q.json", [{"id": "q", "instruction": "exit 4"}])
    assert run(["parallel", "mgr_1_1", str(quick)], daemon.env).returncode == 1
    slow = _tasks(tmp_path / "s.json", [{"id": "s", "instruction": "sleep 60"}])
    started = run(["parallel", "mgr_1_1", str(slow), "--no-wait", "--json"], daemon.env)
    assert json.loads(started.stdout)["runId"] == "run_2"
    rows = json.loads(run(["runs", "--json"], daemon.env).stdout)
    assert [(r["runId"], r["done"], r["failed"]) for r in rows] == [
        ("run_2", False, 0),
        ("run_1", True, 1),
    ]
    table = run(["runs"], daemon.env).stdout.splitlines()
    assert table[0].split()[:2] == ["RUNID", "STATE"]
    assert table[1].split()[:2] == ["run_2", "running"]
    assert table[2].split()[:2] == ["run_1", "done"]
    shown = run(["run", "run_1"], daemon.env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("run_1  done")
    assert "error: exit status 4" in shown.stdout
    followed = run(["run", "run_1", "--follow"], daemon.env)  # done already: its table, exit 1
    assert followed.returncode == 1
    assert "0 completed, 1 failed" in followed.stdout
    assert run(["run", "run_99"], daemon.env).returncode == 4
    assert run(["parallel", "mgr_1_1", str(quick)], daemon.env).returncode == 1  # run_3: done
    newest = daemon.call("runs", {"limit": 2})
    assert [r["runId"] for r in newest] == ["run_3", "run_2"]
    top = daemon.call("runs", {"limit": 1, "unfinishedFirst": True})  # what top asks for
    assert [(r["runId"], r["done"]) for r in top] == [("run_2", False)]
    run(["cancel", "run_2"], daemon.env)


def test_ctrl_c_leaves_the_run_going_and_says_how_to_come_back(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    _manager(daemon, tmp_path)
    gate = tmp_path / "gate"
    tasks = _tasks(
        tmp_path / "t.json",
        [{"id": "g", "instruction": f"while [ ! -e {gate} ]; do sleep 0.05; done; echo through"}],
    )
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*TCMCTL, "parallel", "mgr_1_1", str(tasks)],
            env=daemon.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(lambda: "started   g" in err_path.read_text(), 20, what="the task starting")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)  # reaped here, not left to warn in whichever test collects it
    said = err_path.read_text()
    assert "run_1 goes on" in said
    assert "tcmctl run run_1 --follow" in said
    assert "tcmctl cancel run_1" in said
    gate.touch()
    back = run(["run", "run_1", "--follow"], daemon.env)
    assert back.returncode == 0, back.stderr
    assert "1 completed, 0 failed, 0 cancelled" in back.stdout


def test_run_shows_what_a_waiting_task_waits_on(daemon: DaemonProcess, tmp_path: Path) -> None:
    _manager(daemon, tmp_path)
    graph = tmp_path / "g.json"
    graph.write_text(
        json.dumps(
            {
                "agent": "shell",
                "tasks": [
                    {"id": "first", "instruction": "sleep 60"},
                    {"id": "second", "instruction": "true", "dependsOn": ["first"]},
                ],
            }
        )
    )
    out = run(["parallel", "mgr_1_1", str(graph), "--no-wait"], daemon.env)
    assert out.returncode == 0, out.stderr
    shown = wait_until(
        lambda: "active" in (o := run(["run", "run_1"], daemon.env).stdout) and o, 15
    )
    second = next(ln for ln in shown.splitlines() if ln.startswith("second "))
    assert "waiting" in second and "waiting on first" in second
    assert "1 waiting)" in shown.splitlines()[0]
    assert run(["cancel", "run_1"], daemon.env).returncode == 0
