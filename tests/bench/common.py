"""What the benchmarks share: a throwaway daemon driving fake agents, cleaned up after."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess


@contextlib.contextmanager
def agent_daemon(
    env: Mapping[str, str] | None = None, claude: Path = FAKE_CLAUDE
) -> Iterator[tuple[AgentDaemon, Path]]:
    """A running tcmd (``claude``, the fake by default, as `claude`) in a temporary
    directory, and that directory (HOME is its ``home``)."""
    with tempfile.TemporaryDirectory(dir="/tmp", ignore_cleanup_errors=True) as tmp_name:
        tmp = Path(tmp_name)
        made: list[DaemonProcess] = []

        class Factory(DaemonProcess):
            def __init__(
                self, state_dir: Path | None = None, extra_env: dict[str, str] | None = None
            ) -> None:
                super().__init__(state_dir or tmp / "state", extra_env)
                made.append(self)

        try:
            yield (
                AgentDaemon.start_in(
                    tmp, Factory, claude, {"TCM_LOG_LEVEL": "info", **(env or {})}
                ),
                tmp,
            )
        finally:
            for d in made:
                d.cleanup()


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """CPU seconds a process used so far; with ``children``, also its reaped children's
    (for tcmd: the tmux clients it ran)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11 : 15 if children else 13]) / os.sysconf("SC_CLK_TCK")
