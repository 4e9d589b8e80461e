"""The lock service: one interface, leases with fencing tokens, renewal, waiting.

A lock is held through a ``Lease``: its ``fence`` is a number that grows with every
acquisition of that lock, so a resource that remembers the highest fence it has seen can
refuse a holder that lost the lock without knowing it (paused, partitioned, slow). The
backends (``redis.py``, ``embedded.py``) supply four primitive operations; waiting,
renewal and loss detection live here once for both.

    LockService (Protocol)          what the rest of tcm uses
    └── Locks(backend)              acquire / hold / release / extend, renewal, waiting
        ├── RedisLockBackend        SET NX PX + INCR in Lua; release/extend by token
        └── EmbeddedLockBackend     one process: a dict of deadlines on the event loop
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from tcmd.errors import Conflict, InvalidParams, Unavailable

log = structlog.get_logger(__name__)

# Backoff while another node holds a lock: full jitter between 0 and base * 2**attempt,
# capped. Waiters of this process queue on an asyncio.Lock instead (see Locks).
BACKOFF_BASE_S = 0.002
BACKOFF_CAP_S = 0.1
MIN_TTL_MS = 30  # renewal every ttl/3 needs room for a round-trip
FORBIDDEN_IN_NAMES = "{}\n\r "  # a brace would break the key's hash tag


class LockBusy(Conflict):
    """The lock stayed held by another for the whole ``wait_ms``."""


class LockLost(Conflict):
    """This lease no longer holds its lock (expired, taken over, or released)."""


@dataclass(eq=False)
class Lease:
    """One holding of a lock. ``lost`` is set when the holder learns it lost the lock."""

    name: str
    token: str
    fence: int
    ttl_ms: int
    valid_until: float  # loop.time() before which the lock is surely still ours
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    released: bool = False
    renewer: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        """True while neither released nor known lost."""
        return not self.released and not self.lost.is_set()

    def check(self) -> None:
        """Raise LockLost unless this lease still holds its lock."""
        if not self.held:
            raise LockLost(
                f"lock {self.name!r} is no longer held (fence {self.fence})",
                data={"lock": self.name, "fence": self.fence},
            )


class LockBackend(Protocol):
    """The primitive operations a store offers; all atomic, all by token."""

    backend: str

    async def try_acquire(self, name: str, token: str, ttl_ms: int) -> tuple[int | None, int]:
        """``(fence, 0)`` when taken now; ``(None, ms until it may be free)`` when busy."""

    async def release(self, name: str, token: str) -> bool:
        """Free the lock if ``token`` holds it; False (and nothing done) otherwise."""

    async def extend(self, name: str, token: str, ttl_ms: int) -> bool:
        """Reset the TTL if ``token`` holds it; False (and nothing done) otherwise."""

    async def check_fence(self, name: str, fence: int) -> bool:
        """True when no fence newer than ``fence`` has been issued for ``name``."""

    async def fenced_write(self, resource: str, fence: int, value: str) -> bool:
        """Store ``value`` unless a write with a higher fence came first."""

    async def fenced_read(self, resource: str) -> tuple[int, str] | None:
        """``(fence, value)`` of the last accepted write, or None."""


class LockService(Protocol):
    """Named, leased, fenced locks; the same contract with Redis or embedded."""

    backend: str

    async def acquire(self, name: str, ttl_ms: int, wait_ms: int = 0) -> Lease:
        """Take ``name`` for ``ttl_ms`` (renewed while held); wait up to ``wait_ms``."""

    def hold(
        self, name: str, ttl_ms: int, wait_ms: int = 0
    ) -> contextlib.AbstractAsyncContextManager[Lease]:
        """``async with locks.hold(...) as lease:`` acquire, yield, release."""

    async def release(self, lease: Lease) -> bool:
        """Stop renewing and free the lock; False when it was no longer ours."""

    async def extend(self, lease: Lease, ttl_ms: int) -> None:
        """Reset the lock's TTL now; LockLost when it is no longer ours."""

    async def check_fence(self, name: str, fence: int) -> bool:
        """True when ``fence`` is still the newest issued for ``name``."""

    async def fenced_write(self, resource: str, fence: int, value: str) -> bool:
        """Write ``value`` to ``resource`` unless a higher fence wrote first."""

    async def fenced_read(self, resource: str) -> tuple[int, str] | None:
        """The last accepted ``(fence, value)`` of ``resource``."""

    async def close(self) -> None:
        """Release every lease still held; renewals stop."""


def check_name(name: str) -> None:
    if not name or any(c in FORBIDDEN_IN_NAMES for c in name):
        raise InvalidParams(f"lock name {name!r}: must be non-empty, without braces or spaces")


@dataclass(eq=False)
class _Turn:
    """This process's queue for one name: FIFO, so at most one task asks the store."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # tasks holding or waiting; the entry goes when it drops to 0


class Locks:
    """The LockService over a backend: waiting, automatic renewal, loss detection.

    Tasks of this process wanting the same name queue on an asyncio.Lock first (FIFO, a
    release hands over at once, no herd); only the head of that queue asks the backend,
    retrying with jittered backoff while another node holds the lock.
    """

    def __init__(self, backend: LockBackend, *, renew: bool = True) -> None:
        self._backend = backend
        self.backend = backend.backend
        self._renew = renew  # False only in tests: a holder that stops renewing
        self._turns: dict[str, _Turn] = {}
        self._leases: dict[Lease, _Turn] = {}  # held by this process: close() releases them

    async def acquire(self, name: str, ttl_ms: int, wait_ms: int = 0) -> Lease:
        check_name(name)
        if ttl_ms < MIN_TTL_MS:
            raise InvalidParams(f"ttl_ms: at least {MIN_TTL_MS}, not {ttl_ms}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait_ms, 0) / 1000
        turn = self._turns.setdefault(name, _Turn())
        turn.users += 1
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await turn.lock.acquire()
            except TimeoutError:
                raise self._busy(name, wait_ms) from None
            try:
                lease = await self._take(name, ttl_ms, deadline, wait_ms)
            except BaseException:
                turn.lock.release()
                raise
        except BaseException:
            self._leave(name, turn)
            raise
        self._leases[lease] = turn
        if self._renew:
            lease.renewer = asyncio.create_task(self._renew_loop(lease), name=f"lock-renew:{name}")
        return lease

    async def _take(self, name: str, ttl_ms: int, deadline: float, wait_ms: int) -> Lease:
        """Ask the backend until it grants the lock or the deadline passes."""
        loop = asyncio.get_running_loop()
        token = secrets.token_urlsafe(16)
        attempt = 0
        while True:
            sent = loop.time()
            fence, retry_ms = await self._backend.try_acquire(name, token, ttl_ms)
            if fence is not None:
                return Lease(name, token, fence, ttl_ms, sent + ttl_ms / 1000)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._busy(name, wait_ms)
            backoff = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))  # noqa: S311
            attempt += 1
            # another node holds it: nothing here can tell us sooner, so this is a timer
            await asyncio.sleep(min(backoff, (retry_ms + 1) / 1000, remaining))

    @staticmethod
    def _busy(name: str, wait_ms: int) -> LockBusy:
        return LockBusy(
            f"lock {name!r} is held by another; waited {wait_ms} ms",
            data={"lock": name, "waitedMs": wait_ms},
        )

    @contextlib.asynccontextmanager
    async def hold(self, name: str, ttl_ms: int, wait_ms: int = 0) -> AsyncIterator[Lease]:
        lease = await self.acquire(name, ttl_ms, wait_ms)
        try:
            yield lease
        finally:
            await self.release(lease)

    async def release(self, lease: Lease) -> bool:
        self._stop_renewing(lease)
        if lease.released:
            return False
        lease.released = True
        try:
            return await self._backend.release(lease.name, lease.token)
        except Unavailable as exc:
            # the lock frees itself when its TTL runs out; a finally block must not raise
            log.warning("lock_release_failed", lock=lease.name, error=exc.message)
            return False
        finally:
            self._end_turn(lease)  # after the store's release: the next one gets it at once

    async def extend(self, lease: Lease, ttl_ms: int) -> None:
        lease.check()
        sent = asyncio.get_running_loop().time()
        if not await self._backend.extend(lease.name, lease.token, ttl_ms):
            self._lose(lease, "taken over or expired")
            lease.check()
        lease.ttl_ms = ttl_ms
        lease.valid_until = sent + ttl_ms / 1000

    async def close(self) -> None:
        """Release every lease this process still holds (daemon shutdown)."""
        for lease in list(self._leases):
            await self.release(lease)

    async def check_fence(self, name: str, fence: int) -> bool:
        check_name(name)
        return await self._backend.check_fence(name, fence)

    async def fenced_write(self, resource: str, fence: int, value: str) -> bool:
        check_name(resource)
        return await self._backend.fenced_write(resource, fence, value)

    async def fenced_read(self, resource: str) -> tuple[int, str] | None:
        check_name(resource)
        return await self._backend.fenced_read(resource)

    async def _renew_loop(self, lease: Lease) -> None:
        """Renew at a third of the TTL; past ``valid_until`` without success, it is lost."""
        try:
            await self._renew_until_lost(lease)
        except Exception:
            # nobody awaits this task: say what broke, and tell the holder it lost the lock
            log.exception("lock_renew_crashed", lock=lease.name)
            self._lose(lease, "renewal crashed")

    async def _renew_until_lost(self, lease: Lease) -> None:
        loop = asyncio.get_running_loop()
        while lease.held:
            interval = lease.ttl_ms / 3000
            await asyncio.sleep(interval)  # a timer, not a wait for a condition
            while lease.held:
                left = lease.valid_until - loop.time()
                if left <= 0:
                    self._lose(lease, "renewal failed for a whole TTL")
                    return
                sent = loop.time()
                try:
                    async with asyncio.timeout(left):
                        ok = await self._backend.extend(lease.name, lease.token, lease.ttl_ms)
                except (Unavailable, TimeoutError) as exc:
                    log.warning("lock_renew_failed", lock=lease.name, error=str(exc))
                    # retry soon, and be back by valid_until to declare the loss on time
                    await asyncio.sleep(min(interval / 4, max(left, 0.001)))
                    continue
                if not ok:
                    self._lose(lease, "taken over or expired")
                    return
                lease.valid_until = sent + lease.ttl_ms / 1000
                break

    def _lose(self, lease: Lease, why: str) -> None:
        if not lease.lost.is_set():
            log.warning("lock_lost", lock=lease.name, fence=lease.fence, reason=why)
            lease.lost.set()
        self._end_turn(lease)  # the store's lock is gone: this process's next may try

    def _end_turn(self, lease: Lease) -> None:
        turn = self._leases.pop(lease, None)
        if turn is not None:
            turn.lock.release()
            self._leave(lease.name, turn)

    def _leave(self, name: str, turn: _Turn) -> None:
        turn.users -= 1
        if turn.users == 0 and self._turns.get(name) is turn:
            del self._turns[name]

    def _stop_renewing(self, lease: Lease) -> None:
        if lease.renewer is not None and lease.renewer is not asyncio.current_task():
            lease.renewer.cancel()
        lease.renewer = None
