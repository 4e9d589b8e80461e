"""Benchmark: N Claude starts at once, paced and not, and what each instance uses.

    .venv/bin/python -m tests.bench.bench_spawn [--fake]

With the real Claude Code (the compat suite's pinned release, against the fake API) unless
``--fake``. For TCM_SPAWN_RATE 0 (no pacing) and 2: the time until all N are ready, each
one's start (spawn → SessionStart), and the memory tcm measures per instance (RSS and PSS
of the pane's process tree) when idle and after one turn. Feeds docs/resources.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from tcmd.health.memory import tree
from tests.bench.common import agent_daemon, cpu_seconds
from tests.compat.conftest import API_KEY, claude_binary
from tests.fakes import FAKE_CLAUDE
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.support import AgentDaemon, run_concurrently, wait_until

N = 5  # set to 1 by --one: a start alone

def start_cpu_s(agents: AgentDaemon, instance_id: str) -> float:
    """CPU seconds the instance's process tree has used so far."""
    pane = int(agents.daemon.tmux("display", "-p", "-t", f"={instance_id}:", "#{pane_pid}"))
    total = 0.0
    for pid in tree(pane):
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid, children=False)
    return total


def measure(rate: str, claude: Path, env: dict[str, str]) -> None:
    with agent_daemon({**env, "TCM_SPAWN_RATE": rate, "HEALTH_CHECK_INTERVAL": "500"},
                      claude=claude) as (agents, tmp):  # fmt: skip
        (tmp / "home" / ".claude.json").write_text(json.dumps({
            "hasCompletedOnboarding": True,
            "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []}}))  # fmt: skip

        def one() -> float:
            t = time.monotonic()
            spawned = agents.spawn(timeoutMs=60_000)
            assert spawned["status"] == "ready", spawned
            return time.monotonic() - t

        t = time.monotonic()
        each = run_concurrently(one, N, timeout_s=120)
        took = time.monotonic() - t
        print(f"TCM_SPAWN_RATE={rate}: {N} starts at once, all ready after {took:.2f} s; "
              f"each spawn → ready median {statistics.median(each):.2f} s, "
              f"max {max(each):.2f} s")  # fmt: skip
        ids = [f"exec_{i}" for i in range(1, N + 1)]
        cpu = [start_cpu_s(agents, iid) for iid in ids]
        print(f"  CPU a start took (the pane's tree, spawn → ready): median "
              f"{statistics.median(cpu):.2f} s, max {max(cpu):.2f} s; load average "
              f"{os.getloadavg()[0]:.1f}")  # fmt: skip

        def rows() -> list[dict[str, float]]:
            return [r for r in agents.call("list") if "pssMb" in r]

        def show(when: str) -> None:
            sweeps = agents.call("health")["sweeps"]
            wait_until(lambda: agents.call("health")["sweeps"] > sweeps + 8, 30)
            got = wait_until(lambda: len(r := rows()) == N and r, 30, what="PSS of every one")
            rss = [r["memoryMb"] for r in got]
            pss = [r["pssMb"] for r in got]
            print(f"  {when}: RSS per instance median {statistics.median(rss):.0f} MB "
                  f"(max {max(rss):.0f}); PSS median {statistics.median(pss):.0f} MB "
                  f"(max {max(pss):.0f})")  # fmt: skip

        show("idle")
        for iid in ids:
            agents.call("send", {"instanceId": iid, "text": "@reply hello"})
        agents.call("wait", {"instanceIds": ids, "timeoutMs": 60_000})
        show("after one turn")


def main() -> None:
    global N  # noqa: PLW0603  # a command-line switch of a benchmark script
    if "--one" in sys.argv:
        N = 1
    fake = "--fake" in sys.argv or not claude_binary().exists()
    if fake:
        print("the fake Claude (tests/fakes)")
        for rate in ("0", "2"):
            measure(rate, FAKE_CLAUDE, {})
        return
    print(f"the real Claude Code at {claude_binary()}")
    with FakeAnthropic() as api:
        env = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": API_KEY,
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
               "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
               "CLAUDE_CODE_MAX_RETRIES": "1", "CLAUDE_CODE_DISABLE_ALTERNATE_SCREEN": "1",
               "IS_SANDBOX": "1", "TCM_CLAUDE_COMMAND": str(claude_binary())}  # fmt: skip
        for rate in ("0", "2"):
            measure(rate, claude_binary(), env)


if __name__ == "__main__":
    main()
