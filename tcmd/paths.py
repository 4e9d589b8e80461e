"""Default locations of the socket and the state directory (stdlib only: clients use it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def state_dir_from_env(env: Mapping[str, str]) -> Path:
    """TCM_STATE_DIR, else $XDG_STATE_HOME/tcm, else ~/.local/state/tcm."""
    if env.get("TCM_STATE_DIR"):
        return Path(env["TCM_STATE_DIR"]).expanduser()
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "tcm"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "tcm"


def socket_path_from_env(env: Mapping[str, str]) -> Path:
    """TCM_SOCKET, else $XDG_RUNTIME_DIR/tcm/tcmd.sock, else ~/.local/state/tcm/tcmd.sock."""
    if env.get("TCM_SOCKET"):
        return Path(env["TCM_SOCKET"]).expanduser()
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "tcm" / "tcmd.sock"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "tcm" / "tcmd.sock"
