"""Health and recovery end to end: real tcmd, real tmux, the fake Claude Code.

The daemon runs with a short health interval (200 ms), a threshold of 2 and a stall
time of 1 s, so that every detection here happens within seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess, wait_until

FAST = {
    "HEALTH_CHECK_INTERVAL": "200",
    "UNHEALTHY_THRESHOLD": "2",
    "TCM_STALL_MS": "1000",
    "TCM_RECOVERY_WINDOW_MS": "60000",
}


@pytest.fixture
def healthy(tmp_path: Path, daemon_factory: type[DaemonProcess]) -> AgentDaemon:
    return AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE, FAST)


def health_of(agents: AgentDaemon, instance_id: str) -> dict[str, Any]:
    rows = agents.call("health", {"instanceId": instance_id})["instances"]
    return rows[0] if rows else {}


def settle(agents: AgentDaemon, instance_id: str) -> None:
    agents.call("wait", {"instanceIds": [instance_id], "timeoutMs": 15_000})


def test_crash_is_restarted_and_resumed(healthy: AgentDaemon) -> None:
    healthy.spawn()
    healthy.call("send", {"instanceId": "exec_1", "text": "@reply before the crash"})
    settle(healthy, "exec_1")
    healthy.call("send", {"instanceId": "exec_1", "text": "@crash 1"})
    wait_until(
        lambda: [e["source"] for e in healthy.events("SessionStart")] == ["startup", "resume"],
        20,
        what="a resumed restart",
    )
    healthy.wait_status("exec_1", "ready")
    assert health_of(healthy, "exec_1")["recoveries"] == 1
    healthy.call("send", {"instanceId": "exec_1", "text": "@recall"})
    settle(healthy, "exec_1")
    assert healthy.call("read", {"instanceId": "exec_1"})["lastResult"] == "turns=1"


def test_sigkill_of_the_agent_process_is_recovered(healthy: AgentDaemon) -> None:
    healthy.spawn()
    pid = healthy.daemon.tmux("display", "-p", "-t", "=exec_1:", "#{pane_pid}").strip()
    os.kill(int(pid), 9)
    wait_until(lambda: len(healthy.events("SessionStart")) == 2, 20, what="a restart")
    healthy.wait_status("exec_1", "ready")
    healthy.call("send", {"instanceId": "exec_1", "text": "@reply alive"})
    settle(healthy, "exec_1")
    assert healthy.call("read", {"instanceId": "exec_1"})["lastResult"] == "alive"


def test_hang_is_interrupted_redelivered_then_restarted(healthy: AgentDaemon) -> None:
    healthy.spawn()
    healthy.call("send", {"instanceId": "exec_1", "text": "@hang"})
    # first recovery: Escape, then the same prompt once more
    wait_until(
        lambda: [e["prompt"] for e in healthy.events("UserPromptSubmit")] == ["@hang", "@hang"],
        20,
        what="the prompt re-delivered once",
    )
    # it hangs again: the second recovery restarts the agent
    wait_until(lambda: len(healthy.events("SessionStart")) == 2, 20, what="a restart")
    assert health_of(healthy, "exec_1")["recoveries"] >= 2
    assert '"action":"interrupt","ok":true' in healthy.daemon.log()
    wait_until(lambda: '"action":"restart","ok":true' in healthy.daemon.log(), 10)


def verdicts_while_busy(agents: AgentDaemon, instance_id: str) -> set[Any]:
    """Every health verdict seen until the instance's turn ends (20 s at most)."""
    seen = set()
    deadline = time.monotonic() + 20
    while agents.status(instance_id) == "busy" and time.monotonic() < deadline:
        seen.add(health_of(agents, instance_id).get("verdict"))
    return seen


def test_long_busy_work_with_heartbeats_is_never_flagged(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    # work for over 2 stall periods; the agent's tool hooks (about one a second) keep it alive
    healthy = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, {**FAST, "TCM_STALL_MS": "2500"}
    )
    healthy.spawn()
    healthy.call("send", {"instanceId": "exec_1", "text": "@work 6\n@reply done"})
    verdicts = verdicts_while_busy(healthy, "exec_1")
    assert healthy.call("read", {"instanceId": "exec_1"})["lastResult"] == "done"
    assert verdicts <= {"healthy", None}
    assert health_of(healthy, "exec_1")["recoveries"] == 0


def test_a_long_silent_tool_call_is_not_stuck(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    # stall 1 s, but a tool call may run silently for TCM_TOOL_STALL_MS, and tcm's own
    # tools (a manager in `wait` or executeParallel) for as long as they take
    healthy = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, {**FAST, "TCM_TOOL_STALL_MS": "20000"}
    )
    healthy.spawn()
    script = "@tool mcp__tcm__executeParallel 2.5\n@tool Bash 2.5\n@reply done"
    healthy.call("send", {"instanceId": "exec_1", "text": script})
    assert verdicts_while_busy(healthy, "exec_1") <= {"healthy", None}
    assert healthy.call("read", {"instanceId": "exec_1"})["lastResult"] == "done"
    assert health_of(healthy, "exec_1")["recoveries"] == 0


def test_a_tool_call_silent_past_its_allowance_is_stuck(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    healthy = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, {**FAST, "TCM_TOOL_STALL_MS": "1500"}
    )
    healthy.spawn()
    healthy.call("send", {"instanceId": "exec_1", "text": "@tool Bash 30\n@reply never"})
    wait_until(
        lambda: (
            [e["prompt"] for e in healthy.events("UserPromptSubmit")][-1:]
            == ["@tool Bash 30\n@reply never"]
            and health_of(healthy, "exec_1").get("recoveries", 0) >= 1
        ),
        20,
        what="the stuck tool call interrupted",
    )


def test_rate_limit_holds_new_work_until_the_reset(healthy: AgentDaemon) -> None:
    healthy.spawn()
    reset = time.strftime("%H:%M:%S", time.localtime(time.time() + 4))
    healthy.call("send", {"instanceId": "exec_1", "text": f"@ratelimit {reset}"})
    wait_until(lambda: health_of(healthy, "exec_1").get("verdict") == "rate-limited", 10)
    sent = healthy.call("send", {"instanceId": "exec_1", "text": "@reply after the reset"})
    assert (sent["delivered"], sent["queued"]) == (False, True)
    reset_at = time.mktime(time.strptime(time.strftime("%Y-%m-%d ") + reset, "%Y-%m-%d %H:%M:%S"))
    while time.time() < reset_at - 0.3:  # held: nothing reaches the agent before the reset
        assert not [e for e in healthy.events("UserPromptSubmit") if "after" in e["prompt"]]
    wait_until(
        lambda: healthy.call("read", {"instanceId": "exec_1"})["lastResult"] == "after the reset",
        20,
        what="the held prompt after the reset",
    )


def test_tmux_server_killed_then_everything_comes_back(healthy: AgentDaemon) -> None:
    healthy.spawn()
    healthy.spawn()
    healthy.daemon.tmux("kill-server")
    for instance_id in ("exec_1", "exec_2"):
        wait_until(lambda i=instance_id: health_of(healthy, i).get("recoveries", 0) >= 1, 20)  # type: ignore[misc]
        healthy.wait_status(instance_id, "ready", timeout_s=20)
    healthy.call("send", {"instanceId": "exec_2", "text": "@reply back"})
    settle(healthy, "exec_2")
    assert healthy.call("read", {"instanceId": "exec_2"})["lastResult"] == "back"


def test_a_crash_loop_stops_after_the_bound(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    marker = tmp_path / "broken"
    wrapper = tmp_path / "claude-wrapper"
    wrapper.write_text(
        f'#!/bin/sh\n[ -e "{marker}" ] && exit 9\nexec "{sys.executable}" "{FAKE_CLAUDE}" "$@"\n'
    )
    wrapper.chmod(0o755)
    agents = AgentDaemon.start_in(
        tmp_path,
        daemon_factory,
        FAKE_CLAUDE,
        {**FAST, "TCM_RECOVERY_MAX": "2", "TCM_CLAUDE_COMMAND": str(wrapper)},
    )
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1")
    marker.touch()
    agents.call("send", {"instanceId": "mgr_1_1", "text": "@crash 3"})
    wait_until(
        lambda: health_of(agents, "mgr_1_1").get("verdict") == "failed",
        30,
        what="the instance given up on",
    )
    row = health_of(agents, "mgr_1_1")
    assert row["recoveries"] == 2
    assert "gave up after 2 recoveries" in row["reasons"][0]
    failed = agents.call("events", {"since": 0, "limit": 10000})["events"]
    [event] = [e for e in failed if e["kind"] == "instance.failed"]
    assert (event["instanceId"], event["parentId"]) == ("mgr_1_1", "exec_1")
    # the parent, with its own token, sees it in its event stream
    mine = agents.call("events", {"since": 0, "limit": 10000}, token=agents.token("exec_1"))
    assert any(e["kind"] == "instance.failed" for e in mine["events"])
    starts = len(agents.events("SessionStart"))
    sweeps = agents.call("health")["sweeps"]
    wait_until(lambda: agents.call("health")["sweeps"] > sweeps + 10, 10)
    assert len(agents.events("SessionStart")) == starts  # no further restarts were tried


def shell_tree(
    tmp_path: Path, daemon_factory: type[DaemonProcess], *, interval_ms: int,
    specialists: int, wait: bool = True,
) -> AgentDaemon:  # fmt: skip
    """A daemon sweeping every `interval_ms`, and exec_1 → mgr_1_1 → that many specialists,
    all of the `shell` agent."""
    agents = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, {"HEALTH_CHECK_INTERVAL": str(interval_ms)}
    )
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    for _ in range(specialists):
        agents.spawn("specialist", parent="mgr_1_1", agent="shell", wait=wait)
    return agents


def test_health_sweep_over_a_hundred_instances(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = shell_tree(tmp_path, daemon_factory, interval_ms=300, specialists=98, wait=False)
    wait_until(lambda: agents.call("health")["healthy"] == 100, 60, what="100 healthy")
    summary = agents.call("health")
    assert (summary["total"], summary["unhealthy"], summary["dead"]) == (100, 0, 0)
    assert all(r["score"] == 100 for r in summary["instances"])


def test_a_newcomer_or_a_death_is_looked_at_alone(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    # Each spawn used to wake a sweep over every instance: with 200 live ones that is 200
    # checks, a list of every pane and a memory sampling per spawn. Now the newcomer (or
    # the dead one) gets its verdict at once, from its own pane, and the sweeps keep their
    # interval (an hour here: every sweep after the first would be a wake).
    agents = shell_tree(tmp_path, daemon_factory, interval_ms=3_600_000, specialists=5)
    wait_until(lambda: agents.call("health")["healthy"] == 7, 10, what="7 verdicts")
    assert agents.call("health")["sweeps"] == 1  # the one at start
    pid = agents.daemon.tmux("display", "-p", "-t", "=spec_1_1_3:", "#{pane_pid}").strip()
    os.kill(int(pid), signal.SIGKILL)
    wait_until(lambda: health_of(agents, "spec_1_1_3").get("verdict") == "dead", 10)
    summary = agents.call("health")
    assert (summary["sweeps"], summary["healthy"], summary["dead"]) == (1, 6, 1)


def test_error_pattern_on_screen_is_reported(healthy: AgentDaemon) -> None:
    healthy.spawn("executive", agent="shell")
    healthy.call("send", {"instanceId": "exec_1", "text": "python3 -c '1/0'"})
    settle(healthy, "exec_1")
    row = wait_until(
        lambda: (r := health_of(healthy, "exec_1")).get("verdict") == "errored" and r,
        10,
        what="the traceback to be seen",
    )
    assert row["reasons"][0].startswith("traceback: Traceback (most recent call last):")
    assert row["score"] < 100
    healthy.call("send", {"instanceId": "exec_1", "text": "clear; echo fine"})
    settle(healthy, "exec_1")
    wait_until(lambda: health_of(healthy, "exec_1").get("verdict") == "healthy", 10)


def test_events_stream_in_order_and_resume_from_since(healthy: AgentDaemon) -> None:
    healthy.spawn()
    healthy.call("send", {"instanceId": "exec_1", "text": "@reply one"})
    settle(healthy, "exec_1")
    first = healthy.call("events", {"since": 0})
    seqs = [e["seq"] for e in first["events"]]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    states = [(e["old"], e["new"]) for e in first["events"] if e["kind"] == "instance.state"]
    assert states[:3] == [("starting", "ready"), ("ready", "busy"), ("busy", "ready")]
    last = first["lastSeq"]
    # nothing new: a follow waits; the next change wakes it, and only newer events come
    healthy.call("send", {"instanceId": "exec_1", "text": "@reply two"})
    more = healthy.call("events", {"since": last, "follow": True, "waitMs": 10_000})
    assert more["events"]
    assert all(e["seq"] > last for e in more["events"])
    prom = healthy.call("metrics", {"format": "prometheus"})["text"]
    assert 'tcm_hook_events_total{event="Stop",node="' in prom
    assert 'tcm_instance_health_score{instance="exec_1",node="' in prom


def test_the_same_prompt_submitted_again_and_again_is_stuck(healthy: AgentDaemon) -> None:
    healthy.spawn()
    with healthy.daemon.client(healthy.token("exec_1")) as agent:  # speak as its hooks do
        for _ in range(3):
            agent.call(
                "hook",
                {"payload": {"hook_event_name": "UserPromptSubmit", "prompt": "do the thing"}},
            )
    row = wait_until(
        lambda: (r := health_of(healthy, "exec_1")).get("verdict") == "stuck" and r,
        10,
        what="a stuck verdict",
    )
    assert row["reasons"] == [
        "the same prompt was submitted 3 times without a finished turn: 'do the thing'"
    ]


def test_a_hung_tmux_is_unresponsive_and_never_hangs_the_daemon(healthy: AgentDaemon) -> None:
    healthy.spawn()
    server = int(healthy.daemon.tmux("display", "-p", "#{pid}"))
    os.kill(server, signal.SIGSTOP)
    try:
        row = wait_until(
            lambda: (r := health_of(healthy, "exec_1")).get("verdict") == "unresponsive" and r,
            20,
            what="the unresponsive verdict",
        )
        assert row["reasons"] == ["tmux does not answer"]
        started = time.monotonic()
        assert healthy.call("ping")["pong"] is True  # the daemon itself answers at once
        assert time.monotonic() - started < 1
    finally:
        os.kill(server, signal.SIGCONT)
    wait_until(
        lambda: health_of(healthy, "exec_1").get("verdict") == "healthy",
        30,
        what="healthy again once tmux answers",
    )
