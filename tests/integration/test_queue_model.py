"""The queue state machine against a small model, on both backends (hypothesis stateful).

The model is a dict of jobs with their state, manager, priority, seq, attempts and the
lease token that holds them; a claim takes the best (priority, seq) of the manager's and
the pool's ready jobs, a retry falls due at once (base_ms 0), a spent token is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tcmd.work.queue.base import AsyncJobQueue, JobState, Priority, RetryPolicy, StaleLease
from tcmd.work.queue.redis import RedisJobQueue
from tests.integration.queue_backends import local_queue, make_job, redis_queue
from tests.redis_server import RedisServer

MANAGERS = ("mgr_1_1", "mgr_1_2")
RETRY = RetryPolicy(attempts=2, base_ms=0, cap_ms=0)  # a failed attempt is due again at once
SETTINGS = settings(
    max_examples=15,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
Opener = Callable[[], AbstractAsyncContextManager[AsyncJobQueue]]


@dataclass
class Model:
    state: JobState
    manager: str | None
    priority: Priority
    seq: int
    attempts: int = 0
    token: int | None = None
    result: str | None = None
    under: str | None = None  # the manager that claimed it last


class QueueMachine(RuleBasedStateMachine):
    open_queue: Opener  # set by each test

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.context = self.open_queue()
        self.queue: AsyncJobQueue = self.run(self.context.__aenter__())
        self.model: dict[str, Model] = {}
        self.spent: list[tuple[str, int]] = []  # tokens that no longer hold their job
        self.seq = 0

    def run(self, awaitable: Any) -> Any:
        return self.runner.run(awaitable)

    def teardown(self) -> None:
        self.run(self.context.__aexit__(None, None, None))
        self.runner.close()

    def pick(self, index: int, *states: JobState) -> str | None:
        ids = sorted(i for i, job in self.model.items() if not states or job.state in states)
        return ids[index % len(ids)] if ids else None

    def active(self, index: int) -> tuple[str, int]:
        job_id = self.pick(index, JobState.ACTIVE)
        assert job_id is not None
        token = self.model[job_id].token
        assert token is not None
        return job_id, token

    @rule(manager=st.sampled_from((*MANAGERS, None)), priority=st.sampled_from(Priority))
    def enqueue(self, manager: str | None, priority: Priority) -> None:
        job_id = self.run(self.queue.new_job_id())
        assert job_id not in self.model
        job = self.run(self.queue.enqueue(make_job(job_id, manager, priority, RETRY)))
        assert job.state is JobState.QUEUED
        self.seq += 1
        self.model[job_id] = Model(JobState.QUEUED, manager, priority, self.seq)

    @precondition(lambda self: self.model)
    @rule(index=st.integers(0, 99))
    def enqueue_again(self, index: int) -> None:
        job_id = self.pick(index)
        assert job_id is not None
        job = self.run(self.queue.enqueue(make_job(job_id, "mgr_9_9", Priority.CRITICAL)))
        assert job.state is self.model[job_id].state  # nothing changed

    @rule(manager=st.sampled_from(MANAGERS), n=st.integers(1, 3))
    def claim(self, manager: str, n: int) -> None:
        for job in self.model.values():
            if job.state is JobState.RETRYING:
                job.state = JobState.QUEUED
        ready = sorted(
            (job.priority, job.seq, job_id)
            for job_id, job in self.model.items()
            if job.state is JobState.QUEUED and job.manager in (manager, None)
        )
        leases = self.run(self.queue.claim(manager, "node-a", n))
        assert [lease.job.job_id for lease in leases] == [job_id for *_, job_id in ready[:n]]
        for lease in leases:
            job = self.model[lease.job.job_id]
            job.state, job.token, job.attempts = JobState.ACTIVE, lease.token, job.attempts + 1
            job.under = manager
            assert lease.job.attempts == job.attempts

    def _release(self, job_id: str) -> None:
        job = self.model[job_id]
        if job.token is not None:
            self.spent.append((job_id, job.token))
            job.token = None

    @precondition(lambda self: any(j.state is JobState.ACTIVE for j in self.model.values()))
    @rule(index=st.integers(0, 99))
    def ack(self, index: int) -> None:
        job_id, token = self.active(index)
        done = self.run(self.queue.ack(job_id, token, f"result of {job_id}"))
        assert done.state is JobState.COMPLETED
        self.model[job_id].state, self.model[job_id].result = JobState.COMPLETED, done.result
        self._release(job_id)

    @precondition(lambda self: any(j.state is JobState.ACTIVE for j in self.model.values()))
    @rule(index=st.integers(0, 99))
    def fail(self, index: int) -> None:
        job_id, token = self.active(index)
        job = self.model[job_id]
        got = self.run(self.queue.fail(job_id, token, "boom"))
        job.state = JobState.RETRYING if job.attempts < RETRY.attempts else JobState.FAILED
        assert got.state is job.state
        self._release(job_id)

    @precondition(lambda self: self.spent)
    @rule(index=st.integers(0, 99))
    def stale_ack(self, index: int) -> None:
        job_id, token = self.spent[index % len(self.spent)]
        with pytest.raises(StaleLease):
            self.run(self.queue.ack(job_id, token, "stale"))

    @precondition(lambda self: self.model)
    @rule(index=st.integers(0, 99), give_up=st.booleans())
    def end(self, index: int, give_up: bool) -> None:
        job_id = self.pick(index)
        assert job_id is not None
        job = self.model[job_id]
        if give_up:
            got = self.run(self.queue.give_up(job_id, "run gone"))
        else:
            got = self.run(self.queue.cancel(job_id))
        if job.state not in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
            job.state = JobState.FAILED if give_up else JobState.CANCELLED
            self._release(job_id)
        assert got.state is job.state

    @invariant()
    def matches_the_model(self) -> None:
        jobs = {job.job_id: job for job in self.run(self.queue.jobs())}
        assert {i: j.state for i, j in jobs.items()} == {i: j.state for i, j in self.model.items()}
        assert {i: j.result for i, j in jobs.items()} == {
            i: j.result for i, j in self.model.items()
        }
        for manager in (*MANAGERS, None):
            expected = sum(
                1
                for job in self.model.values()
                if job.manager == manager and job.state in (JobState.QUEUED, JobState.RETRYING)
            )
            assert self.run(self.queue.waiting(manager)) == expected
        by_state = self.run(self.queue.stats())["byState"]
        for state in JobState:
            assert by_state[state.value] == sum(1 for j in self.model.values() if j.state is state)
        if isinstance(self.queue, RedisJobQueue):  # every end of an active job frees its room
            running = self.run(self.queue.limits())
            for manager in MANAGERS:
                expected = sum(
                    1
                    for j in self.model.values()
                    if j.state is JobState.ACTIVE and j.under == manager
                )
                assert running.get(f"active:{manager}", 0) == expected


def run_machine(open_queue: Opener) -> None:
    machine = type("Machine", (QueueMachine,), {"open_queue": staticmethod(open_queue)})
    machine.TestCase.settings = SETTINGS
    machine.TestCase().runTest()


@asynccontextmanager
async def fresh_local_queue() -> AsyncIterator[AsyncJobQueue]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        async with local_queue(Path(tmp) / "state") as queue:
            yield queue


def test_local_queue_follows_the_model() -> None:
    run_machine(fresh_local_queue)


def test_redis_queue_follows_the_model(redis_server: RedisServer) -> None:
    examples = itertools.count()

    def fresh_redis_queue() -> AbstractAsyncContextManager[AsyncJobQueue]:
        # each example its own prefix on the one server: it starts from an empty queue
        return redis_queue(redis_server.url, prefix=f"t{next(examples)}:")

    run_machine(fresh_redis_queue)
