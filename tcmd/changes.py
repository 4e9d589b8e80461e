"""Wait for a condition over daemon state without polling: every change wakes the waiters.

State changes happen in the event loop's thread (hook handlers, tmux results), so a
waiter that checks its predicate and then registers cannot miss a change in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Changes:
    """A broadcast 'something changed' signal with predicate waits."""

    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()
        self.count = 0

    def fire(self) -> None:
        self.count += 1
        for event in self._events:
            event.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float | None) -> bool:
        """True once ``predicate()`` holds; False if ``timeout_s`` passes first."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    event = asyncio.Event()
                    self._events.add(event)
                    try:
                        await event.wait()
                    finally:
                        self._events.discard(event)
        except TimeoutError:
            return predicate()
        return True
