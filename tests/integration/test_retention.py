"""Retention: finished runs and terminated instances are forgotten after TCM_RETENTION_MS."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcmd.errors import NotFound
from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess, wait_until


def forgotten(agents: AgentDaemon, run_id: str) -> bool:
    try:
        agents.call("getParallelStatus", {"runId": run_id})
    except NotFound:
        return True
    return False


def test_finished_runs_and_ended_specialists_are_forgotten(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, {"TCM_RETENTION_MS": "1500"}
    )
    exec_id = agents.spawn(agent="shell")["instanceId"]
    mgr_id = agents.spawn(role="manager", parent=exec_id, agent="shell")["instanceId"]
    tasks = [{"id": "one", "instruction": "echo one"}, {"id": "two", "instruction": "echo two"}]
    out = agents.call(
        "executeParallel",
        {"managerId": mgr_id, "agent": "shell", "workDir": str(agents.work_dir), "tasks": tasks},
    )
    assert out["completed"] == 2
    specialists = [r["instanceId"] for r in out["results"]]
    assert len(agents.call("jobs", {})) == 2  # kept while fresh: the run is queryable
    [mgr] = agents.call("list", {"role": "manager"})
    assert mgr["parallelExecution"]["completed"] == 2

    wait_until(lambda: forgotten(agents, out["runId"]), 15, what="the run to be forgotten")
    wait_until(
        lambda: (
            not {r["instanceId"] for r in agents.call("list", {"includeTerminated": True})}
            & set(specialists)
        ),
        15,
        what="the specialists to be forgotten",
    )
    assert agents.call("jobs", {}) == []
    [mgr] = agents.call("list", {"role": "manager"})
    assert mgr["parallelExecution"]["completed"] == 0  # counts what is remembered
    assert {r["instanceId"] for r in agents.call("list", {})} == {exec_id, mgr_id}  # live: kept
    for spec in specialists:
        assert not (agents.daemon.state_dir / "instances" / spec).exists()
    kinds = [e for e in agents.call("events", {})["events"] if e["kind"] == "retention.forgotten"]
    assert sum(e["runs"] for e in kinds) == 1 and sum(e["instances"] for e in kinds) == 2

    agents.daemon.terminate()  # and it stays forgotten, ids never come back
    agents.daemon.start()
    assert forgotten(agents, out["runId"])
    again = agents.spawn(role="specialist", parent=mgr_id, agent="shell")["instanceId"]
    assert again not in specialists


def test_a_terminated_parent_stays_while_a_child_is_remembered(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, {"TCM_RETENTION_MS": "1000"}
    )

    def known() -> set[str]:
        return {r["instanceId"] for r in agents.call("list", {"includeTerminated": True})}

    exec_id = agents.spawn(agent="shell")["instanceId"]
    parent = agents.spawn(role="manager", parent=exec_id, agent="shell")["instanceId"]
    childless = agents.spawn(role="manager", parent=exec_id, agent="shell")["instanceId"]
    child = agents.spawn(role="specialist", parent=parent, agent="shell")["instanceId"]
    agents.call("terminate", {"instanceId": parent, "force": True})  # its child lives on
    agents.call("terminate", {"instanceId": childless})  # ended later than the parent
    wait_until(lambda: childless not in known(), 15, what="the childless manager forgotten")
    assert parent in known()  # as old, but a child still points at it
    assert agents.status(parent) == "terminated"

    agents.call("terminate", {"instanceId": child})
    wait_until(lambda: known() == {exec_id}, 15, what="the child, then its parent, forgotten")


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_a_bad_retention_is_refused_at_start(
    tmp_path: Path, daemon_factory: type[DaemonProcess], value: str
) -> None:
    d = daemon_factory(extra_env={"TCM_RETENTION_MS": value})
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(15) == 2
    assert "TCM_RETENTION_MS" in d.log()
