"""The text of top's small panels: the daemon line, the queue, the runs, the throughput.

Plain strings from a Snapshot, so they read the same in 80 columns and without colour.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tcmctl.top.feed import Snapshot

PRIORITIES = ("critical", "high", "medium", "low")
UNFINISHED = ("queued", "active", "retrying")
FINAL = ("completed", "failed", "cancelled")


def daemon_line(snap: Snapshot, linked: bool) -> str:
    """tcmd's version, pid, store backend and its health, and the link to it."""
    if not linked:
        return "tcmd unreachable: reconnecting…"
    st = snap.status
    store = st.get("store", {})
    health = "ok" if store.get("ok") else f"FAILING ({store.get('lastError') or '?'})"
    counts = Counter(str(r.get("status")) for r in snap.rows)
    states = " ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no instances"
    return (
        f"tcmd {st.get('version', '?')} pid {st.get('pid', '?')}  "
        f"store {store.get('backend', '?')} {health}  {states}"
    )


def queue_line(snap: Snapshot) -> str:
    """Queue: waiting jobs by priority, and every job by state."""
    q = snap.queue
    by_p = q.get("byPriority", {})
    by_s = q.get("byState", {})
    waiting = " ".join(f"{p[:4]} {by_p.get(p, 0)}" for p in PRIORITIES)
    states = " ".join(f"{s} {by_s.get(s, 0)}" for s in (*UNFINISHED, *FINAL) if by_s.get(s))
    return f"queue  {waiting}  |  {states or 'empty'}"


def runs(snap: Snapshot) -> list[dict[str, Any]]:
    """Each run's progress, unfinished runs first, then the newest finished ones."""
    out = [
        {
            "runId": r["runId"],
            "total": r["total"],
            "done": sum(r[s] for s in FINAL),
            "active": r["active"],
            "failed": r["failed"],
            "cancelled": r["cancelled"],
            "finished": bool(r["done"]),
        }
        for r in snap.runs
    ]
    out.sort(key=lambda r: (bool(r["finished"]), -_number(str(r["runId"]))))
    return out


def _number(run_id: str) -> int:
    tail = run_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def runs_line(snap: Snapshot, width: int = 80) -> str:
    """``run_3 7/12 (2 active, 1 failed)  run_2 done 12/12`` as far as it fits."""
    parts = []
    for r in runs(snap):
        text = f"{r['runId']} {r['done']}/{r['total']}"
        extra = [f"{r[k]} {k}" for k in ("active", "failed", "cancelled") if r[k]]
        if r["finished"]:
            text += " done"
        if extra:
            text += f" ({', '.join(extra)})"
        parts.append(text)
    line = "runs   " + ("  ".join(parts) if parts else "none")
    return line if len(line) <= width else line[: width - 1] + "…"


def throughput_line(snap: Snapshot) -> str:
    """Tasks a minute, outcomes so far, recoveries and the average wait and run."""
    q = snap.queue
    outcomes = _samples(snap.metrics, "tcm_tasks_total", "outcome")
    recoveries = sum(_samples(snap.metrics, "tcm_recoveries_total", "action").values())
    done = " ".join(f"{k} {int(v)}" for k, v in sorted(outcomes.items())) or "no tasks yet"
    wait_ms, run_ms = q.get("avgWaitMs") or 0.0, q.get("avgRunMs") or 0.0
    return (
        f"tasks  {q.get('throughputPerMin', 0)}/min  {done}  recoveries {int(recoveries)}  "
        f"wait {wait_ms / 1000:.1f}s run {run_ms / 1000:.1f}s"
    )


def _samples(metrics: dict[str, Any], name: str, label: str) -> dict[str, float]:
    """One metric's values summed by one label (``{}`` when the daemon has none)."""
    out: dict[str, float] = defaultdict(float)
    for sample in metrics.get(name, {}).get("samples", []):
        value = sample.get("value")
        if isinstance(value, int | float):
            out[str(sample.get("labels", {}).get(label, "?"))] += value
    return dict(out)
