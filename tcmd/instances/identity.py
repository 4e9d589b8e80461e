"""Who is calling, from the kernel: the peer's pid and its ancestry in /proc.

A process that descends from an instance's pane process is that instance, whatever token it
sends; a process under tcm's tmux server but in no known pane (a tmux job, an orphan
session) is nobody tcm trusts; anything else is outside every pane (the operator). The pane
process is tcm's launcher (tcmd/instances/launcher.py), a child subreaper, so a process that
double-forks stays in its pane's tree.

A walk reads ``/proc/PID/stat`` of each ancestor (a few µs each). Verdicts are cached by
(pid, start time), which no other process can ever have, so a reused pid never inherits a
verdict; a process keeps its verdict for life, even if its pane's launcher dies (it stays
that instance, never becomes the operator). "In tmux but no known pane" is not cached: a
pane being started is recorded a moment after its process exists.
"""

from __future__ import annotations

from dataclasses import dataclass

CACHE_MAX = 20_000  # entries; the cache is dropped whole past this (verdicts are re-derived)


class Gone(Exception):
    """The process exited (or cannot be read) before it could be identified."""


@dataclass(frozen=True, slots=True)
class Outside:
    """A process outside tcm's tmux server: the operator."""


@dataclass(frozen=True, slots=True)
class InTmux:
    """A process under tcm's tmux server but in no instance's pane."""


@dataclass(frozen=True, slots=True)
class InPane:
    """A process of an instance's pane tree: that instance."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class Vanished:
    """A process that exited (or could not be read) before it was identified."""


Who = Outside | InTmux | InPane | Vanished
OUTSIDE, IN_TMUX, VANISHED = Outside(), InTmux(), Vanished()


def stat(pid: int) -> tuple[int, int]:
    """(parent pid, start time in clock ticks) of ``pid``; Gone when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        raise Gone(pid) from None
    fields = raw[raw.rfind(b")") + 2 :].split()  # the name (field 2) may hold anything
    if len(fields) < 20:
        raise Gone(pid)
    return int(fields[1]), int(fields[19])


class Identity:
    """The pane processes tcm started, and the verdicts about callers derived from them."""

    def __init__(self) -> None:
        self.panes: dict[int, str] = {}  # pane process pid -> instance id
        self.tmux_server: int | None = None
        self._cache: dict[tuple[int, int], Who] = {}
        self.walks = 0  # ancestry walks done (cache misses), for tests and benchmarks

    def pane_started(self, instance_id: str, pid: int) -> None:
        for old in [p for p, i in self.panes.items() if i == instance_id]:
            del self.panes[old]
        self.panes[pid] = instance_id

    def pane_gone(self, instance_id: str) -> None:
        for old in [p for p, i in self.panes.items() if i == instance_id]:
            del self.panes[old]

    def who(self, pid: int) -> Who:
        """What ``pid`` is to tcm (VANISHED when it has exited or cannot be read)."""
        if pid <= 0:  # a peer in another pid namespace: the kernel could not name it
            return VANISHED
        for _ in range(3):  # an ancestor that exits mid-walk re-parents us: walk again
            try:
                return self._walk(pid)
            except _AncestorGone:
                continue
            except Gone:
                return VANISHED
        return VANISHED

    def _walk(self, pid: int) -> Who:
        chain: list[tuple[int, int]] = []
        verdict: Who = OUTSIDE
        current = pid
        while current > 1:
            try:
                parent, started = stat(current)
            except Gone:
                if current == pid:
                    raise
                raise _AncestorGone from None
            key = (current, started)
            if (cached := self._cache.get(key)) is not None:
                verdict = cached
                break
            chain.append(key)
            if (instance_id := self.panes.get(current)) is not None:
                verdict = InPane(instance_id)
                break
            if current == self.tmux_server:
                verdict = IN_TMUX
                break
            current = parent
        if chain:
            self.walks += 1
        if verdict == IN_TMUX:
            return verdict  # not cached: it may be a pane whose start is still being recorded
        if len(self._cache) + len(chain) > CACHE_MAX:
            self._cache.clear()
        for key in chain:
            self._cache[key] = verdict
        return verdict


class _AncestorGone(Exception):
    pass
