"""Calls on an instance of another node, forwarded over Redis (REDIS_URL set).

Each node reads its request stream, ``{P}{node:ID}:requests`` (XREAD BLOCK: no polling),
runs each request with the caller it names, and pushes the answer (a JSON-RPC result or
error) on the caller's reply list, ``{P}{node:CALLER}:reply:<request id>`` (expires after
a minute), which the caller BLPOPs within its own timeout. Where an instance lives comes
from the mirror's view of the other nodes (at most ~1 s old); a node whose heartbeat
expired is reported down, by name, without asking it.

Nodes sharing a Redis trust each other: the caller's node checked the caller's token (a
token never leaves its node) and forwards only its identity (instance id and role); the
owner applies the role rules to it, walking the target's ancestry over its own instances
and the other nodes' mirrored records. Redis is the trust boundary: protect it with an ACL
user and TLS when nodes are on several machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tcmd.api import Caller
from tcmd.errors import TcmError, Unavailable, from_json
from tcmd.model import Instance

log = structlog.get_logger(__name__)
REPLY_TTL_S = 60
STREAM_MAX = 10_000  # requests kept per node stream (approximate trim)
BLOCK_MS = 10_000
MARGIN_S = 5.0  # beyond the call's own timeout: the hop to the other node and back
FORWARDED = contextvars.ContextVar("tcm_forwarded", default=False)  # never forward twice

Handler = Callable[[str, dict[str, Any], Caller], Awaitable[Any]]


class Forwarder:
    """Forwards calls to the node that owns an instance, and serves this node's share."""

    def __init__(
        self,
        client: Redis,
        *,
        node: str,
        prefix: str,
        peers: Callable[[], dict[str, dict[str, Any]]],
    ) -> None:
        self.client = client
        self.node = node
        self.prefix = prefix
        self.peers = peers

    def _stream(self, node: str) -> str:
        return f"{self.prefix}{{node:{node}}}:requests"

    def _reply(self, request_id: str) -> str:
        return f"{self.prefix}{{node:{self.node}}}:reply:{request_id}"

    def owner(self, instance_id: str) -> tuple[str, bool] | None:
        """The node that holds ``instance_id`` and whether it is alive, or None."""
        if FORWARDED.get():
            return None  # a forwarded call runs here or nowhere
        for name, peer in self.peers().items():
            if name == self.node:
                continue
            if any(rec.get("id") == instance_id for rec in peer.get("instances", [])):
                return name, bool(peer.get("alive"))
        return None

    def record(self, instance_id: str) -> Instance | None:
        """Another node's mirrored record of ``instance_id`` (for ancestry checks)."""
        for peer in self.peers().values():
            for rec in peer.get("instances", []):
                if rec.get("id") == instance_id:
                    with contextlib.suppress(ValueError):
                        return Instance.from_json({"token": "", **rec})
        return None

    async def call(
        self,
        node: str,
        alive: bool,
        method: str,
        params: dict[str, Any],
        caller: Caller,
        timeout_s: float,
    ) -> Any:
        """``method`` run by ``node`` as ``caller``; its answer, or its error raised here."""
        target = params.get("instanceId") or params.get("instanceIds")
        if not alive:
            raise Unavailable(
                f"{target} lives on node {node}, which is down (no heartbeat)",
                data={"node": node, "instanceId": target},
            )
        request_id = uuid.uuid4().hex
        body = {
            "id": request_id,
            "method": method,
            "params": params,
            "caller": {"instanceId": caller.instance_id, "role": caller.role},
            "replyTo": self._reply(request_id),
        }
        try:
            await self.client.xadd(
                self._stream(node),
                {"b": orjson.dumps(body)},
                maxlen=STREAM_MAX,
                approximate=True,
            )
            popped = await self.client.blpop([self._reply(request_id)], timeout=timeout_s)
        except (RedisError, OSError) as exc:
            raise Unavailable(
                f"{target} lives on node {node}; Redis did not carry the call: {exc}",
                data={"node": node, "dependency": "redis"},
            ) from exc
        if popped is None:
            raise Unavailable(
                f"node {node} did not answer {method} on {target} within {timeout_s:.0f} s",
                data={"node": node, "instanceId": target},
            )
        answer = orjson.loads(popped[1])
        if "error" in answer:
            raise from_json(answer["error"])
        return answer["result"]

    async def serve(self, handle: Handler) -> None:
        """Answer the requests other nodes send to this node's instances."""
        last = "$"
        tasks: set[asyncio.Task[None]] = set()
        while True:
            try:
                found = await self.client.xread({self._stream(self.node): last}, block=BLOCK_MS)
            except (RedisError, OSError) as exc:
                log.debug("request stream unreadable: Redis is away", error=str(exc))
                await asyncio.sleep(1.0)  # a pause before reconnecting, not a poll
                continue
            streams: list[Any] = list(found or [])
            for _, entries in streams:
                for entry_id, fields in entries:
                    last = entry_id
                    task = asyncio.create_task(self._answer(handle, fields[b"b"]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    async def _answer(self, handle: Handler, raw: bytes) -> None:
        body = orjson.loads(raw)
        caller = Caller(body["caller"]["instanceId"], body["caller"]["role"])
        FORWARDED.set(True)  # this task's context only
        try:
            result = await handle(body["method"], body["params"], caller)
            answer: dict[str, Any] = {"result": result}
        except TcmError as exc:
            answer = {"error": exc.to_json()}
        except Exception as exc:  # a bug here must still answer the waiting node
            log.exception("forwarded call failed", method=body["method"])
            answer = {"error": TcmError(f"internal error on node {self.node}: {exc!r}").to_json()}
        with contextlib.suppress(RedisError, OSError):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.lpush(body["replyTo"], orjson.dumps(answer))
                pipe.expire(body["replyTo"], REPLY_TTL_S)
                await pipe.execute()

