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
launcher writes how (the raw wait status) into the pipe tcmd handed it its environment
through, before it exits the same way: the watch holds that pipe's read end beside the
pidfd, so the exit status is known even before tmux has seen the death. A pane adopted
after a restart of tcmd has no such pipe; tmux's record of the dead pane tells instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcmd.instances.launcher import Handoff


def _probe() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


@dataclass(slots=True)
class _Watched:
    pid: int
    pidfd: int | None  # None: no pidfd here, the reconcile finds the death
    handoff: Handoff | None  # None: adopted after a restart, no last words to read


class DeathWatch:
    """One pidfd per instance's current pane process; ``on_death(instance_id)`` when it ends."""

    available = _probe()

    def __init__(self, on_death: Callable[[str], None]) -> None:
        self._on_death = on_death
        self._watched: dict[str, _Watched] = {}
        self.dead: dict[str, float] = {}  # instance id -> when its pane process ended (monotonic)
        # -> (exit status, signal) the launcher told; none for a pane adopted after a restart
        self.exits: dict[str, tuple[int | None, int | None]] = {}

    def watch(self, instance_id: str, pid: int, handoff: Handoff | None = None) -> None:
        """Watch ``pid``, the pane process of ``instance_id``'s newest launch, whose launcher
        was started with ``handoff`` (owned by the watch from now on: closed on forget)."""
        self.forget(instance_id)
        watched = _Watched(pid, None, handoff)
        self._watched[instance_id] = watched
        if not self.available:
            return
        try:
            watched.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone
            self._ended(instance_id, watched)
            return
        except OSError:
            return  # the reconcile will see it
        asyncio.get_running_loop().add_reader(watched.pidfd, self._readable, instance_id, watched)

    def forget(self, instance_id: str) -> None:
        """Stop watching ``instance_id`` (a relaunch, a terminate) and drop what was seen."""
        self.dead.pop(instance_id, None)
        self.exits.pop(instance_id, None)
        watched = self._watched.pop(instance_id, None)
        if watched is not None:
            self._close(watched)

    def close(self) -> None:
        for instance_id in list(self._watched):
            self.forget(instance_id)

    def _readable(self, instance_id: str, watched: _Watched) -> None:
        if self._watched.get(instance_id) is watched:
            self._ended(instance_id, watched)

    def _ended(self, instance_id: str, watched: _Watched) -> None:
        del self._watched[instance_id]
        if watched.handoff is not None:  # (None, None): the launcher itself was killed
            status = watched.handoff.exit_status()
            self.exits[instance_id] = (None, None) if status is None else decode_status(status)
        self._close(watched)
        self.dead[instance_id] = time.monotonic()
        self._on_death(instance_id)

    @staticmethod
    def _close(watched: _Watched) -> None:
        if watched.pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):  # the loop is closed already
                asyncio.get_running_loop().remove_reader(watched.pidfd)
            os.close(watched.pidfd)
            watched.pidfd = None
        if watched.handoff is not None:
            watched.handoff.close()


def decode_status(status: int) -> tuple[int | None, int | None]:
    """A raw wait status as (exit status, signal)."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return (os.WEXITSTATUS(status) if os.WIFEXITED(status) else None), None
