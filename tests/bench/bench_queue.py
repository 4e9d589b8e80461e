"""Benchmark: LocalJobQueue over a JsonFileStore (fsync off). Prints its figures.

    .venv/bin/python -m tests.bench.bench_queue

Targets: >= 20,000 jobs/s for the full cycle put → take → complete of 50,000 jobs (one
manager and the pool); pickup latency put() → take() p99 <= 1 ms with a free slot.

The cycle runs three ways: with the store as the daemon opens it (a snapshot of the whole
state every 1,000 records), with compaction out of the window (journal appends only), and
over a store that does nothing (the queue's own cost).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tcmd.store.base import StateStore
from tcmd.store.jsonfile import JsonFileStore
from tcmd.work.queue.base import Job, Priority
from tcmd.work.queue.local import LocalJobQueue

N_JOBS = 50_000
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


if __name__ == "__main__":
    main()
