"""The Redis mirror against a real redis-server: what it holds equals the daemon's state,
it never holds a token, Redis going away costs no call, and nodes see each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import redis

from tests.fakes import FAKE_CLAUDE
from tests.redis_server import RedisServer
from tests.support import AgentDaemon, DaemonProcess, wait_until


def start(
    tmp_path: Path, factory: type[DaemonProcess], server: RedisServer, node: str
) -> AgentDaemon:
    return AgentDaemon.start_in(
        tmp_path / node, factory, FAKE_CLAUDE, {"REDIS_URL": server.url, "TCM_NODE_ID": node}
    )


def mirror(server: RedisServer, node: str) -> dict[str, dict[str, Any]]:
    r = redis.Redis(port=server.port)
    out = {}
    for key in r.scan_iter(f"tcm:{{node:{node}}}:doc:*"):
        ns = key.decode().rsplit(":", 1)[1]
        out[ns] = {k.decode(): orjson.loads(v) for k, v in r.hgetall(key).items()}
    r.close()
    return out


def work(agents: AgentDaemon) -> None:
    """A mixed workload: spawns, a prompt, a parallel run, a termination."""
    agents.spawn("executive", agent="shell")
    mgr = agents.spawn("manager", parent="exec_1", agent="shell")["instanceId"]
    agents.call("send", {"instanceId": "exec_1", "text": "echo hello"})
    agents.call(
        "executeParallel",
        {
            "managerId": mgr,
            "workDir": str(agents.work_dir),
            "agent": "shell",
            "tasks": [{"id": f"t{i}", "instruction": f"echo {i}"} for i in range(3)],
        },
    )
    agents.spawn("executive", agent="shell")
    agents.call("terminate", {"instanceId": "exec_2"})


def test_the_mirror_equals_the_state_and_holds_no_token(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    agents = start(tmp_path, daemon_factory, redis_server, "alpha")
    work(agents)
    assert agents.call("status")["store"]["backend"] == "redis"
    wait_until(lambda: agents.call("status")["store"]["pending"] == 0, 10, what="the mirror")
    rows = {r["instanceId"]: r for r in agents.call("list", {"includeTerminated": True})}
    held = mirror(redis_server, "alpha")
    assert {k: v["status"] for k, v in held["instances"].items()} == {
        k: r["status"] for k, r in rows.items()
    }
    assert all("token" not in v for v in held["instances"].values())
    assert all(v["node"] == "alpha" for v in held["instances"].values())
    jobs = {j["jobId"]: j["state"] for j in agents.call("jobs", {})}
    assert {k: v["state"] for k, v in held["jobs"].items()} == jobs
    assert {v["node"] for v in [*held["jobs"].values(), *held["runs"].values()]} == {"alpha"}
    # stopped, the daemon's own store and the mirror hold the same documents
    agents.daemon.terminate()
    from tcmd.store.jsonfile import JsonFileStore

    store = JsonFileStore(agents.daemon.state_dir / "store")
    store.open()
    try:
        local = {ns: store.items(ns) for ns in held.keys() | {"instances", "jobs", "meta"}}
    finally:
        store.close()
    for inst in local["instances"].values():
        inst.pop("token")
    assert {ns: docs for ns, docs in local.items() if docs} == mirror(redis_server, "alpha")


def test_redis_down_costs_no_call_and_the_mirror_catches_up(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    agents = start(tmp_path, daemon_factory, redis_server, "beta")
    agents.spawn("executive", agent="shell")
    redis_server.stop()
    agents.spawn("executive", agent="shell")  # answered from the local store
    agents.call("send", {"instanceId": "exec_2", "text": "echo while-redis-is-down"})
    store = wait_until(
        lambda: (s := agents.call("status")["store"])["backend"].startswith("json (fallback")
        and s,
        10,
        what="the fallback to be reported",
    )
    assert store["fallbackSince"] is not None and store["redisConnected"] is False
    redis_server.start()  # the same port, empty: everything must be written again
    wait_until(
        lambda: agents.call("status")["store"]["backend"] == "redis", 30, what="reconnection"
    )
    rows = {r["instanceId"]: r["status"] for r in agents.call("list", {})}
    wait_until(
        lambda: {k: v["status"] for k, v in mirror(redis_server, "beta")["instances"].items()}
        == rows,
        10,
        what="the mirror to equal the daemon again",
    )


def test_two_nodes_see_each_others_instances_and_liveness(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a = start(tmp_path, daemon_factory, redis_server, "node-a")
    b = start(tmp_path, daemon_factory, redis_server, "node-b")
    a.spawn("executive", agent="shell")
    b.spawn("executive", agent="shell")
    b.spawn("executive", agent="shell")

    def seen_from(agents: AgentDaemon) -> set[tuple[str, str, bool]]:
        rows = agents.call("list", {"allNodes": True})
        return {(r["node"], r["instanceId"], r["nodeAlive"]) for r in rows}

    # executives are numbered across the nodes: no two share an id
    both = {("node-a", "exec_1", True), ("node-b", "exec_2", True), ("node-b", "exec_3", True)}
    wait_until(lambda: seen_from(a) == both, 10, what="node-b's instances seen from node-a")
    wait_until(lambda: seen_from(b) == both, 10, what="node-a's instances seen from node-b")
    assert {r["instanceId"] for r in a.call("list", {})} == {"exec_1"}  # without allNodes
    b.daemon.kill9()
    wait_until(
        lambda: ("node-b", "exec_2", False) in seen_from(a), 15, what="node-b reported dead"
    )


def test_metrics_of_every_node_and_their_sums(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a = start(tmp_path, daemon_factory, redis_server, "m-a")
    b = start(tmp_path, daemon_factory, redis_server, "m-b")
    a.spawn("executive", agent="shell")
    for _ in range(2):
        b.spawn("executive", agent="shell")

    def starts(agents: AgentDaemon, all_nodes: bool) -> dict[str, float]:
        got = agents.call("metrics", {"allNodes": all_nodes})["metrics"]
        samples = got.get("tcm_hook_events_total", {}).get("samples", [])
        return {
            s["labels"].get("node", "here"): s["value"]
            for s in samples
            if s["labels"]["event"] == "SessionStart"
        }

    assert starts(a, False) == {"here": 1}
    want = {"m-a": 1, "m-b": 2, "*": 3}
    wait_until(lambda: starts(a, True) == want, 15, what="both nodes' metrics, summed")
    text = a.call("metrics", {"allNodes": True, "format": "prometheus"})["text"]
    assert 'tcm_hook_events_total{event="SessionStart",node="*"} 3.0' in text
