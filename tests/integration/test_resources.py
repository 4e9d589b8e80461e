"""Resources end to end: memory admission, the memory cap, spawn pacing, shared-account
failures. Real tcmd, real tmux, the fake Claude Code; the machine's memory figures come
from a file the test rewrites (TCM_TEST_MEMORY_FIGURES, test-only)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakes import FAKE_CLAUDE
from tests.integration.test_cli import TCMCTL, run
from tests.redis_server import RedisServer
from tests.support import AgentDaemon, DaemonProcess, run_concurrently, wait_until

FAST = {"HEALTH_CHECK_INTERVAL": "200", "UNHEALTHY_THRESHOLD": "2"}
HELD = re.compile(r"held: memory \(need \d+ MB, have 10 MB\)")


def kinds(agents: AgentDaemon, kind: str) -> list[dict[str, Any]]:
    events = agents.call("events", {"since": 0, "limit": 10_000})["events"]
    return [e for e in events if e["kind"] == kind]


def health_of(agents: AgentDaemon, instance_id: str) -> dict[str, Any]:
    rows = agents.call("health", {"instanceId": instance_id})["instances"]
    return rows[0] if rows else {}


def one_task_run(
    tmp_path: Path, factory: type[DaemonProcess], figures: Path, **env: str
) -> tuple[AgentDaemon, Callable[[], dict[str, Any]]]:
    """A daemon that reads its memory from ``figures`` (no reserve), a manager, and a run
    (run_1) of one shell task: the daemon and a reader of that task's status row."""
    memory = {"TCM_TEST_MEMORY_FIGURES": str(figures), "TCM_MEMORY_RESERVE_MB": "0"}
    agents = AgentDaemon.start_in(tmp_path, factory, FAKE_CLAUDE, {**FAST, **memory, **env})
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    tasks = [{"id": "t1", "instruction": "echo done"}]
    agents.call("executeParallel", {"managerId": "mgr_1_1", "agent": "shell", "wait": False,
                                    "workDir": str(agents.work_dir), "tasks": tasks})  # fmt: skip

    def task() -> dict[str, Any]:
        row: dict[str, Any] = agents.call("getParallelStatus", {"runId": "run_1"})["tasks"][0]
        return row

    return agents, task


def test_a_task_is_held_for_memory_and_starts_when_memory_frees(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    figures = tmp_path / "meminfo"
    figures.write_text("MemTotal: 8000000 kB\nMemAvailable: 10240 kB\n")  # 10 MB free
    agents, task = one_task_run(tmp_path, daemon_factory, figures)
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

    err_path = tmp_path / "follow.err"
    with open(err_path, "w") as err:  # a person following the run sees why it waits
        follower = subprocess.Popen([*TCMCTL, "run", "run_1", "--follow"], env=agents.daemon.env,
                                    stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        wait_until(lambda: "held      t1  held: memory" in err_path.read_text(), 15)
        figures.write_text("MemTotal: 8000000 kB\nMemAvailable: 8000000 kB\n")  # memory freed
        done = wait_until(lambda: (t := task())["status"] == "completed" and t, 15, what="the run")
        assert follower.wait(15) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
    assert done["result"].strip() == "done"
    assert "held" not in done
    assert re.search(r"^completed t1 ", err_path.read_text(), re.M)
    assert len(kinds(agents, "job.held")) == 1


def test_memory_is_shown_and_an_instance_over_its_cap_is_restarted_with_resume(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE, {
        **FAST, "TCM_INSTANCE_MEMORY_MAX_MB": "90", "TCM_MEMORY_OVER_SWEEPS": "3",
        "TCM_RECOVERY_WINDOW_MS": "60000"})  # fmt: skip
    agents.spawn()
    agents.call("send", {"instanceId": "exec_1", "text": "@reply before"})
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 15_000})
    [listed] = wait_until(lambda: (r := agents.call("list")) and "memoryMb" in r[0] and r, 10)
    assert 5 < listed["memoryMb"] < 90  # the launcher and the fake: two small Pythons
    prom = agents.call("metrics", {"format": "prometheus"})["text"]
    assert re.search(r'^tcm_instance_memory_bytes\{instance="exec_1",node="[^"]+"\} \d', prom, re.M)
    estimate = r'^tcm_memory_estimate_bytes\{node="[^"]+",profile="claude"\} \d'
    assert re.search(estimate, prom, re.M)
    assert health_of(agents, "exec_1")["verdict"] == "healthy"
    shown = run(["list"], agents.daemon.env).stdout
    assert "MEMORYMB" in shown.splitlines()[0] and re.search(r"claude +\d+(\.\d)? ", shown)
    assert re.search(r"claude estimate \d+ MB", run(["health"], agents.daemon.env).stdout)

    agents.call("send", {"instanceId": "exec_1", "text": "@grow 150\n@reply grown"})
    [over] = wait_until(lambda: kinds(agents, "memory.over"), 15, what="the instance flagged")
    assert over["instanceId"] == "exec_1" and over["maxMb"] == 90 and over["memoryMb"] > 90
    [flagged, *_] = [e for e in kinds(agents, "health.verdict") if e["verdict"] == "over-memory"]
    assert re.fullmatch(r"uses \d+ MB, over TCM_INSTANCE_MEMORY_MAX_MB 90", flagged["reasons"][0])

    def sources() -> list[str]:
        return [e["source"] for e in agents.events("SessionStart")]

    wait_until(lambda: sources() == ["startup", "resume"], 30, what="a resumed restart")
    agents.wait_status("exec_1", "ready")
    [restart] = wait_until(lambda: kinds(agents, "recovery.result"), 10)
    assert (restart["action"], restart["ok"]) == ("restart", True)
    # the new process is small again: healthy, and the conversation goes on
    wait_until(lambda: health_of(agents, "exec_1").get("verdict") == "healthy", 15)
    agents.call("send", {"instanceId": "exec_1", "text": "@recall"})
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 15_000})
    assert agents.call("read", {"instanceId": "exec_1"})["lastResult"] == "turns=2"
    assert len(kinds(agents, "memory.over")) == 1


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
    # waiting for its turn is not a death: none was taken for exited, none restarted
    assert not [e for e in kinds(agents, "instance.state") if e["new"] == "exited"]
    assert len(agents.events("SessionStart")) == n


def test_a_failed_login_holds_every_instance_of_the_account_and_restarts_nothing(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE, FAST)
    agents.spawn("executive", agent="shell")
    for _ in range(3):
        agents.spawn("manager", parent="exec_1")  # mgr_1_1..3: Claude, one login
    for mgr in ("mgr_1_1", "mgr_1_2"):  # a 401 on two of them at about the same time
        agents.call("send", {"instanceId": mgr, "text": "@fail authentication_failed"})
    for mgr in ("mgr_1_1", "mgr_1_2"):
        wait_until(lambda m=mgr: health_of(agents, m).get("verdict") == "auth-failed", 10)  # type: ignore[misc]
    [told] = kinds(agents, "account.auth")  # reported once, with what to do
    assert told["hold"] == "agent:claude" and "claude /login" in told["action"]
    assert "claude /login" in agents.daemon.log()
    # the third instance of the account is held: its prompt waits
    sent = agents.call("send", {"instanceId": "mgr_1_3", "text": "@reply not yet"})
    assert (sent["delivered"], sent["queued"]) == (False, True)
    # and no task starts a Claude specialist while the login is broken
    tasks = [{"id": "t1", "instruction": "@reply t1"}]
    agents.call("executeParallel", {"managerId": "mgr_1_3", "agent": "claude", "wait": False,
                                    "workDir": str(agents.work_dir), "tasks": tasks})  # fmt: skip
    task = wait_until(
        lambda: (t := agents.call("getParallelStatus", {"runId": "run_1"})["tasks"][0])
        .get("held") and t, 10, what="the task held")  # fmt: skip
    assert task["held"].startswith("held: account (authentication failed on mgr_1_")
    sweeps = agents.call("health")["sweeps"]
    wait_until(lambda: agents.call("health")["sweeps"] >= sweeps + 10, 10)
    assert len(agents.events("SessionStart")) == 3  # nothing was restarted
    assert not kinds(agents, "recovery.result")
    assert not [e for e in agents.events("UserPromptSubmit") if "not yet" in e["prompt"]]
    assert len(kinds(agents, "account.auth")) == 1
    assert agents.call("getParallelStatus", {"runId": "run_1"})["tasks"][0]["status"] == "queued"


def test_with_redis_nothing_is_claimed_while_memory_is_short(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    figures = tmp_path / "meminfo"
    figures.write_text("MemAvailable: 10240 kB\n")
    _, task = one_task_run(
        tmp_path, daemon_factory, figures, REDIS_URL=redis_server.url, TCM_NODE_ID="a"
    )
    held = wait_until(lambda: (t := task()).get("held") and t, 15, what="the claims held")
    assert held["status"] == "queued" and held["held"].startswith("held: memory (need ")
    figures.write_text("MemAvailable: 8000000 kB\n")
    done = wait_until(lambda: (t := task())["status"] == "completed" and t, 15, what="the run")
    assert done["result"].strip() == "done"
