"""LocalJobQueue over a real JsonFileStore, with a fake clock that tests advance."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tcmd.errors import Conflict, NotFound, Unavailable
from tcmd.store.jsonfile import JsonFileStore
from tcmd.work.queue.base import Job, JobQueue, JobState, Priority, RetryPolicy
from tcmd.work.queue.local import ID_BLOCK, LocalJobQueue

T0 = 1_700_000_000.0
CRITICAL, HIGH, MEDIUM, LOW = Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


class MaxJitter(random.Random):
    """Always the longest delay, so retry times are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FlakyStore(JsonFileStore):
    """A JsonFileStore whose writes fail while ``broken`` is set."""

    broken = False

    def put(self, ns: str, key: str, value: Any) -> None:
        if self.broken:
            raise Unavailable("disk on fire")
        super().put(ns, key, value)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(directory: Path) -> Iterator[FlakyStore]:  # conftest's store, but one that can fail
    s = FlakyStore(directory)
    s.open()
    yield s
    s.close()


@pytest.fixture
def queue(store: JsonFileStore, clock: Clock) -> LocalJobQueue:
    return open_queue(store, clock)


def open_queue(store: JsonFileStore, clock: Clock) -> LocalJobQueue:
    q = LocalJobQueue(store, rng=MaxJitter(), clock=clock)
    q.load()
    return q


def crash(store: JsonFileStore) -> None:
    """What SIGKILL does to the store: its fd goes, no final snapshot is written."""
    assert store._fd is not None
    os.close(store._fd)
    store._fd = None


def new_job(
    job_id: str,
    priority: Priority = MEDIUM,
    manager: str | None = None,
    retry: RetryPolicy | None = None,
    run_id: str = "run_1",
) -> Job:
    return Job(
        job_id,
        run_id,
        f"task_{job_id}",
        {"name": job_id},
        priority=priority,
        manager_id=manager,
        retry=retry or RetryPolicy(),
    )


def persisted(store: JsonFileStore, job_id: str) -> Job:
    raw = store.get("jobs", job_id)
    assert raw is not None
    return Job.from_json(raw)


def ids(jobs: list[Job | None]) -> list[str | None]:
    return [job.job_id if job else None for job in jobs]


def drain(q: LocalJobQueue, manager: str, now: float) -> list[str | None]:
    return ids(list(iter(lambda: q.take(manager, now), None)))


def test_it_implements_the_protocol(queue: LocalJobQueue) -> None:
    q: JobQueue = queue
    assert q.take("m1", T0) is None
    assert q.next_wakeup() is None


def test_put_sets_seq_state_and_queued_at_and_persists(
    queue: LocalJobQueue, store: JsonFileStore, clock: Clock
) -> None:
    clock.advance(5)
    first = new_job("a")
    first.state = JobState.FAILED  # whatever the caller says: a new job is queued
    assert queue.put(first) is first
    second = queue.put(new_job("b"))
    assert (first.seq, second.seq) == (1, 2)
    assert first.state is JobState.QUEUED and first.queued_at == T0 + 5
    assert persisted(store, "a") == first


def test_put_refuses_a_known_id(queue: LocalJobQueue) -> None:
    queue.put(new_job("a"))
    with pytest.raises(Conflict, match="already exists"):
        queue.put(new_job("a"))


def test_critical_overtakes_lower_priorities_queued_earlier(queue: LocalJobQueue) -> None:
    for job_id, priority in [
        ("low1", LOW),
        ("med", MEDIUM),
        ("low2", LOW),
        ("high", HIGH),
        ("crit", CRITICAL),
    ]:
        queue.put(new_job(job_id, priority))
    assert drain(queue, "m1", T0) == ["crit", "high", "med", "low1", "low2"]


def test_fifo_within_a_priority(queue: LocalJobQueue) -> None:
    for n in range(20):
        queue.put(new_job(f"j{n}", HIGH, manager="m1" if n % 2 else None))
    assert drain(queue, "m1", T0) == [f"j{n}" for n in range(20)]


def test_own_heap_and_pool_compete_by_priority_then_seq(queue: LocalJobQueue) -> None:
    queue.put(new_job("mine-med", MEDIUM, manager="m1"))  # seq 1
    queue.put(new_job("pool-med", MEDIUM))  # seq 2
    queue.put(new_job("pool-high", HIGH))  # seq 3
    queue.put(new_job("other", CRITICAL, manager="m2"))  # seq 4: never for m1
    assert drain(queue, "m1", T0) == ["pool-high", "mine-med", "pool-med"]
    assert drain(queue, "m2", T0) == ["other"]


def test_take_marks_active_counts_the_attempt_and_persists(
    queue: LocalJobQueue, store: JsonFileStore, clock: Clock
) -> None:
    job = new_job("a")
    job.instance_id = "stale"
    queue.put(job)
    taken = queue.take("m1", clock.advance(2))
    assert taken is job
    assert (taken.state, taken.attempts, taken.started_at, taken.instance_id) == (
        JobState.ACTIVE,
        1,
        T0 + 2,
        None,
    )
    assert job.manager_id is None  # taken from the pool, still a pool job
    assert persisted(store, "a") == job
    assert queue.take("m1", clock.t) is None


def test_a_failed_attempt_waits_for_its_backoff_then_runs_again(
    queue: LocalJobQueue, store: JsonFileStore, clock: Clock
) -> None:
    policy = RetryPolicy(attempts=3, base_ms=1000, cap_ms=60_000)
    queue.put(new_job("a", manager="m1", retry=policy))
    queue.put(new_job("b", LOW))
    now = clock.advance(1)
    assert queue.take("m1", now) is not None
    job = queue.fail("a", "exit 1", now)
    assert (job.state, job.next_retry_at, job.last_error) == (JobState.RETRYING, now + 1, "exit 1")
    assert job.duration_ms == 0 and job.finished_at is None
    assert persisted(store, "a") == job
    assert queue.waiting("m1") == 1 and queue.next_wakeup() == now + 1

    assert ids([queue.take("m1", now + 0.999)]) == ["b"]  # not before next_retry_at
    assert queue.take("m1", now + 0.999) is None
    assert queue.take("m1", now + 1) is job  # due: queued again, then taken
    assert (job.attempts, job.state, job.next_retry_at) == (2, JobState.ACTIVE, None)
    assert job.queued_at == now + 1

    queue.fail("a", "exit 2", now + 3)  # attempt 2: up to 2 s
    assert job.next_retry_at == now + 5
    assert queue.take("m2", now + 10) is None  # still m1's job
    assert queue.take("m1", now + 10) is job and job.attempts == 3

    failed = queue.fail("a", "exit 3", now + 12)  # out of attempts
    assert (failed.state, failed.finished_at, failed.last_error) == (
        JobState.FAILED,
        now + 12,
        "exit 3",
    )
    assert job.duration_ms == pytest.approx(2000)
    assert persisted(store, "a") == job
    assert queue.waiting("m1") == 0 and queue.next_wakeup() is None
    assert queue.take("m1", now + 100) is None


def test_one_attempt_policy_fails_at_once(queue: LocalJobQueue) -> None:
    queue.put(new_job("a", retry=RetryPolicy(attempts=1)))
    queue.take("m1", T0)
    assert queue.fail("a", "boom", T0 + 1).state is JobState.FAILED


def test_next_wakeup_is_the_earliest_retry(queue: LocalJobQueue, clock: Clock) -> None:
    for job_id, base_ms in [("slow", 5000), ("fast", 1000), ("mid", 3000)]:
        queue.put(new_job(job_id, retry=RetryPolicy(base_ms=base_ms)))
    for _ in range(3):
        queue.take("m1", T0)
    for job_id in ("slow", "fast", "mid"):
        queue.fail(job_id, "x", T0)
    assert queue.next_wakeup() == T0 + 1
    queue.cancel("fast")
    assert queue.next_wakeup() == T0 + 3
    assert drain(queue, "m1", T0 + 10) == ["slow", "mid"]  # by priority and seq once due


def test_complete_sets_result_duration_and_merges_extra(
    queue: LocalJobQueue, store: JsonFileStore, clock: Clock
) -> None:
    job = new_job("a")
    job.extra = {"branch": "b1", "keep": True}
    queue.put(job)
    queue.take("m1", clock.advance(1))
    clock.advance(2.5)
    done = queue.complete("a", "all good", {"branch": "b2", "exitCode": 0})
    assert done.state is JobState.COMPLETED and done.result == "all good"
    assert done.finished_at == clock.t and done.duration_ms == pytest.approx(2500)
    assert done.extra == {"branch": "b2", "keep": True, "exitCode": 0}
    assert persisted(store, "a") == done


def test_annotate_persists_the_instance_and_extra_of_an_active_job(
    queue: LocalJobQueue, store: JsonFileStore
) -> None:
    queue.put(new_job("a"))
    with pytest.raises(Conflict, match="job a is queued, not active"):
        queue.annotate("a", instance_id="inst_1")
    queue.take("m1", T0)
    queue.annotate("a", instance_id="inst_1")
    job = queue.annotate("a", extra={"branch": "tcm/a"})
    assert (job.instance_id, job.extra, job.state) == ("inst_1", {"branch": "tcm/a"}, "active")
    assert persisted(store, "a") == job
    assert queue.recover()[0].instance_id == "inst_1"  # the orphan can be found


def test_illegal_moves_raise_conflict_and_change_nothing(
    queue: LocalJobQueue, store: JsonFileStore
) -> None:
    queue.put(new_job("a"))
    before = persisted(store, "a")
    with pytest.raises(Conflict, match="job a is queued, cannot become completed") as caught:
        queue.complete("a", None, {})
    assert caught.value.data == {"jobId": "a", "state": "queued"}
    with pytest.raises(Conflict):
        queue.fail("a", "x", T0)
    assert queue.get("a") == before == persisted(store, "a")
    queue.take("m1", T0)
    queue.complete("a", "ok", {})
    calls: list[Callable[[], Job]] = [
        lambda: queue.complete("a", "again", {}),
        lambda: queue.fail("a", "x", T0),
    ]
    for call in calls:
        with pytest.raises(Conflict, match="is completed"):
            call()


def test_unknown_ids_raise_not_found(queue: LocalJobQueue) -> None:
    calls: list[Callable[[], Job]] = [
        lambda: queue.get("nope"),
        lambda: queue.complete("nope", None, {}),
        lambda: queue.fail("nope", "x", T0),
        lambda: queue.cancel("nope"),
    ]
    for call in calls:
        with pytest.raises(NotFound, match="unknown job nope") as caught:
            call()
        assert caught.value.data == {"jobId": "nope"}


def test_cancel_a_queued_job(queue: LocalJobQueue, store: JsonFileStore, clock: Clock) -> None:
    queue.put(new_job("a", manager="m1"))
    job = queue.cancel("a")
    assert (job.state, job.finished_at, job.duration_ms) == (JobState.CANCELLED, T0, None)
    assert persisted(store, "a") == job
    assert queue.waiting("m1") == 0
    assert queue.take("m1", clock.t) is None


def test_cancel_a_retrying_job(queue: LocalJobQueue, store: JsonFileStore) -> None:
    queue.put(new_job("a"))
    queue.take("m1", T0)
    queue.fail("a", "x", T0)
    job = queue.cancel("a")
    assert (job.state, job.next_retry_at, job.last_error) == (JobState.CANCELLED, None, "x")
    assert persisted(store, "a") == job
    assert queue.next_wakeup() is None
    assert queue.take("m1", T0 + 100) is None


def test_cancel_an_active_job(queue: LocalJobQueue, store: JsonFileStore, clock: Clock) -> None:
    queue.put(new_job("a"))
    queue.take("m1", T0)
    clock.advance(1.5)
    job = queue.cancel("a")
    assert (job.state, job.finished_at) == (JobState.CANCELLED, T0 + 1.5)
    assert job.duration_ms == pytest.approx(1500)
    assert persisted(store, "a") == job
    with pytest.raises(Conflict):
        queue.complete("a", "too late", {})


def test_cancel_leaves_final_jobs_unchanged(queue: LocalJobQueue, clock: Clock) -> None:
    queue.put(new_job("done"))
    queue.put(new_job("dead", retry=RetryPolicy(attempts=1)))
    queue.put(new_job("gone"))
    queue.take("m1", T0)
    queue.complete("done", "ok", {})
    queue.take("m1", T0)
    queue.fail("dead", "x", T0)
    queue.cancel("gone")
    clock.advance(10)
    for job_id, state in [("done", "completed"), ("dead", "failed"), ("gone", "cancelled")]:
        job = queue.get(job_id)
        snapshot = job.to_json()
        assert queue.cancel(job_id) is job and job.state == state
        assert job.to_json() == snapshot


def test_give_up_fails_a_job_at_once_whatever_its_state(
    queue: LocalJobQueue, store: JsonFileStore, clock: Clock
) -> None:
    queue.put(new_job("queued", manager="m1"))
    queue.put(new_job("retrying"))
    queue.put(new_job("active"))
    queue.take("m1", T0)  # queued: mine, seq 1
    queue.take("m1", T0)  # retrying: the pool's, seq 2
    queue.fail("retrying", "x", T0)
    queue.cancel("queued")
    queue.put(new_job("waiting", manager="m1"))
    assert queue.take("m1", T0) is queue.get("active")
    clock.advance(2)
    for job_id in ("waiting", "retrying", "active"):
        job = queue.give_up(job_id, "its run is gone")
        assert (job.state, job.last_error, job.finished_at) == (
            JobState.FAILED,
            "its run is gone",
            T0 + 2,
        )
        assert persisted(store, job_id) == job
    assert queue.get("active").duration_ms == pytest.approx(2000)
    assert queue.get("retrying").next_retry_at is None
    assert (queue.waiting("m1"), queue.waiting(None), queue.next_wakeup()) == (0, 0, None)
    assert queue.take("m1", T0 + 1000) is None
    assert queue.stats(T0)["byState"]["failed"] == 3
    cancelled = queue.get("queued")
    assert queue.give_up("queued", "later") is cancelled and cancelled.state is JobState.CANCELLED
    with pytest.raises(Conflict, match="job waiting is failed, cannot become failed"):
        queue.fail("waiting", "x", T0)  # fail() is for attempts; a waiting job never had one


def test_discard_drops_a_job_that_never_started(queue: LocalJobQueue, store: JsonFileStore) -> None:
    queue.put(new_job("a", manager="m1"))
    queue.put(new_job("b", manager="m1"))
    queue.discard("a")
    assert store.get("jobs", "a") is None
    with pytest.raises(NotFound):
        queue.get("a")
    assert queue.waiting("m1") == 1
    assert queue.stats(T0)["byState"]["queued"] == 1
    assert ids([queue.take("m1", T0), queue.take("m1", T0)]) == ["b", None]
    with pytest.raises(Conflict, match="has started"):
        queue.discard("b")
    queue.discard("nope")  # unknown: ignored


def test_discard_forgets_the_job_in_memory_even_when_the_store_fails(
    queue: LocalJobQueue, store: FlakyStore
) -> None:
    queue.put(new_job("a"))
    crash(store)  # every write now fails
    with pytest.raises(Conflict, match="not open"):
        queue.discard("a")
    assert queue.jobs() == [] and queue.waiting(None) == 0
    store.open()
    assert store.get("jobs", "a") is not None  # left behind: a job of no run, failed on load


def test_recover_after_a_crash_requeues_active_jobs(directory: Path, clock: Clock) -> None:
    store = JsonFileStore(directory)
    store.open()
    q = open_queue(store, clock)
    for n in range(1, 6):
        q.put(new_job(f"j{n}", manager="m1" if n == 4 else None))
    assert ids([q.take("m1", T0) for _ in range(3)]) == ["j1", "j2", "j3"]
    q.complete("j1", "ok", {})
    crash(store)  # no close(): the journal is all there is

    store = JsonFileStore(directory)
    store.open()
    try:
        clock.advance(30)
        q = open_queue(store, clock)
        assert q.get("j2").state is JobState.ACTIVE  # until recover() says otherwise
        back = q.recover()
        assert ids(list(back)) == ["j2", "j3"]
        for job in back:
            assert (job.state, job.reruns, job.attempts, job.queued_at) == (
                JobState.QUEUED,
                1,
                1,
                T0 + 30,
            )
            assert persisted(store, job.job_id) == job
        assert q.get("j1").state is JobState.COMPLETED
        assert q.recover() == []
        assert q.put(new_job("j6")).seq == 6
        assert drain(q, "m1", clock.t) == ["j2", "j3", "j4", "j5", "j6"]
        assert q.get("j2").attempts == 2
    finally:
        store.close()


def test_reassign_moves_waiting_jobs_and_only_those(queue: LocalJobQueue) -> None:
    queue.put(new_job("r1", manager="m1"))
    queue.put(new_job("act", manager="m1"))
    assert drain(queue, "m1", T0) == ["r1", "act"]
    queue.fail("r1", "x", T0)  # → retrying until T0 + 1
    queue.put(new_job("q1", manager="m1"))
    queue.put(new_job("q2", manager="m1"))
    queue.put(new_job("pool"))

    moved = queue.reassign("m1", "m2")
    assert ids(list(moved)) == ["r1", "q1", "q2"]
    assert {job.manager_id for job in moved} == {"m2"}
    assert queue.get("act").manager_id == "m1"
    assert (queue.waiting("m1"), queue.waiting("m2"), queue.waiting(None)) == (0, 3, 1)
    assert drain(queue, "m1", T0 + 10) == ["pool"]
    assert drain(queue, "m2", T0 + 10) == ["r1", "q1", "q2"]  # r1's retry is due: on m2's heap
    assert queue.reassign("m1", "m2") == []


def test_reassign_to_the_pool_and_back_and_forth(queue: LocalJobQueue) -> None:
    for n in range(3):
        queue.put(new_job(f"j{n}", manager="m1"))
    for _ in range(3):  # dead entries of a job next to its live one in the same heap
        queue.reassign("m1", "m2")
        queue.reassign("m2", "m1")
    assert queue.reassign("m1", "m1") == []
    assert len(queue.reassign("m1", None)) == 3
    assert queue.waiting(None) == 3
    assert drain(queue, "m9", T0) == ["j0", "j1", "j2"]
    assert drain(queue, "m1", T0) == []


def test_jobs_filters_oldest_first(queue: LocalJobQueue) -> None:
    for n in range(6):
        queue.put(
            new_job(f"j{n}", LOW if n % 2 else CRITICAL, manager=f"m{n % 3}", run_id=f"run{n % 2}")
        )
    queue.take("m0", T0)  # j0
    assert ids(list(queue.jobs())) == [f"j{n}" for n in range(6)]
    assert ids(list(queue.jobs(state=JobState.QUEUED, limit=2))) == ["j1", "j2"]
    assert ids(list(queue.jobs(run_id="run1"))) == ["j1", "j3", "j5"]
    assert ids(list(queue.jobs(manager_id="m2", run_id="run0"))) == ["j2"]
    assert ids(list(queue.jobs(state=JobState.ACTIVE))) == ["j0"]
    assert queue.jobs(limit=0) == []


def test_waiting_counts_queued_and_retrying_per_manager(queue: LocalJobQueue) -> None:
    queue.put(new_job("a", manager="m1"))
    queue.put(new_job("b", manager="m1"))
    queue.put(new_job("c"))
    assert (queue.waiting("m1"), queue.waiting(None), queue.waiting("m2")) == (2, 1, 0)
    queue.take("m1", T0)
    assert queue.waiting("m1") == 1
    queue.fail("a", "x", T0)
    assert queue.waiting("m1") == 2
    queue.cancel("a")
    queue.cancel("b")
    assert queue.waiting("m1") == 0


def test_finished_counts_per_manager_and_final_state(
    directory: Path, store: JsonFileStore, queue: LocalJobQueue, clock: Clock
) -> None:
    one_try = RetryPolicy(attempts=1)
    for job_id in ("a", "b", "c"):
        queue.put(new_job(job_id, manager="m1", retry=one_try))
    queue.put(new_job("d", manager="m2"))
    queue.take("m1", T0)
    queue.complete("a", "ok", {})
    queue.take("m1", T0)
    queue.fail("b", "boom", T0)  # one attempt: dead at once
    queue.cancel("c")
    counts = [(m, s) for m in ("m1", "m2") for s in (JobState.COMPLETED, JobState.FAILED)]
    assert [queue.finished(m, s) for m, s in counts] == [1, 1, 0, 0]
    store.close()
    reopened = JsonFileStore(directory)
    reopened.open()
    again = open_queue(reopened, clock)  # the counters are rebuilt from what was saved
    assert [again.finished(m, s) for m, s in counts] == [1, 1, 0, 0]
    reopened.close()


def test_forget_drops_a_finished_job_for_good(
    directory: Path, store: JsonFileStore, queue: LocalJobQueue, clock: Clock
) -> None:
    queue.put(new_job("a", manager="m1"))
    queue.put(new_job("b", manager="m1"))
    queue.take("m1", T0)
    queue.complete("a", "ok", {})
    with pytest.raises(Conflict, match="only a finished job"):
        queue.forget("b")  # still queued: never dropped
    queue.forget("a")
    queue.forget("a")  # already gone: nothing to do
    with pytest.raises(NotFound):
        queue.get("a")
    assert queue.finished("m1", JobState.COMPLETED) == 0
    assert queue.stats(T0)["byState"]["completed"] == 0
    assert [j.job_id for j in queue.jobs()] == ["b"]
    store.close()
    reopened = JsonFileStore(directory)
    reopened.open()
    assert [j.job_id for j in open_queue(reopened, clock).jobs()] == ["b"]
    reopened.close()


def test_stats(queue: LocalJobQueue, clock: Clock) -> None:
    empty = queue.stats(T0)
    assert empty["byState"] == {state.value: 0 for state in JobState}
    assert empty["byPriority"] == {"critical": 0, "high": 0, "medium": 0, "low": 0}
    assert (empty["avgWaitMs"], empty["avgRunMs"], empty["throughputPerMin"]) == (None, None, 0)

    for job_id, priority in [("a", HIGH), ("b", HIGH), ("c", LOW), ("d", CRITICAL)]:
        queue.put(new_job(job_id, priority))
    queue.take("m1", clock.advance(0.1))  # d waited 100 ms
    queue.take("m1", clock.advance(0.2))  # a waited 300 ms
    clock.advance(1)
    queue.complete("d", None, {})  # ran 1200 ms
    queue.fail("a", "x", clock.advance(0.7))  # ran 1700 ms, now retrying
    stats = queue.stats(clock.t)
    assert stats["byState"] == {
        "queued": 2,
        "active": 0,
        "retrying": 1,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
    }
    assert stats["byPriority"] == {"critical": 0, "high": 2, "medium": 0, "low": 1}
    assert stats["avgWaitMs"] == pytest.approx(200)
    assert stats["avgRunMs"] == pytest.approx(1450)
    assert stats["throughputPerMin"] == 1
    assert queue.stats(clock.t + 59)["throughputPerMin"] == 1
    assert queue.stats(clock.t + 61)["throughputPerMin"] == 0


def test_every_field_survives_a_reload(directory: Path, clock: Clock) -> None:
    store = JsonFileStore(directory)
    store.open()
    q = open_queue(store, clock)
    job = Job(
        "j1",
        "run_9",
        "task_9",
        {"name": "n", "context": {"files": ["a.py"], "n": 1}},
        priority=CRITICAL,
        manager_id="m7",
        retry=RetryPolicy(5, 10, 100),
        extra={"branch": "feat", "nested": {"x": [1, 2]}},
    )
    q.put(job)
    q.take("m7", clock.advance(1))
    job.instance_id = "inst_3"  # set by the daemon once a specialist has it
    q.fail("j1", "first try", clock.advance(1))
    q.take("m7", clock.advance(1))
    q.complete("j1", "done", {"exitCode": 0})
    q.put(Job("j2", "run_9", "task_10", {}, priority=LOW))
    assert store.get("jobs", "j1") == job.to_json()  # the store encodes the Job itself
    store.close()

    store = JsonFileStore(directory)
    store.open()
    try:
        again = open_queue(store, clock)
        assert again.get("j1") == job
        reloaded = again.get("j1")
        assert isinstance(reloaded.priority, Priority) and isinstance(reloaded.retry, RetryPolicy)
        assert reloaded.state is JobState.COMPLETED and reloaded.last_error == "first try"
        assert again.waiting(None) == 1 and again.stats(clock.t)["byPriority"]["low"] == 1
    finally:
        store.close()


def test_load_puts_waiting_jobs_back_on_their_heaps(store: JsonFileStore, clock: Clock) -> None:
    q = open_queue(store, clock)
    q.put(new_job("retry", CRITICAL, manager="m1"))
    q.put(new_job("low", LOW, manager="m1"))
    q.put(new_job("high", HIGH))
    q.take("m1", T0)
    q.fail("retry", "x", T0)  # due at T0 + 1

    again = open_queue(store, clock)
    assert (again.waiting("m1"), again.waiting(None), again.next_wakeup()) == (2, 1, T0 + 1)
    assert again.stats(T0)["byState"]["retrying"] == 1
    assert drain(again, "m1", T0 + 0.5) == ["high", "low"]
    assert drain(again, "m1", T0 + 1) == ["retry"]
    assert again.put(new_job("next")).seq == 4


def test_new_job_id_counts_on_from_the_persisted_counter(
    directory: Path, store: JsonFileStore, queue: LocalJobQueue, clock: Clock
) -> None:
    assert [queue.new_job_id() for _ in range(3)] == ["job_1", "job_2", "job_3"]
    assert store.get("counters", "job") == ID_BLOCK  # one write reserves a block of ids
    queue.put(new_job("job_4"))  # an id already in use is skipped
    assert queue.new_job_id() == "job_5"
    crash(store)
    store.open()
    # after a crash the rest of the reserved block is skipped, never reused
    assert open_queue(store, clock).new_job_id() == f"job_{ID_BLOCK + 1}"


def test_a_store_failure_rolls_the_job_back(queue: LocalJobQueue, store: FlakyStore) -> None:
    queue.put(new_job("a", manager="m1"))
    store.broken = True
    with pytest.raises(Unavailable):
        queue.take("m1", T0)
    job = queue.get("a")
    assert (job.state, job.attempts, job.started_at) == (JobState.QUEUED, 0, None)
    assert queue.waiting("m1") == 1 and queue.stats(T0)["byState"]["active"] == 0
    with pytest.raises(Unavailable):
        queue.put(new_job("b"))
    with pytest.raises(NotFound):
        queue.get("b")
    store.broken = False
    assert queue.take("m1", T0) is job and job.attempts == 1
    assert queue.put(new_job("b")).seq == 2


def test_heaps_do_not_keep_dead_entries(queue: LocalJobQueue) -> None:
    for n in range(1000):
        queue.put(new_job(f"j{n}"))
    for n in range(990):
        queue.cancel(f"j{n}")
    assert len(queue._ready[None].entries) < 200
    assert drain(queue, "m1", T0) == [f"j{n}" for n in range(990, 1000)]
    assert queue._ready == {}


def test_a_shared_job_is_held_and_counted_but_never_taken_nor_recovered(
    store: JsonFileStore, queue: LocalJobQueue, clock: Clock
) -> None:
    """The view of jobs that wait in the shared (Redis) queue: the local dispatch and a
    restart leave them to their lease."""
    shared = new_job("job_7", manager="mgr_1_1")
    shared.extra["shared"] = True
    queue.reflect(shared)
    queue.put(new_job("job_8", manager="mgr_1_1"))
    assert queue.waiting("mgr_1_1") == 2
    assert drain(queue, "mgr_1_1", clock()) == ["job_8"]  # only the local one is taken
    running = Job.from_json({**shared.to_json(), "state": "active", "instance_id": "spec_1_1_3"})
    queue.reflect(running)
    assert queue.get("job_7").state is JobState.ACTIVE and queue.waiting("mgr_1_1") == 0
    assert ids(queue.jobs()) == ["job_7", "job_8"]  # a reflection keeps the job's place
    reopened = open_queue(store, clock)
    assert ids(reopened.recover()) == ["job_8"]  # the active shared job is its lease's
    assert reopened.get("job_7").state is JobState.ACTIVE
    assert drain(reopened, "mgr_1_1", clock()) == ["job_8"]
    assert persisted(store, "job_7").instance_id == "spec_1_1_3"
