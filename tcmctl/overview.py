"""The instance tree as the operator sees it: executive → managers → specialists.

Built from three tools the daemon already has: ``list`` (state, time in state, a
manager's parallel load, memory when the daemon reports it), ``health`` (verdicts) and
``jobs`` (the task a specialist runs). Shared by ``tcmctl tree`` (printed once) and
``tcmctl top`` (kept live): stdlib only, so neither pays for the other's imports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Call = Callable[[str, Mapping[str, Any]], Any]
ACTIVE_JOB_LIMIT = 100_000  # the jobs tool's own upper bound


@dataclass(slots=True)
class Node:
    """One instance in the tree, with what the other tools say about it."""

    row: dict[str, Any]
    verdict: str | None = None
    score: int | None = None
    task: dict[str, Any] | None = None  # the active job of a specialist
    children: list[Node] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.row["instanceId"])

    def time_in_state_s(self, now: float) -> float | None:
        since = self.row.get("stateSince")
        return None if since is None else max(0.0, now - float(since))

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            **self.row,
            "timeInStateS": _round(self.time_in_state_s(now)),
            "verdict": self.verdict,
            "score": self.score,
            "task": self.task,
            "children": [c.to_json(now) for c in self.children],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def fetch_rows(call: Call) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
    """``list``, ``health`` and the active ``jobs``: what a tree is built from."""
    rows = call("list", {})
    health = call("health", {}).get("instances", [])
    active = call("jobs", {"state": "active", "limit": ACTIVE_JOB_LIMIT})
    return rows, health, active


def build(
    rows: Iterable[Mapping[str, Any]],
    health: Iterable[Mapping[str, Any]] = (),
    active_jobs: Iterable[Mapping[str, Any]] = (),
) -> list[Node]:
    """The forest: roots are executives and instances whose parent is not listed."""
    nodes = {str(r["instanceId"]): Node(dict(r)) for r in rows}
    for h in health:
        node = nodes.get(str(h.get("instanceId")))
        if node is not None:
            node.verdict, node.score = h.get("verdict"), h.get("score")
    for job in active_jobs:
        node = nodes.get(str(job.get("instanceId")))
        if node is not None:
            node.task = {k: job.get(k) for k in ("taskId", "jobId", "runId", "attempts")}
    roots: list[Node] = []
    for node in nodes.values():
        parent = nodes.get(str(node.row.get("parentId")))
        (parent.children if parent is not None else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=_order)
    roots.sort(key=_order)
    return roots


def _order(node: Node) -> tuple[int, ...]:
    """exec_2 before exec_10: ids compare by their numbers."""
    digits = node.id.split("_")[1:]
    return tuple(int(d) if d.isdigit() else 0 for d in digits)


def walk(roots: Iterable[Node], depth: int = 0) -> Iterable[tuple[int, Node]]:
    """Every node with its depth, parents before their children."""
    for node in roots:
        yield depth, node
        yield from walk(node.children, depth + 1)


def age(seconds: float | None) -> str:
    """A short time: 4.2s, 3m05s, 2h10m, 3d04h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86_400}d{(s % 86_400) // 3600:02d}h"


def memory(row: Mapping[str, Any]) -> str | None:
    """The instance's memory (RSS of its process tree, ``memoryMb``) once tcmd has
    measured it, e.g. 312M or 1.2G."""
    value = row.get("memoryMb")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return f"{value / 1024:.1f}G" if value >= 1024 else f"{value:.0f}M"


def doing(node: Node) -> str:
    """What the instance is busy with: its task, a manager's load, or its last error."""
    if node.task is not None:
        task = f"{node.task.get('taskId')} ({node.task.get('runId')})"
        attempts = node.task.get("attempts") or 1
        return task if attempts <= 1 else f"{task} try {attempts}"
    pe = node.row.get("parallelExecution")
    if pe:
        return (
            f"{pe['active']}/{pe['maxConcurrent']} active, {pe['queued']} queued, "
            f"{pe['completed']} done, {pe['failed']} failed"
        )
    if node.row.get("lastError"):
        return f"error: {node.row['lastError']}"
    return ""


def cells(depth: int, node: Node, now: float) -> list[str]:
    """One line's cells: indented id, state, time in state, verdict, memory, task."""
    return [
        "  " * depth + node.id,
        str(node.row.get("status", "-")),
        age(node.time_in_state_s(now)),
        node.verdict or "-",
        memory(node.row) or "",
        doing(node).replace("\n", " "),
    ]


def render(roots: list[Node], now: float | None = None, width: int = 100) -> str:
    """The tree as aligned text lines, one instance a line, cut to ``width``."""
    now = time.time() if now is None else now
    grid = [["INSTANCE", "STATE", "IN STATE", "HEALTH", "MEM", "DOING"]]
    grid += [cells(d, n, now) for d, n in walk(roots)]
    if len(grid) == 1:
        return "(no instances)"
    show = [i for i in range(len(grid[0])) if i != 4 or any(r[4] for r in grid[1:])]
    widths = {i: max(len(r[i]) for r in grid) for i in show}
    lines = []
    for r in grid:
        line = "  ".join(r[i].ljust(widths[i]) for i in show).rstrip()
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(lines)
