"""Catalogue entries for watching the daemon: ``events {since, follow}`` and ``metrics``.

``events`` answers ``{events, lastSeq}``; ``lastSeq`` is the ``seq`` this answer is
complete up to, so a client follows by passing it back as ``since``. With ``follow`` and
nothing new it waits up to ``waitMs`` for the next event (a long poll). A ``since`` beyond
the newest event (the state was reset) answers at once with the newest ``lastSeq``.

The operator sees every event. An instance sees the events its ``visible`` rule lets
through (``subtree_visibility``: about itself or its descendants); with no rule given,
``events`` is the operator's only. ``metrics`` is the operator's only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from tcmd.api import Caller, Params, Tool, result_schema
from tcmd.instances.authz import is_descendant
from tcmd.model import Instance
from tcmd.observe.events import Event, EventLog
from tcmd.observe.metrics import Registry
from tcmd.observe.nodes import NodeSum

Visible = Callable[[Caller, Event], bool]


class EventsParams(Params):
    since: int = Field(default=0, ge=0)
    follow: bool = False
    limit: int = Field(default=1000, ge=1, le=10_000)
    waitMs: int = Field(default=30_000, ge=0, le=600_000)


class EventsResult(BaseModel):
    events: list[dict[str, Any]]
    lastSeq: int


class MetricsParams(Params):
    format: Literal["json", "prometheus"] = "json"
    allNodes: bool = Field(
        default=False,
        description="Every node sharing this Redis: each node's series and their sums "
        '(node="*"), as the nodes last published them (every few seconds)',
    )


def subtree_visibility(find: Callable[[str], Instance | None]) -> Visible:
    """An instance sees events about itself and its descendants (``instanceId``)."""

    def visible(caller: Caller, event: Event) -> bool:
        iid = event.get("instanceId")
        if not isinstance(iid, str) or caller.instance_id is None:
            return caller.is_operator
        if iid == caller.instance_id:
            return True
        inst = find(iid)
        return inst is not None and is_descendant(inst, caller.instance_id, find)

    return visible


class ObserveTools:
    """The event log and the metrics registry, as tools."""

    def __init__(
        self,
        events: EventLog,
        registry: Registry,
        *,
        visible: Visible | None = None,
        node_snapshots: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.log = events
        self.registry = registry
        self.visible = visible
        # node -> its metrics snapshot, this node's included (None: no Redis, one node)
        self.node_snapshots = node_snapshots

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "events",
                "Events after seq `since` (state changes, health verdicts, recoveries, jobs), "
                "oldest first; with follow, wait up to waitMs for the next ones. Pass the "
                "answer's lastSeq back as since to continue.",
                EventsParams,
                self.events,
                result_schema(EventsResult),
                read_only=True,
                long_poll=True,
                operator_only=self.visible is None,
            ),
            Tool(
                "metrics",
                "Task, queue, health and recovery metrics: a JSON snapshot, or the "
                "Prometheus text format with format=prometheus.",
                MetricsParams,
                self.metrics,
                inline=True,
                read_only=True,
                operator_only=True,
            ),
        ]

    async def events(self, caller: Caller, p: EventsParams) -> dict[str, Any]:
        since = p.since
        if since > self.log.last_seq:  # past the newest: the state was reset; resync
            return {"events": [], "lastSeq": self.log.last_seq}
        deadline = time.monotonic() + p.waitMs / 1000
        while True:
            found, covered = self._scan(caller, since, p.limit)
            if found or not p.follow:
                return {"events": found, "lastSeq": covered}
            since = covered  # events the caller may not see are passed over
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self.log.wait(since, remaining):
                return {"events": [], "lastSeq": since}

    def _scan(self, caller: Caller, since: int, limit: int) -> tuple[list[Event], int]:
        """Up to ``limit`` events after ``since`` the caller may see; the seq scanned to."""
        if caller.is_operator or self.visible is None:
            found = self.log.since(since, limit)
            return found, found[-1]["seq"] if len(found) == limit else self.log.last_seq
        found = []
        for event in self.log.after(since):
            if self.visible(caller, event):
                found.append(event)
                if len(found) == limit:
                    return found, event["seq"]
        return found, self.log.last_seq

    def metrics(self, caller: Caller, p: MetricsParams) -> dict[str, Any]:
        if p.allNodes and self.node_snapshots is not None:
            summed = NodeSum(self.node_snapshots())
            if p.format == "prometheus":
                return {"text": summed.prometheus()}
            return {"metrics": summed.snapshot()}
        if p.format == "prometheus":
            return {"text": self.registry.prometheus()}
        return {"metrics": self.registry.snapshot()}
