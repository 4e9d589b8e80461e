"""Default locations of the socket and the state directory.

Stdlib only, and not even pathlib at import time: `tcmctl hook` uses ``socket_path`` on
every Claude Code hook event, where each millisecond of start-up counts.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not `from typing import ...`: typing alone costs the hook ~3 ms
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path


def _home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def state_dir(env: Mapping[str, str]) -> str:
    """TCM_STATE_DIR, else $XDG_STATE_HOME/tcm, else ~/.local/state/tcm."""
    if env.get("TCM_STATE_DIR"):
        return os.path.expanduser(env["TCM_STATE_DIR"])
    if env.get("XDG_STATE_HOME"):
        return os.path.join(env["XDG_STATE_HOME"], "tcm")
    return os.path.join(_home(env), ".local", "state", "tcm")


def socket_path(env: Mapping[str, str]) -> str:
    """TCM_SOCKET, else $XDG_RUNTIME_DIR/tcm/tcmd.sock, else ~/.local/state/tcm/tcmd.sock."""
    if env.get("TCM_SOCKET"):
        return os.path.expanduser(env["TCM_SOCKET"])
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "tcm", "tcmd.sock")
    return os.path.join(_home(env), ".local", "state", "tcm", "tcmd.sock")


def state_dir_from_env(env: Mapping[str, str]) -> Path:
    from pathlib import Path

    return Path(state_dir(env))


def socket_path_from_env(env: Mapping[str, str]) -> Path:
    from pathlib import Path

    return Path(socket_path(env))
