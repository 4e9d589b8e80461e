"""The event log: a bounded, persisted, sequence-numbered record of what happened.

Every event is ``{"seq", "time", "kind", **fields}``: ``seq`` counts up from 1 and is never
reused (the next one is kept in the store), ``time`` is unix seconds. Field names are
camelCase, as in the public JSON. The kinds tcm emits:

=======================  ==========================================================
``instance.state``       ``instanceId, old, new``: an instance changed state
``instance.dropped``     ``instanceId, running, queued``: prompts lost to a terminate
``health.verdict``       ``instanceId, verdict, score, reasons``: a health check's verdict
``recovery.attempt``     ``instanceId, action, ok, error``: a recovery starts (ok, error: None)
``recovery.result``      ``instanceId, action, ok, error``: how it ended
``instance.failed``      ``instanceId, parentId, reason``: past the recovery bound
``health.hold``          ``instanceId, hold, until``: new work held until a rate limit resets
``job.state``            ``jobId, taskId, runId, state``: a job changed state
``run.overlap``          ``runId, path, taskIds, more``: two tasks of a run changed a path
``retention.forgotten``  ``runs, instances``: what retention dropped in one sweep
=======================  ==========================================================

Store layout: namespace ``events``, one document per event keyed by its zero-padded
``seq``. The newest ``capacity`` events are kept (so the newest tells the next ``seq``);
the oldest document is deleted as each new one goes over. ``counters/event`` holds the
next ``seq`` as of the last load. Emitting is O(1): one append to memory and one or two
store writes. A store failure while emitting raises (``Unavailable``) to the caller, like
any other state write.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import structlog

from tcmd.changes import Changes
from tcmd.store.base import StateStore

log = structlog.get_logger(__name__)

NS = "events"
COUNTER_NS, COUNTER_KEY = "counters", "event"
KEY_WIDTH = 12  # 10^12 events: ~300 years at 100 a second
RESERVED = frozenset({"seq", "time", "kind"})

Event = dict[str, Any]


def event_key(seq: int) -> str:
    """The store key of event ``seq`` (zero-padded so keys sort like their numbers)."""
    return f"{seq:0{KEY_WIDTH}d}"


class EventLog:
    """The newest ``capacity`` events, in memory and in the store."""

    def __init__(self, store: StateStore, changes: Changes, *, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.store = store
        self.changes = changes
        self.capacity = capacity
        self._events: deque[Event] = deque()
        self._next_seq = 1

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest event (0 before the first)."""
        return self._next_seq - 1

    def __len__(self) -> int:
        return len(self._events)

    def load(self) -> None:
        """Rebuild from the store (the store must be open); drops what memory held."""
        docs = self.store.items(NS)
        good: list[Event] = []
        for key, doc in docs.items():
            if (
                isinstance(doc, dict)
                and type(doc.get("seq")) is int
                and key == event_key(doc["seq"])
            ):
                good.append(doc)
            else:
                log.warning("event_dropped", key=key, reason="malformed document")
                self.store.delete(NS, key)
        good.sort(key=lambda e: int(e["seq"]))
        # a crash between writing an event and trimming the oldest leaves one too many
        for old in good[: max(0, len(good) - self.capacity)]:
            self.store.delete(NS, event_key(old["seq"]))
        self._events = deque(good[-self.capacity :])
        counter = self.store.get(COUNTER_NS, COUNTER_KEY)
        newest = self._events[-1]["seq"] if self._events else 0
        self._next_seq = max(counter if type(counter) is int else 1, newest + 1)
        # The newest event is always kept, so it tells the next seq; the counter is written
        # here only, for a log that a malformed newest event was dropped from.
        if counter != self._next_seq:
            self.store.put(COUNTER_NS, COUNTER_KEY, self._next_seq)

    def emit(self, kind: str, **fields: Any) -> Event:
        """Append, persist and announce one event; the event as stored."""
        if clash := RESERVED & fields.keys():
            raise ValueError(f"event fields may not be named {sorted(clash)}")
        seq = self._next_seq
        key = event_key(seq)
        # TypeError here (not JSON-serialisable) leaves the log as it was
        self.store.put(NS, key, {"seq": seq, "time": time.time(), "kind": kind, **fields})
        # keep the store's copy: memory then equals what a reload gives
        event = self.store.get(NS, key)
        assert isinstance(event, dict)
        self._next_seq = seq + 1
        self._events.append(event)
        if len(self._events) > self.capacity:
            oldest = self._events.popleft()
            self.store.delete(NS, event_key(oldest["seq"]))
        self.changes.fire("events")
        return event

    def after(self, seq: int) -> Iterator[Event]:
        """Events with ``seq`` greater than the given one, oldest first (lazily)."""
        events = self._events
        start = bisect.bisect_right(events, seq, key=lambda e: int(e["seq"]))
        newer = len(events) - start
        if newer < start:  # a follower near the head: walk in from the newest end
            return reversed(list(itertools.islice(reversed(events), newer)))
        return itertools.islice(events, start, None)

    def since(self, seq: int, limit: int = 1000) -> list[Event]:
        """Up to ``limit`` events with ``seq`` greater than the given one, oldest first."""
        return list(itertools.islice(self.after(seq), limit))

    async def wait(self, seq: int, timeout_s: float | None) -> bool:
        """True as soon as some event is newer than ``seq``; False after ``timeout_s``."""
        return await self.changes.wait_for(lambda: self._next_seq - 1 > seq, timeout_s, "events")

    async def wait_since(self, seq: int, timeout_s: float | None, limit: int = 1000) -> list[Event]:
        """The events after ``seq``, waiting up to ``timeout_s`` for one; [] at timeout."""
        if await self.wait(seq, timeout_s):
            return self.since(seq, limit)
        return []
