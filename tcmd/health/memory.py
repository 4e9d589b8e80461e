"""How much memory each instance uses, read from /proc on the health sweeps.

An instance is the process tree of its pane: tcm's launcher (a child subreaper, so what
the agent double-forks stays inside) and everything below it, found through
``/proc/PID/task/PID/children``; its memory is the sum of the tree's RSS
(``/proc/PID/statm``). That is two small reads per process, ~8-10 µs each here, so a few
ms for 200 instances: the sweep spends at most ``RSS_BUDGET_MS`` on it, instances never
measured first, then round-robin, so with hundreds of instances each is measured every
second or third sweep, and the sweep's cost stays bounded whatever the count. PSS
(``/proc/PID/smaps_rollup``, where the kernel lets us read it) makes the kernel walk the
page tables: ~230 µs a process here, 30 times more; it gets its own smaller budget
(``PSS_BUDGET_MS``), round-robin too: with hundreds of instances each figure is minutes
old. ``over`` counts the measurements in a row above TCM_INSTANCE_MEMORY_MAX_MB.

From the samples a per-profile estimate is learned: the ``ESTIMATE_QUANTILE`` of the peak
RSS of that profile's instances (the live ones and the last ``KEEP_PEAKS`` that ended);
``TCM_MEMORY_ESTIMATE_MB`` until there is a sample. The ended peaks are kept in the store
(ns ``memory``, one document per profile, written when an instance ends), so a restarted
tcmd plans with what it learned. The dispatcher admits a specialist only while the machine
has room for that estimate (work/admission.py).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog

from tcmd.errors import TcmError
from tcmd.store import StateStore

log = structlog.get_logger(__name__)
MEMORY_NS = "memory"
NO_ROW: Mapping[str, float] = MappingProxyType({})  # the row of an instance not measured yet

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
RSS_BUDGET_MS = 3.0  # per sweep, measuring trees (at least one instance is measured)
PSS_BUDGET_MS = 1.0  # per sweep, reading PSS (at least one instance is read)
ESTIMATE_QUANTILE = 0.9  # of the profile's peaks: what a new instance is expected to reach
KEEP_PEAKS = 200  # peaks of ended instances kept per profile
MAX_TREE = 512  # processes walked per instance at most (a fork bomb is not walked for ever)


@dataclass(slots=True)
class Sample:
    """One instance's memory at one sweep."""

    rss_mb: float
    pss_mb: float | None  # the last PSS read (None: never, or not readable)
    processes: int
    at: float  # when it was measured (unix time)
    over: int = 0  # measurements in a row above the cap
    shown: dict[str, float] | None = None  # its row (Memory.row), made once, read-only


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def tree(root: int) -> list[int]:
    """``root`` and its descendants (children of each main thread: the agents fork from
    their main thread, and orphans are re-parented to the launcher)."""
    pids, i = [root], 0
    while i < len(pids) and len(pids) < MAX_TREE:
        pid = pids[i]
        i += 1
        raw = _read(f"/proc/{pid}/task/{pid}/children")
        if raw:
            pids.extend(int(p) for p in raw.split())
    return pids[:MAX_TREE]


def rss_kb(pid: int) -> int:
    """Resident set of ``pid`` in kB (0: gone)."""
    raw = _read(f"/proc/{pid}/statm")
    if not raw:
        return 0
    return int(raw.split()[1]) * PAGE_KB


def pss_kb(pid: int) -> int | None:
    """Proportional set of ``pid`` in kB; None when the kernel does not let us read it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class Estimates:
    """Per profile, what an instance is expected to use at its peak (MB)."""

    def __init__(self, default_mb: float, keep: int = KEEP_PEAKS) -> None:
        self.default_mb = default_mb
        self.ended: dict[str, deque[float]] = {}
        self.live: dict[str, tuple[str, float]] = {}  # instance id -> (profile, peak MB)

    def observe(self, instance_id: str, profile: str, mb: float) -> None:
        old = self.live.get(instance_id)
        if old is None or mb > old[1]:
            self.live[instance_id] = (profile, mb)

    def end(self, instance_id: str) -> str | None:
        """The instance is gone: its peak joins its profile's history; that profile."""
        if (old := self.live.pop(instance_id, None)) is None:
            return None
        self.ended.setdefault(old[0], deque(maxlen=KEEP_PEAKS)).append(old[1])
        return old[0]

    def of(self, profile: str) -> float:
        peaks = [mb for p, mb in self.live.values() if p == profile]
        peaks += self.ended.get(profile, ())
        if not peaks:
            return self.default_mb
        return percentile(peaks, ESTIMATE_QUANTILE)

    def describe(self) -> dict[str, dict[str, float | int]]:
        profiles = {p for p, _ in self.live.values()} | set(self.ended)
        return {
            p: {
                "estimateMb": round(self.of(p), 1),
                "samples": sum(q == p for q, _ in self.live.values()) + len(self.ended.get(p, ())),
            }
            for p in sorted(profiles)
        }


class Memory:
    """The latest sample of each instance, taken in turn under a time budget; the
    learned estimates."""

    def __init__(
        self, default_estimate_mb: float, cap_mb: float = 0, store: StateStore | None = None
    ) -> None:
        self.store = store  # where the ended peaks are kept (None: in memory only)
        self.samples: dict[str, Sample] = {}
        self.estimates = Estimates(default_estimate_mb)
        self.cap_mb = cap_mb  # 0: no cap
        self.sweeps = 0
        self.last_ms = 0.0  # what the last sampling took (wall, on the event loop)
        self.last_cpu_ms = 0.0  # the CPU it used (the wall time less any preemption)
        self.last_measured = 0  # instances measured by the last sampling
        self._trees: dict[str, list[int]] = {}  # the pids of each tree, as last walked
        self._rss_last = ""  # the instance measured last (round-robin by id)
        self._pss_last = ""

    def sample(self, panes: Mapping[str, tuple[int, str]]) -> None:
        """Measure the instances of ``panes`` (instance id -> (pane pid, profile)) next
        in turn, within the budgets; forget those no longer there."""
        started, cpu = time.perf_counter(), time.thread_time()
        for gone in [iid for iid in self.samples if iid not in panes]:
            self.forget(gone)
        order = sorted(panes)
        fresh = [iid for iid in order if iid not in self.samples]
        new = set(fresh)
        measured, deadline = 0, started + RSS_BUDGET_MS / 1000
        for iid in fresh + _after(order, self._rss_last, skip=new):
            if measured and time.perf_counter() >= deadline:
                break
            pid, prof = panes[iid]
            self._measure(iid, pid, prof)
            measured += 1
            if iid not in new:
                self._rss_last = iid
        deadline = time.perf_counter() + PSS_BUDGET_MS / 1000
        for iid in _after(sorted(self._trees), self._pss_last):
            known = [kb for kb in map(pss_kb, self._trees[iid]) if kb is not None]
            sample = self.samples[iid]
            sample.pss_mb, sample.shown = sum(known) / 1024 if known else None, None
            self._pss_last = iid
            if time.perf_counter() >= deadline:
                break
        self.sweeps += 1
        self.last_measured = measured
        self.last_ms = (time.perf_counter() - started) * 1000
        self.last_cpu_ms = (time.thread_time() - cpu) * 1000

    def _measure(self, iid: str, pid: int, prof: str) -> None:
        pids = self._trees[iid] = tree(pid)
        rss_mb = sum(rss_kb(p) for p in pids) / 1024
        old = self.samples.get(iid)
        over = (old.over if old else 0) + 1 if self.cap_mb and rss_mb > self.cap_mb else 0
        self.samples[iid] = Sample(rss_mb, old.pss_mb if old else None, len(pids), time.time(),
                                   over)  # fmt: skip
        self.estimates.observe(iid, prof, rss_mb)

    def forget(self, instance_id: str) -> None:
        """The instance ended (or its pane is gone): its peak joins the history."""
        self.samples.pop(instance_id, None)
        self._trees.pop(instance_id, None)
        prof = self.estimates.end(instance_id)
        if prof is not None and self.store is not None:
            try:
                self.store.put(MEMORY_NS, prof, list(self.estimates.ended[prof]))
            except TcmError as exc:  # kept in memory; the next end writes it again
                log.warning("memory peaks not stored", profile=prof, error=exc.message)

    def load(self) -> None:
        """The peaks of ended instances, as the store kept them (at start)."""
        if self.store is None:
            return
        for prof, peaks in self.store.items(MEMORY_NS).items():
            if isinstance(peaks, list):
                kept = [float(p) for p in peaks if isinstance(p, int | float)]
                self.estimates.ended[prof] = deque(kept, maxlen=KEEP_PEAKS)

    def row(self, instance_id: str) -> Mapping[str, float]:
        """``memoryMb`` (and ``pssMb`` when known) for a ``list`` or ``health`` row: made
        once a sample (``list`` asks for every row of every call), so not to be modified."""
        s = self.samples.get(instance_id)
        if s is None:
            return NO_ROW
        if s.shown is None:
            s.shown = {"memoryMb": round(s.rss_mb, 1)}
            if s.pss_mb is not None:
                s.shown["pssMb"] = round(s.pss_mb, 1)
        return s.shown


def _after(order: list[str], last: str, skip: Collection[str] = ()) -> list[str]:
    """``order`` (sorted) rotated to start after ``last``, without ``skip``."""
    start = next((i for i, iid in enumerate(order) if iid > last), 0)
    return [iid for iid in order[start:] + order[:start] if iid not in skip]
