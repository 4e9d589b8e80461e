"""EventLog: order, since, capacity trimming, persistence across a crash, waits."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tcmd.changes import Changes
from tcmd.observe.events import COUNTER_KEY, COUNTER_NS, NS, EventLog, event_key
from tcmd.store.jsonfile import JsonFileStore


def opened(directory: Path) -> JsonFileStore:
    s = JsonFileStore(directory)
    s.open()
    return s


def crash(s: JsonFileStore) -> None:
    """What SIGKILL does to the store: its fd goes, no final snapshot is written."""
    assert s._fd is not None
    os.close(s._fd)
    s._fd = None


def new_log(store: JsonFileStore, capacity: int = 10_000) -> EventLog:
    log = EventLog(store, Changes(), capacity=capacity)
    log.load()
    return log


def test_constructing_touches_nothing(directory: Path) -> None:
    EventLog(JsonFileStore(directory), Changes())
    assert not directory.exists()


def test_emit_numbers_and_stores_events(store: JsonFileStore) -> None:
    log = new_log(store)
    assert log.last_seq == 0
    before = time.time()
    first = log.emit("instance.state", instanceId="E1", old="starting", new="idle")
    second = log.emit("job.state", jobId="j1", taskId="t1", runId="r1", state="running")
    assert first == {
        "seq": 1,
        "time": first["time"],
        "kind": "instance.state",
        "instanceId": "E1",
        "old": "starting",
        "new": "idle",
    }
    assert before <= first["time"] <= second["time"] <= time.time()
    assert second["seq"] == 2 and log.last_seq == 2
    assert store.get(NS, event_key(1)) == first
    assert new_log(store).emit("k")["seq"] == 3  # a reload numbers on from the newest


def test_emit_keeps_what_the_store_keeps(store: JsonFileStore) -> None:
    log = new_log(store)
    event = log.emit("health.verdict", instanceId="S1", reasons=("a", "b"), score=0.5)
    assert event["reasons"] == ["a", "b"]  # as a reload gives it, not the caller's tuple


def test_emit_refuses_reserved_and_unserialisable_fields(store: JsonFileStore) -> None:
    log = new_log(store)
    with pytest.raises(ValueError, match="seq"):
        log.emit("x", seq=5)
    with pytest.raises(TypeError):
        log.emit("x", thing=object())
    assert log.last_seq == 0 and log.since(0) == []
    assert log.emit("x")["seq"] == 1


def test_since_is_oldest_first_and_limited(store: JsonFileStore) -> None:
    log = new_log(store)
    for i in range(10):
        log.emit("k", i=i)
    assert [e["seq"] for e in log.since(0)] == list(range(1, 11))
    assert [e["seq"] for e in log.since(7)] == [8, 9, 10]
    assert [e["i"] for e in log.since(2, limit=3)] == [2, 3, 4]
    assert log.since(10) == [] and log.since(99) == []


def test_capacity_keeps_the_newest(store: JsonFileStore) -> None:
    log = new_log(store, capacity=3)
    for i in range(7):
        log.emit("k", i=i)
    assert [e["seq"] for e in log.since(0)] == [5, 6, 7]
    assert sorted(store.items(NS)) == [event_key(5), event_key(6), event_key(7)]
    assert [e["seq"] for e in log.since(5)] == [6, 7]
    assert len(log) == 3


def test_events_survive_a_crash(directory: Path) -> None:
    first = opened(directory)
    log = new_log(first, capacity=5)
    for i in range(8):
        log.emit("k", i=i)
    crash(first)

    second = opened(directory)  # a new store object on the same directory
    try:
        again = new_log(second, capacity=5)
        assert again.since(0) == log.since(0)
        assert again.last_seq == 8
        assert again.emit("k", i=8)["seq"] == 9  # numbering carries on, no seq reused
    finally:
        second.close()


def test_load_trims_to_a_smaller_capacity_and_never_reuses_seqs(store: JsonFileStore) -> None:
    log = new_log(store)
    for i in range(6):
        log.emit("k", i=i)
    small = new_log(store, capacity=2)
    assert [e["seq"] for e in small.since(0)] == [5, 6]
    assert len(store.items(NS)) == 2
    store.delete(COUNTER_NS, COUNTER_KEY)  # the newest event still tells the next seq
    assert new_log(store).emit("k")["seq"] == 7


def test_load_drops_malformed_documents(store: JsonFileStore) -> None:
    new_log(store).emit("k")
    store.put(NS, "junk", {"seq": "no"})
    log = new_log(store)
    assert [e["seq"] for e in log.since(0)] == [1]
    assert store.get(NS, "junk") is None


def test_capacity_must_be_positive(store: JsonFileStore) -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventLog(store, Changes(), capacity=0)


async def test_wait_since_wakes_on_emit(store: JsonFileStore) -> None:
    log = new_log(store)
    log.emit("k", i=0)
    waiter = asyncio.create_task(log.wait_since(1, timeout_s=10))
    await asyncio.sleep(0)  # one turn of the loop: the waiter is now blocked on the signal
    assert not waiter.done()
    log.emit("k", i=1)
    events = await asyncio.wait_for(waiter, 5)
    assert [e["i"] for e in events] == [1]


async def test_wait_since_returns_at_once_when_there_is_news(store: JsonFileStore) -> None:
    log = new_log(store)
    log.emit("k")
    assert [e["seq"] for e in await log.wait_since(0, timeout_s=0)] == [1]


async def test_wait_since_times_out_empty(store: JsonFileStore) -> None:
    log = new_log(store)
    log.emit("k")
    start = time.monotonic()
    assert await log.wait_since(1, timeout_s=0.05) == []
    assert time.monotonic() - start >= 0.04
