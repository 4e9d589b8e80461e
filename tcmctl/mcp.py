"""`tcmctl mcp`: a stdio MCP server that lists tcmd's tool catalogue and forwards calls.

Generic: every catalogue entry (the `tools` RPC) becomes an MCP tool and every call goes
to the daemon as-is, so a tool added to the daemon appears here with no change. Calls
carry the caller's instance token (TCM_INSTANCE_TOKEN): the daemon checks its role.

Start-up: importing the MCP SDK costs ~0.6 s of CPU, more than the 400 ms budget from
process start to the first tools/list answer. So a worker thread imports the SDK while a
small front answers the opening `initialize` and `tools/list` from the same data. Once
loaded, the SDK's low-level Server takes the stream over: it is fed the recorded
initialize (its answer dropped, the front already gave the same one) and every frame
held since. A client that opens any other way is served by the SDK from its first frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from tcmctl.client import DaemonUnreachable, may_autostart, start_daemon
from tcmd import __version__, protocol
from tcmd.errors import TcmError, from_json
from tcmd.paths import socket_path_from_env

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

log = logging.getLogger("tcmctl.mcp")

SERVER_NAME = "tcm"
HIDDEN = frozenset({"hook"})  # agents' hooks report through `tcmctl hook`, never the model
TEXT_LIMIT = 20_000  # characters of JSON text beside the (complete) structured result
# The SDK's handshake versions (mcp_types.version), newest last: the front negotiates as
# the SDK does, and a test keeps the two equal.
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
INSTRUCTIONS = (
    "tcm runs a team of coding-agent instances in tmux: an executive spawns managers, "
    "managers run specialists (spawn/send/wait/read, or executeParallel and "
    "distributeWork for batches). Errors carry tcm's code in brackets, e.g. [-32002] "
    "forbidden for your role, [-32001] unknown id."
)
_REPLAYED_INIT_ID = "tcm-front-initialize"


class DaemonLink:
    """One pipelined connection to tcmd shared by concurrent calls (answers matched by id)."""

    def __init__(
        self, env: Mapping[str, str], *, socket_path: Path | None = None, autostart: bool = True
    ) -> None:
        self.env, self.autostart = env, may_autostart(env, autostart)
        self.path = socket_path or socket_path_from_env(env)
        self.token = env.get("TCM_INSTANCE_TOKEN") or None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._lock = asyncio.Lock()

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result, or raise the daemon's error."""
        writer = await self._connected()
        self._next_id += 1
        req_id = self._next_id
        answer = self._pending[req_id] = asyncio.get_running_loop().create_future()
        try:
            writer.write(protocol.encode_request(method, dict(params or {}), req_id, self.token))
            await writer.drain()
            msg = await answer
        except OSError as exc:
            raise DaemonUnreachable(f"lost the connection to tcmd: {exc}") from None
        finally:
            self._pending.pop(req_id, None)
        if "error" in msg:
            raise from_json(msg["error"])
        return msg.get("result")

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is None or self._writer.is_closing():
                reader, self._writer = await self._open()
                self._reader = asyncio.create_task(self._read(reader, self._writer))
            return self._writer

    async def _open(
        self, *, started: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(self.path, limit=protocol.MAX_FRAME_BYTES + 1)
        except OSError as exc:
            if started or not self.autostart:
                raise DaemonUnreachable(f"cannot reach tcmd at {self.path}: {exc}") from None
        await asyncio.to_thread(start_daemon, self.env, self.path)  # polls to a deadline
        return await self._open(started=True)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                msg = orjson.loads(line)
                answer = self._pending.get(msg.get("id"))
                if answer is not None and not answer.done():
                    answer.set_result(msg)
        except (OSError, ValueError) as exc:  # ValueError: an oversized or non-JSON frame
            log.warning("connection to tcmd failed: %s", exc)
        finally:
            writer.close()
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(DaemonUnreachable("tcmd closed the connection"))


class Forwarder:
    """The MCP surface in plain JSON: the catalogue as MCP tools, and calls forwarded."""

    def __init__(self, link: DaemonLink) -> None:
        self.link = link
        self._wrapped: set[str] = set()  # tools whose result travels as {"result": ...}

    async def list_tools(self) -> list[dict[str, Any]]:
        tools = []
        for entry in await self.link.call("tools"):
            if entry["name"] in HIDDEN:
                continue
            tool = {
                "name": entry["name"],
                "description": entry.get("description", ""),
                "inputSchema": entry.get("inputSchema") or {"type": "object"},
                "annotations": entry.get("annotations") or {},
            }
            out = entry.get("outputSchema")
            if out is not None and out.get("type") != "object":  # MCP wants an object here
                out = {"type": "object", "properties": {"result": out}, "required": ["result"]}
                self._wrapped.add(entry["name"])
            if out is not None:
                tool["outputSchema"] = out
            tools.append(tool)
        return tools

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, str, bool]:
        """(structured result, text rendering, is_error) of one call."""
        if name in HIDDEN:
            return None, f"unknown tool {name!r}", True
        try:
            result = await self.link.call(name, arguments)
        except TcmError as exc:
            return None, f"{exc.message} [{exc.code}]", True
        if name in self._wrapped or not isinstance(result, dict):
            result = {"result": result}
        text = orjson.dumps(result).decode()
        if len(text) > TEXT_LIMIT:
            text = f"{text[:TEXT_LIMIT]}… [{len(text)} characters; structured content has all]"
        return result, text, False


def build_server(forwarder: Forwarder) -> Server[Any]:
    """The SDK's low-level Server forwarding to tcmd (imports the SDK: ~0.6 s)."""
    from mcp import types
    from mcp.server import ServerRequestContext
    from mcp.server.lowlevel import Server
    from mcp.shared.exceptions import MCPError

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        try:
            tools = await forwarder.list_tools()
        except TcmError as exc:
            raise MCPError(exc.code, exc.message) from None
        return types.ListToolsResult(tools=[types.Tool.model_validate(t) for t in tools])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        result, text, is_error = await forwarder.call_tool(params.name, params.arguments or {})
        return types.CallToolResult(
            content=[types.TextContent(text=text)], structured_content=result, is_error=is_error
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {}
        finally:
            await forwarder.link.aclose()

    return Server(
        SERVER_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def initialize_result(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The answer the SDK gives `initialize` (the front gives it before the SDK is loaded)."""
    asked = (params or {}).get("protocolVersion")
    return {
        "protocolVersion": asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1],
        "capabilities": {"tools": {"listChanged": False}},
        "serverInfo": {"name": SERVER_NAME, "version": __version__},
        "instructions": INSTRUCTIONS,
    }


class StdioFront:
    """Serves stdin/stdout: answers the opening frames, then relays to the SDK's Server."""

    def __init__(self, forwarder: Forwarder, *, stdin: BinaryIO, wire_fd: int) -> None:
        self.forwarder, self.stdin, self.wire_fd = forwarder, stdin, wire_fd
        self.initialize: dict[str, Any] | None = None  # the fronted request, replayed later
        self.held: list[bytes] = []  # frames for the SDK, in arrival order
        self.deliver: Callable[[bytes], None] | None = None  # set once the SDK runs
        self.close_sdk: Callable[[], None] = lambda: None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        threading.Thread(target=_read_lines, args=(self.stdin, loop, inbox), daemon=True).start()
        catalogue = asyncio.create_task(self._prefetch())  # starts the daemon early if needed
        async with asyncio.TaskGroup() as tg:
            sdk = tg.create_task(self._serve_sdk())
            while (line := await inbox.get()) is not None:
                if self.deliver is not None or not self._fronted(line, catalogue, tg):
                    self._pass_on(line)
            if self.deliver is None:
                sdk.cancel()  # the client left before the SDK was up: nothing to hand over
            self.deliver = None
            self.close_sdk()

    def _fronted(self, line: bytes, catalogue: asyncio.Task[Any], tg: asyncio.TaskGroup) -> bool:
        """Answer an opening initialize or tools/list here; False: the SDK's to answer."""
        with contextlib.suppress(orjson.JSONDecodeError):
            msg = orjson.loads(line)
            if not isinstance(msg, dict) or "id" not in msg:
                return False
            if msg.get("method") == "initialize" and self.initialize is None:
                if self.held or not _plain(params := msg.get("params")):
                    return False  # the client opened otherwise: the SDK decides the era
                self.initialize = msg
                self._write(
                    {"jsonrpc": "2.0", "id": msg["id"], "result": initialize_result(params)}
                )
                return True
            paged = isinstance(msg.get("params"), dict) and msg["params"].get("cursor")
            if msg.get("method") == "tools/list" and self.initialize is not None and not paged:
                tg.create_task(self._list(msg["id"], line, catalogue))
                return True
        return False

    def _pass_on(self, line: bytes) -> None:
        """To the SDK, or held for it until it runs."""
        if self.deliver is None:
            self.held.append(line)
        else:
            self.deliver(line)

    async def _prefetch(self) -> list[dict[str, Any]] | None:
        try:
            return await self.forwarder.list_tools()
        except TcmError as exc:
            log.warning("%s", exc.message)
            return None

    async def _list(self, req_id: Any, line: bytes, catalogue: asyncio.Task[Any]) -> None:
        if (tools := await catalogue) is None:  # the daemon failed: the SDK answers, retrying
            self._pass_on(line)
        else:
            self._write({"jsonrpc": "2.0", "id": req_id, "result": {"tools": tools}})

    async def _serve_sdk(self) -> None:
        await asyncio.to_thread(importlib.import_module, "mcp.server.lowlevel")
        import anyio
        from mcp import types
        from mcp.shared.message import SessionMessage

        server = build_server(self.forwarder)
        to_sdk, sdk_in = anyio.create_memory_object_stream[SessionMessage | Exception](math.inf)
        sdk_out, from_sdk = anyio.create_memory_object_stream[SessionMessage](math.inf)

        def deliver(line: bytes) -> None:
            try:
                to_sdk.send_nowait(
                    SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
                )
            except ValueError as exc:  # pydantic's ValidationError: the SDK answers it
                to_sdk.send_nowait(exc)

        if self.initialize is not None:
            deliver(orjson.dumps({**self.initialize, "id": _REPLAYED_INIT_ID}))
        for line in self.held:
            deliver(line)
        self.held.clear()
        self.deliver, self.close_sdk = deliver, to_sdk.close

        async def pump() -> None:
            async with from_sdk:
                async for item in from_sdk:
                    if getattr(item.message, "id", None) != _REPLAYED_INIT_ID:
                        self._write_raw(
                            item.message.model_dump_json(by_alias=True, exclude_unset=True).encode()
                        )

        async with asyncio.TaskGroup() as tg:
            tg.create_task(pump())
            await server.run(sdk_in, sdk_out, server.create_initialization_options())

    def _write(self, msg: dict[str, Any]) -> None:
        self._write_raw(orjson.dumps(msg))

    def _write_raw(self, frame: bytes) -> None:
        view = memoryview(frame + b"\n")
        while view:
            view = view[os.write(self.wire_fd, view) :]


def _plain(params: Any) -> bool:
    """An initialize the SDK would accept as-is (anything else goes to the SDK to judge)."""
    if not isinstance(params, dict) or not isinstance(client := params.get("clientInfo"), dict):
        return False
    wanted = [params.get("protocolVersion"), client.get("name"), client.get("version")]
    return isinstance(params.get("capabilities"), dict) and all(isinstance(v, str) for v in wanted)


def _read_lines(
    stream: BinaryIO, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[bytes | None]
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed first: the server is done
        for line in stream:
            loop.call_soon_threadsafe(inbox.put_nowait, line)
        loop.call_soon_threadsafe(inbox.put_nowait, None)


def main(*, socket_path: Path | None = None, autostart: bool = True) -> int:
    """Serve MCP on stdin/stdout until stdin closes; logs go to stderr."""
    logging.basicConfig(stream=sys.stderr, format="tcmctl mcp: %(levelname)s %(message)s")
    wire_fd = os.dup(1)
    os.dup2(2, 1)  # fd 1 now reaches stderr: a stray print can never corrupt the protocol
    link = DaemonLink(dict(os.environ), socket_path=socket_path, autostart=autostart)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(StdioFront(Forwarder(link), stdin=sys.stdin.buffer, wire_fd=wire_fd).run())
    return 0
