"""`tcmctl hook`: the command Claude Code runs for each hook event.

Reads the hook JSON on stdin and forwards it to tcmd as a ``hook`` notification carrying
the instance token from the environment. It always exits 0, fast, even when the daemon is
down: Claude must never hang or fail because of us. Stdlib only (not even orjson or
pathlib: importing them costs more than the rest of this process), no click.
``forward`` is also what the shell agent's runner calls for each event it reports.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

from tcmd.paths import socket_path

CONNECT_TIMEOUT_S = 0.05
SEND_TIMEOUT_S = 1.0
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024  # a hook payload bigger than this is cut to its fields
MAX_FIELD_CHARS = 256 * 1024


def forward(payload: dict[str, Any], env: Mapping[str, str] | None = None) -> bool:
    """Send ``payload`` to tcmd as a ``hook`` notification; False (never an error) if not sent."""
    env = os.environ if env is None else env
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
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(socket_path(env))
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendall(frame)
    except (OSError, TypeError, ValueError):  # daemon down or busy; or a value JSON cannot hold
        return False  # the health loop will notice what we could not say
    return True


def _frame(msg: dict[str, Any]) -> bytes:
    return (json.dumps(msg, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


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
        raw = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1)
        payload = json.loads(raw) if raw.strip() else {}
        if not isinstance(payload, dict):
            payload = {"raw": payload}
    except (OSError, ValueError):  # JSONDecodeError and bad UTF-8 are ValueErrors
        payload = {"unparsed": True}
    if argv:
        payload.setdefault("hook_event_name", argv[0])  # `tcmctl hook EVENT` for shells
    forward(payload)
    return 0
