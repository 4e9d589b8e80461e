"""Locks inside one process: the same leases, TTLs and fences as Redis, on the event loop.

Without Redis only one daemon uses the state dir, so a lock only orders this process's
own tasks. It keeps the TTL and fence semantics anyway, so code that takes a lock behaves
the same in both modes (and the behavioural tests run on both). Fences grow per name
from 1 and are forgotten when the process ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class _Held:
    token: str
    expires: float  # loop.time()


class EmbeddedLockBackend:
    """LockBackend over dicts; every operation is atomic because nothing in it awaits."""

    backend = "embedded"

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self._fences: dict[str, int] = {}
        self._writes: dict[str, tuple[int, str]] = {}

    def _current(self, name: str, now: float) -> _Held | None:
        held = self._held.get(name)
        if held is not None and held.expires <= now:
            del self._held[name]
            return None
        return held

    async def try_acquire(self, name: str, token: str, ttl_ms: int) -> tuple[int | None, int]:
        now = asyncio.get_running_loop().time()
        held = self._current(name, now)
        if held is not None:
            return None, max(int((held.expires - now) * 1000), 0)
        self._held[name] = _Held(token, now + ttl_ms / 1000)
        self._fences[name] = fence = self._fences.get(name, 0) + 1
        return fence, 0

    async def release(self, name: str, token: str) -> bool:
        held = self._current(name, asyncio.get_running_loop().time())
        if held is None or held.token != token:
            return False
        del self._held[name]
        return True

    async def extend(self, name: str, token: str, ttl_ms: int) -> bool:
        now = asyncio.get_running_loop().time()
        held = self._current(name, now)
        if held is None or held.token != token:
            return False
        held.expires = now + ttl_ms / 1000
        return True

    async def check_fence(self, name: str, fence: int) -> bool:
        return self._fences.get(name, 0) <= fence

    async def fenced_write(self, resource: str, fence: int, value: str) -> bool:
        seen = self._writes.get(resource)
        if seen is not None and fence < seen[0]:
            return False
        self._writes[resource] = (fence, value)
        return True

    async def fenced_read(self, resource: str) -> tuple[int, str] | None:
        return self._writes.get(resource)
