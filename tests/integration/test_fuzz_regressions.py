"""Bugs the socket fuzzer (test_fuzz_socket.py) found, each pinned by its own test.
Real tcmd, real tmux, the fake Claude Code."""

from __future__ import annotations

import pytest

from tcmd.errors import InvalidParams
from tests.support import AgentDaemon


@pytest.mark.parametrize(
    ("field", "value"),
    [("context", "before\x00after"), ("model", "opus\x00")],
)
def test_nul_byte_in_spawn_params_is_invalid_params_not_an_internal_error(
    agents: AgentDaemon, field: str, value: str
) -> None:
    # found: ValueError("embedded null byte") from Popen answered as -32603 internal error
    params = {"role": "executive", "workDir": str(agents.work_dir), "context": "c", field: value}
    with pytest.raises(InvalidParams, match=f"{field}: .*NUL"):
        agents.call("spawn", params)
    with pytest.raises(InvalidParams, match=r"workDir: .*NUL"):
        agents.call("spawn", {**params, "workDir": str(agents.work_dir) + "\x00"})
    assert agents.call("list", {"includeTerminated": True}) == []  # no id spent, no ghost


def test_nul_byte_in_a_task_is_refused_before_any_specialist_starts(agents: AgentDaemon) -> None:
    # found: the task's context reached the specialist's argv; every attempt failed with
    # "attempt failed unexpectedly" and a traceback in the log
    agents.spawn()
    agents.spawn("manager", parent="exec_1")
    task = {"id": "t1", "instruction": "@reply ok", "context": "a\x00b"}
    with pytest.raises(InvalidParams, match=r"tasks\.0\.context: .*NUL"):
        agents.call("executeParallel", {"managerId": "mgr_1_1", "tasks": [task]})
    with pytest.raises(InvalidParams, match=r"workDir: .*NUL"):
        agents.call(
            "executeParallel",
            {"managerId": "mgr_1_1", "tasks": [{**task, "context": ""}], "workDir": "/\x00"},
        )
    assert sum(agents.call("queueStats")["byState"].values()) == 0  # nothing was queued
    done = agents.call(
        "executeParallel", {"managerId": "mgr_1_1", "tasks": [{**task, "context": "fine"}]}
    )
    assert [r["status"] for r in done["results"]] == ["completed"]
    assert "attempt failed unexpectedly" not in agents.daemon.log()
