"""A daemon's node id: ``TCM_NODE_ID``, else the hostname plus a short suffix kept in the
state directory, so it stays the same across restarts and differs between two daemons on
one host (each has its own state directory)."""

from __future__ import annotations

import re
import secrets
import socket
from pathlib import Path

from tcmd.atomic import replace_atomically

NODE_FILE = "node-id"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def node_id(configured: str | None, state_dir: Path) -> str:
    """The configured id, or the one this state directory keeps (made on first use)."""
    if configured:
        return configured
    path = state_dir / NODE_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return kept
    host = _SAFE.sub("-", socket.gethostname()).strip("-")[:40] or "node"
    made = f"{host}-{secrets.token_hex(3)}"
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_atomically(path, made.encode() + b"\n")
    return made
