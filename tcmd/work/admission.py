"""Memory admission: a specialist starts only while the machine has room for it.

Before a job starts, the dispatcher asks ``check``: the room is the memory available now
(``MemAvailable`` of /proc/meminfo, and when tcmd runs in a memory-limited cgroup, that
cgroup's limit minus its usage, at every level up to the root: the least of them) minus
``TCM_MEMORY_RESERVE_MB`` minus the estimate of every specialist admitted but not measured
yet (it has not grown to its size: MemAvailable does not know of it). The job starts when
the room covers its profile's estimate (health/memory.py learns it); otherwise it stays
queued with the reason ``held: memory (need X MB, have Y MB)`` and the dispatcher asks
again every ``RECHECK_S`` and at every health sweep, until memory frees.

Where the figures come from is a ``Figures`` (a Protocol): ``ProcFigures`` reads the
kernel's. For tests only, ``TCM_TEST_MEMORY_FIGURES`` names a file read instead of
/proc/meminfo (same format, ``MemAvailable: N kB``; cgroups are then not read), which a
test rewrites to make room appear or vanish.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import structlog

from tcmd.config import Settings

log = structlog.get_logger(__name__)
RECHECK_S = 1.0  # while a job is held, the dispatcher looks again this often
CACHE_S = 0.1  # figures read this recently are used again (a busy queue dispatches often)
CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded LONG_MAX


class Figures(Protocol):
    """Where the figures come from."""

    def available_mb(self) -> float | None:
        """Memory a new process may take now, in MB (None: not known)."""
        ...


def meminfo_available_kb(text: str) -> int | None:
    """``MemAvailable`` of a /proc/meminfo text, in kB."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return None


def cgroup_dirs(proc_self_cgroup: str, root: Path = CGROUP_ROOT) -> list[tuple[Path, str, str]]:
    """The cgroup directories whose limit binds this process, innermost first, each with
    its limit and usage file names (v2: the unified path and its ancestors; v1: the
    memory controller's). A path not visible here (in a container the mount is the
    cgroup itself) falls back to the mount's root."""
    out: list[tuple[Path, str, str]] = []
    for line in proc_self_cgroup.splitlines():
        hid, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hid == "0" and controllers == "":
            base, files = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        here = base / path.strip("/")
        if not here.is_dir():
            here = base
        while True:
            out.append((here, *files))
            if here == base:
                break
            here = here.parent
    return out


def cgroup_room_kb(dirs: Iterable[tuple[Path, str, str]]) -> int | None:
    """The least of limit minus usage over ``dirs`` that have a limit, in kB."""
    room: int | None = None
    for d, limit_file, usage_file in dirs:
        try:
            limit = (d / limit_file).read_text().strip()
            usage = int((d / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= NO_LIMIT:
            continue
        free = max(0, int(limit) - usage) // 1024
        room = free if room is None else min(room, free)
    return room


class ProcFigures:
    """The kernel's figures (or the test file's, TCM_TEST_MEMORY_FIGURES)."""

    def __init__(self, test_file: Path | None = None) -> None:
        self.test_file = test_file
        self.meminfo = test_file or Path("/proc/meminfo")
        self.cgroups: list[tuple[Path, str, str]] = []
        self._cached: float | None = None
        self._read_at = -CACHE_S
        if test_file is None:
            try:
                self.cgroups = cgroup_dirs(Path("/proc/self/cgroup").read_text())
            except OSError:
                self.cgroups = []

    def available_mb(self) -> float | None:
        now = time.monotonic()
        if now - self._read_at < CACHE_S:
            return self._cached
        self._cached, self._read_at = self._read(), now
        return self._cached

    def _read(self) -> float | None:
        try:
            kb = meminfo_available_kb(self.meminfo.read_text())
        except (OSError, ValueError) as exc:
            log.warning("memory figures unreadable: admitting", file=str(self.meminfo),
                        error=str(exc))  # fmt: skip
            return None
        cgroup = cgroup_room_kb(self.cgroups) if self.cgroups else None
        known = [k for k in (kb, cgroup) if k is not None]
        return min(known) / 1024 if known else None


class Admission:
    """Says whether a specialist of a profile may start now, and if not, why."""

    def __init__(self, settings: Settings, figures: Figures) -> None:
        self.reserve_mb = settings.memory_reserve_mb
        self.figures = figures
        # wired by the server: the learned estimate per profile, and which instances the
        # health sweep has measured (an unmeasured specialist still counts its estimate)
        self.estimate: Callable[[str], float] = lambda agent: float(settings.memory_estimate_mb)
        self.measured: Callable[[str], bool] = lambda instance_id: False

    def check(self, agent: str, starting: Iterable[tuple[str, str | None]]) -> str | None:
        """None when a specialist of ``agent`` fits; else the reason it is held.
        ``starting``: (profile, instance id or None) of every attempt already admitted."""
        available = self.figures.available_mb()
        if available is None:
            return None
        estimate = functools.cache(self.estimate)  # one figure a profile for this check
        pending = sum(estimate(a) for a, iid in starting if iid is None or not self.measured(iid))
        need = estimate(agent)
        have = available - self.reserve_mb - pending
        if have >= need:
            return None
        return f"held: memory (need {need:.0f} MB, have {max(0.0, have):.0f} MB)"
