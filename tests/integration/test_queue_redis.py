"""The shared job queue on a real redis-server, and the same behaviours on the local
backend behind its async adapter (the ``queue`` fixture runs each test on both)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tcmd.errors import NotFound
from tcmd.work.queue.base import AsyncJobQueue, JobState, Lease, Priority, RetryPolicy, StaleLease
from tcmd.work.queue.redis import RedisJobQueue
from tests.integration.queue_backends import eventually, local_queue, make_job, redis_queue
from tests.redis_server import RedisServer

CRITICAL, HIGH, MEDIUM, LOW = Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW


@pytest.fixture(params=["local", "redis"])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncJobQueue]:
    if request.param == "local":
        async with local_queue(tmp_path / "state") as q:
            yield q
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        async with redis_queue(server.url) as rq:
            yield rq


async def test_enqueue_claim_ack_round_trip(queue: AsyncJobQueue) -> None:
    job_id = await queue.new_job_id()
    assert job_id.startswith("job_")
    await queue.enqueue(make_job(job_id, "mgr_1_1"))
    assert await queue.waiting("mgr_1_1") == 1

    [lease] = await queue.claim("mgr_1_1", "node-a", 4)
    assert lease.job.job_id == job_id and lease.job.state is JobState.ACTIVE
    assert lease.job.attempts == 1 and lease.expires_at > time.time()
    assert await queue.waiting("mgr_1_1") == 0
    assert await queue.claim("mgr_1_1", "node-a", 4) == []

    await queue.extend(job_id, lease.token)
    done = await queue.ack(job_id, lease.token, "all good", {"branch": "b1"})
    assert done.state is JobState.COMPLETED and done.result == "all good"
    stored = await queue.get(job_id)
    assert stored.state is JobState.COMPLETED and stored.result == "all good"
    assert stored.extra == {"branch": "b1"} and stored.task == {"instruction": f"do {job_id}"}
    stats = await queue.stats()
    assert stats["byState"]["completed"] == 1 and stats["throughputPerMin"] == 1
    assert stats["avgWaitMs"] is not None and stats["avgRunMs"] is not None
    with pytest.raises(NotFound):
        await queue.get("job_999999")


async def test_priority_then_fifo_mine_and_pool(queue: AsyncJobQueue) -> None:
    plan = [
        ("job_1", "mgr_1_1", LOW),
        ("job_2", None, MEDIUM),
        ("job_3", "mgr_1_1", MEDIUM),
        ("job_4", "mgr_1_2", CRITICAL),  # another manager's: never this one's
        ("job_5", None, HIGH),
        ("job_6", "mgr_1_1", HIGH),
    ]
    for job_id, manager, priority in plan:
        await queue.enqueue(make_job(job_id, manager, priority))
    leases = await queue.claim("mgr_1_1", "node-a", 10)
    assert [lease.job.job_id for lease in leases] == ["job_5", "job_6", "job_2", "job_3", "job_1"]
    assert [lease.job.job_id for lease in await queue.claim("mgr_1_2", "node-b", 10)] == ["job_4"]
    tokens = [lease.token for lease in leases]
    assert len(set(tokens)) == len(tokens)


async def test_enqueue_is_idempotent_by_job_id(queue: AsyncJobQueue) -> None:
    first = await queue.enqueue(make_job("job_1", "mgr_1_1", HIGH))
    again = make_job("job_1", None, LOW)  # same id, other contents
    kept = await queue.enqueue(again)
    assert kept.manager_id == "mgr_1_1" and kept.priority is HIGH and kept.seq == first.seq
    assert await queue.waiting("mgr_1_1") == 1 and await queue.waiting(None) == 0
    assert len(await queue.claim("mgr_1_1", "node-a", 5)) == 1
    await queue.enqueue(make_job("job_1"))  # even once claimed
    assert (await queue.get("job_1")).state is JobState.ACTIVE
    assert (await queue.stats())["byState"]["active"] == 1


async def test_retry_with_backoff_then_failed(queue: AsyncJobQueue) -> None:
    await queue.enqueue(make_job("job_1", retry=RetryPolicy(attempts=2, base_ms=200, cap_ms=500)))
    [lease] = await queue.claim("mgr_1_1", "node-a")
    failed_at = time.time()
    job = await queue.fail("job_1", lease.token, "boom")
    assert job.state is JobState.RETRYING and job.last_error == "boom"
    retry_at = job.next_retry_at  # (the local backend's job is its live object: keep the value)
    assert retry_at == pytest.approx(failed_at + 0.2, abs=0.05)  # MaxJitter: the ceiling
    assert await queue.waiting(None) == 1
    assert await queue.claim("mgr_1_1", "node-a") == []  # not due yet

    async def due() -> list[Lease]:
        return await queue.claim("mgr_1_1", "node-a")

    [second] = await eventually(due)
    assert time.time() >= retry_at - 0.01
    assert second.job.attempts == 2 and second.token != lease.token
    with pytest.raises(StaleLease):  # the first attempt's token is spent
        await queue.fail("job_1", lease.token, "late")
    final = await queue.fail("job_1", second.token, "boom again")
    assert final.state is JobState.FAILED and final.last_error == "boom again"
    assert (await queue.stats())["byState"]["failed"] == 1


async def test_cancel_and_give_up(queue: AsyncJobQueue) -> None:
    for n in (1, 2, 3):
        await queue.enqueue(make_job(f"job_{n}", "mgr_1_1"))
    [lease] = await queue.claim("mgr_1_1", "node-a")
    assert (await queue.cancel("job_1")).state is JobState.CANCELLED  # active
    assert (await queue.cancel("job_2")).state is JobState.CANCELLED  # queued
    with pytest.raises(StaleLease):  # the cancelled job's holder cannot complete it
        await queue.ack("job_1", lease.token, "too late")
    assert (await queue.get("job_1")).result is None
    gone = await queue.give_up("job_3", "run gone")
    assert gone.state is JobState.FAILED and gone.last_error == "run gone"
    assert (await queue.cancel("job_3")).state is JobState.FAILED  # final: unchanged
    assert await queue.claim("mgr_1_1", "node-a", 5) == []
    assert await queue.waiting("mgr_1_1") == 0
    by_state = (await queue.stats())["byState"]
    assert by_state["cancelled"] == 2 and by_state["failed"] == 1 and by_state["queued"] == 0


async def test_wait_wakes_a_waiting_claimer(queue: AsyncJobQueue) -> None:
    assert await queue.wait(0.05) is False  # nothing comes: times out
    waiter = asyncio.create_task(queue.wait(10))
    await asyncio.sleep(0.05)  # let it block (a wake pushed before it blocks is kept anyway)
    assert not waiter.done()
    started = time.monotonic()
    await queue.enqueue(make_job("job_1"))
    assert await asyncio.wait_for(waiter, 2) is True
    assert time.monotonic() - started < 1
    assert [lease.job.job_id for lease in await queue.claim("mgr_1_1", "node-a")] == ["job_1"]


async def test_expired_lease_is_reaped_and_the_stale_ack_refused(
    redis_server: RedisServer,
) -> None:
    async with redis_queue(redis_server.url, lease_ms=300) as queue:
        await queue.enqueue(make_job("job_1", "mgr_1_1"))
        [first] = await queue.claim("mgr_1_1", "node-a")

        async def reclaimed() -> list[Lease]:  # node b claims it once a's lease ran out
            return await queue.claim("mgr_1_1", "node-b")

        [second] = await eventually(reclaimed)
        assert second.job.job_id == "job_1" and second.token > first.token
        assert second.job.reruns == 1 and second.job.attempts == 2
        with pytest.raises(StaleLease) as refused:
            await queue.ack("job_1", first.token, "node a's result")
        assert refused.value.data is not None and refused.value.data["holder"] == str(second.token)
        done = await queue.ack("job_1", second.token, "node b's result")
        assert done.result == "node b's result"
        with pytest.raises(StaleLease):
            await queue.ack("job_1", first.token, "node a's result")
        assert (await queue.get("job_1")).result == "node b's result"


async def test_reap_requeues_and_wakes_an_idle_node(redis_server: RedisServer) -> None:
    async with redis_queue(redis_server.url, lease_ms=200) as queue:
        await queue.enqueue(make_job("job_1"))
        [lease] = await queue.claim("mgr_1_1", "node-a")  # node a then dies
        with pytest.raises(StaleLease):
            await queue.extend("job_1", lease.token + 1)
        # an idle node's wait ends when the lease runs out, without a wake from anyone
        assert await queue.wait(5) is True
        assert await eventually(queue.reap) == ["job_1"]
        job = await queue.get("job_1")
        assert job.state is JobState.QUEUED and job.reruns == 1
        assert await queue.waiting(None) == 1


async def test_two_queues_share_one_redis(redis_server: RedisServer) -> None:
    async with redis_queue(redis_server.url) as a, redis_queue(redis_server.url) as b:
        ids = {await a.new_job_id(), await b.new_job_id(), await a.new_job_id()}
        assert len(ids) == 3
        assert isinstance(a, RedisJobQueue)
        await a.enqueue_many([make_job(f"job_{n}") for n in range(1, 11)])
        got_a = await a.claim("mgr_1_1", "node-a", 6)
        got_b = await b.claim("mgr_2_1", "node-b", 6)
        assert len(got_a) == 6 and len(got_b) == 4
        assert not {x.job.job_id for x in got_a} & {x.job.job_id for x in got_b}
        outcomes = await b.ack_many([(x.job.job_id, x.token, None, None) for x in got_a])
        assert outcomes == [None] * 6
        stale = got_a[0]
        [refused] = await a.ack_many([(stale.job.job_id, stale.token, "again", None)])
        assert isinstance(refused, StaleLease)
        assert (await a.stats())["byState"]["completed"] == 6


async def test_a_manager_s_limit_holds_on_every_node(redis_server: RedisServer) -> None:
    async with (
        redis_queue(redis_server.url) as a,
        redis_queue(redis_server.url) as b,
        redis_queue(redis_server.url, lease_ms=300) as dying,  # leases that run out soon
    ):
        assert isinstance(a, RedisJobQueue) and isinstance(b, RedisJobQueue)
        assert isinstance(dying, RedisJobQueue)
        await a.enqueue_many([make_job(f"job_{n}", "mgr_1_1") for n in range(1, 7)])
        first = await a.claim("mgr_1_1", "node-a", 5, limit=2)  # its own node: limit 2
        assert len(first) == 2
        assert await b.claim("mgr_1_1", "node-b", 3) == []  # no room left on any node
        assert (await b.reap_and_limits()) == ([], {"max:mgr_1_1": 2, "active:mgr_1_1": 2})
        await a.ack(first[0].job.job_id, first[0].token, None)
        assert await b.wait(5) is True  # the freed room wakes an idle node
        [taken] = await b.claim("mgr_1_1", "node-b", 3)
        await b.fail(taken.job.job_id, taken.token, "boom")  # an end frees room too
        [again] = await b.claim("mgr_1_1", "node-b", 3)
        await b.cancel(again.job.job_id)  # and a cancel
        [held] = await dying.claim("mgr_1_1", "node-c", 3)
        assert await b.claim("mgr_1_1", "node-b", 3) == []
        # a dead holder's lease runs out: the reap frees its room
        [after] = await eventually(lambda: b.claim("mgr_1_1", "node-b", 3))
        assert (await b.get(held.job.job_id)).reruns == 1
        assert (await a.stats())["limits"]["active:mgr_1_1"] == 2
        await b.give_up(after.job.job_id, "done with it")
        assert (await b.limits())["active:mgr_1_1"] == 1


async def test_prune_forgets_a_run_s_final_jobs_and_its_description(
    redis_server: RedisServer,
) -> None:
    async with redis_queue(redis_server.url) as q:
        assert isinstance(q, RedisJobQueue)
        await q.put_run("a", "run_1", {"workDir": "/tmp"})
        await q.enqueue_many([make_job(f"job_{n}", "mgr_1_1") for n in range(1, 4)])
        for lease in await q.claim("mgr_1_1", "node-a", 2):
            await q.ack(lease.job.job_id, lease.token, None)
        assert await q.prune("a", "run_1", ["job_1", "job_2", "job_3"]) == 2
        assert await q.get_run("a", "run_1") is not None  # job_3 is still queued
        assert [j.job_id for j in await q.jobs()] == ["job_3"]
        await q.cancel("job_3")
        assert await q.prune("a", "run_1", ["job_3"]) == 1
        assert await q.get_run("a", "run_1") is None and await q.jobs() == []
        assert sum((await q.stats())["byState"].values()) == 0
