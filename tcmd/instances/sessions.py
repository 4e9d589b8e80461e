"""The tmux sessions beside the instance records: names in use, orphans, doomed sessions.

- Names in use: every session name tmux showed at the last listing. A new instance id
  never takes one: after state loss the id counters may lag behind surviving sessions.
- Orphans: sessions that no instance owns, or only a terminated one: their record was
  lost (a state dir moved away, a journal cut short). Logged at start, listed and killed
  by the operator (the ``orphans`` tool); tcm never kills them by itself, and cannot
  adopt them: role, parent, context and token went with the lost state.
- Doomed: sessions of instances tcm terminated that may still exist (the kill failed, or
  the pane was being made while its instance was terminated). Each listing kills them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

import structlog

from tcmd.errors import TcmError
from tcmd.model import Instance, State
from tcmd.tmux import PaneInfo, Tmux

log = structlog.get_logger(__name__)


class Sessions:
    """What the registry must respect in tmux besides its own instances' sessions."""

    def __init__(self, tmux: Tmux) -> None:
        self.tmux = tmux
        self.in_use: set[str] = set()
        self.doomed: set[str] = set()

    def saw(self, panes: Iterable[PaneInfo]) -> dict[str, PaneInfo]:
        """Note a fresh listing; its panes by session name."""
        by_session = {p.session: p for p in panes}
        self.in_use = set(by_session)
        return by_session

    @staticmethod
    def orphans(
        panes: Mapping[str, PaneInfo], owner: Callable[[str], Instance | None]
    ) -> list[PaneInfo]:
        """The sessions among ``panes`` with no owner, or a terminated one, by name."""
        found = []
        for name, pane in sorted(panes.items()):
            inst = owner(name)
            if inst is None or inst.status == State.TERMINATED:
                found.append(pane)
        return found

    async def kill(self, name: str, *, launching: bool) -> None:
        """Kill the session of a terminated instance; what may survive becomes doomed."""
        try:
            await self.tmux.kill_session(name)
        except TcmError as exc:
            log.warning("kill failed: the next listing retries", instance_id=name,
                        error=exc.message)  # fmt: skip
            self.doomed.add(name)
        if launching:  # its pane may appear after this kill
            self.doomed.add(name)

    async def bury(
        self, panes: Mapping[str, PaneInfo], listed_at: float, pane_since: Mapping[str, float]
    ) -> None:
        """Kill the doomed sessions a listing shows; forget those it proves gone."""
        for name in list(self.doomed):
            if name in panes:
                log.info("killing the session of a terminated instance", instance_id=name)
                with contextlib.suppress(TcmError):  # still doomed: the next listing tells
                    await self.tmux.kill_session(name)
            elif pane_since.get(name, 0) < listed_at:  # and no launch was in flight
                self.doomed.discard(name)
