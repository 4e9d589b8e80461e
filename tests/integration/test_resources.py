"""Resources end to end: memory admission, the memory cap, spawn pacing, shared-account
failures. Real tcmd, real tmux, the fake Claude Code; the machine's memory figures come
from a file the test rewrites (TCM_TEST_MEMORY_FIGURES, test-only)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tests.fakes import FAKE_CLAUDE
from tests.integration.test_cli import run
from tests.support import AgentDaemon, DaemonProcess, run_concurrently, wait_until

FAST = {"HEALTH_CHECK_INTERVAL": "200", "UNHEALTHY_THRESHOLD": "2"}
HELD = re.compile(r"held: memory \(need \d+ MB, have 10 MB\)")


def kinds(agents: AgentDaemon, kind: str) -> list[dict[str, Any]]:
    events = agents.call("events", {"since": 0, "limit": 10_000})["events"]
    return [e for e in events if e["kind"] == kind]


def health_of(agents: AgentDaemon, instance_id: str) -> dict[str, Any]:
    rows = agents.call("health", {"instanceId": instance_id})["instances"]
    return rows[0] if rows else {}


def test_a_task_is_held_for_memory_and_starts_when_memory_frees(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    figures = tmp_path / "meminfo"
    figures.write_text("MemTotal: 8000000 kB\nMemAvailable: 10240 kB\n")  # 10 MB free
    agents = AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE, {
        **FAST, "TCM_TEST_MEMORY_FIGURES": str(figures), "TCM_MEMORY_RESERVE_MB": "0"})  # fmt: skip
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    tasks = [{"id": "t1", "instruction": "echo done"}]
    agents.call("executeParallel", {"managerId": "mgr_1_1", "agent": "shell", "wait": False,
                                    "workDir": str(agents.work_dir), "tasks": tasks})  # fmt: skip

    def task() -> dict[str, Any]:
        row: dict[str, Any] = agents.call("getParallelStatus", {"runId": "run_1"})["tasks"][0]
        return row

    held = wait_until(lambda: (t := task()).get("held") and t, 10, what="the task held")
    assert held["status"] == "queued"
    assert HELD.fullmatch(held["held"])
    [job] = agents.call("jobs", {"runId": "run_1"})
    assert HELD.fullmatch(job["held"])
    shown = run(["run", "run_1"], agents.daemon.env)
    assert HELD.search(shown.stdout), shown.stdout
    sweeps = agents.call("health")["sweeps"]
    wait_until(lambda: agents.call("health")["sweeps"] >= sweeps + 5, 10)  # rounds go by
    assert task()["status"] == "queued"
    [event] = kinds(agents, "job.held")  # told once, not at every round
    assert (event["taskId"], event["runId"]) == ("t1", "run_1")
    assert HELD.fullmatch(event["reason"])

    figures.write_text("MemTotal: 8000000 kB\nMemAvailable: 8000000 kB\n")  # memory freed
    done = wait_until(lambda: (t := task())["status"] == "completed" and t, 15, what="the run")
    assert done["result"].strip() == "done"
    assert "held" not in done


def test_memory_is_shown_and_an_instance_over_its_cap_is_restarted_with_resume(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE, {
        **FAST, "TCM_INSTANCE_MEMORY_MAX_MB": "4", "TCM_MEMORY_OVER_SWEEPS": "3",
        "TCM_RECOVERY_WINDOW_MS": "60000"})  # fmt: skip
    agents.spawn()
    agents.call("send", {"instanceId": "exec_1", "text": "@reply before"})
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 15_000})
    # the fake's process tree (launcher + fake, two Pythons) is far above 4 MB
    row = wait_until(lambda: (r := health_of(agents, "exec_1"))["verdict"] == "over-memory" and r,
                     10, what="the instance flagged")  # fmt: skip
    assert re.fullmatch(r"uses \d+ MB, over TCM_INSTANCE_MEMORY_MAX_MB 4", row["reasons"][0])
    assert row["memoryMb"] > 4
    [listed] = agents.call("list")
    assert listed["memoryMb"] > 4
    over = kinds(agents, "memory.over")
    assert over[0]["instanceId"] == "exec_1" and over[0]["maxMb"] == 4
    def sources() -> list[str]:
        return [e["source"] for e in agents.events("SessionStart")]

    try:
        wait_until(lambda: sources()[:2] == ["startup", "resume"], 30, what="a resumed restart")
    except AssertionError:  # what the daemon did instead, for the report
        print(agents.daemon.log()[-6000:], sources())
        raise
    wait_until(lambda: any(e["action"] == "restart" and e["ok"]
                           for e in kinds(agents, "recovery.result")), 20)  # fmt: skip
    prom = agents.call("metrics", {"format": "prometheus"})["text"]
    assert re.search(r'^tcm_instance_memory_bytes\{instance="exec_1",node="[^"]+"\} \d', prom, re.M)
    estimate = r'^tcm_memory_estimate_bytes\{node="[^"]+",profile="claude"\} \d'
    assert re.search(estimate, prom, re.M)


def test_claude_starts_are_paced(tmp_path: Path, daemon_factory: type[DaemonProcess]) -> None:
    rate, n = 4.0, 5
    agents = AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE,
                                  {"TCM_SPAWN_RATE": str(rate)})  # fmt: skip
    t = time.monotonic()
    spawned = run_concurrently(lambda: agents.spawn(wait=False), n)
    took = time.monotonic() - t
    assert len({s["instanceId"] for s in spawned}) == n  # none refused
    assert took >= (n - 1) / rate
    for s in spawned:
        agents.wait_status(s["instanceId"], "ready")
