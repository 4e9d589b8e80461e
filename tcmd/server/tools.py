"""The daemon's own tools: ping, status, tools.

``status`` tells the operator everything. An instance gets the version, the uptime and
the counts of its own subtree: no pid, paths, settings or store figures, and nothing of
the other instances (docs/operations.md, "Who sees what").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from tcmd import __version__
from tcmd.api import Caller, Catalogue, NoParams, Params, Tool, result_schema
from tcmd.config import Settings
from tcmd.errors import NotFound


class Served(Protocol):
    """What ``status`` reports of the daemon that serves it."""

    @property
    def settings(self) -> Settings: ...
    @property
    def started_at(self) -> float: ...
    @property
    def started_monotonic(self) -> float: ...
    @property
    def boots(self) -> int: ...
    @property
    def node(self) -> str: ...
    @property
    def catalogue(self) -> Catalogue: ...

    def store_health(self) -> dict[str, Any]: ...


class PingResult(BaseModel):
    pong: bool
    time: float


class StatusResult(BaseModel):
    version: str
    uptimeS: float
    counts: dict[str, int]
    # the operator's only
    pid: int | None = None
    startedAt: float | None = None
    boots: int | None = None
    socket: str | None = None
    stateDir: str | None = None
    node: str | None = None
    store: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None


class DescribeParams(Params):
    name: str


class CoreTools:
    """Tools every daemon has, whatever services run in it."""

    def __init__(self, daemon: Served, counts: Callable[[Caller], dict[str, int]]) -> None:
        self.daemon = daemon
        self.counts = counts
        self.settings = daemon.settings.describe()  # they never change; status shows them

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "ping",
                "Check the daemon answers.",
                NoParams,
                self.ping,
                result_schema(PingResult),
                inline=True,
                read_only=True,
            ),
            Tool(
                "status",
                "Version, uptime and counts (an instance: of its own subtree); for the "
                "operator also pid, paths, store health and settings.",
                NoParams,
                self.status,
                result_schema(StatusResult),
                inline=True,
                read_only=True,
            ),
            Tool(
                "tools",
                "The tool catalogue: names, descriptions, input and output schemas.",
                NoParams,
                self.list_tools,
                {"type": "array", "items": {"type": "object"}},
                inline=True,
                read_only=True,
            ),
            Tool(
                "describe",
                "One tool's entry of the catalogue, by name.",
                DescribeParams,
                self.describe,
                inline=True,
                read_only=True,
            ),
        ]

    def ping(self, caller: Caller, params: NoParams) -> dict[str, Any]:
        return {"pong": True, "time": time.time()}

    def status(self, caller: Caller, params: NoParams) -> dict[str, Any]:
        d = self.daemon
        seen = {
            "version": __version__,
            "uptimeS": round(time.monotonic() - d.started_monotonic, 3),
            "counts": self.counts(caller),
        }
        if not caller.is_operator:
            return seen
        return {
            **seen,
            "pid": os.getpid(),
            "startedAt": d.started_at,
            "boots": d.boots,
            "socket": str(d.settings.socket_path),
            "stateDir": str(d.settings.state_dir),
            "node": d.node,
            "store": d.store_health(),
            "settings": self.settings,
        }

    def list_tools(self, caller: Caller, params: NoParams) -> list[dict[str, Any]]:
        return self.daemon.catalogue.describe()

    def describe(self, caller: Caller, params: DescribeParams) -> dict[str, Any]:
        for entry in self.daemon.catalogue.describe():
            if entry["name"] == params.name:
                return entry
        raise NotFound(f"no tool named {params.name!r}")
