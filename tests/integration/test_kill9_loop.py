"""The kill -9 loop: tcmd is SIGKILLed and restarted over and over while clients spawn,
terminate and run parallel work at once. Afterwards nothing is stuck, nothing is orphaned.

Short in the suite (``TCM_SOAK_S``, default 3 s of faults, at least 3 kills); the soak
run is

    TCM_SOAK_S=60 .venv/bin/python -m pytest tests/integration/test_kill9_loop.py

At the end: every job is completed, failed or cancelled (none queued or running for ever),
every tmux session belongs to a live instance and every live instance has one, and no live
instance has a terminated parent.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tcmctl.client import DaemonUnreachable
from tcmd.errors import TcmError
from tcmd.tmux_control import CONTROL_SESSION
from tests.support import AgentDaemon, wait_until

SOAK_S = float(os.environ.get("TCM_SOAK_S", "3"))
MIN_KILLS = 3
LIVE = {"starting", "ready", "busy", "waiting", "errored"}
FINAL_JOBS = {"completed", "failed", "cancelled"}


def tolerant(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; a refusal or a daemon that is down (it is being killed) is no failure."""
    try:
        return fn()
    except (TcmError, DaemonUnreachable, ConnectionError, OSError, TimeoutError):
        return None


class Chaos:
    """Client threads doing work while the main thread kills and restarts tcmd."""

    def __init__(self, agents: AgentDaemon) -> None:
        self.agents = agents
        self.stop = threading.Event()
        self.rng = random.Random(int(os.environ.get("TCM_SOAK_SEED", "7")))
        self.runs: list[str] = []

    def call(self, method: str, params: dict[str, Any]) -> Any:
        with self.agents.daemon.client(timeout_s=5) as c:
            return c.call(method, params)

    def spawner(self) -> None:
        while not self.stop.is_set():
            made = tolerant(
                lambda: self.call(
                    "spawn",
                    {
                        "role": "specialist",
                        "parentId": "mgr_1_1",
                        "agent": "shell",
                        "workDir": str(self.agents.work_dir),
                        "context": "soak",
                        "wait": False,
                    },
                )
            )
            if made and self.rng.random() < 0.7:
                tolerant(
                    lambda iid=made["instanceId"]: self.call("terminate", {"instanceId": iid})
                )

    def manager_churn(self) -> None:
        while not self.stop.wait(0.4):
            mgr = tolerant(
                lambda: self.call(
                    "spawn",
                    {
                        "role": "manager",
                        "parentId": "exec_1",
                        "agent": "shell",
                        "workDir": str(self.agents.work_dir),
                        "context": "soak",
                        "wait": False,
                    },
                )
            )
            if mgr:
                for _ in range(2):
                    tolerant(
                        lambda mid=mgr["instanceId"]: self.call(
                            "spawn",
                            {
                                "role": "specialist",
                                "parentId": mid,
                                "agent": "shell",
                                "workDir": str(self.agents.work_dir),
                                "context": "soak",
                                "wait": False,
                            },
                        )
                    )
                tolerant(
                    lambda mid=mgr["instanceId"]: self.call(
                        "terminate", {"instanceId": mid, "cascade": True}
                    )
                )

    def runner(self) -> None:
        n = 0
        while not self.stop.wait(0.2):
            n += 1
            tasks = [
                {"id": f"r{n}t{i}", "instruction": f"sleep 0.{self.rng.randint(1, 5)}; echo {i}"}
                for i in range(4)
            ]
            run = tolerant(
                lambda tasks=tasks: self.call(
                    "executeParallel",
                    {
                        "managerId": "mgr_1_1",
                        "tasks": tasks,
                        "workDir": str(self.agents.work_dir),
                        "agent": "shell",
                        "wait": False,
                        "retry": {"attempts": 3, "baseMs": 50, "capMs": 200},
                    },
                )
            )
            if run:
                self.runs.append(run["runId"])


@pytest.mark.slow
@pytest.mark.timeout(SOAK_S + 150)
def test_kill9_loop_leaves_nothing_stuck_or_orphaned(agents: AgentDaemon) -> None:
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    chaos = Chaos(agents)
    threads = [
        threading.Thread(target=f, daemon=True)
        for f in (chaos.spawner, chaos.manager_churn, chaos.runner)
    ]
    for t in threads:
        t.start()
    kills = 0
    deadline = time.monotonic() + SOAK_S
    try:
        while time.monotonic() < deadline or kills < MIN_KILLS:
            time.sleep(chaos.rng.uniform(0.3, 1.2))  # a random moment, not a wait for anything
            agents.daemon.kill9()
            kills += 1
            agents.daemon.start()
    finally:
        chaos.stop.set()
        for t in threads:
            t.join(30)
    assert kills >= MIN_KILLS and chaos.runs, (kills, chaos.runs)

    def settled() -> list[dict[str, Any]] | None:
        jobs: list[dict[str, Any]] = agents.call("jobs", {"limit": 100_000})
        return None if any(j["state"] not in FINAL_JOBS for j in jobs) else jobs

    jobs = wait_until(settled, 90, interval_s=0.2, what="every job to end")
    assert jobs, "the runs queued no job at all"
    # the main manager still runs work: its slots were all given back
    after = agents.call(
        "executeParallel",
        {
            "managerId": "mgr_1_1",
            "tasks": [{"id": "after", "instruction": "echo still-works"}],
            "workDir": str(agents.work_dir),
            "agent": "shell",
        },
    )
    assert after["results"][0]["status"] == "completed", after

    problems: list[str] = []

    def consistent() -> bool:
        rows = agents.call("list", {"includeTerminated": True})
        status = {r["instanceId"]: r["status"] for r in rows}
        live = {i for i, s in status.items() if s in LIVE}
        kept = live | {i for i, s in status.items() if s == "exited"}  # dead panes stay
        listed = agents.daemon.tmux("list-sessions", "-F", "#{session_name}").split()
        sessions = set(listed) - {CONTROL_SESSION}  # tcmd's own control client sits there
        problems[:] = [
            *(f"{i} is {status[i]} without a tmux session" for i in live - sessions),
            *(f"session {s} belongs to no live instance" for s in sessions - kept),
            *(
                f"{r['instanceId']} is {r['status']} under terminated {r['parentId']}"
                for r in rows
                if r["instanceId"] in live and status.get(r["parentId"]) == "terminated"
            ),
        ]
        return not problems

    try:
        wait_until(consistent, 30, interval_s=0.2, what="state and tmux to agree")
    except AssertionError:
        pytest.fail(f"state and tmux disagree: {problems}")


def test_a_terminated_instance_s_surviving_session_is_killed_at_start(
    agents: AgentDaemon,
) -> None:
    """tcmd marked it terminated, then died before killing its session (as in the loop):
    the next start kills the session instead of leaving it running for ever."""
    from tcmd.store.jsonfile import JsonFileStore

    agents.spawn("executive", agent="shell")
    agents.daemon.kill9()
    store = JsonFileStore(agents.daemon.state_dir / "store")
    store.open()
    try:
        record = store.get("instances", "exec_1")
        store.put("instances", "exec_1", {**record, "status": "terminated"})
    finally:
        store.close()
    assert "exec_1" in agents.daemon.tmux("list-sessions", "-F", "#{session_name}").split()
    agents.daemon.start()
    wait_until(
        lambda: "exec_1" not in agents.daemon.tmux("list-sessions", "-F", "#{session_name}"),
        10,
        what="the terminated instance's session to be killed",
    )
