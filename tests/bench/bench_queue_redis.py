"""Benchmark: RedisJobQueue on a real redis-server (its own, on a free port). Prints figures.

    .venv/bin/python -m tests.bench.bench_queue_redis

Targets (issue 12): >= 8,000 no-op jobs/s through enqueue → claim → ack for one daemon
(one client; batches: enqueue_many, claim n, ack_many, each one script call per batch in
which every job makes its own transition; measured as one cycle after another, and as two
managers' cycles at once, as a daemon's managers do), and a pickup p99 <= 2 ms: enqueue
to claim by a claimer blocked in ``wait()`` (BLPOP on the wake list). Printed beside
``redis-benchmark -t lpush,lpop -q`` on the same server, as a ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import subprocess
import time

from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from tcmd.work.queue.base import Job
from tcmd.work.queue.redis import RedisJobQueue
from tests.redis_server import RedisServer

N_JOBS = 20_000
BATCH = 250
N_LATENCY = 2_000
TASK = {"name": "noop", "instruction": "nothing", "completionPattern": "DONE"}


def job(job_id: str, manager_id: str | None) -> Job:
    return Job(job_id=job_id, run_id="run_1", task_id=job_id, task=TASK, manager_id=manager_id)


async def cycle(queue: RedisJobQueue, manager: str, n_jobs: int) -> int:
    """``n_jobs`` through the whole cycle, batch by batch, half ``manager``'s, half pooled
    (so another stream may claim some of them): the number this stream acked."""
    enqueued = acked = 0
    while True:
        if enqueued < n_jobs:
            ids = await queue.new_job_ids(BATCH)
            jobs = [job(i, manager if n % 2 else None) for n, i in enumerate(ids)]
            enqueued += len(await queue.enqueue_many(jobs))
        leases = await queue.claim(manager, "node-a", BATCH)
        if not leases and enqueued >= n_jobs:
            return acked
        outcomes = await queue.ack_many((x.job.job_id, x.token, None, None) for x in leases)
        assert not any(outcomes)
        acked += len(outcomes)


async def throughput(queue: RedisJobQueue, streams: int = 1) -> float:
    """Jobs/s through the whole cycle: ``streams`` managers' cycles at once (a daemon's
    managers claim and ack independently, each call on its own pooled connection)."""
    started = time.perf_counter()
    per_stream = N_JOBS // streams
    cycles = (cycle(queue, f"mgr_1_{s}", per_stream) for s in range(streams))
    acked = sum(await asyncio.gather(*cycles))
    assert acked == per_stream * streams, acked
    return acked / (time.perf_counter() - started)


async def pickup(queue: RedisJobQueue) -> list[float]:
    """ms from enqueue() called to claim() returned, the claimer blocked in wait()."""
    claimed: asyncio.Queue[float] = asyncio.Queue()

    async def claimer() -> None:
        while True:
            if await queue.wait(5) and await queue.claim("mgr_2_1", "node-b"):
                claimed.put_nowait(time.perf_counter())

    task = asyncio.create_task(claimer())
    samples = []
    try:
        for job_id in await queue.new_job_ids(N_LATENCY):
            await asyncio.sleep(0.001)  # let the claimer block in BLPOP again
            started = time.perf_counter()
            await queue.enqueue(job(job_id, "mgr_2_1"))
            samples.append((await claimed.get() - started) * 1000)
    finally:
        task.cancel()
        # redis-py turns a cancelled BLPOP into its own TimeoutError
        with contextlib.suppress(asyncio.CancelledError, RedisTimeoutError):
            await task
    return samples


def redis_benchmark(port: int) -> dict[str, float]:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "lpush,lpop", "-q"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    found = re.findall(r"(LPUSH|LPOP): ([\d.]+) requests per second", out.replace("\r", "\n"))
    return {name: float(rps) for name, rps in found}


async def run(server: RedisServer) -> None:
    client = Redis.from_url(server.url)
    try:
        queue = RedisJobQueue(client)
        per_s = await throughput(queue)
        per_s_2 = await throughput(queue, streams=2)
        samples = sorted(await pickup(queue))
    finally:
        await client.aclose()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"enqueue → claim → ack: {per_s:,.0f} jobs/s ({N_JOBS:,} jobs, batches of {BATCH})")
    print(f"the same, two managers' cycles at once: {per_s_2:,.0f} jobs/s")
    print(f"pickup enqueue → claim (waiting claimer): p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    bench = redis_benchmark(server.port)
    for name, rps in bench.items():
        print(
            f"redis-benchmark {name}: {rps:,.0f} req/s; queue jobs/s / {name} = {per_s / rps:.3f}"
        )


def main() -> None:
    try:
        import uvloop  # the daemon's loop

        uvloop.install()
    except ImportError:
        pass
    server = RedisServer().start()
    try:
        asyncio.run(run(server))
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
