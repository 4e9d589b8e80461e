"""The systemd user unit of this install: `tcmctl daemon install-service` writes it.

ExecStart is the ``tcmd`` beside the interpreter tcmctl runs on (the venv's or the user's
bin directory), else that interpreter with ``-m tcmd``; Documentation= names this
checkout's docs/operations.md when it is there. Settings that place the daemon (socket,
state dir, tmux server, config file, Redis) and PATH (where the agents' commands are
found) are carried over from the environment of the install.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

CARRIED = ("TCM_SOCKET", "TCM_STATE_DIR", "TCM_TMUX_SOCKET", "TCM_CONFIG", "REDIS_URL", "PATH")

UNIT = """\
# tcmd as a systemd user service, written by `tcmctl daemon install-service` for the
# install at {prefix}. Then: systemctl --user daemon-reload && systemctl --user enable --now tcmd
[Unit]
Description=tcm daemon: AI coding agents in tmux
{documentation}
[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
Restart=on-failure
RestartSec=2
WatchdogSec=30
TimeoutStopSec=20
# The agents' tmux server is a child of tcmd and lives in this unit's cgroup. It must
# outlive a restart of the daemon (tcmd re-adopts the agents), so stop kills tcmd only.
KillMode=process
Environment=TCM_LOG_FORMAT=json
{environment}# EnvironmentFile=-%h/.config/tcm/env

[Install]
WantedBy=default.target
"""


def exec_start() -> list[str]:
    """The command line that starts this install's tcmd."""
    beside = Path(sys.executable).parent / "tcmd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "tcmd"]


def docs_page() -> Path | None:
    """docs/operations.md of this checkout, when tcm runs from one."""
    page = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
    return page if page.is_file() else None


def unit_path(env: Mapping[str, str]) -> Path:
    config = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(config) / "systemd" / "user" / "tcmd.service"


def _quoted(value: str) -> str:
    """A value for Environment=: quoted, with systemd's specifiers (%) escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def render(env: Mapping[str, str]) -> str:
    argv = exec_start()
    page = docs_page()
    environment = "".join(
        f"Environment={_quoted(f'{key}={env[key]}')}\n" for key in CARRIED if env.get(key)
    )
    return UNIT.format(
        prefix=Path(sys.executable).parent.parent,
        documentation=f"Documentation=file://{page}\n" if page else "",
        exec_start=shlex.join(argv).replace("%", "%%"),
        environment=environment,
    )
