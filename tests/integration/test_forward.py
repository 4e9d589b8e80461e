"""Calls on an instance of another node, forwarded over a real Redis between two real
daemons: answered as if local, role rules applied by the owner, a dead owner named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcmd.errors import Forbidden, Unavailable
from tests.integration.test_shared_queue import busy_a, manager_on, run, start
from tests.redis_server import RedisServer
from tests.support import DaemonProcess, wait_until


def test_read_send_wait_terminate_on_another_node_and_its_death(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a = start(tmp_path, daemon_factory, redis_server, "a")
    b = start(tmp_path, daemon_factory, redis_server, "b")
    there, other = (b.spawn("executive", agent="shell")["instanceId"] for _ in range(2))

    def seen(instance_id: str, alive: bool = True) -> bool:
        rows = a.call("list", {"allNodes": True})
        return any(
            r["instanceId"] == instance_id and r["node"] == "b" and r["nodeAlive"] is alive
            for r in rows
        )

    wait_until(lambda: seen(there) and seen(other), 10, what="b's executives seen from a")
    assert a.call("read", {"instanceId": there})["status"] == "ready"
    assert a.call("send", {"instanceId": there, "text": "echo across-nodes"})["delivered"]
    waited = a.call("wait", {"instanceIds": [there], "timeoutMs": 20_000})
    assert waited["done"] and "across-nodes" in waited["instances"][0]["lastResult"]
    assert "across-nodes" in a.call("read", {"instanceId": there})["output"]
    # the owner applies the role rules to the forwarded caller: a's manager is not above it
    mgr = manager_on(a)
    with pytest.raises(Forbidden):
        a.call("read", {"instanceId": there}, token=a.token(mgr))
    assert a.call("terminate", {"instanceId": there})["terminated"] == [there]
    assert {r["instanceId"]: r["status"] for r in b.call("list", {"includeTerminated": True})}[
        there
    ] == "terminated"
    b.daemon.kill9()
    wait_until(lambda: seen(other, alive=False), 15, what="b reported dead")
    with pytest.raises(Unavailable, match="node b"):
        a.call("read", {"instanceId": other})


def test_a_manager_reads_its_specialist_that_ran_on_another_node(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    # a runs one manager at a time and is busy with its first: b runs the second's tasks
    a, mgrs, r, release = busy_a(tmp_path, daemon_factory, redis_server)
    b = start(tmp_path, daemon_factory, redis_server, "b")
    mgr = mgrs[1]
    tasks = [{"id": f"t{i}", "instruction": f"echo kept-{i}"} for i in range(2)]
    try:
        done = run(a, mgr, tasks, keepSpecialists=True)
    finally:
        release()
        r.close()
    assert done["completed"] == 2, done
    on_b = [r for r in done["results"] if r["ranOn"] == "b"]
    assert on_b, done["results"]
    spec = on_b[0]["instanceId"]
    wait_until(
        lambda: any(r["instanceId"] == spec for r in a.call("list", {"allNodes": True})),
        10,
        what="b's specialist seen from a",
    )
    # the manager (its token, on a) is the parent of a specialist that lives on b
    read = a.call("read", {"instanceId": spec}, token=a.token(mgr))
    assert read["lastResult"].strip() == on_b[0]["result"].strip()
    assert b.call("read", {"instanceId": spec})["status"] == read["status"]
