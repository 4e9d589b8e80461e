"""events and metrics over a real socket: an RpcServer with ObserveTools, real clients.

Most tests serve the tools with the same RpcServer the daemon uses and call them through
tcmctl's Client and its click commands; the last one runs the real daemon.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from tcmctl.client import Client
from tcmctl.commands import observe as cli_observe
from tcmctl.context import Ctx
from tcmd.api import OPERATOR, Caller, Catalogue
from tcmd.changes import Changes
from tcmd.errors import Forbidden, InvalidParams
from tcmd.observe.events import EventLog
from tcmd.observe.metrics import Registry, StandardMetrics, standard
from tcmd.observe.tools import ObserveTools
from tcmd.server.rpc import RpcServer
from tcmd.store.jsonfile import JsonFileStore
from tests.support import DaemonProcess, wait_until

TOKENS = {"tok-s1": Caller("S1", "specialist")}


class WatchedChanges(Changes):
    """Changes that tell the test when a call starts waiting on them."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], bool], timeout_s: float | None, key: str | None = None
    ) -> bool:
        self.waiting.set()  # nothing awaits between here and blocking: a woken test knows
        return await super().wait_for(predicate, timeout_s, key)


@dataclass
class Served:
    server: RpcServer
    log: EventLog
    changes: WatchedChanges
    registry: Registry
    metrics: StandardMetrics

    @property
    def path(self) -> Path:
        return self.server.path

    async def follower_waits(self) -> None:
        """Return once a long poll on the server is blocked waiting for an event."""
        await asyncio.wait_for(self.changes.waiting.wait(), 10)
        self.changes.waiting.clear()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = JsonFileStore(tmp_path / "store")
    store.open()
    changes = WatchedChanges()
    log = EventLog(store, changes)
    log.load()
    registry = Registry(node="n1")
    catalogue = Catalogue()
    mine = ObserveTools(log, registry, visible=lambda c, e: e.get("instanceId") == c.instance_id)
    catalogue.extend(mine.tools())
    sock_dir = Path(tempfile.mkdtemp(prefix="tcm-obs-", dir="/tmp"))
    server = RpcServer(
        catalogue,
        lambda token, who, method: OPERATOR if token is None else TOKENS[token],
        path=sock_dir / "s.sock",
        max_frame=1 << 20,
    )
    await server.start()
    try:
        yield Served(server, log, changes, registry, standard(registry))
    finally:
        server.stop_accepting()
        await server.drain(1.0)
        shutil.rmtree(sock_dir, ignore_errors=True)
        store.close()


async def call(
    path: Path, method: str, params: dict[str, Any] | None = None, token: str | None = None
) -> Any:
    def blocking() -> Any:
        with Client(path, token=token, timeout_s=30) as client:
            return client.call(method, params)

    return await asyncio.to_thread(blocking)


async def test_events_since(served: Served) -> None:
    for i in range(5):
        served.log.emit("instance.state", instanceId=f"S{i}", old="idle", new="busy")
    everything = await call(served.path, "events")
    assert [e["seq"] for e in everything["events"]] == [1, 2, 3, 4, 5]
    assert everything["lastSeq"] == 5
    assert everything["events"][0]["instanceId"] == "S0"

    page = await call(served.path, "events", {"since": 1, "limit": 2})
    assert [e["seq"] for e in page["events"]] == [2, 3] and page["lastSeq"] == 3
    rest = await call(served.path, "events", {"since": page["lastSeq"]})
    assert [e["seq"] for e in rest["events"]] == [4, 5] and rest["lastSeq"] == 5

    reset = await call(served.path, "events", {"since": 99, "follow": True})
    assert reset == {"events": [], "lastSeq": 5}  # answered at once: resync from 5


async def test_follow_returns_when_an_event_is_emitted(served: Served) -> None:
    served.log.emit("job.state", jobId="j1", taskId="t1", runId="r1", state="queued")
    waiting = asyncio.create_task(
        call(served.path, "events", {"since": 1, "follow": True, "waitMs": 60_000})
    )
    await served.follower_waits()
    assert not waiting.done()
    served.log.emit("job.state", jobId="j1", taskId="t1", runId="r1", state="running")
    answer = await asyncio.wait_for(waiting, 10)  # far less than waitMs
    assert [(e["seq"], e["state"]) for e in answer["events"]] == [(2, "running")]
    assert answer["lastSeq"] == 2


async def test_follow_times_out_empty(served: Served) -> None:
    served.log.emit("k")
    answer = await call(served.path, "events", {"since": 1, "follow": True, "waitMs": 50})
    assert answer == {"events": [], "lastSeq": 1}


async def test_an_instance_sees_only_what_it_may(served: Served) -> None:
    served.log.emit("health.verdict", instanceId="S2", verdict="stuck", score=0.2, reasons=[])
    waiting = asyncio.create_task(
        call(served.path, "events", {"follow": True, "waitMs": 60_000}, token="tok-s1")
    )
    await served.follower_waits()
    served.log.emit("health.verdict", instanceId="S3", verdict="ok", score=1.0, reasons=[])
    served.log.emit("health.verdict", instanceId="S1", verdict="ok", score=1.0, reasons=[])
    answer = await asyncio.wait_for(waiting, 10)
    assert [e["seq"] for e in answer["events"]] == [3] and answer["lastSeq"] == 3
    with pytest.raises(Forbidden):
        await call(served.path, "metrics", token="tok-s1")


async def test_params_are_checked(served: Served) -> None:
    with pytest.raises(InvalidParams, match="limit"):
        await call(served.path, "events", {"limit": 0})
    with pytest.raises(InvalidParams, match="unexpected field"):
        await call(served.path, "events", {"sinse": 3})
    with pytest.raises(InvalidParams, match="format"):
        await call(served.path, "metrics", {"format": "xml"})


async def test_metrics_in_both_formats(served: Served) -> None:
    served.metrics.tasks.inc(outcome="completed")
    served.metrics.health_score.set(0.5, instance="S1")
    served.metrics.task_duration.observe(12)
    snapshot = (await call(served.path, "metrics"))["metrics"]
    assert snapshot == served.registry.snapshot()
    completed = {"labels": {"outcome": "completed"}, "value": 1}
    assert completed in snapshot["tcm_tasks_total"]["samples"]
    assert snapshot["tcm_task_duration_seconds"]["samples"][0]["count"] == 1

    text = (await call(served.path, "metrics", {"format": "prometheus"}))["text"]
    assert text == served.registry.prometheus()
    assert 'tcm_instance_health_score{instance="S1",node="n1"} 0.5\n' in text


# -- the click commands, against the same server ----------------------------------------------
class StopAfter(Ctx):
    """A Ctx whose ``n``-th call is interrupted as by Ctrl-C; remembers the params sent."""

    def __init__(self, socket_path: Path, n: int) -> None:
        super().__init__(socket_path, autostart=False)
        self.n = n
        self.sent: list[dict[str, Any]] = []

    def call(self, method: str, params: Any = None, **kw: Any) -> Any:
        self.sent.append(dict(params or {}))
        if len(self.sent) == self.n:
            raise KeyboardInterrupt
        return super().call(method, params, **kw)


def invoke(command: Any, args: list[str], obj: Ctx) -> Any:
    """Run a click command in this thread; close its connection as a process exit would."""
    try:
        return CliRunner().invoke(command, args, obj=obj, catch_exceptions=False)
    finally:
        if obj._client is not None:
            obj._client.close()


async def test_cli_events_lines(served: Served) -> None:
    served.log.emit("instance.state", instanceId="S1", old="idle", new="busy")
    served.log.emit("health.verdict", instanceId="S1", verdict="stuck", reasons=["no change 10m"])
    ctx = Ctx(served.path, autostart=False)
    result = await asyncio.to_thread(invoke, cli_observe.events, [], ctx)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("1 ") and lines[0].endswith(
        " instance.state instanceId=S1 old=idle new=busy"
    )
    assert lines[1].endswith(' health.verdict instanceId=S1 verdict=stuck reasons="no change 10m"')

    ctx = Ctx(served.path, autostart=False)
    result = await asyncio.to_thread(invoke, cli_observe.events, ["--since", "1", "--json"], ctx)
    assert [orjson.loads(line)["seq"] for line in result.output.splitlines()] == [2]


async def test_cli_events_follow_until_ctrl_c(served: Served) -> None:
    served.log.emit("k", n=1)
    served.log.emit("k", n=2)
    ctx = StopAfter(served.path, n=3)
    running = asyncio.create_task(
        asyncio.to_thread(invoke, cli_observe.events, ["--follow", "--json"], ctx)
    )
    await served.follower_waits()
    assert len(ctx.sent) == 2
    served.log.emit("k", n=3)
    result = await asyncio.wait_for(running, 10)
    assert result.exit_code == 0
    assert [orjson.loads(line)["n"] for line in result.output.splitlines()] == [1, 2, 3]
    assert [p["since"] for p in ctx.sent] == [0, 2, 3]
    assert all(p["follow"] is True for p in ctx.sent)


async def test_cli_metrics(served: Served) -> None:
    served.metrics.tasks.inc(outcome="failed")
    served.metrics.queue_wait.observe(2)
    prom = await asyncio.to_thread(
        invoke, cli_observe.metrics, ["--prometheus"], Ctx(served.path, autostart=False)
    )
    assert prom.exit_code == 0 and prom.output == served.registry.prometheus()

    human = await asyncio.to_thread(
        invoke, cli_observe.metrics, [], Ctx(served.path, autostart=False)
    )
    rows = [line.split() for line in human.output.splitlines()]
    assert ["tcm_tasks_total{outcome=failed}", "1"] in rows
    assert ["tcm_queue_wait_seconds", "count=1", "sum=2", "mean=2"] in rows

    as_json = await asyncio.to_thread(
        invoke, cli_observe.metrics, ["--json"], Ctx(served.path, autostart=False)
    )
    assert orjson.loads(as_json.output)["metrics"] == served.registry.snapshot()


# -- the real daemon ---------------------------------------------------------------------------
def health_series(daemon: DaemonProcess) -> dict[str, str]:
    """instance id -> its tcm_instance_health_score line in the Prometheus text."""
    text: str = daemon.call("metrics", {"format": "prometheus"})["text"]
    lines = [ln for ln in text.splitlines() if ln.startswith("tcm_instance_health_score{")]
    return {ln.split('instance="')[1].split('"')[0]: ln for ln in lines}


def test_a_terminated_instance_leaves_the_metrics_but_the_counts_stay(
    daemon_factory: type[DaemonProcess], tmp_path: Path
) -> None:
    daemon = daemon_factory(extra_env={"HEALTH_CHECK_INTERVAL": "200"}).start()
    for _ in range(2):
        daemon.call(
            "spawn",
            {"role": "executive", "agent": "shell", "workDir": str(tmp_path), "context": "t"},
        )
    series = wait_until(
        lambda: (s := health_series(daemon)).keys() == {"exec_1", "exec_2"} and s,
        15,
        what="a health score series for each instance",
    )
    assert all('node="' in line for line in series.values())
    before = daemon.call("metrics")["metrics"]["tcm_hook_events_total"]["samples"]
    assert sum(s["value"] for s in before) > 0

    daemon.call("terminate", {"instanceId": "exec_1"})
    assert health_series(daemon).keys() == {"exec_2"}  # gone at once, not at retention
    json_face = daemon.call("metrics")["metrics"]
    scored = [s["labels"]["instance"] for s in json_face["tcm_instance_health_score"]["samples"]]
    assert scored == ["exec_2"]
    after = {
        s["labels"]["event"]: s["value"] for s in json_face["tcm_hook_events_total"]["samples"]
    }
    assert all(after[s["labels"]["event"]] >= s["value"] for s in before)  # counts kept
