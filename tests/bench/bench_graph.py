"""Benchmark: task graphs over LocalJobQueue + JsonFileStore (fsync off). Prints figures.

    .venv/bin/python -m tests.bench.bench_graph

Targets (issue 15): a graph of 10,000 tasks with 20,000 edges is checked and submitted
(its first tasks queued, the rest held as a graph record) in <= 1 s; each completion makes
its dependents ready in O(their number): the jobs/s of a chain and of a wide fan-out stay
near the flat cycle's (``bench_queue``), which is printed beside them.

What is timed is what the daemon does for the graph: ``graph.check``, the jobs built,
``Waiting.add`` (one store write), the ready tasks ``put``; then per completion
``Waiting.ended`` (as ``Parallel.job_moved`` calls it), which queues what became ready
with its dependencies' results handed over. The JSON-RPC call and pydantic's validation
of the tasks are not in it: ``main`` also times a whole ``executeParallel`` of the same
graph on a real tcmd (wait=false) when asked with ``--rpc``.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tcmd.store.jsonfile import JsonFileStore
from tcmd.work import graph
from tcmd.work.queue.base import Job, Priority
from tcmd.work.queue.local import LocalJobQueue
from tcmd.work.waiting import Waiting
from tests.bench.bench_queue import cycle

N_GRAPH = 10_000
N_CHAIN = 5_000
N_FAN = 20_000


@contextmanager
def open_waiting() -> Iterator[tuple[LocalJobQueue, Waiting]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = JsonFileStore(Path(tmp) / "store")  # as the daemon opens it
        store.open()
        try:
            queue = LocalJobQueue(store, rng=random.Random(1))
            queue.load()
            yield queue, Waiting(store, queue, lambda: None, lambda m: True)
        finally:
            store.close()


def random_dag(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` tasks, each after the first depending on two earlier ones: ~2n edges."""
    rng = random.Random(seed)
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        deps = sorted({f"t{rng.randrange(i)}" for _ in range(2)}) if i else []
        while i > 1 and len(deps) < 2:
            deps = sorted({*deps, f"t{rng.randrange(i)}"})
        tasks.append({"id": f"t{i}", "instruction": f"echo {i}", "dependsOn": deps})
    return tasks


def submit(queue: LocalJobQueue, waiting: Waiting, tasks: list[dict[str, Any]]) -> None:
    """What ``ParallelTools._enqueue`` does for a graph, minus the RPC and pydantic."""
    graph.check([(t["id"], t["dependsOn"]) for t in tasks])
    jobs = [Job(queue.new_job_id(), "run_1", t["id"], t, Priority.MEDIUM, "m1") for t in tasks]
    job_ids = {j.task_id: j.job_id for j in jobs}
    waiting.add("run_1", "shell", job_ids, [j for j in jobs if j.task["dependsOn"]])
    for job in jobs:
        if not job.task["dependsOn"]:
            queue.put(job)
    waiting.submitted("run_1", shared=False)


def drain(queue: LocalJobQueue, waiting: Waiting, expect: int) -> None:
    done = 0
    while (job := queue.take("m1", time.time())) is not None:
        waiting.ended(queue.complete(job.job_id, f"out {job.task_id}", {}))
        done += 1
    assert done == expect, done


def time_submit() -> tuple[float, int]:
    tasks = random_dag(N_GRAPH)
    edges = sum(len(t["dependsOn"]) for t in tasks)
    with open_waiting() as (queue, waiting):
        began = time.perf_counter()
        submit(queue, waiting, tasks)
        took = time.perf_counter() - began
        drain(queue, waiting, N_GRAPH)  # and it runs to the end, in order
    return took, edges


def shaped(kind: str) -> list[dict[str, Any]]:
    if kind == "chain":
        return [
            {"id": f"t{i}", "instruction": "x", "dependsOn": [f"t{i - 1}"] if i else []}
            for i in range(N_CHAIN)
        ]
    root = {"id": "root", "instruction": "x", "dependsOn": []}
    return [root] + [
        {"id": f"t{i}", "instruction": "x", "dependsOn": ["root"]} for i in range(N_FAN)
    ]


def rate(kind: str) -> float:
    """Jobs/s of the whole cycle of a chain or a fan-out: submit, then take → complete
    → the dependents released, to the last job."""
    tasks = shaped(kind)
    with open_waiting() as (queue, waiting):
        began = time.perf_counter()
        submit(queue, waiting, tasks)
        drain(queue, waiting, len(tasks))
        return len(tasks) / (time.perf_counter() - began)


def rpc_submit() -> float:
    """A whole executeParallel (wait=false) of the 10,000-task graph on a real tcmd."""
    from tests.fakes import FAKE_CLAUDE
    from tests.support import AgentDaemon, DaemonProcess

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        agents = AgentDaemon.start_in(Path(tmp), DaemonProcess, FAKE_CLAUDE)
        try:
            agents.spawn("executive", agent="shell")
            mgr = agents.spawn("manager", parent="exec_1", agent="shell")["instanceId"]
            tasks = [{**t, "instruction": "true"} for t in random_dag(N_GRAPH)]
            client = agents.daemon.client(timeout_s=120)
            params = {"managerId": mgr, "tasks": tasks, "agent": "shell", "wait": False,
                      "workDir": str(agents.work_dir), "isolation": "shared",
                      "maxConcurrent": 1}  # fmt: skip
            began = time.perf_counter()
            client.call("executeParallel", params)
            took = time.perf_counter() - began
            client.call("cancel", {"runId": "run_1"})
            return took
        finally:
            agents.daemon.cleanup()


def main() -> None:
    took, edges = time_submit()
    print(
        f"graph of {N_GRAPH:,} tasks, {edges:,} edges: checked and submitted in "
        f"{took * 1000:.0f} ms (target <= 1,000 ms)"
    )
    flat = max(cycle(1000) for _ in range(2))
    print(f"flat cycle put → take → complete (bench_queue, 50,000 jobs): {flat:,.0f} jobs/s")
    for kind, n in (("chain", N_CHAIN), ("fan-out", N_FAN + 1)):
        best = max(rate(kind) for _ in range(3))
        print(f"{kind} of {n:,} tasks, submit → every job completed: {best:,.0f} jobs/s")
    if "--rpc" in sys.argv:
        print(f"executeParallel of the same graph over the socket: {rpc_submit() * 1000:.0f} ms")


if __name__ == "__main__":
    main()
