"""Benchmark: LocalJobQueue over a JsonFileStore (fsync off). Prints its figures.

    .venv/bin/python -m tests.bench.bench_queue

Targets: >= 20,000 jobs/s for the full cycle put → take → complete of 50,000 jobs (one
manager and the pool); pickup latency put() → take() p99 <= 1 ms with a free slot.

The cycle runs three ways: with the store as the daemon opens it (a snapshot of the whole
state every 1,000 records), with compaction out of the window (journal appends only), and
over a store that does nothing (the queue's own cost).

Task graphs (issue 15): a graph of 10,000 tasks with 20,000 edges is checked and
submitted (its first tasks queued, the rest held as one graph record) in <= 1 s; each
completion makes its dependents ready in O(their number), so the jobs/s of a chain and of
a wide fan-out stay near the flat cycle's. What is timed is what the daemon does for a
graph: ``graph.check``, the jobs built, ``Waiting.add`` (one store write), the first tasks
``put``; then per completion ``Waiting.ended`` (as ``Parallel.job_moved`` calls it), which
queues what became ready with its dependencies' results handed over. ``--rpc`` also times
a whole ``executeParallel`` of that graph on a real tcmd (socket and pydantic included).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tcmd.store.base import StateStore
from tcmd.store.jsonfile import JsonFileStore
from tcmd.work import graph
from tcmd.work.queue.base import Job, Priority
from tcmd.work.queue.local import LocalJobQueue
from tcmd.work.waiting import Waiting

N_JOBS = 50_000
N_GRAPH = 10_000  # tasks of the graph submitted at once (about 2 edges each)
N_CHAIN = 5_000
N_FAN = 20_000
N_LATENCY = 10_000
NO_COMPACTION = 10**9
TASK = {
    "name": "fix-tests",
    "context": "tests/unit",
    "instruction": "Make the unit tests pass.",
    "completionPattern": "DONE",
}


class NullStore:
    """Stores nothing: what is left is the queue's own cost."""

    backend = "null"

    def open(self) -> None:
        pass

    def get(self, ns: str, key: str) -> Any:
        return None

    def items(self, ns: str) -> dict[str, Any]:
        return {}

    def put(self, ns: str, key: str, value: Any) -> None:
        pass

    def delete(self, ns: str, key: str) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "ok": True}

    def close(self) -> None:
        pass


@contextmanager
def open_queue(snapshot_every: int | None) -> Iterator[LocalJobQueue]:
    """A loaded queue on a fresh JsonFileStore; ``snapshot_every`` None: a NullStore."""
    if snapshot_every is None:
        queue = LocalJobQueue(NullStore(), rng=random.Random(1))
        queue.load()
        yield queue
        return
    with tempfile.TemporaryDirectory() as tmp:
        store: StateStore = JsonFileStore(Path(tmp) / "store", snapshot_every=snapshot_every)
        store.open()
        try:
            queue = LocalJobQueue(store, rng=random.Random(1))
            queue.load()
            yield queue
        finally:
            store.close()


def make_jobs(n: int) -> list[Job]:
    rng = random.Random(2)
    priorities = list(Priority)
    return [
        Job(
            f"job_{i}",
            "run_1",
            f"task_{i}",
            dict(TASK),
            priority=rng.choice(priorities),
            manager_id="m1" if i % 2 else None,
        )
        for i in range(n)
    ]


def cycle(snapshot_every: int | None, allocate_ids: bool = False) -> float:
    """Jobs/s: put every job (ids from new_job_id() if asked), then take → complete each."""
    jobs = make_jobs(N_JOBS)
    with open_queue(snapshot_every) as queue:
        t = time.perf_counter()
        for job in jobs:
            if allocate_ids:
                job.job_id = queue.new_job_id()
            queue.put(job)
        done = 0
        while (taken := queue.take("m1", time.time())) is not None:
            queue.complete(taken.job_id, "ok", {"exitCode": 0})
            done += 1
        elapsed = time.perf_counter() - t
    assert done == N_JOBS, done
    return N_JOBS / elapsed


def pickup_latency(snapshot_every: int) -> list[float]:
    """put() → take() in seconds; the slot is freed (complete) between samples, untimed."""
    samples = []
    with open_queue(snapshot_every) as queue:
        for job in make_jobs(N_LATENCY):
            t = time.perf_counter()
            queue.put(job)
            taken = queue.take("m1", time.time())
            samples.append(time.perf_counter() - t)
            assert taken is job
            queue.complete(job.job_id, "ok", {})
    return sorted(samples)


def best_of(runs: int, measure: Callable[[], float]) -> str:
    rates = [measure() for _ in range(runs)]
    return f"{max(rates):,.0f} jobs/s (median of {runs}: {statistics.median(rates):,.0f})"


def main() -> None:
    print(
        f"LocalJobQueue, JsonFileStore fsync off; cycle of {N_JOBS:,} jobs put → take → "
        f"complete, target >= 20,000 jobs/s"
    )
    print(
        f"  store as the daemon opens it (snapshot every 1,000 records): {cycle(1000):,.0f} jobs/s"
    )
    print(f"  compaction out of the window: {best_of(3, lambda: cycle(NO_COMPACTION))}")
    print(
        f"  same, ids from new_job_id(): "
        f"{best_of(3, lambda: cycle(NO_COMPACTION, allocate_ids=True))}"
    )
    print(f"  queue alone (store does nothing): {best_of(3, lambda: cycle(None))}")
    lat = pickup_latency(1000)
    q = statistics.quantiles(lat, n=1000)
    print(
        f"pickup latency put → take, {N_LATENCY:,} samples, store as the daemon opens it: "
        f"p50 {q[499] * 1e3:.3f} ms, p99 {q[989] * 1e3:.3f} ms (target <= 1 ms), "
        f"p99.9 {q[998] * 1e3:.3f} ms, max {lat[-1] * 1e3:.3f} ms"
    )


@contextmanager
def open_waiting() -> Iterator[tuple[LocalJobQueue, Waiting]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = JsonFileStore(Path(tmp) / "store")  # as the daemon opens it
        store.open()
        try:
            queue = LocalJobQueue(store, rng=random.Random(1))
            queue.load()
            yield queue, Waiting(store, queue, lambda m: True)
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


def graphs() -> None:
    """The task graph figures, next to the flat cycle's above."""
    took, edges = time_submit()
    print(
        f"graph of {N_GRAPH:,} tasks, {edges:,} edges: checked and submitted in "
        f"{took * 1000:.0f} ms (target <= 1,000 ms)"
    )
    for kind, n in (("chain", N_CHAIN), ("fan-out", N_FAN + 1)):
        best = max(rate(kind) for _ in range(3))
        print(f"{kind} of {n:,} tasks, submit → every job completed: {best:,.0f} jobs/s")
    if "--rpc" in sys.argv:
        print(f"executeParallel of the same graph over the socket: {rpc_submit() * 1000:.0f} ms")


if __name__ == "__main__":
    main()
    graphs()
