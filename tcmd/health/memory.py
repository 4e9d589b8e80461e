"""How much memory each instance uses, read from /proc on every health sweep.

An instance is the process tree of its pane: tcm's launcher (a child subreaper, so what
the agent double-forks stays inside) and everything below it, found through
``/proc/PID/task/PID/children``. Each sweep sums the tree's RSS (``/proc/PID/statm``:
two small reads per process, ~8 µs each here). PSS (``/proc/PID/smaps_rollup``, where
the kernel lets us read it) makes the kernel walk the page tables: ~230 µs a process here,
30 times more. So PSS is read round-robin under a time budget per sweep
(``PSS_BUDGET_MS``): a few instances each sweep, each instance's figure refreshed every
few sweeps with tens of instances, every few minutes with hundreds.

From the samples a per-profile estimate is learned: the ``ESTIMATE_QUANTILE`` of the peak
RSS of that profile's instances (the live ones and the last ``KEEP_PEAKS`` that ended);
``TCM_MEMORY_ESTIMATE_MB`` until there is a sample. The dispatcher admits a specialist only
while the machine has room for that estimate (work/admission.py).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
PSS_BUDGET_MS = 2.0  # time per sweep spent reading PSS (the first instance always read)
ESTIMATE_QUANTILE = 0.9  # of the profile's peaks: what a new instance is expected to reach
KEEP_PEAKS = 200  # peaks of ended instances kept per profile
MAX_TREE = 512  # processes walked per instance at most (a fork bomb is not walked for ever)


@dataclass(slots=True)
class Sample:
    """One instance's memory at one sweep."""

    rss_mb: float
    pss_mb: float | None  # the last PSS read (None: never, or not readable)
    processes: int
    at: float


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

    def end(self, instance_id: str) -> None:
        """The instance is gone: its peak joins its profile's history."""
        if (old := self.live.pop(instance_id, None)) is not None:
            self.ended.setdefault(old[0], deque(maxlen=KEEP_PEAKS)).append(old[1])

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
    """The samples of the last sweep, the PSS stagger, the learned estimates."""

    def __init__(self, default_estimate_mb: float) -> None:
        self.samples: dict[str, Sample] = {}
        self.estimates = Estimates(default_estimate_mb)
        self.sweeps = 0
        self._pss_last = ""  # the instance whose PSS was read last (round-robin by id)
        self.last_ms = 0.0  # what the last sampling cost (wall, on the event loop)

    def sample(self, panes: Mapping[str, tuple[int, str]]) -> None:
        """Measure every instance of ``panes`` (instance id -> (pane pid, profile))."""
        started = time.perf_counter()
        now = time.time()
        trees: dict[str, list[int]] = {}
        for iid, (pid, prof) in panes.items():
            pids = trees[iid] = tree(pid)
            rss_mb = sum(rss_kb(p) for p in pids) / 1024
            old = self.samples.get(iid)
            self.samples[iid] = Sample(rss_mb, old.pss_mb if old else None, len(pids), now)
            self.estimates.observe(iid, prof, rss_mb)
        for gone in [iid for iid in self.samples if iid not in panes]:
            self.forget(gone)
        self._pss(trees, time.perf_counter() + PSS_BUDGET_MS / 1000)
        self.sweeps += 1
        self.last_ms = (time.perf_counter() - started) * 1000

    def _pss(self, trees: dict[str, list[int]], deadline: float) -> None:
        """PSS of the instances next in turn, until the budget is spent."""
        order = sorted(trees)
        if not order:
            return
        start = next((i for i, iid in enumerate(order) if iid > self._pss_last), 0)
        for iid in order[start:] + order[:start]:
            known = [kb for kb in map(pss_kb, trees[iid]) if kb is not None]
            self.samples[iid].pss_mb = sum(known) / 1024 if known else None
            self._pss_last = iid
            if time.perf_counter() >= deadline:
                break

    def forget(self, instance_id: str) -> None:
        """The instance ended (or its pane is gone): its peak joins the history."""
        self.samples.pop(instance_id, None)
        self.estimates.end(instance_id)

    def row(self, instance_id: str) -> dict[str, float]:
        """``memoryMb`` (and ``pssMb`` when known) for a ``list`` or ``health`` row."""
        s = self.samples.get(instance_id)
        if s is None:
            return {}
        out = {"memoryMb": round(s.rss_mb, 1)}
        if s.pss_mb is not None:
            out["pssMb"] = round(s.pss_mb, 1)
        return out
