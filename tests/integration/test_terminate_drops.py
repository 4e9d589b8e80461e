"""Terminating an instance with work in hand says what it dropped: in the answer, in the
event log, and in the instance's lastError that `wait` and `read` show its senders later.
Real tcmd, real tmux, the fake Claude Code."""

from __future__ import annotations

from typing import Any

from tests.support import AgentDaemon, wait_until


def dropped_events(agents: AgentDaemon) -> list[dict[str, Any]]:
    events = agents.call("events", {"since": 0, "limit": 10_000})["events"]
    return [e for e in events if e["kind"] == "instance.dropped"]


def test_terminate_names_the_running_and_queued_prompts_it_drops(agents: AgentDaemon) -> None:
    agents.spawn()
    running = "@work 60\n@reply never"
    assert agents.call("send", {"instanceId": "exec_1", "text": running})["delivered"] is True
    agents.wait_status("exec_1", "busy")
    for text in ("@reply two", "@reply three " + "x" * 500):
        sent = agents.call("send", {"instanceId": "exec_1", "text": text})
        assert sent["queued"] is True  # today's answer to a send to a busy instance

    answer = agents.call("terminate", {"instanceId": "exec_1"})
    assert answer["terminated"] == ["exec_1"]
    [dropped] = answer["dropped"]
    assert dropped["instanceId"] == "exec_1"
    assert dropped["running"] == running
    assert dropped["queued"][0] == "@reply two"
    assert dropped["queued"][1].startswith("@reply three xxx") and len(dropped["queued"][1]) <= 80

    # what the senders see when they come back for their answer
    waited = agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 5_000})
    [row] = waited["instances"]
    assert row["status"] == "terminated"
    expected = "terminated by the operator: dropped its running prompt and 2 queued prompts"
    assert row["lastError"] == expected
    assert agents.call("read", {"instanceId": "exec_1"})["lastError"] == expected
    [event] = dropped_events(agents)
    assert (event["instanceId"], event["running"], event["queued"]) == (
        "exec_1",
        running,
        dropped["queued"],
    )
    assert len(agents.events("UserPromptSubmit")) == 1  # the queued ones never went out


def test_cascade_reports_each_instance_that_lost_work(agents: AgentDaemon) -> None:
    agents.spawn()
    agents.spawn("manager", parent="exec_1")
    agents.call("send", {"instanceId": "mgr_1_1", "text": "@work 60\n@reply never"})
    agents.wait_status("mgr_1_1", "busy")
    assert agents.call("send", {"instanceId": "mgr_1_1", "text": "@reply later"})["queued"]

    answer = agents.call("terminate", {"instanceId": "exec_1", "cascade": True})
    assert answer["terminated"] == ["mgr_1_1", "exec_1"]
    assert answer["dropped"] == [
        {"instanceId": "mgr_1_1", "running": "@work 60\n@reply never", "queued": ["@reply later"]}
    ]
    row = agents.call("read", {"instanceId": "mgr_1_1"})
    assert row["lastError"] == (
        "terminated by the operator: dropped its running prompt and 1 queued prompt"
    )
    assert agents.call("read", {"instanceId": "exec_1"})["lastError"] is None  # it was idle


def test_terminating_an_idle_instance_drops_nothing(agents: AgentDaemon) -> None:
    agents.spawn()
    assert agents.call("send", {"instanceId": "exec_1", "text": "@reply done"})["delivered"]
    wait_until(lambda: agents.status("exec_1") == "ready", 10, what="the turn to end")
    answer = agents.call("terminate", {"instanceId": "exec_1"})
    assert answer == {"instanceId": "exec_1", "terminated": ["exec_1"], "dropped": []}
    assert agents.call("read", {"instanceId": "exec_1"})["lastError"] is None
    assert dropped_events(agents) == []
