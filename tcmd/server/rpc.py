"""The socket server: newline-delimited JSON-RPC 2.0 over a Unix stream socket.

Built on ``asyncio.Protocol`` rather than streams so that framing, the frame limit and
back-pressure are explicit: each connection scans its buffer for newlines, answers inline
tools in the same pass (one write per read), and runs the rest as tracked tasks. A frame
over the limit gets an error and that connection is closed; the others carry on.

Memory is bounded whatever the clients do (``Limits``, docs/configuration.md):

- a connection stops being read while its unsent answers pass ``unsent_bytes`` or it has
  ``calls`` calls running; the requests already read wait in its buffer, and reading
  resumes once the peer has drained its answers (and a call has finished). A call that
  finishes while its connection is over the bound waits to write its answer;
- bytes of unfinished frames, beyond a small allowance per connection, count against one
  budget shared by all connections (``pending_bytes``): the connection that would pass it
  gets a -32004 error and is closed;
- past ``connections`` live connections a new one gets a -32004 error and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import structlog

from tcmd import protocol
from tcmd.api import Caller, Catalogue
from tcmd.errors import Capacity, Forbidden, InvalidRequest, Stopping, TcmError
from tcmd.protocol import RequestId

log = structlog.get_logger(__name__)
_PEERCRED = struct.Struct("3i")  # pid, uid, gid
LINGER_S = 2.0
LINGER_MAX = 256  # refused connections kept lingering at once; past that they close at once
FRAME_ALLOWANCE = 16 * 1024  # unfinished bytes a connection holds outside the shared budget
WRITE_HIGH_WATER = 64 * 1024  # the transport's own: past it, answers wait for a drain
FD_RESERVE = 4096  # beside the connections: store, tmux pipes, children, logs, and two per
# live instance (the pidfd of its pane process and the pipe its launcher speaks through)
Identify = Callable[[int | None], Any]  # peer pid -> what the kernel says it is
ResolveCaller = Callable[[str | None, Any, str], Caller]  # token, that verdict, method


@dataclass(frozen=True, slots=True)
class Limits:
    """What the clients together may make tcmd hold (TCM_MAX_* in docs/configuration.md)."""

    connections: int = 1024  # live connections; the next one is refused
    pending_bytes: int = 64 * 1024 * 1024  # unfinished frames, all connections together
    unsent_bytes: int = 256 * 1024  # per connection: answers not yet taken by the peer
    calls: int = 64  # per connection: calls running at once


class RpcServer:
    """Owns the listening socket and every live connection."""

    def __init__(
        self,
        catalogue: Catalogue,
        resolve_caller: ResolveCaller,
        *,
        limits: Limits | None = None,
        path: Path,
        max_frame: int,
        identify: Identify = lambda pid: None,
    ) -> None:
        self.catalogue = catalogue
        self.resolve_caller = resolve_caller
        self.limits = limits or Limits()
        self.identify = identify
        self.path = path
        self.max_frame = max_frame
        self.connections: set[Connection] = set()
        self.requests = 0
        self.pending = 0  # bytes of unfinished frames charged to the shared budget
        self.lingering = 0  # refused connections still reading and dropping input
        self.stopping = False  # long polls are answered with Stopping from now on
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket 0600 inside a 0700 directory and start accepting."""
        _room_for(self.limits.connections + LINGER_MAX + FD_RESERVE)
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
        """Answer the long polls with ``Stopping`` now, let the other running calls finish
        for up to ``timeout_s``, then close every connection."""
        self.stopping = True
        tasks = {t for c in self.connections for t in c.tasks}
        for conn in self.connections:
            for task in conn.polls:
                task.cancel()  # _run answers it: tcmd is stopping
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
        self.polls: set[asyncio.Task[None]] = set()  # the tasks of long_poll tools
        self.peer_pid: int | None = None
        self.peer: Any = None  # what the kernel says the peer is, decided once at accept
        self.discarding = False  # after an oversized frame: swallow input until we close
        self.charged = 0  # bytes of buffer counted in the server's pending budget
        self.held = False  # not read: its answers wait for the peer, or its calls are many
        self.drained = asyncio.Event()  # the transport takes more answers (clear: paused)
        self.drained.set()
        self._waking = False
        self._lingering = False

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
        limit = self.server.limits.connections
        if len(self.server.connections) >= limit:
            log.warning("connection refused: too many", limit=limit, peer_pid=self.peer_pid)
            full = Capacity(
                f"tcmd already serves {limit} connections, its limit (TCM_MAX_CONNECTIONS); "
                "connection closed",
                data={"limit": limit, "setting": "TCM_MAX_CONNECTIONS"},
            )
            self._answer_and_close([protocol.encode_error(None, full)])
            return
        # answers past this wait for a drain; never above the bound, so over it => paused
        high = min(WRITE_HIGH_WATER, self.server.limits.unsent_bytes)
        self.transport.set_write_buffer_limits(high=high, low=high // 4)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None  # running calls still finish; their answers are dropped
        self.buffer.clear()
        self._charge()
        self._end_linger()
        self.drained.set()  # calls waiting to write see the transport gone and drop it

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.buffer += data
        self._serve()

    # -- framing and back-pressure ----------------------------------------------------
    def _serve(self) -> None:
        """Answer the buffer's complete frames while the peer keeps up; hold the rest."""
        buf = self.buffer
        out: list[bytes] = []
        out_bytes = 0
        start = 0
        while True:
            if self._over_bound(out_bytes):
                if not out:
                    held = True
                    break
                self._write(out)  # the kernel may take it all: then go on
                out, out_bytes = [], 0
                continue
            end = buf.find(b"\n", max(start, self.scanned))
            if end == -1:
                self.scanned = len(buf)
                held = False
                break
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
                    out_bytes += len(answer)
        del buf[:start]
        self.scanned -= start
        # held, the tail may hold whole frames: it is measured once they are answered
        if not held and len(buf) > self.server.max_frame:
            self._refuse_oversized(out)
            return
        if self._charge():
            self._refuse_over_budget(out)
            return
        self._write(out)
        if held != self.held and self.transport is not None:
            # held, what the peer sends waits in the kernel's buffer; the peer's drain
            # (resume_writing) or a finished call wakes us (_wake)
            self.held = held
            if held:
                self.transport.pause_reading()
            elif not self.transport.is_closing():
                self.transport.resume_reading()

    def _write(self, out: list[bytes]) -> None:
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def _over_bound(self, out_bytes: int) -> bool:
        """True while this connection may not take another request."""
        t = self.transport
        if t is None or t.is_closing():
            return True
        limits = self.server.limits
        return (
            t.get_write_buffer_size() + out_bytes > limits.unsent_bytes
            or len(self.tasks) >= limits.calls
        )

    def _wake(self) -> None:
        """Serve the held requests soon: answers drained, or a call finished."""
        if self.held and not self._waking:
            self._waking = True
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        self._waking = False
        if self.held and self.transport is not None and not self.discarding:
            self._serve()

    def _charge(self) -> bool:
        """Count the buffer in the shared budget; True if it grew past the budget."""
        charge = max(0, len(self.buffer) - FRAME_ALLOWANCE)
        grew = charge > self.charged
        self.server.pending += charge - self.charged
        self.charged = charge
        return grew and self.server.pending > self.server.limits.pending_bytes

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
            if tool.long_poll and self.server.stopping:
                raise Stopping()
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
        if tool.long_poll:
            self.polls.add(task)
            task.add_done_callback(self.polls.discard)
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
        result: Any = None
        error: TcmError | None = None
        try:
            result = await handler(caller, params)
        except TcmError as exc:
            error = exc
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is None or not self.server.stopping or me not in self.polls:
                raise
            me.uncancel()  # drain cancelled the long poll to answer it: it ends here
            error = Stopping()
        except Exception as exc:
            log.exception("handler crashed", method=method)
            error = TcmError(f"internal error: {exc}")
        try:
            # encoded only once the peer has caught up: a result that points at shared data
            # (events) costs little while it waits, its encoding would not
            if not notify and (t := await self._caught_up()) is not None:
                t.write(self._encode(req_id, result, error, method))
        finally:
            if (me := asyncio.current_task()) is not None:
                self.tasks.discard(me)  # now, not in the done callback: _wake counts calls
            self._wake()

    async def _caught_up(self) -> asyncio.Transport | None:
        """Wait until the peer has taken the answers before; its transport, or None: gone."""
        limit = self.server.limits.unsent_bytes
        while (t := self.transport) is not None and t.get_write_buffer_size() > limit:
            await self.drained.wait()  # set again by resume_writing or connection_lost
        return None if t is None or t.is_closing() else t

    @staticmethod
    def _encode(req_id: RequestId, result: Any, error: TcmError | None, method: str) -> bytes:
        if error is None:
            try:
                return protocol.encode_result(req_id, result)
            except Exception as exc:  # a result that is not JSON: the handler's bug
                log.exception("handler crashed", method=method)
                error = TcmError(f"internal error: {exc}")
        return protocol.encode_error(req_id, error)

    def _refuse_oversized(self, out: list[bytes]) -> None:
        limit = self.server.max_frame
        log.warning("frame over limit", limit=limit, peer_pid=self.peer_pid)
        err = InvalidRequest(f"frame exceeds the limit of {limit} bytes; connection closed")
        self._answer_and_close([*out, protocol.encode_error(None, err)])

    def _refuse_over_budget(self, out: list[bytes]) -> None:
        server = self.server
        limit = server.limits.pending_bytes
        log.warning(
            "unfinished frames over budget",
            limit=limit,
            pending=server.pending,
            connections=len(server.connections),
            peer_pid=self.peer_pid,
        )
        err = Capacity(
            f"unfinished requests on all connections would pass {limit} bytes "
            "(TCM_MAX_PENDING_BYTES); connection closed",
            data={"limit": limit, "setting": "TCM_MAX_PENDING_BYTES"},
        )
        self._answer_and_close([*out, protocol.encode_error(None, err)])

    def _answer_and_close(self, frames: list[bytes]) -> None:
        """Send ``frames``, then close.

        Input is read and dropped for a moment first: closing a Unix socket with unread
        input resets it, and the client would lose the answer. Only so many refused
        connections linger at once; past that they are closed straight after the answer.
        """
        self.buffer.clear()
        self._charge()
        self.discarding = True
        t = self.transport
        if t is None:
            return
        t.write(b"".join(frames))
        if t.can_write_eof():
            t.write_eof()
        if self.server.lingering >= LINGER_MAX:
            t.close()
            return
        self._lingering = True
        self.server.lingering += 1
        if self.held:
            t.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_S, self._linger_over)

    def _linger_over(self) -> None:
        self._end_linger()
        self.close()

    def _end_linger(self) -> None:
        if self._lingering:
            self._lingering = False
            self.server.lingering -= 1


def _room_for(descriptors: int) -> None:
    """Raise the soft open-files limit so every allowed connection gets a descriptor.

    Past that limit the accept itself fails (libuv then drops the newcomer unanswered),
    so TCM_MAX_CONNECTIONS could never refuse with an error.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= descriptors:
        return
    wanted = descriptors if hard == resource.RLIM_INFINITY else min(descriptors, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < descriptors:
        log.warning(
            "open-files limit is below what TCM_MAX_CONNECTIONS needs",
            needed=descriptors,
            hard_limit=hard,
        )
