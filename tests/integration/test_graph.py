"""Task graphs end to end: real tcmd, real tmux, shell specialists.

Order and overlap are measured from the tasks' own timestamps (``timed``/``intervals``),
not taken from the daemon's word.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tcmd.errors import InvalidParams
from tests.integration.test_parallel import intervals, peak, run_parallel, team, timed
from tests.redis_server import RedisServer
from tests.support import AgentDaemon, DaemonProcess, wait_until

ONCE = {"attempts": 1, "baseMs": 0, "capMs": 0}


def finished(agents: AgentDaemon, run_id: str, timeout_s: float = 30) -> dict[str, Any]:
    status: dict[str, Any] = wait_until(
        lambda: (s := agents.call("getParallelStatus", {"runId": run_id}))["done"] and s,
        timeout_s,
        what=f"{run_id} to finish",
    )
    return status


def states(agents: AgentDaemon, run_id: str) -> dict[str, str]:
    status = agents.call("getParallelStatus", {"runId": run_id})
    return {t["taskId"]: t["status"] for t in status["tasks"]}


def starts(log: Path) -> Counter[str]:
    return Counter(line.split()[1] for line in log.read_text().splitlines() if line[0] == "S")


REFUSED = [
    ([{"id": "a", "instruction": "true", "dependsOn": ["zz"]}], r"tasks\[0\]\.dependsOn: .*'zz'"),
    ([{"id": "a", "instruction": "true", "dependsOn": ["a"]}], "a depends on itself"),
    (
        [
            {"id": "a", "instruction": "true", "dependsOn": ["c"]},
            {"id": "b", "instruction": "true", "dependsOn": ["a"]},
            {"id": "c", "instruction": "true", "dependsOn": ["b"]},
            {"id": "d", "instruction": "true"},
        ],
        "cycle: a -> b -> c -> a",
    ),
    (
        [{"id": "a", "instruction": "true"}, {"id": "b", "instruction": "echo {{a.result}}"}],
        r"tasks\[1\]\.instruction: \{\{a\.result\}\} names a, which is not in its dependsOn",
    ),
]


def test_a_graph_that_cannot_run_is_refused_and_nothing_is_queued(agents: AgentDaemon) -> None:
    [mgr] = team(agents)
    for tasks, message in REFUSED:  # unknown id, self, a cycle, a placeholder of no dependency
        with pytest.raises(InvalidParams, match=message):
            run_parallel(agents, mgr, tasks, wait=False)
    assert agents.call("jobs") == []
    assert agents.call("runs") == []


def test_a_diamond_runs_in_order_and_d_gets_both_results(
    agents: AgentDaemon, tmp_path: Path
) -> None:
    [mgr] = team(agents)
    log = tmp_path / "spans.log"
    tasks = [
        timed("A", log, "echo A-out"),
        timed("B", log, "sleep 0.6; echo B-out", dependsOn=["A"]),
        timed("C", log, "sleep 0.6; echo C-out", dependsOn=["A"]),
        timed("D", log, "echo D-got {{B.result}} {{C.result}}", dependsOn=["B", "C"]),
    ]
    run = run_parallel(agents, mgr, tasks, wait=False, maxConcurrent=3)
    seen = wait_until(
        lambda: (
            (s := agents.call("getParallelStatus", {"runId": run["runId"]}))["tasks"][3]["status"]
            == "waiting"
            and s["activeSpecialists"] == 2
            and s
        ),
        15,
        what="B and C running, D waiting",
    )
    d_row = seen["tasks"][3]
    assert (d_row["taskId"], d_row["dependsOn"], d_row["waitingOn"]) == (
        "D",
        ["B", "C"],
        ["B", "C"],
    )
    assert seen["waitingTasks"] == 1 and not seen["done"]
    status = finished(agents, run["runId"])
    assert status["completedTasks"] == 4, status
    spans = intervals(log)
    assert spans["A"][1] <= min(spans["B"][0], spans["C"][0])
    assert max(spans["B"][1], spans["C"][1]) <= spans["D"][0]
    assert peak({k: spans[k] for k in "BC"}) == 2  # B and C ran at the same time
    result = {t["taskId"]: t["result"] for t in status["tasks"]}["D"]
    assert "D-got" in result and "B-out" in result and "C-out" in result
    assert [t["taskId"] for t in status["tasks"]] == ["A", "B", "C", "D"]  # task order


def test_a_failed_dependency_cancels_its_dependents_unless_they_run_anyway(
    agents: AgentDaemon,
) -> None:
    [mgr] = team(agents)
    tasks = [
        {"id": "A", "instruction": "echo fine"},
        {"id": "B", "instruction": "echo broken; exit 3", "dependsOn": ["A"]},
        {"id": "D", "instruction": "echo never", "dependsOn": ["B"]},
        {"id": "E", "instruction": "echo never", "dependsOn": ["D"]},
        {
            "id": "F",
            "instruction": "echo F-saw {{B.result}}",
            "dependsOn": ["B"],
            "runIfDependencyFails": True,
        },
    ]
    out = run_parallel(agents, mgr, tasks, retry=ONCE)
    rows = {r["taskId"]: r for r in out["results"]}
    assert {t: r["status"] for t, r in rows.items()} == {
        "A": "completed",
        "B": "failed",
        "D": "cancelled",
        "E": "cancelled",
        "F": "completed",
    }
    assert rows["D"]["error"] == "dependency B failed"
    assert rows["E"]["error"] == "dependency B failed"  # transitively, naming the cause
    assert rows["D"]["attempts"] == 0 and rows["D"]["instanceId"] is None
    assert "F-saw [dependency B failed: exit status 3" in rows["F"]["result"]
    assert out["done"] and (out["completed"], out["failed"], out["cancelled"]) == (2, 1, 2)


def test_priorities_apply_among_the_ready_tasks(agents: AgentDaemon, tmp_path: Path) -> None:
    [mgr] = team(agents)
    log = tmp_path / "spans.log"
    tasks = [
        timed("root", log, "true"),
        timed("low1", log, "true", dependsOn=["root"], priority="low"),
        timed("low2", log, "true", dependsOn=["root"], priority="low"),
        timed("mid", log, "true", dependsOn=["root"]),
        timed("crit", log, "true", dependsOn=["root"], priority="critical"),
    ]
    out = run_parallel(agents, mgr, tasks, maxConcurrent=1)
    assert out["completed"] == 5
    spans = intervals(log)
    assert sorted(spans, key=lambda t: spans[t][0]) == ["root", "crit", "mid", "low1", "low2"]


def test_distribute_work_runs_a_chain_across_managers(agents: AgentDaemon) -> None:
    team(agents, managers=2)
    tasks = [
        {"id": "one", "instruction": "echo 1"},
        {"id": "two", "instruction": "echo {{one.result}}2", "dependsOn": ["one"]},
        {"id": "three", "instruction": "echo {{two.result}}3", "dependsOn": ["two"]},
    ]
    out = agents.call(
        "distributeWork",
        {"tasks": tasks, "agent": "shell", "workDir": str(agents.work_dir), "wait": True},
    )
    assert [d["taskIds"] for d in out["distribution"]] == [["one", "three"], ["two"]]
    rows = {r["taskId"]: r for r in out["results"]}
    assert out["completed"] == 3, out
    assert rows["three"]["result"].strip() == "123"  # each result handed to the next
    assert rows["two"]["managerId"] != rows["three"]["managerId"]


def test_cancelling_a_run_cancels_its_waiting_tasks(agents: AgentDaemon) -> None:
    [mgr] = team(agents)
    tasks = [
        {"id": "slow", "instruction": "sleep 30"},
        {"id": "next", "instruction": "true", "dependsOn": ["slow"]},
        {"id": "last", "instruction": "true", "dependsOn": ["next"]},
        {"id": "other", "instruction": "true", "dependsOn": ["slow"]},
    ]
    run = run_parallel(agents, mgr, tasks, wait=False)
    wait_until(
        lambda: agents.call("getParallelStatus", {"runId": run["runId"]})["activeSpecialists"] == 1,
        10,
    )
    by_manager = agents.call("getParallelStatus", {"managerId": mgr})
    assert by_manager["waitingTasks"] == 3
    assert [(t["taskId"], t["waitingOn"]) for t in by_manager["tasks"][1:]] == [
        ("next", ["slow"]),
        ("last", ["next"]),
        ("other", ["slow"]),
    ]
    one = agents.call("cancel", {"jobId": by_manager["tasks"][1]["jobId"]})  # a waiting task
    assert one["cancelled"] == [by_manager["tasks"][1]["jobId"]]
    assert states(agents, run["runId"]) == {
        "slow": "active",
        "next": "cancelled",
        "last": "cancelled",  # its dependency was cancelled
        "other": "waiting",
    }
    out = agents.call("cancel", {"runId": run["runId"]})
    assert len(out["cancelled"]) == 2  # other (waiting) and slow (running)
    status = finished(agents, run["runId"], 10)
    assert [t["status"] for t in status["tasks"]] == ["cancelled"] * 4
    errors = {t["taskId"]: t["error"] for t in status["tasks"]}
    assert errors["last"] == "dependency next was cancelled"
    assert errors["other"] is None  # cancelled with its run, not by a dependency


def test_kill9_mid_graph_then_the_graph_completes_and_nothing_completed_runs_again(
    agents: AgentDaemon, tmp_path: Path
) -> None:
    [mgr] = team(agents)
    log = tmp_path / "spans.log"
    tasks = [
        timed("a", log, "echo a-out"),
        timed("b1", log, "sleep 1; echo b1-out", dependsOn=["a"]),
        timed("b2", log, "echo b2-out", dependsOn=["a"]),
        timed("c", log, "echo c-got {{b1.result}} {{b2.result}}", dependsOn=["b1", "b2"]),
        timed("d", log, "echo d-out", dependsOn=["c"]),
    ]
    run = run_parallel(agents, mgr, tasks, wait=False, maxConcurrent=2)
    wait_until(
        lambda: (
            states(agents, run["runId"])
            == {"a": "completed", "b1": "active", "b2": "completed", "c": "waiting", "d": "waiting"}
        ),
        15,
        what="a and b2 completed, b1 running",
    )
    agents.daemon.kill9()
    agents.daemon.start()
    status = finished(agents, run["runId"])
    assert status["completedTasks"] == 5, status
    ran = starts(log)
    assert (ran["a"], ran["b2"], ran["c"], ran["d"]) == (1, 1, 1, 1)  # completed: never again
    rows = {t["taskId"]: t for t in status["tasks"]}
    assert "b1-out" in rows["c"]["result"] and "b2-out" in rows["c"]["result"]


def test_a_graph_over_the_shared_redis_queue(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    from tests.integration.test_shared_queue import manager_on, run, start

    a = start(tmp_path, daemon_factory, redis_server, "a")
    mgr = manager_on(a)
    log = tmp_path / "spans.log"
    tasks = [
        timed("A", log, "echo A-out"),
        timed("B", log, "sleep 0.5; echo B-out", dependsOn=["A"]),
        timed("C", log, "sleep 0.5; echo C-out", dependsOn=["A"]),
        timed("D", log, "echo D-got {{B.result}} {{C.result}}", dependsOn=["B", "C"]),
        {"id": "X", "instruction": "exit 1", "dependsOn": ["A"]},
        {"id": "Y", "instruction": "true", "dependsOn": ["X"]},
    ]
    out = run(a, mgr, tasks, maxConcurrent=3, retry=ONCE)
    rows = {r["taskId"]: r for r in out["results"]}
    assert {t: r["status"] for t, r in rows.items()} == {
        "A": "completed",
        "B": "completed",
        "C": "completed",
        "D": "completed",
        "X": "failed",
        "Y": "cancelled",
    }
    assert rows["Y"]["error"] == "dependency X failed"
    assert "B-out" in rows["D"]["result"] and "C-out" in rows["D"]["result"]
    spans = intervals(log)
    assert max(spans["B"][1], spans["C"][1]) <= spans["D"][0]
    assert peak({k: spans[k] for k in "BC"}) == 2
