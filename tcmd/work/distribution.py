"""How a run's tasks are spread over managers: three strategies, pure functions.

Each strategy takes the task ids (in submission order) and a snapshot of the managers'
loads, and returns one ``Assignment`` per manager, in manager order (empty ones
included). Nothing here does I/O or keeps state: round-robin's position is handed in
and handed back for the caller to persist, so it carries across runs.

- ``round-robin``: task *i* goes to ``managers[(start + i) % n]``; loads are ignored.
- ``least-loaded``: each task goes to the manager with the smallest
  ``active + queued + assigned so far``; ties go to the earlier manager.
- ``capacity-aware``: managers in order take tasks up to their free slots
  (``limit - active - queued``); the rest go to the shared pool
  (``Assignment(manager_id=None)``), where whichever manager frees a slot first takes
  the next one. The pool assignment is present only when it holds tasks.

Every strategy assigns every task exactly once and keeps task order within an assignment.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ManagerLoad:
    """A snapshot of one manager's load."""

    manager_id: str
    active: int  # tasks running now
    queued: int  # tasks waiting, assigned to it
    limit: int  # its concurrency limit (specialists at once)

    def __post_init__(self) -> None:
        for name in ("active", "queued", "limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"manager {self.manager_id!r}: {name} must be >= 0")


@dataclass(frozen=True, slots=True)
class Assignment:
    """Tasks given to one manager, or to the shared overflow pool (``manager_id=None``)."""

    manager_id: str | None
    task_ids: list[str]


def round_robin(
    task_ids: Sequence[str], managers: Sequence[ManagerLoad], start: int
) -> tuple[list[Assignment], int]:
    """Deal tasks in turn from position ``start``; return them and the next position."""
    _check(managers)
    n = len(managers)
    buckets: list[list[str]] = [[] for _ in managers]
    for i, task_id in enumerate(task_ids):
        buckets[(start + i) % n].append(task_id)
    return _assignments(managers, buckets), (start + len(task_ids)) % n


def least_loaded(task_ids: Sequence[str], managers: Sequence[ManagerLoad]) -> list[Assignment]:
    """Give each task to the least loaded manager, counting what this call assigned."""
    _check(managers)
    buckets: list[list[str]] = [[] for _ in managers]
    # (load, manager index): the heap's tuple order is exactly "smallest load, then
    # earliest manager", so ties need no extra rule.
    heap = [(m.active + m.queued, i) for i, m in enumerate(managers)]
    heapq.heapify(heap)
    for task_id in task_ids:
        load, i = heap[0]
        buckets[i].append(task_id)
        heapq.heapreplace(heap, (load + 1, i))
    return _assignments(managers, buckets)


def capacity_aware(task_ids: Sequence[str], managers: Sequence[ManagerLoad]) -> list[Assignment]:
    """Fill free slots in manager order; what does not fit goes to the shared pool."""
    _check(managers)
    buckets: list[list[str]] = []
    taken = 0
    for m in managers:
        free = max(0, m.limit - m.active - m.queued)
        buckets.append(list(task_ids[taken : taken + free]))
        taken += len(buckets[-1])
    out = _assignments(managers, buckets)
    if taken < len(task_ids):
        out.append(Assignment(manager_id=None, task_ids=list(task_ids[taken:])))
    return out


Strategy = Callable[[Sequence[str], Sequence[ManagerLoad], int], tuple[list[Assignment], int]]
"""The uniform signature: ``(task_ids, managers, rr_start) -> (assignments, next_rr_start)``."""


def _least_loaded(
    task_ids: Sequence[str], managers: Sequence[ManagerLoad], rr_start: int
) -> tuple[list[Assignment], int]:
    return least_loaded(task_ids, managers), rr_start


def _capacity_aware(
    task_ids: Sequence[str], managers: Sequence[ManagerLoad], rr_start: int
) -> tuple[list[Assignment], int]:
    return capacity_aware(task_ids, managers), rr_start


STRATEGIES: dict[str, Strategy] = {
    "round-robin": round_robin,
    "least-loaded": _least_loaded,
    "capacity-aware": _capacity_aware,
}


def distribute(
    strategy: str, task_ids: Sequence[str], managers: Sequence[ManagerLoad], rr_start: int
) -> tuple[list[Assignment], int]:
    """Run the named strategy; the round-robin position passes through the others unchanged."""
    try:
        fn = STRATEGIES[strategy]
    except KeyError:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"unknown strategy {strategy!r}; known: {known}") from None
    return fn(task_ids, managers, rr_start)


def _check(managers: Sequence[ManagerLoad]) -> None:
    if not managers:
        raise ValueError("no managers to distribute tasks to")
    seen: set[str] = set()
    for m in managers:
        if m.manager_id in seen:
            raise ValueError(f"manager {m.manager_id!r} is listed twice")
        seen.add(m.manager_id)


def _assignments(managers: Sequence[ManagerLoad], buckets: list[list[str]]) -> list[Assignment]:
    return [Assignment(m.manager_id, b) for m, b in zip(managers, buckets, strict=True)]
