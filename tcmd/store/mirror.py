"""The Redis mirror: every state change of this node written through to Redis, off the RPC
path, and what the other nodes sharing that Redis say about themselves.

The local JSON store stays the source of truth (durable on return, as always); the mirror
only follows it. Each change marks its document dirty (a set bounded by
``TCM_REDIS_OUTBOX``: repeated changes of one document are sent once); a background task
sends the dirty documents in pipelined batches. An RPC never waits on Redis.

When Redis cannot be reached (at start or mid-run) the daemon says so once, goes on from its
JSON store (``status`` shows ``json (fallback: <reason>)`` and since when), and reconnects
with jittered backoff. On every (re)connection, and whenever the dirty set overflowed, the
node's whole mirror is rewritten from the local store in one transaction: idempotent, so the
mirror equals the daemon again however much was missed.

Keys (docs/redis.md): ``{P}{node:ID}:doc:NS`` hashes (key → JSON), ``{P}{node:ID}:alive``
(heartbeat, expires after HEARTBEAT_TTL_S), ``{P}{nodes}`` (hash: node → info JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
HEARTBEAT_S = 1.0  # how often a node says it is alive (and refreshes its view of the others)
HEARTBEAT_TTL_S = 5  # a node silent this long is reported dead
BATCH = 500  # documents per pipeline
BACKOFF_MAX_S = 10.0
NUMBER_TIMEOUT_S = 0.5
METRICS_EVERY = 5  # beats between two publications of this node's metrics
# INCR, but never at or below the caller's own counter (a node that numbered on its own
# while Redis was away must not be handed a number it already used)
_NEXT_NUMBER = """
local n = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if n <= floor then
  n = floor + 1
  redis.call('SET', KEYS[1], n)
end
return n
"""


def for_redis(ns: str, doc: bytes | None) -> bytes | None:
    """A document as the mirror holds it: an instance without its token (tokens are
    checked by the node that owns the instance, and never leave it)."""
    if doc is None or ns != "instances":
        return doc
    record = orjson.loads(doc)
    record.pop("token", None)
    return orjson.dumps(record)


class Source(Protocol):
    """What the mirror reads from the local store (JsonFileStore has it)."""

    listeners: list[Callable[[str, str], None]]

    def raw(self, ns: str, key: str) -> bytes | None: ...

    def raw_items(self) -> dict[str, dict[str, bytes]]: ...


class Keys:
    """Every Redis key tcm writes, in one place."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def doc(self, node: str, ns: str) -> str:
        return f"{self.prefix}{{node:{node}}}:doc:{ns}"

    def docs_pattern(self, node: str) -> str:
        return f"{self.prefix}{{node:{node}}}:doc:*"

    def metrics(self, node: str) -> str:
        return f"{self.prefix}{{node:{node}}}:metrics"

    def alive(self, node: str) -> str:
        return f"{self.prefix}{{node:{node}}}:alive"

    def nodes(self) -> str:
        return f"{self.prefix}{{nodes}}"

    def counter(self, name: str) -> str:
        return f"{self.prefix}{{ids}}:{name}"


class Mirror:
    """Writes this node's state through to Redis and keeps a view of the other nodes."""

    def __init__(
        self,
        client: Redis,
        source: Source,
        *,
        node: str,
        prefix: str = "tcm:",
        outbox_max: int = 50_000,
        info: Callable[[], dict[str, Any]] = dict,
        metrics: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.client = client
        self.source = source
        self.node = node
        self.keys = Keys(prefix)
        self.outbox_max = outbox_max
        self.info = info
        self.metrics = metrics  # this node's metrics snapshot, published every few beats
        self.beats = 0
        self.dirty: dict[tuple[str, str], None] = {}  # insertion-ordered set
        self.resync_needed = True
        self.connected = False
        self.fallback_reason: str | None = "not connected yet"
        self.fallback_since: float | None = time.time()
        self.sent = 0  # documents written to Redis
        self.resyncs = 0
        self.overflows = 0
        self.peers: dict[str, dict[str, Any]] = {}  # node -> {"alive", "info", "instances"}
        self.eviction_policy: str | None = None  # Redis's maxmemory-policy, when readable
        self._wake = asyncio.Event()
        source.listeners.append(self._changed)

    # -- the local side (synchronous, on every change) ---------------------------------------
    def _changed(self, ns: str, key: str) -> None:
        if self.resync_needed:
            return  # a full rewrite is coming: it will carry this change too
        if len(self.dirty) >= self.outbox_max and (ns, key) not in self.dirty:
            self.dirty.clear()
            self.resync_needed = True
            self.overflows += 1
            log.warning("redis outbox full: the mirror will be rewritten", size=self.outbox_max)
        else:
            self.dirty[(ns, key)] = None
        self._wake.set()

    def health(self) -> dict[str, Any]:
        """What ``status`` shows of the mirror."""
        return {
            "backend": "redis" if self.connected else f"json (fallback: {self.fallback_reason})",
            "redisConnected": self.connected,
            "fallbackSince": self.fallback_since,
            "node": self.node,
            "pending": len(self.dirty),
            "sent": self.sent,
            "resyncs": self.resyncs,
            "overflows": self.overflows,
            "evictionPolicy": self.eviction_policy,
        }

    # -- the Redis side (a background task) --------------------------------------------------
    async def run(self) -> None:
        """Connect, rewrite, follow changes, beat; on any Redis error fall back and retry."""
        attempt = 0
        while True:
            try:
                await self.client.ping()
                if not self.connected:
                    log.info("redis connected", node=self.node)
                    await self._check_policy()
                self.connected, self.fallback_reason, self.fallback_since = True, None, None
                attempt = 0
                await self._follow()
            except (RedisError, OSError) as exc:
                self._lost(exc)
            attempt += 1
            delay = random.uniform(0, min(BACKOFF_MAX_S, 0.1 * 2**attempt))  # noqa: S311
            await asyncio.sleep(delay)  # backoff before reconnecting: a pause, not a poll

    async def _check_policy(self) -> None:
        """Warn once when Redis may evict keys: tcm's mirror, leases and locks must stay."""
        try:
            policy = (await self.client.config_get("maxmemory-policy")).get("maxmemory-policy")
        except (RedisError, OSError):  # CONFIG may be renamed or refused (managed Redis)
            return
        if policy and policy != "noeviction":
            log.warning(
                "redis may evict tcm's keys: set maxmemory-policy noeviction", policy=policy
            )
        self.eviction_policy = policy

    def _lost(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:200]
        if self.connected or self.fallback_reason == "not connected yet":
            log.warning("redis unreachable: serving from the local store", reason=reason)
        if self.connected or self.fallback_since is None:
            self.fallback_since = time.time()
        self.connected, self.fallback_reason = False, reason
        self.resync_needed = True  # what changed meanwhile is carried by the rewrite
        self.dirty.clear()

    async def _follow(self) -> None:
        next_beat = 0.0
        while True:
            if self.resync_needed:
                await self._resync()
            await self._flush()
            if time.monotonic() >= next_beat:
                await self._beat()
                next_beat = time.monotonic() + HEARTBEAT_S
            self._wake.clear()
            if not self.dirty and not self.resync_needed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_beat - time.monotonic())):
                        await self._wake.wait()

    async def _resync(self) -> None:
        """Rewrite this node's whole mirror from the local store, in one transaction."""
        self.resync_needed = False
        self.dirty.clear()
        data = self.source.raw_items()
        old = [k async for k in self.client.scan_iter(self.keys.docs_pattern(self.node))]
        async with self.client.pipeline(transaction=True) as pipe:
            if old:
                pipe.delete(*old)
            for ns, docs in data.items():
                clean = {k: for_redis(ns, v) for k, v in docs.items()}
                if clean:
                    pipe.hset(self.keys.doc(self.node, ns), mapping=clean)  # type: ignore[arg-type]
            await pipe.execute()
        self.resyncs += 1
        self.sent += sum(len(d) for d in data.values())
        log.info("redis mirror rewritten", node=self.node, documents=self.sent)

    async def _flush(self) -> None:
        while self.dirty and not self.resync_needed:
            batch = list(self.dirty)[:BATCH]
            for item in batch:  # taken out first: a change while we send marks it again
                del self.dirty[item]
            async with self.client.pipeline(transaction=False) as pipe:
                for ns, key in batch:
                    doc = for_redis(ns, self.source.raw(ns, key))
                    if doc is None:
                        pipe.hdel(self.keys.doc(self.node, ns), key)
                    else:
                        pipe.hset(self.keys.doc(self.node, ns), key, doc)
                await pipe.execute()  # on failure the reconnection rewrites everything
            self.sent += len(batch)

    async def _beat(self) -> None:
        """Say this node is alive; read what every node says (for ``list --all-nodes``)."""
        info = orjson.dumps({"node": self.node, "at": time.time(), **self.info()})
        self.beats += 1
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.alive(self.node), b"1", ex=HEARTBEAT_TTL_S)
            if self.metrics is not None and self.beats % METRICS_EVERY == 1:
                ttl = int(HEARTBEAT_S * METRICS_EVERY) + HEARTBEAT_TTL_S
                pipe.set(self.keys.metrics(self.node), orjson.dumps(self.metrics()), ex=ttl)
            pipe.hset(self.keys.nodes(), self.node, info)
            pipe.hgetall(self.keys.nodes())
            *_, nodes = await pipe.execute()
        names = [n.decode() for n in nodes]
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.alive(name))
                pipe.hgetall(self.keys.doc(name, "instances"))
                pipe.get(self.keys.metrics(name))
            answers = await pipe.execute()
        peers: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(names):
            alive, docs, metrics = answers[3 * i : 3 * i + 3]
            peers[name] = {
                "alive": bool(alive),
                "info": orjson.loads(nodes[name.encode()]),
                "instances": [orjson.loads(v) for v in docs.values()],
                "metrics": orjson.loads(metrics) if metrics else None,
            }
        self.peers = peers

    async def number(self, name: str, above: int) -> int | None:
        """The next number of counter ``name`` shared by every node, above ``above`` (this
        node's own counter); None when Redis cannot answer at once (the caller numbers it)."""
        if not self.connected:
            return None
        try:
            async with asyncio.timeout(NUMBER_TIMEOUT_S):
                n = await self.client.eval(_NEXT_NUMBER, 1, self.keys.counter(name), above)
        except (RedisError, OSError, TimeoutError):
            return None
        return int(n)

    async def close(self) -> None:
        """Send what is pending (briefly) and say this node is leaving."""
        if self.connected:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(2):
                    await self._flush()
                    await self.client.delete(self.keys.alive(self.node))
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
