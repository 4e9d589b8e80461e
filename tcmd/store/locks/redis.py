"""Locks in Redis: ``SET NX PX`` with a random token, fences by ``INCR``, all in Lua.

Keys (``P`` is the namespace prefix, default ``tcm:``; the braces are the hash tag, so each
script touches one slot and Redis Cluster could hold them):

    P{lock:NAME}         string   the holder's token; PX = the lease's TTL
    P{lock:NAME}:fence   string   the last fence issued (integer); no TTL
    P{fenced:RES}        hash     fence, value: the last accepted fenced write; no TTL

A fence counter that does not exist starts at Redis ``TIME`` in ms × 1000, so fences keep
growing even if Redis loses its data (restart without persistence), as long as fewer than
1000 acquisitions of one lock happen per millisecond.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tcmd.errors import Unavailable

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local t = redis.call('TIME')
    local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('SET', KEYS[2], string.format('%.0f', ms * 1000))
  end
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

FENCED_WRITE = """
local seen = tonumber(redis.call('HGET', KEYS[1], 'fence') or '-1')
if tonumber(ARGV[1]) < seen then
  return 0
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return 1
"""

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisLockBackend:
    """LockBackend on a redis.asyncio client (owned by the caller; nothing runs at init)."""

    backend = "redis"

    def __init__(self, client: aioredis.Redis, prefix: str = "tcm:") -> None:
        self._r = client
        self._prefix = prefix
        # register_script runs EVALSHA and falls back to EVAL after a restart emptied the cache
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._extend = client.register_script(EXTEND)
        self._fenced_write = client.register_script(FENCED_WRITE)

    def lock_key(self, name: str) -> str:
        return f"{self._prefix}{{lock:{name}}}"

    def fence_key(self, name: str) -> str:
        return f"{self._prefix}{{lock:{name}}}:fence"

    def fenced_key(self, resource: str) -> str:
        return f"{self._prefix}{{fenced:{resource}}}"

    async def try_acquire(self, name: str, token: str, ttl_ms: int) -> tuple[int | None, int]:
        keys = [self.lock_key(name), self.fence_key(name)]
        got, n = await self._call(self._acquire(keys=keys, args=[token, ttl_ms]), name)
        return (int(n), 0) if got == 1 else (None, max(int(n), 0))

    async def release(self, name: str, token: str) -> bool:
        return bool(await self._call(self._release(keys=[self.lock_key(name)], args=[token]), name))

    async def extend(self, name: str, token: str, ttl_ms: int) -> bool:
        call = self._extend(keys=[self.lock_key(name)], args=[token, ttl_ms])
        return bool(await self._call(call, name))

    async def check_fence(self, name: str, fence: int) -> bool:
        current = await self._call(self._r.get(self.fence_key(name)), name)
        return current is None or int(current) <= fence

    async def fenced_write(self, resource: str, fence: int, value: str) -> bool:
        call = self._fenced_write(keys=[self.fenced_key(resource)], args=[fence, value])
        return bool(await self._call(call, resource))

    async def fenced_read(self, resource: str) -> tuple[int, str] | None:
        read = self._r.hmget(self.fenced_key(resource), ["fence", "value"])
        fence, value = await self._call(read, resource)
        if fence is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        return int(fence), text

    @staticmethod
    async def _call(awaitable: Any, name: str) -> Any:
        """Await one Redis call; unreachable Redis → Unavailable (fail closed, never pretend)."""
        try:
            return await awaitable
        except UNREACHABLE as exc:
            raise Unavailable(
                f"redis unreachable, lock {name!r} not touched: {exc}",
                data={"lock": name, "dependency": "redis"},
            ) from exc
