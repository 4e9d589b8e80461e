"""The lock service against a real redis-server, and the embedded one in the same tests."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tcmd.errors import Unavailable
from tcmd.store.locks import (
    EmbeddedLockBackend,
    Lease,
    LockBusy,
    LockLost,
    Locks,
    RedisLockBackend,
)
from tcmd.work.repolocks import RepoLocks, lock_name
from tests.redis_server import RedisServer

Factory = Callable[..., Locks]


def client_for(server: RedisServer) -> aioredis.Redis:
    # fail fast while Redis is down: one retry, short timeouts
    return aioredis.Redis.from_url(
        server.url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 1)
    )


@pytest.fixture(params=["redis", "embedded"])
async def make_locks(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """``make_locks(renew=True)``: a Locks as a new node would have it (own Redis client)."""
    clients: list[aioredis.Redis] = []
    made: list[Locks] = []
    backend = EmbeddedLockBackend()  # one process: every "node" shares it
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")

    def make(renew: bool = True) -> Locks:
        if server is None:
            made.append(Locks(backend, renew=renew))
        else:
            clients.append(client_for(server))
            made.append(Locks(RedisLockBackend(clients[-1]), renew=renew))
        return made[-1]

    yield make
    for locks in made:
        await locks.close()
    for c in clients:
        await c.aclose()


@pytest.mark.parametrize("one_daemon", [True, False], ids=["one-daemon", "many-nodes"])
async def test_twenty_contenders_exclusive(make_locks: Factory, one_daemon: bool) -> None:
    counter = {"n": 0}
    intervals: list[tuple[float, float, int]] = []
    shared = make_locks()

    async def contender() -> None:
        locks = shared if one_daemon else make_locks()
        async with locks.hold("counter", ttl_ms=2000, wait_ms=20_000) as lease:
            start = time.monotonic()
            seen = counter["n"]  # read, yield, write: lost updates unless exclusive
            await asyncio.sleep(0.002)
            counter["n"] = seen + 1
            intervals.append((start, time.monotonic(), lease.fence))

    await asyncio.gather(*(contender() for _ in range(20)))
    assert counter["n"] == 20
    intervals.sort()
    for (_, end, fence), (next_start, _, next_fence) in itertools.pairwise(intervals):
        assert end <= next_start, "two holders overlapped"
        assert next_fence > fence, "fences must grow with each acquisition"


async def test_shared_redis_counter_exclusive(redis_server: RedisServer) -> None:
    """The same over a counter kept in Redis, read and written in two calls."""
    client = client_for(redis_server)

    async def contender() -> None:
        own = client_for(redis_server)  # each contender a node with its own connection
        async with Locks(RedisLockBackend(own)).hold("rc", ttl_ms=2000, wait_ms=20_000):
            seen = int(await client.get("counter") or 0)
            await client.set("counter", seen + 1)
        await own.aclose()

    await asyncio.gather(*(contender() for _ in range(20)))
    assert int(await client.get("counter") or 0) == 20
    await client.aclose()


async def test_expired_holder_loses_to_next(make_locks: Factory) -> None:
    stalled = make_locks(renew=False)  # a holder that stopped renewing
    old = await stalled.acquire("job", ttl_ms=200)
    began = time.monotonic()
    new = await make_locks().acquire("job", ttl_ms=5000, wait_ms=5000)
    assert time.monotonic() - began >= 0.15
    assert new.fence > old.fence
    with pytest.raises(LockLost):
        await stalled.extend(old, 5000)
    assert old.lost.is_set()
    # the stale holder's release does nothing to the new holder's lock
    assert await stalled.release(old) is False
    with pytest.raises(LockBusy):
        await make_locks().acquire("job", ttl_ms=1000, wait_ms=0)
    await make_locks().release(new)


async def test_renewal_keeps_lock_past_several_ttls(make_locks: Factory) -> None:
    locks = make_locks()
    lease = await locks.acquire("long", ttl_ms=150)
    await asyncio.sleep(0.75)  # five TTLs pass: that time passing is what is tested
    assert lease.held
    with pytest.raises(LockBusy):
        await make_locks().acquire("long", ttl_ms=150, wait_ms=50)
    assert await locks.release(lease) is True
    again = await make_locks().acquire("long", ttl_ms=150, wait_ms=0)
    assert again.fence > lease.fence


async def test_stale_fence_refused(make_locks: Factory) -> None:
    stalled = make_locks(renew=False)
    a = await stalled.acquire("res", ttl_ms=100)
    assert await stalled.fenced_write("res", a.fence, "from a")
    b = await make_locks().acquire("res", ttl_ms=5000, wait_ms=5000)
    assert await make_locks().fenced_write("res", b.fence, "from b")
    # a paused past its TTL and does not know: its write is refused, b's stays
    assert await stalled.fenced_write("res", a.fence, "late from a") is False
    assert await stalled.fenced_read("res") == (b.fence, "from b")
    assert await stalled.check_fence("res", a.fence) is False
    assert await stalled.check_fence("res", b.fence) is True


async def test_release_by_non_holder_does_nothing(make_locks: Factory) -> None:
    locks = make_locks()
    lease = await locks.acquire("mine", ttl_ms=2000)
    forged = Lease("mine", "not-the-token", lease.fence, 2000, lease.valid_until)
    assert await make_locks().release(forged) is False
    with pytest.raises(LockBusy):
        await make_locks().acquire("mine", ttl_ms=2000, wait_ms=0)
    assert lease.held
    await locks.release(lease)


async def test_wait_is_bounded(make_locks: Factory) -> None:
    locks = make_locks()
    lease = await locks.acquire("busy", ttl_ms=5000)
    began = time.monotonic()
    with pytest.raises(LockBusy) as info:
        await make_locks().acquire("busy", ttl_ms=5000, wait_ms=200)
    assert 0.2 <= time.monotonic() - began < 1.5
    assert info.value.data == {"lock": "busy", "waitedMs": 200}
    await locks.release(lease)


async def test_cancelled_waiter_leaves_the_lock_usable(make_locks: Factory) -> None:
    locks = make_locks()
    lease = await locks.acquire("q", ttl_ms=2000)
    waiter = asyncio.create_task(locks.acquire("q", ttl_ms=2000, wait_ms=10_000))
    await asyncio.sleep(0.01)  # let it queue
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await locks.release(lease)
    again = await locks.acquire("q", ttl_ms=2000, wait_ms=0)
    assert again.fence > lease.fence
    await locks.release(again)


async def test_takeover_tells_the_holder(redis_server: RedisServer) -> None:
    client = client_for(redis_server)
    backend = RedisLockBackend(client)
    holder = Locks(backend)
    lease = await holder.acquire("adopt", ttl_ms=300)
    queued = asyncio.create_task(holder.acquire("adopt", ttl_ms=300, wait_ms=5000))
    await client.delete(backend.lock_key("adopt"))  # as if it expired during a pause
    taker = Locks(RedisLockBackend(client))
    other = await taker.acquire("adopt", ttl_ms=5000)
    async with asyncio.timeout(2):
        await lease.lost.wait()  # the next renewal finds another token
    with pytest.raises(LockLost):
        lease.check()
    assert await client.get(backend.lock_key("adopt")) == other.token.encode()
    # the lost lease no longer blocks this process's queue: the next waits on the taker
    await taker.release(other)
    mine = await queued
    assert mine.fence > other.fence
    await holder.close()
    await taker.close()
    await client.aclose()


async def test_redis_down_fails_closed_then_recovers(redis_server: RedisServer) -> None:
    client = client_for(redis_server)
    locks = Locks(RedisLockBackend(client))
    held = await locks.acquire("held", ttl_ms=300)
    redis_server.stop()
    with pytest.raises(Unavailable, match="redis unreachable"):
        await locks.acquire("other", ttl_ms=1000, wait_ms=1000)
    async with asyncio.timeout(3):
        await held.lost.wait()  # renewal failed for a whole TTL: the holder is told
    assert not held.held
    assert await locks.release(held) is False  # no raise from a finally block
    redis_server.start()
    async with asyncio.timeout(10):
        while True:  # the client reconnects on its next call
            try:
                again = await locks.acquire("held", ttl_ms=1000)
                break
            except Unavailable:
                await asyncio.sleep(0.05)
    # Redis lost its data; fences still grow (the counter restarts from Redis TIME)
    assert again.fence > held.fence
    await locks.release(again)
    await client.aclose()


async def test_hung_redis_holder_told_within_ttl(redis_server: RedisServer) -> None:
    """A Redis that stops answering (SIGSTOP) but keeps the socket: loss by the TTL."""
    client = client_for(redis_server)  # socket timeout 1 s, longer than the TTL
    locks = Locks(RedisLockBackend(client))
    lease = await locks.acquire("hung", ttl_ms=300)
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        async with asyncio.timeout(2):
            await lease.lost.wait()
        assert time.monotonic() - began < 0.9  # by the TTL (0.3 s), not the socket timeout (1 s)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    await locks.close()
    await client.aclose()


async def test_repository_locks_queue_changes_and_go_on_while_redis_is_away(
    redis_server: RedisServer,
) -> None:
    assert lock_name(Path("/srv/my repo/{x}")) == "worktree:/srv/my%20repo/%7Bx%7D"
    client = client_for(redis_server)
    nodes = [RepoLocks(Locks(RedisLockBackend(client, "tcm:"))) for _ in range(2)]
    repo, inside, most = Path("/srv/repo"), 0, 0

    async def change(node: RepoLocks) -> None:
        nonlocal inside, most
        async with node.hold(repo):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)  # the change takes a while: others must wait
            inside -= 1

    await asyncio.gather(*(change(nodes[i % 2]) for i in range(6)))
    assert most == 1
    redis_server.stop()
    try:  # Redis away: each node still holds its own lock, and work goes on
        await asyncio.wait_for(asyncio.gather(*(change(nodes[0]) for _ in range(3))), 10)
        assert most == 1
    finally:
        redis_server.start()
        await client.aclose()
