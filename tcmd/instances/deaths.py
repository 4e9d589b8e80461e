"""Pane deaths told by the kernel: a pidfd per pane process, watched by the event loop.

Why: tmux 3.3a notices a pane's death late at times (seconds, or not until a client talks
to it), so tcmd used to find deaths by listing every pane twice a second. A pidfd
(``pidfd_open``, Linux 5.3+) becomes readable the moment its process ends, whoever its
parent is (the pane process is tmux's child), so a death reaches tcmd within the loop's
next turn and costs nothing while nothing dies. The reconcile stays as the safety net, at
a slower pace (instances/registry.py).

Where pidfds are unavailable (an old kernel, a sandbox that forbids the call)
``available`` is False and tcmd keeps the fast reconcile and tmux's pane-died hook.

The pane process is tcm's launcher (instances/launcher.py). When the agent ends, the
launcher writes how (the raw wait status) to ``exited`` in the instance's directory before
it exits the same way, so the exit status is known even before tmux has seen the death.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from tcmd.instances.launcher import EXIT_RECORD


def _probe() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


class DeathWatch:
    """One pidfd per instance's current pane process; ``on_death(instance_id)`` when it ends."""

    available = _probe()

    def __init__(self, on_death: Callable[[str], None]) -> None:
        self._on_death = on_death
        self._fds: dict[str, tuple[int, int]] = {}  # instance id -> (pid, pidfd)
        self.dead: dict[str, float] = {}  # instance id -> when its pane process ended (monotonic)

    def watch(self, instance_id: str, pid: int) -> None:
        """Watch ``pid``, the pane process of ``instance_id``'s newest launch."""
        self.forget(instance_id)
        if not self.available:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone
            self._ended(instance_id)
            return
        except OSError:
            return  # the reconcile will see it
        self._fds[instance_id] = (pid, fd)
        asyncio.get_running_loop().add_reader(fd, self._readable, instance_id, pid)

    def forget(self, instance_id: str) -> None:
        """Stop watching ``instance_id`` (a relaunch, a terminate) and drop what was seen."""
        self.dead.pop(instance_id, None)
        watched = self._fds.pop(instance_id, None)
        if watched is not None:
            self._close(watched[1])

    def close(self) -> None:
        for instance_id in list(self._fds):
            self.forget(instance_id)

    def _readable(self, instance_id: str, pid: int) -> None:
        watched = self._fds.get(instance_id)
        if watched is None or watched[0] != pid:
            return
        del self._fds[instance_id]
        self._close(watched[1])
        self._ended(instance_id)

    def _ended(self, instance_id: str) -> None:
        self.dead[instance_id] = time.monotonic()
        self._on_death(instance_id)

    @staticmethod
    def _close(fd: int) -> None:
        with contextlib.suppress(ValueError, RuntimeError):  # the loop is closed already
            asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)


def read_exit(instance_dir: Path) -> tuple[int | None, int | None]:
    """(exit status, signal) the launcher recorded for its agent, or (None, None)."""
    try:
        status = int((instance_dir / EXIT_RECORD).read_text())
    except (OSError, ValueError):
        return None, None
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return (os.WEXITSTATUS(status) if os.WIFEXITED(status) else None), None


def clear_exit(instance_dir: Path) -> None:
    """Before a launch: an earlier launch's record must not speak for the new one."""
    with contextlib.suppress(FileNotFoundError):
        (instance_dir / EXIT_RECORD).unlink()
