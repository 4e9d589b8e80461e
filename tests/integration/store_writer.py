"""Crash-test writer for JsonFileStore: writes in a loop, acknowledging each call on stdout.

Run as ``python store_writer.py DIR`` and SIGKILL it at any moment. It prints
``ready <i>`` once the store is open, then for each ``i``: ``put(NS, "k<i>", value_for(i))``
and ``ack <i>``; on every ``DELETE_EVERY``-th ``i`` also ``delete(NS, "k<i-2>")`` and
``del <i-2>``. Each line is flushed after the call has returned. Numbering continues after
the highest ``k<i>`` already stored, so each run resumes where the last one died.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tcmd.observe.logs import configure
from tcmd.store.jsonfile import JsonFileStore

NS = "crash"
SNAPSHOT_EVERY = 50  # small, so compactions happen all through a run
DELETE_EVERY = 5
MAX_WRITES = 1_000_000  # a bound in case nobody kills us


def value_for(i: int) -> dict[str, Any]:
    """The document the writer stores at ``k<i>``."""
    return {"i": i, "square": i * i, "text": f'value {i}: "quoted"\nline ✓'}


def key_index(key: str) -> int:
    return int(key.removeprefix("k"))


def main(directory: Path) -> None:
    configure("debug", "json")  # to stderr: stdout carries the protocol
    store = JsonFileStore(directory, snapshot_every=SNAPSHOT_EVERY)
    store.open()
    start = max(map(key_index, store.items(NS)), default=-1) + 1
    say(f"ready {start}")
    for i in range(start, start + MAX_WRITES):
        store.put(NS, f"k{i}", value_for(i))
        say(f"ack {i}")
        if i % DELETE_EVERY == 0:
            store.delete(NS, f"k{i - 2}")
            say(f"del {i - 2}")
    store.close()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
