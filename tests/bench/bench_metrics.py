"""Benchmark: one `metrics` call (JSON and Prometheus text) with 200 instance series.

    .venv/bin/python -m tests.bench.bench_metrics

The registry is filled as a busy daemon's would be: tcm's standard metrics, 200 instances
whose health score gauge is set afresh at each call (as the daemon's collector does),
instances by state, hook events, recoveries, and 1,000 finished tasks in the histograms.
Two figures per format: the tool's handler alone (what the event loop pays, since
`metrics` is answered inline) and a whole call over a real socket with tcmctl's client.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcmctl.client import Client
from tcmd.api import OPERATOR, Catalogue
from tcmd.changes import Changes
from tcmd.observe.events import EventLog
from tcmd.observe.metrics import Registry, standard
from tcmd.observe.tools import MetricsParams, ObserveTools
from tcmd.server.rpc import RpcServer
from tcmd.store.jsonfile import JsonFileStore

N_INSTANCES = 200
N_CALLS = 300


def filled_registry() -> Registry:
    registry = Registry()
    m = standard(registry)
    rng = random.Random(1)
    scores = {
        f"spec_1_{i // 10 + 1}_{i % 10 + 1}": rng.choice((100, 80, 40, 0))
        for i in range(N_INSTANCES)
    }
    states = {"ready": 120, "busy": 70, "waiting": 6, "exited": 4}

    def collect() -> None:  # what the daemon's collector does at each call
        m.instances.set_all({(state,): n for state, n in states.items()})
        m.health_score.set_all({(iid,): score for iid, score in scores.items()})

    registry.before_collect(collect)
    for _ in range(1000):
        m.tasks.inc(outcome=rng.choice(("completed", "completed", "failed")))
        m.task_duration.observe(rng.uniform(1, 600))
        m.queue_wait.observe(rng.uniform(0, 30))
    for event in ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop"):
        m.hook_events.inc(rng.randint(100, 5000), event=event)
    m.recoveries.inc(3, action="restart", outcome="ok")
    return registry


def timed(fn: Callable[[], Any], n: int = N_CALLS) -> tuple[float, float]:
    """Median and p99 of ``n`` calls, in ms."""
    fn()  # warm
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(n * 0.99) - 1]


async def over_socket(tools: ObserveTools) -> dict[str, tuple[float, float]]:
    catalogue = Catalogue()
    catalogue.extend(tools.tools())
    sock_dir = Path(tempfile.mkdtemp(prefix="tcm-bm-", dir="/tmp"))
    server = RpcServer(
        catalogue, lambda token, who, method: OPERATOR, path=sock_dir / "s.sock", max_frame=1 << 24
    )
    await server.start()
    try:

        def calls() -> dict[str, tuple[float, float]]:
            with Client(server.path, timeout_s=30) as client:
                return {
                    fmt: timed(lambda fmt=fmt: client.call("metrics", {"format": fmt}))  # type: ignore[misc]
                    for fmt in ("json", "prometheus")
                }

        return await asyncio.to_thread(calls)
    finally:
        server.stop_accepting()
        await server.drain(1.0)
        shutil.rmtree(sock_dir, ignore_errors=True)


def main() -> None:
    registry = filled_registry()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        store = JsonFileStore(Path(tmp) / "store")
        store.open()
        tools = ObserveTools(EventLog(store, Changes()), registry)
        text = tools.metrics(OPERATOR, MetricsParams(format="prometheus"))["text"]
        print(
            f"{N_INSTANCES} instance series; prometheus text {len(text):,} bytes, "
            f"{text.count(chr(10)):,} lines"
        )
        for fmt in ("json", "prometheus"):
            params = MetricsParams(format=fmt)
            p50, p99 = timed(lambda params=params: tools.metrics(OPERATOR, params))  # type: ignore[misc]
            print(f"handler   {fmt:10} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        for fmt, (p50, p99) in asyncio.run(over_socket(tools)).items():
            print(f"over RPC  {fmt:10} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
        store.close()


if __name__ == "__main__":
    main()
