"""Benchmark: 200 no-op tasks through the `shell` agent, 4 managers × 5 specialists.

    .venv/bin/python -m tests.bench.bench_parallel

Target (issue 5): total time within 1.5 × (tasks ÷ slots × one task's time), i.e. the
orchestration adds little. "One task's time" is measured here: the median of single
tasks run alone (spawn a specialist, deliver, run `true`, see Stop, terminate).

On 2 cores a no-op task is nothing but CPU (a fresh specialist: tmux, the runner, the
hooks), so 20 slots cannot run 20 at once: the ratio is bound below by roughly
slots ÷ cores. ``--instruction "sleep 0.5"`` measures the same run with tasks that take
time without burning CPU, which is what the target's formula assumes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

from tests.bench.common import agent_daemon, cpu_seconds
from tests.support import AgentDaemon

TASKS, MANAGERS, PER_MANAGER = 200, 4, 5


def _cpu(agents: AgentDaemon) -> tuple[float, float, float, float]:
    """CPU seconds used so far by tcmd, by its tmux server, by the whole machine, and by
    tcmd's children (tmux clients: reaped ones, and a control-mode client if one runs)."""
    tmux_pid = int(agents.daemon.tmux("display", "-p", "#{pid}"))
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = (sum(int(x) for x in cpu) - int(cpu[3]) - int(cpu[4])) / os.sysconf("SC_CLK_TCK")
    assert agents.daemon.proc is not None
    pid = agents.daemon.proc.pid
    kids = cpu_seconds(pid) - cpu_seconds(pid, children=False)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):  # a child that ended meanwhile
            kids += cpu_seconds(int(child), children=False)
    return (cpu_seconds(pid, children=False), cpu_seconds(tmux_pid, children=False), busy, kids)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instruction", default="true", help="each task's command line")
    instruction = parser.parse_args().instruction
    env = {
        "MAX_SPECIALISTS_PER_MANAGER": str(PER_MANAGER),
        "MAX_MANAGER_CONCURRENCY": str(MANAGERS),
    }
    with agent_daemon(env) as (agents, _):
        agents.spawn("executive", agent="shell")
        managers = [
            agents.spawn("manager", parent="exec_1", agent="shell")["instanceId"]
            for _ in range(MANAGERS)
        ]
        singles = []
        for i in range(7):
            t = time.perf_counter()
            out = agents.call(
                "executeParallel",
                {
                    "managerId": managers[0],
                    "agent": "shell",
                    "workDir": str(agents.work_dir),
                    "tasks": [{"id": f"single{i}", "instruction": instruction}],
                },
            )
            singles.append(time.perf_counter() - t)
            assert out["completed"] == 1, out
        one = statistics.median(singles)
        cpu0 = _cpu(agents)
        t = time.perf_counter()
        out = agents.call(
            "distributeWork",
            {
                "tasks": [{"id": f"t{i:03}", "instruction": instruction} for i in range(TASKS)],
                "strategy": "round-robin",
                "agent": "shell",
                "workDir": str(agents.work_dir),
                "wait": True,
            },
        )
        total = time.perf_counter() - t
        cpu1 = _cpu(agents)
        slots = MANAGERS * PER_MANAGER
        ideal = TASKS / slots * one
        stats = agents.call("queueStats")
        print(f"task: {instruction!r}")
        print(f"one task alone: median {one * 1e3:.0f} ms (of {len(singles)})")
        print(
            f"{TASKS} tasks, {MANAGERS} managers × {PER_MANAGER} specialists: "
            f"{out['completed']} completed in {total:.2f} s; ideal {ideal:.2f} s; "
            f"ratio {total / ideal:.2f}   (target <= 1.5)"
        )
        print(
            f"peak managers {stats['peakManagers']}, peak per manager "
            f"{max(stats['peakPerManager'].values())}, avg wait {stats['avgWaitMs']:.0f} ms,"
            f" avg run {stats['avgRunMs']:.0f} ms"
        )
        machine, cores = cpu1[2] - cpu0[2], os.cpu_count() or 1
        print(
            f"CPU seconds during the run: tcmd {cpu1[0] - cpu0[0]:.2f}, "
            f"tmux server {cpu1[1] - cpu0[1]:.2f}, whole machine {machine:.2f} "
            f"({machine / TASKS * 1e3:.0f} ms a task; {machine / cores:.2f} s on {cores} cores)"
        )
        own = [(b - a) / TASKS * 1e3 for a, b in zip(cpu0, cpu1, strict=True)]
        print(
            f"tcm's own CPU a task: {own[0] + own[1] + own[3]:.1f} ms (tcmd {own[0]:.1f}, "
            f"tmux clients {own[3]:.1f}, tmux server {own[1]:.1f})   (target <= 5 ms)"
        )


if __name__ == "__main__":
    main()
