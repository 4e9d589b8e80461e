"""Named, leased, fenced locks with one interface for Redis and embedded mode."""

from __future__ import annotations

import redis.asyncio as aioredis

from tcmd.store.locks.embedded import EmbeddedLockBackend
from tcmd.store.locks.redis import RedisLockBackend
from tcmd.store.locks.service import (
    Lease,
    LockBackend,
    LockBusy,
    LockLost,
    Locks,
    LockService,
)

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
    return Locks(RedisLockBackend(client, prefix))


def embedded_locks() -> Locks:
    """Locks for one process (no REDIS_URL)."""
    return Locks(EmbeddedLockBackend())
