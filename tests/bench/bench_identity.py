"""Benchmark: what deciding who calls from the kernel costs. Prints its figures.

    .venv/bin/python -m tests.bench.bench_identity

A chain of real processes stands in for a pane (launcher → agent → tool → hook): the
first lookup of a process walks its ancestry in /proc, later ones hit the cache (one
/proc read for the start time). The operator's own process walks up to init. tcmd
identifies a peer once per connection, at accept.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from tcmd.instances.identity import Identity

N = 2_000


def chain() -> tuple[subprocess.Popen[bytes], list[int]]:
    """sh → sh → sh → sleep, in a process group of its own; the pids from the top down."""
    top = subprocess.Popen(
        ["sh", "-c", """sh -c 'sh -c "sleep 60 & wait" & wait' & wait"""],
        start_new_session=True,
    )
    pids = [top.pid]
    deadline = time.monotonic() + 5
    while len(pids) < 4 and time.monotonic() < deadline:
        kids = Path(f"/proc/{pids[-1]}/task/{pids[-1]}/children").read_text().split()
        if kids:
            pids.append(int(kids[0]))
    return top, pids


def per_call_us(fn: object, n: int = N) -> tuple[float, float]:
    """(median, p99) of ``fn()`` in microseconds."""
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - t) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main() -> None:
    top, pids = chain()
    try:
        leaf = pids[-1]
        cold = []
        for _ in range(200):
            ids = Identity()
            ids.pane_started("spec_1_1_1", top.pid)
            t = time.perf_counter()
            ids.who(leaf)
            cold.append((time.perf_counter() - t) * 1e6)
        ids = Identity()
        ids.pane_started("spec_1_1_1", top.pid)
        ids.who(leaf)
        warm = per_call_us(lambda: ids.who(leaf))
        outside_cold = []
        for _ in range(200):
            fresh = Identity()
            t = time.perf_counter()
            fresh.who(os.getpid())
            outside_cold.append((time.perf_counter() - t) * 1e6)
        print(f"process 3 below its pane: cold walk median {statistics.median(cold):.1f} µs")
        print(f"  cached: median {warm[0]:.1f} µs, p99 {warm[1]:.1f} µs")
        print(f"operator (walk to init): cold median {statistics.median(outside_cold):.1f} µs")
    finally:
        os.killpg(top.pid, signal.SIGKILL)
        top.wait()


if __name__ == "__main__":
    main()
