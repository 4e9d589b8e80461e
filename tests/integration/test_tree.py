"""`tcmctl tree`: the instance tree printed once, as text and as nested JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import DaemonProcess, wait_until

TCMCTL = [sys.executable, "-m", "tcmctl"]


def tcmctl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        TCMCTL + args, env=env, capture_output=True, text=True, timeout=30, check=False
    )


def start_team(daemon: DaemonProcess, work: Path) -> str:
    """exec_1 → mgr_1_1 → one specialist busy with task `nap` (run id returned)."""
    shell = {"workDir": str(work), "agent": "shell", "context": "t"}
    daemon.call("spawn", {"role": "executive", **shell})
    daemon.call("spawn", {"role": "manager", "parentId": "exec_1", **shell})
    run = daemon.call(
        "executeParallel",
        {
            "managerId": "mgr_1_1",
            "agent": "shell",
            "workDir": str(work),
            "wait": False,
            "tasks": [{"id": "nap", "instruction": "sleep 30"}],
        },
    )
    wait_until(
        lambda: any(r["status"] == "busy" for r in daemon.call("list", {"role": "specialist"})),
        20,
        what="the specialist busy with its task",
    )
    return str(run["runId"])


def test_tree_prints_the_hierarchy_with_state_health_and_task(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    run_id = start_team(daemon, tmp_path)
    out = tcmctl(["tree"], daemon.env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["INSTANCE", "STATE", "IN", "STATE"]
    by_id = {ln.split()[0]: ln for ln in lines[1:]}
    assert list(by_id) == ["exec_1", "mgr_1_1", "spec_1_1_1"]
    # the hierarchy is in the indentation: each level two spaces further in
    assert [len(ln) - len(ln.lstrip()) for ln in lines[1:]] == [0, 2, 4]
    spec = by_id["spec_1_1_1"].split()
    assert spec[1:2] == ["busy"]
    assert spec[2].endswith("s")  # time in state
    assert "nap" in by_id["spec_1_1_1"] and run_id in by_id["spec_1_1_1"]
    assert "1/3 active" in by_id["mgr_1_1"]
    wait_until(
        lambda: "healthy" in tcmctl(["tree"], daemon.env).stdout, 15, what="a health verdict"
    )


def test_tree_json_is_nested(daemon: DaemonProcess, tmp_path: Path) -> None:
    run_id = start_team(daemon, tmp_path)
    out = tcmctl(["tree", "--json"], daemon.env)
    assert out.returncode == 0, out.stderr
    roots: list[dict[str, Any]] = json.loads(out.stdout)
    assert [r["instanceId"] for r in roots] == ["exec_1"]
    [mgr] = roots[0]["children"]
    assert mgr["instanceId"] == "mgr_1_1"
    assert mgr["parallelExecution"]["active"] == 1
    [spec] = mgr["children"]
    assert spec["instanceId"] == "spec_1_1_1"
    assert spec["status"] == "busy"
    assert spec["children"] == []
    assert spec["task"]["taskId"] == "nap"
    assert spec["task"]["runId"] == run_id
    assert isinstance(spec["timeInStateS"], float) and spec["timeInStateS"] >= 0
    assert "verdict" in spec
    assert spec["stateSince"] >= spec["created"]


def test_tree_without_instances(daemon: DaemonProcess) -> None:
    out = tcmctl(["tree"], daemon.env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(no instances)"
    assert json.loads(tcmctl(["tree", "--json"], daemon.env).stdout) == []


def test_textual_is_imported_by_top_only() -> None:
    """Every other command starts as fast as before: Textual is not even imported."""
    probe = (
        "import sys\n"
        "from tcmctl.cli import run\n"
        "for argv in (['list', '--help'], ['tree', '--help'], ['top', '--help']):\n"
        "    try:\n"
        "        run(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'rich'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
