"""Hook events over HTTP on loopback: Claude Code POSTs them, no process per event.

The ``claude`` profile registers every hook as ``{"type": "http", "url":
"http://127.0.0.1:PORT/hook/<launch>", "headers": {"Authorization": "Bearer
$TCM_INSTANCE_TOKEN"}}``; Claude sends the same JSON it would pipe into ``tcmctl hook``.
The request has no peer pid (TCP), so the instance token alone says who sends it
(docs/operations.md): a request without a live token gets ``404`` with no body, before its
body is read. A good one is handed to the same ``on_hook`` as ``tcmctl hook``'s frames.

HTTP/1.1, only what Claude's client sends: ``POST`` with ``Content-Length``, keep-alive.
Bounded: the head (16 KiB) and the body (``TCM_MAX_FRAME_BYTES``), the connections
(``MAX_CONNECTIONS``, more are closed at once), the time a head or body may take to arrive
and a connection may sit idle. The port stays the same across restarts where it can (it is
kept in the state directory): agents that outlive tcmd have it in their settings.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from tcmd.errors import TcmError

log = structlog.get_logger(__name__)
HOST = "127.0.0.1"
MAX_HEAD_BYTES = 16 * 1024
MAX_CONNECTIONS = 1024  # one keep-alive connection per agent is the usual load
READ_TIMEOUT_S = 10.0  # a head or a body that takes longer: the connection is closed
IDLE_TIMEOUT_S = 30.0  # idle keep-alive connections are closed after this ...
KEEP_ALIVE_HINT_S = 10  # ... and clients are told to drop them sooner, so none races a close
_TARGET = re.compile(rb"/hook(?:/(\d{1,9}))?")

Owner = Callable[[str], str | None]  # token -> its live instance's id, or None
Deliver = Callable[[str, dict[str, Any], int | None], None]  # token, payload, launch


def _reply(status: str, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n"
    head += "Connection: close\r\n" if close else f"Keep-Alive: timeout={KEEP_ALIVE_HINT_S}\r\n"
    return (head + "\r\n").encode()


NOTHING = _reply("404 Not Found", close=True)  # any request without a live token
OK = _reply("200 OK")


class HookListener:
    """The loopback HTTP endpoint for hook events. Constructing it binds nothing."""

    def __init__(self, owner: Owner, deliver: Deliver, *, port_file: Path, max_body: int) -> None:
        self.owner = owner
        self.deliver = deliver
        self.port_file = port_file
        self.max_body = max_body
        self.port: int | None = None
        self.connections: set[asyncio.Task[Any]] = set()
        self.requests = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The base URL the agents post to (``/<launch>`` follows)."""
        return f"http://{HOST}:{self.port}/hook"

    async def start(self) -> None:
        """Bind the port of the last run if it is free (live agents know it), else a new one."""
        try:
            kept = int(self.port_file.read_text())
        except (OSError, ValueError):
            kept = 0
        try:
            self._server = await self._bind(kept)
        except OSError:
            log.warning("hook port of the last run is taken: agents started before must be "
                        "restarted to report hooks", port=kept)  # fmt: skip
            self._server = await self._bind(0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.port_file.write_text(f"{self.port}\n")
        log.info("hook listener ready", url=self.url)

    async def _bind(self, port: int) -> asyncio.Server:
        return await asyncio.start_server(
            self._connection, HOST, port, limit=MAX_HEAD_BYTES, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.connections) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.connections.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client gone, too slow or too big: nothing to answer
        finally:
            self.connections.discard(task)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; whether the connection may carry another."""
        try:
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                first = await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            return False  # closed between requests
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = first + await reader.readuntil(b"\r\n\r\n")
        line, *fields = head[:-4].split(b"\r\n")
        headers = {}
        for raw in fields:
            name, _, value = raw.partition(b":")
            headers[name.strip().lower()] = value.strip()
        parts = line.split(b" ")
        target = _TARGET.fullmatch(parts[1]) if len(parts) == 3 and parts[0] == b"POST" else None
        auth = headers.get(b"authorization", b"")
        token = auth[7:].decode("ascii", "replace") if auth[:7].lower() == b"bearer " else ""
        length = headers.get(b"content-length", b"")
        if target is None or b"transfer-encoding" in headers or not length.isdigit():
            token = ""  # not a hook request: whatever it carries, it learns nothing
        if not token or self.owner(token) is None:
            writer.write(NOTHING)
            await writer.drain()
            return False
        if int(length) > self.max_body:
            log.warning("hook request too large", bytes=int(length), limit=self.max_body)
            writer.write(_reply("413 Content Too Large", close=True))
            await writer.drain()
            return False
        async with asyncio.timeout(READ_TIMEOUT_S):
            body = await reader.readexactly(int(length))
        self.requests += 1
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            writer.write(_reply("400 Bad Request"))
        else:
            launch = int(target[1]) if target is not None and target[1] else None
            try:
                self.deliver(token, payload, launch)
            except TcmError as exc:  # e.g. its instance was terminated meanwhile
                log.info("hook refused", error=exc.message)
            writer.write(OK)
        await writer.drain()
        return headers.get(b"connection", b"").lower() != b"close"
