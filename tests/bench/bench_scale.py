"""Benchmark: the whole tree at scale while operators watch (issue 13).

    .venv/bin/python -m tests.bench.bench_scale                     # full size
    .venv/bin/python -m tests.bench.bench_scale --managers 4 --per-manager 5 --tasks 100

1 executive and N managers (the `shell` agent: they only own runs), specialists the fake
Claude, each task ``@work <s>`` (about <s> seconds busy, a Bash tool call a second) with a
random priority, submitted as one run per manager (``executeParallel``, not waited on).
Meanwhile operator clients, each a process of its own (as operators are: no GIL shared
with the bench or with each other) on its own connection, call list/status/queueStats
back to back with a 10 s timeout.

Reports wall time against the ideal (tasks ÷ slots × task time), peak specialists running
(from the jobs' own start/finish times in the store, from the daemon's peaks, and sampled
from the operators' `list`), tcmd's CPU and peak RSS, the operators' RPC latencies and
timeouts, and tasks lost or completed twice: the submitted tags against the final jobs
and against the fake's event log of prompts and Stops.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcmctl.client import Client, DaemonUnreachable
from tests.bench.common import agent_daemon, cpu_seconds
from tests.ledger import peak_overlap, read_ledger, stored, task_instruction
from tests.support import AgentDaemon, wait_until

PRIORITIES = ("critical", "high", "medium", "low")
WEIGHTS = (1, 2, 5, 2)
OPERATOR_METHODS = ("list", "status", "queueStats")
FINAL = {"completed", "failed", "cancelled"}


@dataclass
class Operator:
    """One operator client: list/status/queueStats back to back on its own connection."""

    socket: Path
    timeout_s: float
    methods: tuple[str, ...] = OPERATOR_METHODS
    latencies: list[float] = field(default_factory=list)
    by_method: dict[str, list[float]] = field(default_factory=dict)
    timeouts: int = 0
    errors: int = 0
    busy_peak: int = 0  # specialists seen busy in one `list` answer
    ran_s: float = 0.0  # on a CPU, during the calls (the scheduler's count)
    waited_s: float = 0.0  # runnable but waiting for a CPU: part of every latency it saw
    span_s: float = 0.0

    def run(self, stop: Any, done: Any, own_session: bool = False) -> None:
        """In its own process until ``stop`` is set; then itself goes back on ``done``."""
        if own_session:
            os.setsid()
        self.calls_until(stop)
        done.put(self)

    def calls_until(self, stop: Any) -> None:
        client = Client(self.socket, timeout_s=self.timeout_s).connect()
        n = 0
        sched0, t0 = _ran_waited_s("thread-self"), time.perf_counter()
        while not stop.is_set():
            method = self.methods[n % len(self.methods)]
            n += 1
            t = time.perf_counter()
            try:
                out = client.call(method, {})
            except DaemonUnreachable:  # a timeout: the connection is spent, open another
                self.timeouts += 1
                client.close()
                client = Client(self.socket, timeout_s=self.timeout_s).connect()
                continue
            except Exception:  # an error answer: count it, keep calling
                self.errors += 1
                continue
            self.latencies.append(took := time.perf_counter() - t)
            self.by_method.setdefault(method, []).append(took)
            if method == "list":
                busy = sum(
                    r["instanceId"].startswith("spec_") and r["status"] == "busy" for r in out
                )
                self.busy_peak = max(self.busy_peak, busy)
        sched1, self.span_s = _ran_waited_s("thread-self"), time.perf_counter() - t0
        self.ran_s, self.waited_s = sched1[0] - sched0[0], sched1[1] - sched0[1]
        client.close()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _machine_busy_s() -> float:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (sum(int(x) for x in cpu) - int(cpu[3]) - int(cpu[4])) / os.sysconf("SC_CLK_TCK")


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _submit(
    agents: AgentDaemon, managers: list[str], tasks: int, task_s: float, rng: random.Random
) -> dict[str, str]:
    """One run per manager, tasks dealt round-robin; the tag → priority of every task."""
    per: dict[str, list[dict[str, Any]]] = {m: [] for m in managers}
    submitted: dict[str, str] = {}
    for i in range(tasks):
        tag = f"s{i:05}"
        priority = rng.choices(PRIORITIES, WEIGHTS)[0]
        submitted[tag] = priority
        per[managers[i % len(managers)]].append(
            {
                "id": tag,
                "instruction": task_instruction(tag, f"@work {task_s:g}"),
                "priority": priority,
            }
        )
    for manager, specs in per.items():
        if specs:
            agents.call(
                "executeParallel",
                {
                    "managerId": manager,
                    "tasks": specs,
                    "agent": "claude",
                    "workDir": str(agents.work_dir),
                    "isolation": "shared",
                    "wait": False,
                    "retry": {"attempts": 3, "baseMs": 200, "capMs": 2000},
                },
            )
    return submitted


def _ran_waited_s(thread: int | str) -> tuple[float, float]:
    """Seconds a process's main thread (tcmd's event loop: its pid), or "thread-self", ran
    on a CPU and waited on a run queue while runnable (schedstat: the scheduler's own count)."""
    path = f"/proc/{thread}/task/{thread}" if isinstance(thread, int) else f"/proc/{thread}"
    ran_ns, waited_ns, _ = Path(path, "schedstat").read_text().split()
    return int(ran_ns) / 1e9, int(waited_ns) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--managers", type=int, default=20)
    parser.add_argument("--per-manager", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--task-s", type=float, default=1.0, help="each task's @work seconds")
    parser.add_argument("--operators", type=int, default=4)
    parser.add_argument("--rpc-timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(OPERATOR_METHODS),
        help="what the operators call, in turn (ping: the RPC alone)",
    )
    parser.add_argument(
        "--operator-sessions",
        action="store_true",
        help="each operator in a session of its own (a terminal each)",
    )
    a = parser.parse_args()
    rng = random.Random(a.seed)
    env = {
        "MAX_SPECIALISTS_PER_MANAGER": str(a.per_manager),
        "MAX_MANAGER_CONCURRENCY": str(a.managers),
        "TCM_LOG_LEVEL": "warning",
    }
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    with agent_daemon(env) as (agents, _):
        proc = agents.daemon.proc
        assert proc is not None
        agents.spawn("executive", agent="shell")
        managers = [
            agents.spawn("manager", parent="exec_1", agent="shell")["instanceId"]
            for _ in range(a.managers)
        ]
        tmux_pid = int(agents.daemon.tmux("display", "-p", "#{pid}"))
        mp = multiprocessing.get_context("spawn")
        stop, done = mp.Event(), mp.Queue()
        processes = [
            mp.Process(
                target=Operator(agents.daemon.socket, a.rpc_timeout, tuple(a.methods)).run,
                args=(stop, done, a.operator_sessions),
            )
            for _ in range(a.operators)
        ]
        for p in processes:
            p.start()
        cpu0 = (cpu_seconds(proc.pid, children=False), cpu_seconds(proc.pid),
                cpu_seconds(tmux_pid, children=False), _machine_busy_s())  # fmt: skip
        sched0 = _ran_waited_s(proc.pid)
        t0 = time.time()
        submitted = _submit(agents, managers, a.tasks, a.task_s, rng)
        submit_s = time.time() - t0

        def settled() -> bool:
            by_state = agents.call("queueStats")["byState"]
            return sum(by_state[s] for s in FINAL) >= a.tasks and not (
                by_state["queued"] + by_state["active"] + by_state["retrying"]
            )

        wait_until(settled, 60 + a.tasks * a.task_s * 3, interval_s=0.25, what="every task")
        seen_end = time.time()
        cpu1 = (cpu_seconds(proc.pid, children=False), cpu_seconds(proc.pid),
                cpu_seconds(tmux_pid, children=False), _machine_busy_s())  # fmt: skip
        sched1 = _ran_waited_s(proc.pid)
        stop.set()
        operators: list[Operator] = [done.get(timeout=a.rpc_timeout + 30) for _ in processes]
        for p in processes:
            p.join(10)
        stats = agents.call("queueStats")
        rss_mb = _vm_hwm_mb(proc.pid)
        load1 = Path("/proc/loadavg").read_text().split()[:3]
        agents.daemon.terminate()
        jobs = list(stored(agents.daemon.state_dir, "jobs")["jobs"].values())
        ledger = read_ledger(agents.event_log)
        tmux_timeouts: dict[str, int] = {}
        for line in agents.daemon.log().splitlines():
            if '"tmux_timeout"' in line:
                what = line.split('"command":"', 1)[-1].split(" ", 1)[0]
                tmux_timeouts[what] = tmux_timeouts.get(what, 0) + 1

    by_tag = {j["task_id"]: j for j in jobs if j["task_id"] in submitted}
    states = {tag: by_tag[tag]["state"] if tag in by_tag else "missing" for tag in submitted}
    lost = [t for t, s in states.items() if s not in FINAL]
    never_ran = [t for t, s in states.items() if s == "completed" and not ledger.completions[t]]
    twice = ledger.twice()
    ends = [j["finished_at"] for j in by_tag.values() if j["finished_at"]]
    intervals = [
        (j["started_at"], j["finished_at"])
        for j in by_tag.values()
        if j["started_at"] and j["finished_at"]
    ]
    wall = (max(ends) if ends else seen_end) - t0
    slots = a.managers * a.per_manager
    ideal = a.tasks / slots * a.task_s
    lat = [x for o in operators for x in o.latencies]
    machine = cpu1[3] - cpu0[3]
    print(f"load average before {' '.join(load0)}, after {' '.join(load1)}")
    print(
        f"{a.tasks} tasks of @work {a.task_s:g} s, {a.managers} managers × {a.per_manager} "
        f"specialists = {slots} slots, {a.operators} operator clients"
    )
    print(
        f"wall {wall:.1f} s (submitting {submit_s:.1f} s); ideal {ideal:.1f} s; "
        f"ratio {wall / ideal:.2f}"
    )
    print(
        f"peak specialists running (job start→finish in the store): {peak_overlap(intervals)}; "
        f"seen busy in one list: {max((o.busy_peak for o in operators), default=0)}; "
        f"daemon peaks: {stats['peakManagers']} managers, "
        f"sum of per-manager peaks {sum(stats['peakPerManager'].values())}"
    )
    print(
        f"CPU seconds during the run: tcmd {cpu1[0] - cpu0[0]:.1f} "
        f"(+ reaped children {cpu1[1] - cpu0[1] - (cpu1[0] - cpu0[0]):.1f}), tmux server "
        f"{cpu1[2] - cpu0[2]:.1f}, whole machine {machine:.1f} "
        f"({machine / max(a.tasks, 1) * 1e3:.0f} ms a task)"
    )
    ran, waited = sched1[0] - sched0[0], sched1[1] - sched0[1]
    print(
        f"tcmd's event loop: ran {ran:.1f} s, waited {waited:.1f} s for a CPU while runnable "
        f"({waited / max(seen_end - t0, 1e-9) * 100:.0f} % of the run)"
    )
    print(f"tcmd peak RSS (VmHWM) {rss_mb:.0f} MB")
    print(
        f"operator RPCs: {len(lat)} answered, p50 {_pct(lat, 0.5) * 1e3:.1f} ms, "
        f"p99 {_pct(lat, 0.99) * 1e3:.1f} ms, p99.9 {_pct(lat, 0.999) * 1e3:.1f} ms, "
        f"max {max(lat, default=0) * 1e3:.0f} ms ({sum(x > 0.1 for x in lat)} over 100 ms), "
        f"mean {statistics.fmean(lat) * 1e3 if lat else 0:.1f} ms; "
        f"{sum(o.timeouts for o in operators)} timed out after {a.rpc_timeout:g} s, "
        f"{sum(o.errors for o in operators)} errors"
    )
    ran, waited = sum(o.ran_s for o in operators), sum(o.waited_s for o in operators)
    span = sum(o.span_s for o in operators)
    print(
        f"  the operator processes: ran {ran:.1f} s, waited {waited:.1f} s for a CPU while "
        f"runnable ({waited / max(span, 1e-9) * 100:.0f} % of their time; their wait is in "
        "the latencies too)"
    )
    for method in a.methods:
        each = [x for o in operators for x in o.by_method.get(method, [])]
        print(
            f"  {method}: {len(each)} calls, p50 {_pct(each, 0.5) * 1e3:.1f} ms, "
            f"p99 {_pct(each, 0.99) * 1e3:.1f} ms"
        )
    final = {s: sum(v == s for v in states.values()) for s in (*FINAL, "missing")}
    if tmux_timeouts:
        print("tmux commands that timed out:", tmux_timeouts)
    for label, chosen in (
        ("failed jobs by reason", lambda j: j["state"] == "failed"),
        ("jobs that completed after a failed attempt, by its error", lambda j: (
            j["state"] == "completed" and j["attempts"] > 1)),
    ):  # fmt: skip
        reasons: dict[str, int] = {}
        for job in filter(chosen, by_tag.values()):
            why = str(job.get("last_error") or "?")[:60]
            reasons[why] = reasons.get(why, 0) + 1
        if reasons:
            print(f"{label}:", dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:6]))
    print(
        f"jobs: {final}; attempts {sum(j['attempts'] for j in by_tag.values())}, "
        f"reruns {sum(j['reruns'] for j in by_tag.values())}"
    )
    print(
        f"lost (not final): {len(lost)} {lost[:5]}; completed twice (Stops in the event log): "
        f"{len(twice)} {list(twice.items())[:5]}; completed without a Stop: {len(never_ran)}; "
        f"prompts run {sum(ledger.prompts.values())} for {len(ledger.prompts)} tags"
        f"{f', {ledger.torn_lines} torn log lines' if ledger.torn_lines else ''}"
    )


if __name__ == "__main__":
    main()
