"""Spawn pacing: new agent processes of a paced profile (Claude) start at most
TCM_SPAWN_RATE a second.

Many Claude sessions of one login starting at once each refresh the same credentials and
load the machine together (a start costs ~0.5 s of a core); spread out, they neither race
for the login nor starve tcmd. A token bucket of one token (burst 1): each start reserves
the next free slot at once, in the order asked, and waits for it; a start beyond the rate
waits, it is never refused. N starts asked together therefore take (N-1) / rate seconds
at least. Restarts are starts too. 0 turns pacing off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Pacer:
    """Hands out start slots ``1 / rate`` seconds apart."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1 / rate if rate > 0 else 0.0
        self.clock = clock
        self._next = -float("inf")  # when the next slot opens (monotonic)
        self.waited_s = 0.0  # the time starts spent waiting for a slot, all together

    def reserve(self) -> float:
        """Take the next slot; how long to wait for it (0: now)."""
        if not self.interval:
            return 0.0
        now = self.clock()
        at = max(now, self._next)
        self._next = at + self.interval
        return at - now

    async def wait(self) -> float:
        """Wait for a slot; the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            self.waited_s += delay
            await asyncio.sleep(delay)  # pacing is waiting for a time: this sleep is the point
        return delay
