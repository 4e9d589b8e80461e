"""Both AsyncJobQueue backends for the queue tests: LocalJobQueue behind its async adapter
over a real JsonFileStore, and RedisJobQueue over a real redis-server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from redis.asyncio import Redis

from tcmd.store.jsonfile import JsonFileStore
from tcmd.work.queue.base import Job, Priority, RetryPolicy
from tcmd.work.queue.local import LocalJobQueue
from tcmd.work.queue.local_async import AsyncLocalJobQueue
from tcmd.work.queue.redis import RedisJobQueue

T = TypeVar("T")


class MaxJitter(random.Random):
    """Always the longest backoff, so retry times are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


@asynccontextmanager
async def local_queue(directory: Path) -> AsyncIterator[AsyncLocalJobQueue]:
    store = JsonFileStore(directory)
    store.open()
    queue = LocalJobQueue(store, rng=MaxJitter())
    queue.load()
    try:
        yield AsyncLocalJobQueue(queue)
    finally:
        store.close()


@asynccontextmanager
async def redis_queue(
    url: str, lease_ms: int = 30_000, prefix: str = "tcm:"
) -> AsyncIterator[RedisJobQueue]:
    client = Redis.from_url(url)
    try:
        yield RedisJobQueue(client, prefix=prefix, lease_ms=lease_ms, rng=MaxJitter())
    finally:
        await client.aclose()


def make_job(
    job_id: str,
    manager_id: str | None = None,
    priority: Priority = Priority.MEDIUM,
    retry: RetryPolicy | None = None,
) -> Job:
    return Job(
        job_id=job_id,
        run_id="run_1",
        task_id=job_id.replace("job", "task"),
        task={"instruction": f"do {job_id}"},
        priority=priority,
        manager_id=manager_id,
        retry=retry or RetryPolicy(),
    )


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout_s: float = 5) -> T:
    """Call ``probe`` until it returns something truthy, to a deadline (the condition
    lives in Redis or behind Redis TIME: no in-process Event can signal it)."""
    async with asyncio.timeout(timeout_s):
        while not (found := await probe()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return found
