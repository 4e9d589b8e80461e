"""What ``top`` shows, fetched from the daemon: one snapshot, and the event stream.

No Textual here: the app runs these in worker threads (the socket client is blocking)
and hands the results to the screen. The stream is the ``events`` tool's long poll, so
the screen moves on the daemon's news instead of on a timer; each call uses its own
connection, so a daemon that restarts is simply reached again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcmctl import overview
from tcmctl.client import Client, DaemonUnreachable
from tcmd.errors import Stopping

POLL_WAIT_MS = 5_000  # one long poll; the daemon answers at once when there is news
RECONNECT_S = (0.1, 0.2, 0.5, 1.0)  # the waits between attempts while tcmd is away
JOB_LIMIT = 100_000  # the jobs tool's own upper bound (active jobs: bounded by the limits)
RUN_LIMIT = 20  # runs per snapshot: the unfinished ones first, then the newest finished
AFTER_EVERYTHING = 10**15  # a `since` past any seq: the daemon answers with its newest


@dataclass(slots=True)
class Snapshot:
    """Everything the screen shows, as the daemon answered it."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)  # the active ones
    runs: list[dict[str, Any]] = field(default_factory=list)  # the runs tool's rows
    queue: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)

    def tree(self) -> list[overview.Node]:
        return overview.build(self.rows, self.health, self.jobs)


class Daemon:
    """Calls to tcmd on fresh connections (thread-safe: nothing is shared)."""

    def __init__(self, socket_path: Path, timeout_s: float = 10.0) -> None:
        self.path = socket_path
        self.timeout_s = timeout_s

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        with Client(self.path, timeout_s=self.timeout_s) as client:
            return client.call(method, params)

    def snapshot(self) -> Snapshot:
        """All panels in one go, pipelined on one connection. Only the active jobs (the
        tree's tasks) and the runs line's runs: never every job the daemon remembers."""
        requests: list[tuple[str, dict[str, Any]]] = [
            ("list", {}),
            ("health", {}),
            ("jobs", {"state": "active", "limit": JOB_LIMIT}),
            ("runs", {"limit": RUN_LIMIT, "unfinishedFirst": True}),
            ("queueStats", {}),
            ("metrics", {}),
            ("status", {}),
        ]
        with Client(self.path, timeout_s=self.timeout_s) as client:
            answers = [client.call(m, p) for m, p in requests]
        rows, health, jobs, runs, queue, metrics, status = answers
        return Snapshot(
            rows=rows,
            health=health.get("instances", []),
            jobs=jobs,
            runs=runs,
            queue=queue,
            metrics=metrics.get("metrics", {}),
            status=status,
        )


def follow(
    daemon: Daemon,
    on_events: Callable[[list[dict[str, Any]]], None],
    on_link: Callable[[bool], None],
    stop: threading.Event,
) -> None:
    """Stream events into ``on_events`` until ``stop``; ``on_link(up)`` on each change.

    Starts at the newest event (the first snapshot covers the past). When tcmd goes
    away, ``on_link(False)``; attempts go on until it answers again, then
    ``on_link(True)`` (the app takes a fresh snapshot) and the stream continues after the
    last seq seen; a daemon whose log was reset answers with its newest seq instead.
    """
    since: int | None = None
    up: bool | None = None
    misses = 0
    client: Client | None = None
    while not stop.is_set():
        try:
            if client is None:
                client = Client(daemon.path, timeout_s=POLL_WAIT_MS / 1000 + 10).connect()
            if since is None:
                since = int(client.call("events", {"since": AFTER_EVERYTHING})["lastSeq"])
            if up is not True:
                up, misses = True, 0
                on_link(True)
            answer = client.call("events", {"since": since, "follow": True, "waitMs": POLL_WAIT_MS})
        except (DaemonUnreachable, Stopping):  # stopping: the poll is answered, tcmd goes away
            if client is not None:
                client.close()
                client = None
            if up is not False:
                up = False
                on_link(False)
            stop.wait(RECONNECT_S[min(misses, len(RECONNECT_S) - 1)])
            misses += 1
            continue
        since = int(answer["lastSeq"])
        if answer["events"]:
            on_events(answer["events"])
    if client is not None:
        client.close()
