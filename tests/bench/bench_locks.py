"""Benchmark: the lock service on a real redis-server, and embedded. Prints its figures.

    .venv/bin/python -m tests.bench.bench_locks

- uncontended acquire → release, sequential: per-cycle latency (p50, p99) and cycles/s;
- 20 contenders taking one lock 25 times each: hand-overs/s when they share one Locks
  (one daemon: a release wakes the waiters at once) and when each has its own client and
  Locks (20 nodes: waiters find out by jittered backoff);
- fail-closed: how long acquire takes to raise Unavailable with Redis stopped, with
  redis-py's default retries and with one retry.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tcmd.errors import Unavailable
from tcmd.store.locks import EmbeddedLockBackend, Locks, RedisLockBackend
from tests.redis_server import RedisServer

N_CYCLES = 5_000
CONTENDERS = 20
ROUNDS = 25


async def uncontended(locks: Locks) -> tuple[float, float, float]:
    lat: list[float] = []
    began = time.perf_counter()
    for _ in range(N_CYCLES):
        t = time.perf_counter()
        lease = await locks.acquire("bench", ttl_ms=10_000)
        await locks.release(lease)
        lat.append(time.perf_counter() - t)
    rate = N_CYCLES / (time.perf_counter() - began)
    q = statistics.quantiles(lat, n=100)
    return q[49] * 1000, q[98] * 1000, rate


async def contended(make: Callable[[], Locks]) -> float:
    async def one(locks: Locks) -> None:
        for _ in range(ROUNDS):
            async with locks.hold("hot", ttl_ms=10_000, wait_ms=60_000):
                await asyncio.sleep(0)

    nodes = [make() for _ in range(CONTENDERS)]
    began = time.perf_counter()
    await asyncio.gather(*(one(n) for n in nodes))
    return CONTENDERS * ROUNDS / (time.perf_counter() - began)


async def main() -> None:
    server = RedisServer().start()
    clients: list[aioredis.Redis] = []

    def client() -> aioredis.Redis:
        clients.append(aioredis.Redis.from_url(server.url))
        return clients[-1]

    try:
        shared = Locks(RedisLockBackend(client()))
        embedded = Locks(EmbeddedLockBackend())
        for label, locks in (("redis", shared), ("embedded", embedded)):
            p50, p99, rate = await uncontended(locks)
            print(f"{label:9} uncontended acquire+release: p50 {p50:.3f} ms, "
                  f"p99 {p99:.3f} ms, {rate:,.0f} cycles/s")  # fmt: skip
        one_daemon = await contended(lambda: shared)
        print(f"redis     {CONTENDERS} contenders, one Locks: {one_daemon:,.0f} hand-overs/s")
        nodes = await contended(lambda: Locks(RedisLockBackend(client())))
        print(f"redis     {CONTENDERS} contenders, {CONTENDERS} nodes: {nodes:,.0f} hand-overs/s")
        emb = await contended(lambda: embedded)
        print(f"embedded  {CONTENDERS} contenders: {emb:,.0f} hand-overs/s")
        quick = aioredis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 1))
        clients.append(quick)
        server.stop()
        for label, c in (("default retries", clients[0]), ("one retry", quick)):
            t = time.perf_counter()
            try:
                await Locks(RedisLockBackend(c)).acquire("down", ttl_ms=1000)
            except Unavailable:
                took = (time.perf_counter() - t) * 1000
                print(f"redis     stopped, acquire → Unavailable ({label}): {took:.0f} ms")
    finally:
        for c in clients:
            await c.aclose()
        server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
