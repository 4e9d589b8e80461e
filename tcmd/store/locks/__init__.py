"""Named, leased, fenced locks with one interface for Redis and embedded mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tcmd.store.locks.embedded import EmbeddedLockBackend
from tcmd.store.locks.service import (
    Lease,
    LockBackend,
    LockBusy,
    LockLost,
    Locks,
    LockService,
)

if TYPE_CHECKING:  # redis is imported when Redis locks are made: tcmd without REDIS_URL never
    import redis.asyncio as aioredis

    from tcmd.store.locks.redis import RedisLockBackend

__all__ = [
    "EmbeddedLockBackend",
    "Lease",
    "LockBackend",
    "LockBusy",
    "LockLost",
    "LockService",
    "Locks",
    "RedisLockBackend",
    "embedded_locks",
    "redis_locks",
]


def redis_locks(client: aioredis.Redis, prefix: str = "tcm:") -> Locks:
    """Locks shared by every daemon on ``client``'s Redis, under ``prefix``."""
    from tcmd.store.locks.redis import RedisLockBackend

    return Locks(RedisLockBackend(client, prefix))


def embedded_locks() -> Locks:
    """Locks for one process (no REDIS_URL)."""
    return Locks(EmbeddedLockBackend())


def __getattr__(name: str) -> Any:
    """``RedisLockBackend`` on first use (it imports redis)."""
    if name == "RedisLockBackend":
        from tcmd.store.locks.redis import RedisLockBackend

        return RedisLockBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
