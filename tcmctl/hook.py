"""`tcmctl hook`: the command Claude Code runs for each hook event.

Reads the hook JSON on stdin and forwards it to tcmd as a ``hook`` notification carrying
the instance token from the environment. It always exits 0, fast, even when the daemon is
down: Claude must never hang or fail because of us. Stdlib + orjson only, no click.
"""

from __future__ import annotations

import os
import socket
import sys

import orjson

from tcmd.paths import socket_path_from_env

CONNECT_TIMEOUT_S = 0.05
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024  # a hook payload bigger than this is cut to its fields


def main(argv: list[str]) -> int:
    """Forward one hook event; exit status is always 0."""
    try:
        raw = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1)
        payload = orjson.loads(raw) if raw.strip() else {}
        if not isinstance(payload, dict):
            payload = {"raw": payload}
    except (orjson.JSONDecodeError, OSError, ValueError):
        payload = {"unparsed": True}
    if argv:
        payload.setdefault("hook_event_name", argv[0])  # `tcmctl hook EVENT` for shells
    msg = {"jsonrpc": "2.0", "method": "hook", "params": {"payload": payload}}
    token = os.environ.get("TCM_INSTANCE_TOKEN")
    if token:
        msg["token"] = token
    frame = orjson.dumps(msg, option=orjson.OPT_APPEND_NEWLINE)
    if len(frame) > MAX_PAYLOAD_BYTES:
        payload.pop("tool_response", None)
        payload.pop("tool_input", None)
        frame = orjson.dumps(msg, option=orjson.OPT_APPEND_NEWLINE)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(socket_path_from_env(os.environ)))
            sock.settimeout(1.0)
            sock.sendall(frame)
    except OSError:
        pass  # the daemon is down or busy: the health loop will notice what we could not say
    return 0
