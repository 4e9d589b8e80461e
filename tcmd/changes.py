"""Wait for a condition over daemon state without polling: a change wakes its waiters.

State changes happen in the event loop's thread (hook handlers, tmux results), so a
waiter that checks its predicate and then registers cannot miss a change in between.

A change may name what changed (an instance id, ``"events"``): waiters on that key wake,
and waiters on anything. A waiter on a key pays only for changes of its own key, so a
run with hundreds of tasks in flight, each waiting on its specialist, costs O(1) a change
instead of O(tasks). A change with no key wakes every waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

ANY = None  # the key of a waiter that any change may concern


def run_key(run_id: str) -> str:
    """The key of a change to a job of run ``run_id``."""
    return f"run:{run_id}"


class Changes:
    """A broadcast 'something changed' signal with predicate waits, by key."""

    def __init__(self) -> None:
        self._waiting: dict[str | None, set[asyncio.Future[None]]] = {}
        self.count = 0

    def fire(self, key: str | None = None) -> None:
        """Something changed: ``key`` says what (waiters on it and on anything wake); None
        says anything may have (every waiter wakes)."""
        self.count += 1
        if key is None:
            groups = list(self._waiting.values())
        else:
            groups = [g for g in (self._waiting.get(key), self._waiting.get(ANY)) if g]
        for group in groups:
            for waiter in group:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_for(
        self, predicate: Callable[[], bool], timeout_s: float | None, key: str | None = ANY
    ) -> bool:
        """True once ``predicate()`` holds; False if ``timeout_s`` passes first. With a
        ``key``, every change the predicate reads must be fired with that key (or none)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    waiter = loop.create_future()
                    group = self._waiting.setdefault(key, set())
                    group.add(waiter)
                    try:
                        await waiter
                    finally:
                        group.discard(waiter)
                        if not group and self._waiting.get(key) is group:
                            del self._waiting[key]
        except TimeoutError:
            return predicate()
        return True
