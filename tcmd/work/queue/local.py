"""LocalJobQueue: the JobQueue in heaps in memory, every change persisted through a StateStore.

- ``_ready``: a heap of queued jobs per manager id (None: the shared pool), keyed
  ``(priority, seq)``; ``take`` pops the better top of the manager's heap and the pool's.
- ``_timers``: a heap of retrying jobs keyed ``(next_retry_at, seq)``; ``take`` first moves
  the due ones to their ready heap.
- every job by id in ``seq`` order (finished ones too, in no heap: runs are queried
  afterwards, until retention ``forget``s them), and counters so ``waiting``,
  ``finished`` and ``stats`` never walk the jobs.

Heap entries are deleted lazily: cancel/reassign mark an entry dead, dead tops are dropped
as they surface, a heap more than half dead is rebuilt. A change is written to the store
(ns ``jobs``) before the call returns; if the store raises, the job is rolled back in memory
and the error propagates. The store is handed the ``Job`` itself: orjson encodes it to
what ``job.to_json()`` gives, without that method's ``asdict`` deep copy. Moves outside
``_MOVES`` raise ``Conflict``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tcmd.errors import Conflict, NotFound
from tcmd.store.base import StateStore
from tcmd.work.queue.backoff import retry_delay_s
from tcmd.work.queue.base import FINAL, THROUGHPUT_WINDOW_S, Job, JobState, Priority

JOBS_NS, COUNTERS_NS, JOB_COUNTER = "jobs", "counters", "job"
ID_BLOCK = 1000  # job ids reserved per counter write
STATS_WINDOW = 1000  # starts / finished attempts that avgWaitMs / avgRunMs average over
_COMPACT_MIN_DEAD = 64  # fewer dead heap entries than this are not worth a rebuild

QUEUED, ACTIVE, RETRYING = JobState.QUEUED, JobState.ACTIVE, JobState.RETRYING
COMPLETED, FAILED, CANCELLED = JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED
WAITING = frozenset({QUEUED, RETRYING})
_MOVES: dict[JobState, frozenset[JobState]] = {
    QUEUED: frozenset({ACTIVE, CANCELLED, FAILED}),  # failed: give_up()
    ACTIVE: frozenset({COMPLETED, RETRYING, FAILED, CANCELLED, QUEUED}),  # queued: recover()
    RETRYING: frozenset({QUEUED, CANCELLED, FAILED}),
    **{state: frozenset() for state in FINAL},
}


class _Heap:
    """Entries ``[key, seq, tick, job]``, dead when job is None. ``tick`` is unique: a dead
    and a live entry of one job (reassigned away and back) never compare their jobs."""

    __slots__ = ("dead", "entries")

    def __init__(self) -> None:
        self.entries: list[list[Any]] = []
        self.dead = 0

    def push(self, key: float, seq: int, tick: int, job: Job) -> list[Any]:
        entry = [key, seq, tick, job]
        heapq.heappush(self.entries, entry)
        return entry

    def top(self) -> list[Any] | None:
        """The best live entry, dropping the dead ones above it."""
        entries = self.entries
        while entries:
            if entries[0][3] is not None:
                return entries[0]
            heapq.heappop(entries)
            self.dead -= 1
        return None

    def pop_top(self) -> None:
        heapq.heappop(self.entries)

    def remove(self, entry: list[Any]) -> None:
        entry[3] = None
        self.dead += 1
        if self.dead > _COMPACT_MIN_DEAD and self.dead * 2 > len(self.entries):
            self.entries = [e for e in self.entries if e[3] is not None]
            heapq.heapify(self.entries)
            self.dead = 0


class LocalJobQueue:
    """The JobQueue of one daemon: construct, then ``load()``. Jobs returned are the
    queue's own objects: read them, do not mutate them."""

    def __init__(
        self,
        store: StateStore,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._rng = rng if rng is not None else random.Random()  # noqa: S311  # jitter, not secrets
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self._jobs: dict[str, Job] = {}  # in seq order
        self._ready: dict[str | None, _Heap] = {}
        self._timers = _Heap()
        self._entries: dict[str, tuple[_Heap, list[Any]]] = {}  # waiting job → its live entry
        self._ticks = itertools.count()
        self._seq = 0
        self._next_id: int | None = None  # the next id of the reserved block
        self._id_limit = 0  # the block's last id (what the counter in the store says)
        self._by_state = dict.fromkeys(JobState, 0)
        self._waiting: dict[str | None, int] = {}
        self._finished: dict[tuple[str | None, JobState], int] = {}  # (manager, final state)
        self._waiting_by_priority = dict.fromkeys(Priority, 0)
        self._waits_ms: deque[float] = deque(maxlen=STATS_WINDOW)
        self._runs_ms: deque[float] = deque(maxlen=STATS_WINDOW)
        self._completions: dict[int, int] = {}  # unix second → jobs completed in it

    def load(self) -> None:
        """Rebuild from the store. Active jobs stay active: ``recover()`` requeues them."""
        self._reset()
        loaded = sorted(
            (Job.from_json(raw) for raw in self._store.items(JOBS_NS).values()),
            key=lambda job: job.seq,
        )
        for job in loaded:
            self._jobs[job.job_id] = job
            self._count(job, 1)
            if not job.extra.get("shared"):  # a shared job waits in Redis, not here
                self._enqueue(job)
        self._seq = loaded[-1].seq if loaded else 0

    def new_job_id(self) -> str:
        """A fresh ``job_<n>``, never reused.

        Ids are reserved in blocks: the persisted counter is the end of the block handed
        out, so one store write covers ``ID_BLOCK`` ids and a crash only skips numbers.
        """
        if self._next_id is None or self._next_id > self._id_limit:
            start = int(self._store.get(COUNTERS_NS, JOB_COUNTER) or 0) + 1
            self._id_limit = start + ID_BLOCK - 1
            self._store.put(COUNTERS_NS, JOB_COUNTER, self._id_limit)
            self._next_id = start
        n = self._next_id
        while f"job_{n}" in self._jobs:  # the counter was lost or rolled back: never reuse
            n += 1
        self._next_id = n + 1
        return f"job_{n}"

    def put(self, job: Job) -> Job:
        """Add a new job: state queued, ``queued_at`` now, the next ``seq``."""
        if job.job_id in self._jobs:
            raise Conflict(f"job {job.job_id} already exists", data={"jobId": job.job_id})
        job.seq, job.state, job.queued_at = self._seq + 1, QUEUED, self._clock()
        self._store.put(JOBS_NS, job.job_id, job)
        self._seq = job.seq
        self._jobs[job.job_id] = job
        self._count(job, 1)
        self._enqueue(job)
        return job

    def peek(self, manager_id: str, now: float) -> Job | None:
        """The job ``take`` would hand out now, left waiting (due retries are queued)."""
        best = self._best(manager_id, now)
        return None if best is None else best[0][3]

    def _best(self, manager_id: str, now: float) -> tuple[list[Any], _Heap] | None:
        if self._timers.entries:
            self._promote(now)
        mine, shared = self._top(manager_id), self._top(None)
        return shared if mine is None or (shared is not None and shared[0] < mine[0]) else mine

    def take(self, manager_id: str, now: float) -> Job | None:
        """The best of the manager's and the pool's ready jobs → active; O(log n)."""
        best = self._best(manager_id, now)
        if best is None:
            return None
        entry, heap = best
        job: Job = entry[3]
        self._commit(job, state=ACTIVE, attempts=job.attempts + 1, started_at=now, instance_id=None)
        heap.pop_top()
        del self._entries[job.job_id]
        if not heap.entries:  # managers come and go: drop their empty heaps
            del self._ready[job.manager_id]
        self._waits_ms.append((now - job.queued_at) * 1000)
        return job

    def complete(self, job_id: str, result: str | None, extra: dict[str, Any]) -> Job:
        """active → completed; ``extra`` is merged into the job's."""
        job, now = self.get(job_id), self._clock()
        merged = {**job.extra, **extra}
        self._end_attempt(job, now, state=COMPLETED, finished_at=now, result=result, extra=merged)
        second = int(now)
        if second not in self._completions:  # a new second: forget those out of the window
            self._completions = {
                s: n for s, n in self._completions.items() if s >= second - THROUGHPUT_WINDOW_S
            }
        self._completions[second] = self._completions.get(second, 0) + 1
        return job

    def annotate(
        self, job_id: str, *, instance_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> Job:
        """Record who runs an active job and what it made (branch, worktree…), persisted:
        after a crash, ``recover()``'s caller finds the orphaned specialist by it."""
        job = self.get(job_id)
        if job.state is not ACTIVE:
            raise Conflict(f"job {job_id} is {job.state.value}, not active", data={"jobId": job_id})
        changes: dict[str, Any] = {"extra": {**job.extra, **(extra or {})}}
        if instance_id is not None:
            changes["instance_id"] = instance_id
        self._commit(job, **changes)
        return job

    def fail(self, job_id: str, error: str, now: float) -> Job:
        """active → retrying after a jittered backoff, or failed once out of attempts."""
        job = self.get(job_id)
        if job.state is not ACTIVE:  # _MOVES lets a waiting job fail only through give_up
            raise Conflict(
                f"job {job_id} is {job.state.value}, cannot become failed",
                data={"jobId": job_id, "state": job.state.value},
            )
        if job.attempts < job.retry.attempts:
            retry_at = now + retry_delay_s(job.retry, job.attempts, self._rng)
            self._end_attempt(job, now, state=RETRYING, next_retry_at=retry_at, last_error=error)
            self._enqueue(job)
        else:
            self._end_attempt(job, now, state=FAILED, finished_at=now, last_error=error)
        return job

    def cancel(self, job_id: str, reason: str | None = None) -> Job:
        """queued/retrying/active → cancelled (``reason`` kept as its error); a final job is
        returned unchanged."""
        job = self.get(job_id)
        if job.state in FINAL:
            return job
        now = self._clock()
        why = {} if reason is None else {"last_error": reason}
        if job.state is ACTIVE:
            self._end_attempt(job, now, state=CANCELLED, finished_at=now, **why)
        else:
            self._commit(job, state=CANCELLED, finished_at=now, next_retry_at=None, **why)
            self._dequeue(job)
        return job

    def give_up(self, job_id: str, error: str) -> Job:
        """queued/retrying/active → failed at once with ``error``, whatever attempts are
        left (its run is gone: no attempt can run); a final job is returned unchanged."""
        job = self.get(job_id)
        if job.state in FINAL:
            return job
        now = self._clock()
        if job.state is ACTIVE:
            self._end_attempt(job, now, state=FAILED, finished_at=now, last_error=error)
        else:
            self._commit(job, state=FAILED, finished_at=now, next_retry_at=None, last_error=error)
            self._dequeue(job)
        return job

    def discard(self, job_id: str) -> None:
        """Drop a job that never started (the run it was put for could not be stored):
        gone from memory whatever happens, then deleted from the store. A store error
        propagates; the record it leaves belongs to no run, and the dispatcher fails such
        jobs when it loads them. Unknown ids are ignored."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        if job.state is not QUEUED or job.attempts:
            raise Conflict(f"job {job_id} has started: only a job that never ran is discarded")
        self._dequeue(job)
        del self._jobs[job_id]
        self._count(job, -1)
        self._store.delete(JOBS_NS, job_id)

    def recover(self) -> list[Job]:
        """After a daemon crash: active jobs → queued, ``reruns`` + 1, attempts kept."""
        now = self._clock()
        lost = [
            job for job in self._jobs.values()
            if job.state is ACTIVE and not job.extra.get("shared")  # its lease decides
        ]  # fmt: skip
        for job in lost:
            self._commit(job, state=QUEUED, reruns=job.reruns + 1, queued_at=now)
            self._enqueue(job)
        return lost

    def reassign(self, from_manager: str, to_manager: str | None) -> list[Job]:
        """Move ``from_manager``'s waiting (queued/retrying) jobs, oldest first."""
        if from_manager == to_manager or not self._waiting.get(from_manager):
            return []
        heap = self._ready.get(from_manager)
        entries = (heap.entries if heap is not None else []) + self._timers.entries
        moving = sorted(
            (job for *_, job in entries if job is not None and job.manager_id == from_manager),
            key=lambda job: job.seq,
        )
        for job in moving:
            self._commit(job, manager_id=to_manager)
            if job.state is QUEUED:  # a retrying job's timer entry holds for any manager
                self._dequeue(job)
                self._enqueue(job)
        self._ready.pop(from_manager, None)  # only dead entries are left in it
        return moving

    def reflect(self, job: Job) -> Job:
        """Hold ``job`` as the shared queue (Redis) says it is: stored and counted, never on
        a heap (only the shared queue hands it out). Replaces the record of the same id."""
        old = self._jobs.get(job.job_id)
        if old is not None:
            self._dequeue(old)
            self._count(old, -1)
        try:
            self._store.put(JOBS_NS, job.job_id, job)
        except BaseException:
            if old is not None:
                self._count(old, 1)
            raise
        self._jobs[job.job_id] = job  # an existing key keeps its place (oldest first)
        self._count(job, 1)
        return job

    def unreflect(self, job_id: str) -> None:
        """Drop a shared job from memory (it is put again as a local one); unknown: ignored."""
        if (job := self._jobs.pop(job_id, None)) is not None:
            self._dequeue(job)
            self._count(job, -1)

    def get(self, job_id: str) -> Job:
        """The job (NotFound when unknown)."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"unknown job {job_id}", data={"jobId": job_id}) from None

    def jobs(
        self,
        *,
        state: JobState | None = None,
        run_id: str | None = None,
        manager_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs, oldest (lowest seq) first; a None filter matches every job."""
        found = (
            job
            for job in self._jobs.values()
            if (state is None or job.state == state)
            and (run_id is None or job.run_id == run_id)
            and (manager_id is None or job.manager_id == manager_id)
        )
        return list(itertools.islice(found, limit))

    def waiting(self, manager_id: str | None) -> int:
        """Queued + retrying jobs assigned to ``manager_id`` (None: the pool); O(1)."""
        return self._waiting.get(manager_id, 0)

    def finished(self, manager_id: str | None, state: JobState) -> int:
        """Remembered jobs of ``manager_id`` that ended in the final ``state``; O(1)."""
        return self._finished.get((manager_id, state), 0)

    def forget(self, job_id: str) -> None:
        """Drop a finished job from memory and the store (retention); unknown ids are ignored."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        if job.state not in FINAL:
            raise Conflict(f"job {job_id} is {job.state.value}: only a finished job is forgotten")
        self._store.delete(JOBS_NS, job_id)
        del self._jobs[job_id]
        self._count(job, -1)

    def next_wakeup(self) -> float | None:
        """The earliest ``next_retry_at`` of a retrying job (unix time)."""
        entry = self._timers.top()
        return None if entry is None else float(entry[0])

    def stats(self, now: float) -> dict[str, Any]:
        """Counts by state and, of waiting jobs, by priority; means in ms (None before any
        sample); jobs completed in the last minute (to the second)."""
        since = now - THROUGHPUT_WINDOW_S
        return {
            "byState": {state.value: n for state, n in self._by_state.items()},
            "byPriority": {priority.label: n for priority, n in self._waiting_by_priority.items()},
            "avgWaitMs": _mean(self._waits_ms),
            "avgRunMs": _mean(self._runs_ms),
            "throughputPerMin": sum(n for s, n in self._completions.items() if s + 1 > since),
        }

    def _top(self, manager_id: str | None) -> tuple[list[Any], _Heap] | None:
        heap = self._ready.get(manager_id)
        entry = heap.top() if heap is not None else None
        return None if entry is None or heap is None else (entry, heap)

    def _promote(self, now: float) -> None:
        """Retrying jobs whose time has come → queued, in their manager's (or the pool's) heap."""
        while (entry := self._timers.top()) is not None and entry[0] <= now:
            job: Job = entry[3]
            self._commit(job, state=QUEUED, queued_at=entry[0], next_retry_at=None)
            self._timers.pop_top()
            del self._entries[job.job_id]
            self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        """Push a waiting job on the heap its state and manager say."""
        if job.state is QUEUED:
            heap = self._ready.get(job.manager_id)
            if heap is None:
                heap = self._ready[job.manager_id] = _Heap()
            key: float = int(job.priority)
        elif job.state is RETRYING:
            assert job.next_retry_at is not None
            heap, key = self._timers, job.next_retry_at
        else:
            return
        self._entries[job.job_id] = (heap, heap.push(key, job.seq, next(self._ticks), job))

    def _dequeue(self, job: Job) -> None:
        if (found := self._entries.pop(job.job_id, None)) is not None:
            found[0].remove(found[1])

    def _end_attempt(self, job: Job, now: float, **changes: Any) -> None:
        """Commit the end of the job's attempt, with its duration (recorded for stats)."""
        run_ms = None if job.started_at is None else (now - job.started_at) * 1000
        self._commit(job, duration_ms=run_ms, **changes)
        if run_ms is not None:
            self._runs_ms.append(run_ms)

    def _commit(self, job: Job, **changes: Any) -> None:
        """Apply ``changes`` to ``job`` and persist it; on a store error undo them, re-raise."""
        if "state" in changes and (state := changes["state"]) not in _MOVES[job.state]:
            raise Conflict(
                f"job {job.job_id} is {job.state.value}, cannot become {state.value}",
                data={"jobId": job.job_id, "state": job.state.value},
            )
        before = {name: getattr(job, name) for name in changes}
        self._count(job, -1)
        for name, value in changes.items():
            setattr(job, name, value)
        try:
            self._store.put(JOBS_NS, job.job_id, job)
        except BaseException:
            for name, value in before.items():
                setattr(job, name, value)
            raise
        finally:
            self._count(job, 1)

    def _count(self, job: Job, n: int) -> None:
        """Add (n=1) or take away (n=-1) the job's share of the counters."""
        self._by_state[job.state] += n
        if job.state in FINAL:
            key = (job.manager_id, job.state)
            self._finished[key] = self._finished.get(key, 0) + n
        elif job.state in WAITING:
            self._waiting_by_priority[job.priority] += n
            if left := self._waiting.get(job.manager_id, 0) + n:
                self._waiting[job.manager_id] = left
            else:
                del self._waiting[job.manager_id]


def _mean(values: deque[float]) -> float | None:
    return sum(values) / len(values) if values else None
