"""Benchmark: `tcmctl top` with many instances, event → screen latency.

    .venv/bin/python -m tests.bench.bench_top [INSTANCES]

A real daemon runs INSTANCES shell agents (default 200: one executive, 9 managers, the
rest specialists spawned under them); `tcmctl top` runs in an 80×24 tmux pane. Each round
sends exec_1 a prompt and times its ``instance.state`` event (the daemon's clock) to the
first capture-pane that shows the new state on exec_1's row. Target (issue 14): <= 100 ms
from an event to the screen; figures in docs/operations.md (Watching the tree).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.test_top import Terminal
from tests.support import DaemonProcess, wait_until

ROUNDS = 10
MANAGERS = 9


def spawn_team(daemon: DaemonProcess, work: Path, total: int) -> None:
    shell = {"workDir": str(work), "agent": "shell", "context": "bench", "wait": False}
    daemon.call("spawn", {"role": "executive", **shell})
    for _ in range(MANAGERS):
        daemon.call("spawn", {"role": "manager", "parentId": "exec_1", **shell})
    for n in range(total - 1 - MANAGERS):
        parent = f"mgr_1_{n % MANAGERS + 1}"
        daemon.call("spawn", {"role": "specialist", "parentId": parent, **shell})
    wait_until(
        lambda: all(r["status"] == "ready" for r in daemon.call("list")),
        600,
        interval_s=0.5,
        what=f"{total} instances ready",
    )


def seen(term: Terminal, state: str) -> float:
    """When exec_1's row first shows ``state`` (polled as fast as capture-pane goes)."""
    wait_until(lambda: term.row("exec_1")[1:2] == [state], 10, interval_s=0.002, what=state)
    return time.time()


def event_time(daemon: DaemonProcess, since: int, state: str) -> tuple[float, int]:
    answer = daemon.call("events", {"since": since, "limit": 10_000})
    for e in answer["events"]:
        if e["kind"] == "instance.state" and e["instanceId"] == "exec_1" and e["new"] == state:
            return float(e["time"]), int(answer["lastSeq"])
    raise AssertionError(f"no event for exec_1 → {state}")


def main(total: int) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        daemon = DaemonProcess(Path(tmp) / "state", {"TCM_LOG_LEVEL": "info"}).start()
        term: Terminal | None = None
        try:
            t0 = time.monotonic()
            spawn_team(daemon, Path(tmp), total)
            print(f"{total} instances ready in {time.monotonic() - t0:.1f}s")
            env = {k: v for k, v in daemon.env.items() if k != "TMUX"}
            term = Terminal({**env, "TERM": "xterm-256color"}).start()
            term.wait_for("exec_1", 30)
            wait_until(lambda: term.row("exec_1")[1:2] == ["ready"], 30, what="top drawn")
            latencies = []
            since = daemon.call("events", {"since": 10**15})["lastSeq"]
            for _ in range(ROUNDS):
                daemon.call("send", {"instanceId": "exec_1", "text": "sleep 0.3"})
                shown = seen(term, "busy")
                when, since = event_time(daemon, since, "busy")
                latencies.append((shown - when) * 1000)
                seen(term, "ready")
            latencies.sort()
            print(
                f"event → screen, {ROUNDS} rounds: p50 {statistics.median(latencies):.0f} ms, "
                f"max {latencies[-1]:.0f} ms (capture-pane polling included)"
            )
        finally:
            if term is not None:
                term.close()
            daemon.cleanup()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
