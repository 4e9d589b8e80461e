"""`tcmctl hook`: the command Claude Code runs for each hook event.

Reads the hook JSON on stdin and forwards it to tcmd as a ``hook`` notification carrying
the instance token from the environment. It always exits 0, fast, even when the daemon is
down: Claude must never hang or fail because of us. No click.

Claude runs it on every event, so its start-up is most of what it costs. The instance's
settings run it as ``command_line()`` (``python -I -S -c``: no site, no runpy), and it
imports only os, sys and _socket: a payload that is one line holding a JSON object goes
into the frame as it came (tcmd parses it, and refuses a malformed one); json is loaded
only to rebuild anything else. ``forward`` is also what the shell agent's runner calls
for each event it reports.
"""

from __future__ import annotations

import _socket  # not `socket`: that one imports enum and selectors, a third of our start-up
import os
import sys

from tcmd.paths import socket_path

TYPE_CHECKING = False  # not `from typing import ...`: importing typing costs milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

CONNECT_TIMEOUT_S = 0.05
SEND_TIMEOUT_S = 1.0
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024  # a hook payload bigger than this is cut to its fields
MAX_FIELD_CHARS = 256 * 1024
_FRAME_HEAD = b'{"jsonrpc":"2.0","method":"hook","params":{"payload":'


def command_line(python: str) -> list[str]:
    """The fastest argv that runs ``tcmctl hook`` with ``python`` (same as `tcmctl hook`)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from tcmctl.hook import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    return [python, "-I", "-S", "-c", code]


def forward(payload: dict[str, Any], env: Mapping[str, str] | None = None) -> bool:
    """Send ``payload`` to tcmd as a ``hook`` notification; False (never an error) if not sent."""
    env = os.environ if env is None else env
    frame = _hook_frame(payload, env)
    return frame is not None and _send(frame, env)


class HookLine:
    """One connection for all the hooks of a long-lived process (the shell agent's runner).

    tcmd tells who calls once per connection (SO_PEERCRED, then the caller's ancestry), so
    a connection per event pays for that, and for an accept and a close, every time. Hooks
    on one connection also arrive in the order they were sent. A send that finds the
    connection broken (tcmd restarted) tries once more on a new one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env
        self._sock: _socket.socket | None = None

    def send(self, payload: dict[str, Any]) -> bool:
        """Send one hook; False (never an error) if it could not be sent."""
        frame = _hook_frame(payload, self._env)
        if frame is None:
            return False
        for _ in range(2):
            if self._sock is None:
                self._sock = _connect(self._env)
                if self._sock is None:
                    return False  # daemon down or busy: the health loop will notice
            try:
                self._sock.sendall(frame)
                return True
            except OSError:
                self._sock.close()
                self._sock = None
        return False

    def close(self) -> None:
        """End the connection once tcmd has read everything sent on it."""
        if self._sock is not None:
            _finish(self._sock)
            self._sock = None


def _hook_frame(payload: dict[str, Any], env: Mapping[str, str]) -> bytes | None:
    params: dict[str, Any] = {"payload": payload}
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": "hook", "params": params}
    token = env.get("TCM_INSTANCE_TOKEN")
    if token:
        msg["token"] = token
    launch = env.get("TCM_INSTANCE_LAUNCH", "")
    if launch.isdigit():
        params["launch"] = int(launch)  # which start of the agent speaks: stale ones are ignored
    try:
        frame = _frame(msg)
        if len(frame) > MAX_PAYLOAD_BYTES:
            params["payload"] = _shrink(payload)
            frame = _frame(msg)
    except (TypeError, ValueError):  # a value JSON cannot hold
        return None
    return frame


def _connect(env: Mapping[str, str]) -> _socket.socket | None:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(socket_path(env))
        sock.settimeout(SEND_TIMEOUT_S)
    except OSError:
        sock.close()
        return None
    return sock


def _finish(sock: _socket.socket) -> bool:
    """Stay alive until tcmd has read what was sent (it closes on our EOF): tcmd tells who
    calls from the calling process, and a process already gone cannot be told."""
    try:
        sock.shutdown(_socket.SHUT_WR)
        while sock.recv(4096):
            pass
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _send(frame: bytes, env: Mapping[str, str]) -> bool:
    sock = _connect(env)
    if sock is None:
        return False  # daemon down or busy: the health loop will notice what we could not say
    try:
        sock.sendall(frame)
    except OSError:
        sock.close()
        return False
    return _finish(sock)


def _frame(msg: dict[str, Any]) -> bytes:
    import json

    return (json.dumps(msg, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _spliced_frame(raw: bytes, env: Mapping[str, str]) -> bytes | None:
    """The frame with ``raw`` as its payload, unparsed; None where only json can build it."""
    raw = raw.strip()
    if not (raw.startswith(b"{") and raw.endswith(b"}")) or b"\n" in raw:
        return None  # not one line holding an object (tcmd reads a frame per line)
    token = env.get("TCM_INSTANCE_TOKEN", "")
    if not token.isprintable() or '"' in token or "\\" in token:
        return None  # a token that would need escaping: never one tcmd issued
    launch = env.get("TCM_INSTANCE_LAUNCH", "")
    tail = f',"launch":{int(launch)}}}' if launch.isdigit() else "}"
    tail += f',"token":"{token}"}}\n' if token else "}\n"
    frame = _FRAME_HEAD + raw + tail.encode()
    return frame if len(frame) <= MAX_PAYLOAD_BYTES else None


def _shrink(payload: dict[str, Any]) -> dict[str, Any]:
    """Drop tool payloads and cut long strings so the frame fits the daemon's limit."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key in ("tool_response", "tool_input"):
            continue
        long = isinstance(value, str) and len(value) > MAX_FIELD_CHARS
        out[key] = value[:MAX_FIELD_CHARS] + "\n[… cut by tcmctl hook]" if long else value
    return out


def main(argv: list[str]) -> int:
    """Forward one hook event; exit status is always 0."""
    try:
        raw: bytes | None = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1)
    except OSError:
        raw = None
    frame = _spliced_frame(raw, os.environ) if raw is not None and not argv else None
    if frame is not None:
        _send(frame, os.environ)
    else:
        forward(_payload(raw, argv))
    return 0


def _payload(raw: bytes | None, argv: list[str]) -> dict[str, Any]:
    """The payload as a dict (json loaded only now), named after ``argv[0]`` if given."""
    import json

    if raw is None:  # stdin unreadable
        value: Any = {"unparsed": True}
    else:
        try:
            value = json.loads(raw) if raw.strip() else {}
        except ValueError:  # JSONDecodeError and bad UTF-8 are ValueErrors
            value = {"unparsed": True}
    payload: dict[str, Any] = value if isinstance(value, dict) else {"raw": value}
    if argv:
        payload.setdefault("hook_event_name", argv[0])  # `tcmctl hook EVENT` for shells
    return payload
