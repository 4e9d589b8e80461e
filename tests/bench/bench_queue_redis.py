"""Benchmark: RedisJobQueue on a real redis-server (its own, on a free port). Prints figures.

    .venv/bin/python -m tests.bench.bench_queue_redis

Targets (issue 12): >= 8,000 no-op jobs/s through enqueue → claim → ack for one daemon
(one client, batches pipelined: enqueue_many, claim n, ack_many; every job still goes
through its own three scripts), and a pickup p99 <= 2 ms: enqueue to claim by a claimer
blocked in ``wait()`` (BLPOP on the wake list). Printed beside ``redis-benchmark -t
lpush,lpop -q`` on the same server, as a ratio.
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


async def throughput(queue: RedisJobQueue) -> float:
    """Jobs/s through the whole cycle, batch by batch, half assigned, half pooled."""
    started = time.perf_counter()
    done = 0
    while done < N_JOBS:
        ids = await queue.new_job_ids(BATCH)
        await queue.enqueue_many([job(i, "mgr_1_1" if n % 2 else None) for n, i in enumerate(ids)])
        leases = await queue.claim("mgr_1_1", "node-a", BATCH)
        assert len(leases) == BATCH
        outcomes = await queue.ack_many((x.job.job_id, x.token, None, None) for x in leases)
        assert not any(outcomes)
        done += len(outcomes)
    return done / (time.perf_counter() - started)


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
        samples = sorted(await pickup(queue))
    finally:
        await client.aclose()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"enqueue → claim → ack: {per_s:,.0f} jobs/s ({N_JOBS:,} jobs, batches of {BATCH})")
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
