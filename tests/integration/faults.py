"""Faults the soak injects into a running tree, each by the pid of something it started
or found in the daemon's own tmux server; and what each one cost."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcmctl.client import DaemonUnreachable
from tcmd.errors import TcmError
from tests.redis_server import RedisServer
from tests.support import AgentDaemon

KINDS = ("tcmd SIGKILL", "specialist SIGKILL", "agent SIGSTOP/CONT", "tmux kill-server",
         "redis stop/start")  # fmt: skip


def tolerant(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; a daemon that is down (being killed) or a refusal is no failure here."""
    try:
        return fn()
    except (TcmError, DaemonUnreachable, OSError, TimeoutError):
        return None


@dataclass
class Fault:
    kind: str
    at: float  # monotonic
    target: str = ""
    jobs_hit: dict[str, int] = field(default_factory=dict)  # job id → attempts when hit
    recovered_s: float | None = None  # until a job completed again (or Redis was back)
    reruns: int = 0  # attempts those jobs made after the fault


class Injector:
    """Injects one fault of a given kind into ``agents`` (and ``redis``) and measures it."""

    def __init__(self, agents: AgentDaemon, redis: RedisServer, rng: random.Random) -> None:
        self.agents = agents
        self.redis = redis
        self.rng = rng
        self.faults: list[Fault] = []
        self.watchers: list[threading.Thread] = []

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        with self.agents.daemon.client(timeout_s=5) as c:
            return c.call(method, params)

    def active_jobs(self) -> list[dict[str, Any]]:
        return tolerant(lambda: self.call("jobs", {"state": "active", "limit": 100_000})) or []

    def completed(self) -> int:
        stats = tolerant(lambda: self.call("queueStats"))
        return -1 if stats is None else int(stats["byState"]["completed"])

    def agent_pid(self, instance_id: str) -> int | None:
        """The agent process of an instance: the child of its pane's launcher."""
        try:
            pane = int(self.agents.daemon.tmux("display", "-p", "-t", f"={instance_id}:",
                                               "#{pane_pid}"))  # fmt: skip
            kids = Path(f"/proc/{pane}/task/{pane}/children").read_text().split()
        except (subprocess.CalledProcessError, ValueError, OSError):
            return None
        return int(kids[0]) if kids else None

    def inject(self, kind: str) -> Fault:
        active = self.active_jobs()
        fault = Fault(kind, time.monotonic())
        if kind == "tcmd SIGKILL":
            fault.jobs_hit = {j["jobId"]: j["attempts"] for j in active}
            self.agents.daemon.kill9()
            self.agents.daemon.start()
        elif kind == "tmux kill-server":
            fault.jobs_hit = {j["jobId"]: j["attempts"] for j in active}
            subprocess.run(["tmux", "-L", self.agents.daemon.tmux_socket, "kill-server"],
                           capture_output=True, check=False)  # fmt: skip
        elif kind == "redis stop/start":
            self.redis.stop()
            time.sleep(self.rng.uniform(0.5, 2.0))  # how long Redis stays away: random
            self.redis.start()
        else:
            self._hit_one_agent(kind, fault, active)
        self.faults.append(fault)
        watcher = threading.Thread(target=self.measure_recovery, args=(fault, 60), daemon=True)
        watcher.start()
        self.watchers.append(watcher)
        return fault

    def join(self) -> None:
        for watcher in self.watchers:
            watcher.join(65)

    def _hit_one_agent(self, kind: str, fault: Fault, active: list[dict[str, Any]]) -> None:
        self.rng.shuffle(active)
        for job in active:
            pid = job["instanceId"] and self.agent_pid(job["instanceId"])
            if not pid:
                continue
            fault.target = job["instanceId"]
            fault.jobs_hit = {job["jobId"]: job["attempts"]}
            with contextlib.suppress(ProcessLookupError):
                if kind == "specialist SIGKILL":
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGSTOP)
                    time.sleep(self.rng.uniform(0.5, 3.0))  # how long it stays stopped: random
                    os.kill(pid, signal.SIGCONT)
            return
        fault.target = "(no busy agent)"

    def measure_recovery(self, fault: Fault, timeout_s: float) -> None:
        """Poll until work goes on: a job completes after the fault (for Redis: the daemon
        writes to Redis again), or ``timeout_s`` passes (``recovered_s`` stays None)."""
        deadline = fault.at + timeout_s
        base = self.completed() if fault.kind != "tcmd SIGKILL" else -1
        while time.monotonic() < deadline:
            if fault.kind == "redis stop/start":
                status = tolerant(lambda: self.call("status"))
                if status and status["store"]["backend"] == "redis":
                    break
            else:
                done = self.completed()
                if base < 0:
                    base = done
                elif done > base:
                    break
                if self.pending() == 0:
                    break
            time.sleep(0.05)
        else:
            return
        fault.recovered_s = time.monotonic() - fault.at

    def pending(self) -> int:
        stats = tolerant(lambda: self.call("queueStats"))
        if stats is None:
            return -1
        by = stats["byState"]
        return int(by["queued"] + by["active"] + by["retrying"])

    def settle_costs(self, final_jobs: dict[str, dict[str, Any]]) -> None:
        for fault in self.faults:
            fault.reruns = sum(
                final_jobs[j]["attempts"] - n for j, n in fault.jobs_hit.items() if j in final_jobs
            )

    def table(self) -> str:
        rows = [f"{'fault':<20} {'n':>3} {'jobs hit':>8} {'re-runs':>7} {'recover s (max)':>16}"]
        for kind in KINDS:
            mine = [f for f in self.faults if f.kind == kind]
            if not mine:
                continue
            times = [f.recovered_s for f in mine if f.recovered_s is not None]
            slow = len(mine) - len(times)
            rec = f"{sum(times) / len(times):.2f} ({max(times):.2f})" if times else "-"
            rows.append(
                f"{kind:<20} {len(mine):>3} {sum(len(f.jobs_hit) for f in mine):>8} "
                f"{sum(f.reruns for f in mine):>7} {rec:>16}"
                + (f"  {slow} not recovered in time" if slow else "")
            )
        return "\n".join(rows)
