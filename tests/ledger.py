"""What really ran, read from outside the daemon: the fake agent's event log and the store
on disk. The scale benchmark and the fault soak compare these with what tcmd says.

Each task's prompt carries a tag on its first line (``task <tag>``); the fake logs every
hook payload, so the UserPromptSubmit payloads say which session ran which tag, and a
Stop in that session says the tag's turn finished (a completion).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAG = re.compile(r"^task (\S+)")


def task_instruction(tag: str, script: str) -> str:
    """The instruction of a tagged task: the tag first, then the fake's script lines."""
    return f"task {tag}\n{script}"


@dataclass
class Ledger:
    """Per tag: prompts submitted to an agent, and turns that ended with a Stop."""

    prompts: Counter[str] = field(default_factory=Counter)
    completions: Counter[str] = field(default_factory=Counter)
    torn_lines: int = 0  # lines cut by an agent killed mid-write

    def twice(self) -> dict[str, int]:
        return {tag: n for tag, n in self.completions.items() if n > 1}


def read_ledger(event_log: Path) -> Ledger:
    """The fake's event log, as prompts and completions per task tag."""
    ledger = Ledger()
    if not event_log.exists():
        return ledger
    session_tag: dict[str, str] = {}
    for line in event_log.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            ledger.torn_lines += 1
            continue
        event, session = rec.get("hook_event_name"), rec.get("session_id")
        if event == "UserPromptSubmit":
            m = TAG.match(str(rec.get("prompt", "")).strip())
            if m:
                session_tag[session] = m.group(1)
                ledger.prompts[m.group(1)] += 1
        elif event == "Stop" and session in session_tag:
            ledger.completions[session_tag.pop(session)] += 1
    return ledger


def stored(state_dir: Path, *namespaces: str) -> dict[str, dict[str, Any]]:
    """The documents of ``namespaces`` in a stopped daemon's store on disk."""
    from tcmd.store.jsonfile import JsonFileStore

    store = JsonFileStore(state_dir / "store")
    store.open()
    try:
        return {ns: dict(store.items(ns)) for ns in namespaces}
    finally:
        store.close()


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak
