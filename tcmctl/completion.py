"""Shell completion of ids from the daemon (click's ``shell_complete``).

Completion runs on every Tab: it never starts tcmd, waits at most a second, and completes
nothing rather than fail when the daemon does not answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from tcmd.errors import TcmError


def from_daemon(ctx: click.Context, method: str, key: str, incomplete: str) -> list[str]:
    """The ``key`` of each row ``method`` returns that starts with ``incomplete``."""
    from tcmctl.client import Client, DaemonUnreachable
    from tcmd.paths import socket_path_from_env

    given = ctx.find_root().params.get("socket_path")
    path = Path(given) if given else socket_path_from_env(os.environ)
    try:
        rows = Client(path, timeout_s=1.0).connect().call(method, {})
    except (DaemonUnreachable, TcmError, OSError):
        return []
    ids = [str(row.get(key)) for row in rows if isinstance(row, dict) and row.get(key)]
    return [i for i in ids if i.startswith(incomplete)]
