"""The socket server: newline-delimited JSON-RPC 2.0 over a Unix stream socket.

Built on ``asyncio.Protocol`` rather than streams so that framing, the frame limit and
back-pressure are explicit: each connection scans its buffer for newlines, answers inline
tools in the same pass (one write per read), and runs the rest as tracked tasks. A frame
over the limit gets an error and that connection is closed; the others carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import structlog

from tcmd import protocol
from tcmd.api import Caller, Catalogue
from tcmd.errors import Forbidden, InvalidRequest, TcmError
from tcmd.protocol import RequestId

log = structlog.get_logger(__name__)
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
LINGER_S = 2.0
Identify = Callable[[int | None], Any]  # peer pid -> what the kernel says it is
ResolveCaller = Callable[[str | None, Any, str], Caller]  # token, that verdict, method


class RpcServer:
    """Owns the listening socket and every live connection."""

    def __init__(
        self,
        catalogue: Catalogue,
        resolve_caller: ResolveCaller,
        *,
        path: Path,
        max_frame: int,
        identify: Identify = lambda pid: None,
    ) -> None:
        self.catalogue = catalogue
        self.resolve_caller = resolve_caller
        self.identify = identify
        self.path = path
        self.max_frame = max_frame
        self.connections: set[Connection] = set()
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket 0600 inside a 0700 directory and start accepting."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: Connection(self), path=str(self.path), backlog=1024
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout_s: float) -> None:
        """Let running calls finish for up to ``timeout_s``, then close every connection."""
        tasks = {t for c in self.connections for t in c.tasks}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        for conn in list(self.connections):
            conn.close()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Connection(asyncio.Protocol):
    """One client. Answers may leave in any order; ids correlate them."""

    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scanned = 0  # bytes of buffer already known to hold no newline
        self.tasks: set[asyncio.Task[None]] = set()
        self.peer_pid: int | None = None
        self.peer: Any = None  # what the kernel says the peer is, decided once at accept
        self.discarding = False  # after an oversized frame: swallow input until we close

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock: socket.socket | None = self.transport.get_extra_info("socket")
        if sock is not None:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            pid, uid, _gid = _PEERCRED.unpack(raw)
            self.peer_pid = pid
            self.peer = self.server.identify(pid)  # now, while the peer surely lives
            if uid != os.getuid():
                log.warning("peer refused", peer_uid=uid, peer_pid=pid)
                err = Forbidden(f"peer uid {uid} is not the daemon's uid {os.getuid()}")
                self._answer_and_close([protocol.encode_error(None, err)])
                return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None  # running calls still finish; their answers are dropped

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # a client that does not read stops being read

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        buf = self.buffer
        buf += data
        out: list[bytes] = []
        start = 0
        while (end := buf.find(b"\n", max(start, self.scanned))) != -1:
            line = bytes(buf[start:end])
            start = end + 1
            self.scanned = start
            if len(line) > self.server.max_frame:
                self._refuse_oversized(out)
                return
            if line.strip():
                answer = self.handle(line)
                if answer is not None:
                    out.append(answer)
        del buf[:start]
        self.scanned = len(buf)
        if len(buf) > self.server.max_frame:
            self._refuse_oversized(out)
            return
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- dispatch ---------------------------------------------------------------------
    def handle(self, line: bytes) -> bytes | None:
        """Answer ``line`` now (inline tools, errors) or start a task and return None."""
        self.server.requests += 1
        req_id: RequestId = None
        notification = False
        try:
            req = protocol.decode_request(line)
            req_id, notification = req.id, req.notification
            tool = self.server.catalogue.get(req.method)
            caller = self.server.resolve_caller(req.token, self.peer, req.method)
            params = Catalogue.bind(tool, caller, req.params)
            if tool.inline:
                result = tool.handler(caller, params)
                return None if notification else protocol.encode_result(req_id, result)
        except TcmError as exc:
            if isinstance(exc, protocol.EnvelopeError):
                req_id = exc.request_id
            return None if notification else protocol.encode_error(req_id, exc)
        except Exception as exc:  # a bug in an inline handler must not kill the connection
            log.exception("handler crashed", method=line[:80])
            return None if notification else protocol.encode_error(req_id, TcmError(str(exc)))
        task = asyncio.get_running_loop().create_task(
            self._run(
                tool.handler, caller, params, req_id=req_id, notify=notification, method=req.method
            )
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return None

    async def _run(
        self,
        handler: Callable[[Caller, Any], Any],
        caller: Caller,
        params: Any,
        *,
        req_id: RequestId,
        notify: bool,
        method: str,
    ) -> None:
        try:
            answer = protocol.encode_result(req_id, await handler(caller, params))
        except TcmError as exc:
            answer = protocol.encode_error(req_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("handler crashed", method=method)
            answer = protocol.encode_error(req_id, TcmError(f"internal error: {exc}"))
        if not notify and self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)

    def _refuse_oversized(self, out: list[bytes]) -> None:
        limit = self.server.max_frame
        log.warning("frame over limit", limit=limit, peer_pid=self.peer_pid)
        err = InvalidRequest(f"frame exceeds the limit of {limit} bytes; connection closed")
        self._answer_and_close([*out, protocol.encode_error(None, err)])

    def _answer_and_close(self, frames: list[bytes]) -> None:
        """Send ``frames``, then close.

        Input is read and dropped for a moment first: closing a Unix socket with unread
        input resets it, and the client would lose the answer.
        """
        self.buffer.clear()
        self.discarding = True
        if self.transport is not None:
            self.transport.write(b"".join(frames))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, self.close)
