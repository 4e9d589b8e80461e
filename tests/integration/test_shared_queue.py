"""The shared job queue across two real daemons on one real redis-server: a manager's jobs
run on the other node when its own slots are full, each job once; a node stopped past its
lease loses the job to the other, and its late word is refused as stale."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.fakes import FAKE_CLAUDE
from tests.integration.test_parallel import intervals, peak, timed
from tests.redis_server import RedisServer
from tests.support import AgentDaemon, DaemonProcess, wait_until


def start(
    tmp_path: Path, factory: type[DaemonProcess], server: RedisServer, node: str, **env: str
) -> AgentDaemon:
    return AgentDaemon.start_in(
        tmp_path / node,
        factory,
        FAKE_CLAUDE,
        {"REDIS_URL": server.url, "TCM_NODE_ID": node, **env},
    )


def managers_on(agents: AgentDaemon, n: int = 1) -> list[str]:
    execs = [r["instanceId"] for r in agents.call("list", {}) if r["role"] == "executive"]
    parent = execs[0] if execs else agents.spawn("executive", agent="shell")["instanceId"]
    return [
        agents.spawn("manager", parent=parent, agent="shell")["instanceId"] for _ in range(n)
    ]


def manager_on(agents: AgentDaemon) -> str:
    return managers_on(agents)[0]


def run(agents: AgentDaemon, mgr: str, tasks: list[dict[str, Any]], **opts: Any) -> Any:
    params = {"managerId": mgr, "tasks": tasks, "workDir": str(agents.work_dir)}
    return agents.call("executeParallel", {**params, "agent": "shell", **opts})


def finished(agents: AgentDaemon, run_id: str, timeout_s: float = 60) -> Any:
    """The run's getParallelStatus once every job of it ended."""
    return wait_until(
        lambda: (s := agents.call("getParallelStatus", {"runId": run_id}))["done"] and s,
        timeout_s,
        what=f"{run_id} to finish",
    )


def running_on(r: redis.Redis, agents: AgentDaemon, run_id: str, node: str) -> list[str]:
    """The jobs of ``run_id`` (of ``agents``' node) that ``node`` holds now."""
    ids = [j["jobId"] for j in agents.call("jobs", {"runId": run_id})]
    rows = [(i, r.hmget(f"tcm:{{q}}:job:{i}", "state", "node")) for i in ids]
    return [i for i, (state, held) in rows if state == "active" and held == node]


def busy_a(
    tmp_path: Path, factory: type[DaemonProcess], server: RedisServer, **env: str
) -> tuple[AgentDaemon, list[str], redis.Redis, Callable[[], None]]:
    """Node a (one manager at a time) with two managers, the first one's task running on a
    until ``release()``, so that a's node is full for the second: (a, managers, a client,
    release). Start node b only then: it cannot take the first task before a does."""
    a = start(tmp_path, factory, server, "a", MAX_MANAGER_CONCURRENCY="1", **env)
    mgrs = managers_on(a, 2)
    flag = tmp_path / "released"
    task = {"id": "first", "instruction": f"until [ -e {flag} ]; do sleep 0.05; done"}
    first = run(a, mgrs[0], [task], wait=False)["runId"]
    r = redis.Redis(port=server.port, decode_responses=True)
    wait_until(lambda: running_on(r, a, first, "a"), 20, what="a to run the first run")
    return a, mgrs, r, flag.touch


def test_two_nodes_split_40_jobs_by_free_slots_each_once(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a = start(tmp_path, daemon_factory, redis_server, "a", MAX_MANAGER_CONCURRENCY="1")
    mgrs = managers_on(a, 2)
    log, flag = tmp_path / "ran.log", tmp_path / "released"
    hold = f"until [ -e {flag} ]; do sleep 0.05; done"  # until the test releases them
    tasks = [timed(f"t{i}", log, body=f"{hold}; echo out-{i} $PWD") for i in range(40)]
    first = run(a, mgrs[0], tasks[:20], wait=False)["runId"]
    r = redis.Redis(port=redis_server.port, decode_responses=True)
    wait_until(lambda: running_on(r, a, first, "a"), 20, what="a to run the first run")
    b = start(tmp_path, daemon_factory, redis_server, "b")
    # b's own run first: run ids are per node, so both nodes have a run_1
    assert run(b, manager_on(b), [{"id": "own", "instruction": "pwd"}])["runId"] == "run_1"
    second = run(a, mgrs[1], tasks[20:], wait=False)["runId"]  # a is full: one manager
    wait_until(lambda: running_on(r, a, second, "b"), 20, what="b to run the second run")
    flag.touch()
    rows = {}
    for run_id in (first, second):
        status = finished(a, run_id)
        assert status["completedTasks"] == 20, status
        rows.update({t["taskId"]: t for t in status["tasks"]})
    assert {t: row["result"].strip() for t, row in rows.items()} == {
        f"t{i}": f"out-{i} {a.work_dir}" for i in range(40)  # a's run's workDir, on b too
    }
    ran = Counter(line.split()[1] for line in log.read_text().splitlines() if line[0] == "S")
    assert ran == dict.fromkeys(rows, 1), ran  # every task started exactly once
    on = Counter(row["ranOn"] for row in rows.values())
    assert on["a"] >= 1 and on["b"] >= 1 and on["a"] + on["b"] == 40, on
    # b's specialists are b's instances, under a's managers, with ids a never made
    b_specs = {
        row["instanceId"]: row
        for row in b.call("list", {"includeTerminated": True})
        if row["role"] == "specialist"
    }
    on_b = {row["instanceId"] for row in rows.values() if row["ranOn"] == "b"}
    assert on_b <= b_specs.keys()
    assert {b_specs[i]["parentId"] for i in on_b} <= set(mgrs)
    a_specs = {
        row["instanceId"]
        for row in a.call("list", {"includeTerminated": True})
        if row["role"] == "specialist"
    }
    assert not a_specs & b_specs.keys()
    assert len({row["instanceId"] for row in rows.values()}) == 40
    # a's inline views count its runs whatever node ran the jobs
    assert a.call("queueStats")["byState"]["completed"] == 40
    assert {j["state"] for j in a.call("jobs", {})} == {"completed"}
    assert not {k for k, v in r.hgetall("tcm:{q}:limits").items() if k[:7] == "active:"}
    r.close()


def test_a_manager_s_limit_holds_across_nodes(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    # a's limit per manager is 1: the second manager's jobs run on b (a runs the first
    # manager's), then on a too once a is free, but never two at once
    a, mgrs, r, release = busy_a(
        tmp_path, daemon_factory, redis_server, MAX_SPECIALISTS_PER_MANAGER="1"
    )
    b = start(tmp_path, daemon_factory, redis_server, "b")  # 3 per manager
    log = tmp_path / "limited.log"
    tasks = [timed(f"t{i}", log, body="sleep 0.4") for i in range(5)]
    second = run(a, mgrs[1], tasks, wait=False)["runId"]
    wait_until(lambda: running_on(r, a, second, "b"), 20, what="b to run the second run")
    assert b.call("queueStats")["shared"]["limits"]["max:" + mgrs[1]] == 1
    release()  # a is free for the second manager too now
    status = finished(a, second)
    assert status["completedTasks"] == 5, status
    assert peak(intervals(log)) == 1, intervals(log)
    assert "b" in {row["ranOn"] for row in status["tasks"]}
    r.close()


def b_runs_one_of_as_jobs(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer, n: int
) -> tuple[AgentDaemon, AgentDaemon, str, list[str], redis.Redis, Callable[[], None]]:
    """Nodes a and b (leases of 1.5 s), a busy with its first manager's task until
    ``release()``, a run of ``n`` 2-s tasks under its second (limited to 2), and the moment
    b runs some of them: (a, b, run id, the jobs b holds, a client, release). A manager's
    limit holds on every node, so a node runs another's jobs when that node is full (here:
    one manager at a time), not to go past the manager's limit."""
    lease = {"TCM_LEASE_MS": "1500"}
    a, mgrs, r, release = busy_a(tmp_path, daemon_factory, redis_server, **lease)
    b = start(tmp_path, daemon_factory, redis_server, "b", **lease)
    log = tmp_path / "ran.log"
    tasks = [timed(f"t{i}", log, body=f"sleep 2; echo out-{i}") for i in range(n)]
    run_id = run(a, mgrs[1], tasks, maxConcurrent=2, wait=False)["runId"]
    held = wait_until(lambda: running_on(r, a, run_id, "b"), 20, what="b to run a's jobs")
    return a, b, run_id, held, r, release


def test_a_node_stopped_past_its_lease_loses_the_job_and_its_ack_is_stale(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a, b, run_id, held, r, release = b_runs_one_of_as_jobs(
        tmp_path, daemon_factory, redis_server, 3
    )
    assert b.daemon.proc is not None
    os.kill(b.daemon.proc.pid, signal.SIGSTOP)
    release()
    try:

        def finished() -> Any:
            status = a.call("getParallelStatus", {"runId": run_id})
            return status if status["done"] else None

        status = wait_until(finished, 40, what="a to finish every job, b's too")
    finally:
        os.kill(b.daemon.proc.pid, signal.SIGCONT)
    rows = {t["jobId"]: t for t in status["tasks"]}
    assert status["completedTasks"] == 3, status
    for job_id in held:  # run again on a after b's lease ran out
        assert rows[job_id]["ranOn"] == "a" and rows[job_id]["reruns"] >= 1, rows[job_id]

    def stale_on_b() -> set[str]:
        events = b.call("events", {})["events"]
        return {e["jobId"] for e in events if e["kind"] == "job.stale"}

    wait_until(lambda: set(held) <= stale_on_b(), 20, what="b's late word refused as stale")
    for job_id in held:  # a's result stands, in Redis and in a's view
        assert r.hget(f"tcm:{{q}}:job:{job_id}", "state") == "completed"
        assert '"ranOn": "a"' in r.hget(f"tcm:{{q}}:job:{job_id}", "extra").replace(
            '":"', '": "'
        )
        again = {j["jobId"]: j for j in a.call("jobs", {"runId": run_id})}[job_id]
        assert again["state"] == "completed"
    r.close()


def test_a_killed_node_s_leased_jobs_complete_on_the_other_once(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a, b, run_id, held, r, release = b_runs_one_of_as_jobs(
        tmp_path, daemon_factory, redis_server, 3
    )
    b.daemon.kill9()
    release()
    status = wait_until(
        lambda: (s := a.call("getParallelStatus", {"runId": run_id}))["done"] and s,
        40,
        what="a to finish every job, the killed node's too",
    )
    assert status["completedTasks"] == 3, status
    rows = {t["jobId"]: t for t in status["tasks"]}
    for job_id in held:
        assert rows[job_id]["ranOn"] == "a" and rows[job_id]["reruns"] >= 1, rows[job_id]
    ids = [j["jobId"] for j in a.call("jobs", {"runId": run_id})]
    completions = [int(r.hget(f"tcm:{{q}}:job:{i}", "attempts") or 0) for i in ids]
    # each completed once: the run's 3 and the first manager's task
    assert r.hget("tcm:{q}:stats", "state:completed") == "4", completions
    r.close()


def test_without_redis_new_runs_go_to_the_local_queue_and_back_when_it_returns(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a = start(tmp_path, daemon_factory, redis_server, "a")
    mgr = manager_on(a)
    log = tmp_path / "ran.log"
    first = run(a, mgr, [timed(f"s{i}", log, body="echo shared") for i in range(2)])
    assert {r["ranOn"] for r in first["results"]} == {"a"}  # through the shared queue
    redis_server.stop()
    local = run(a, mgr, [timed(f"l{i}", log, body="echo local") for i in range(3)])
    assert local["completed"] == 3, local  # no RPC error: the local queue ran them
    assert all("ranOn" not in r for r in local["results"])
    redis_server.start()  # empty: its job counter starts again at 1
    again = wait_until(
        lambda: (
            d := run(a, mgr, [timed(f"x{i}", log, body="echo back") for i in range(2)])
        )["results"][0].get("ranOn")
        and d,
        30,
        what="runs to go through Redis again",
    )
    assert again["completed"] == 2
    ids = [j["jobId"] for j in a.call("jobs", {})]
    assert len(ids) == len(set(ids)), ids  # no id handed out twice, Redis emptied or not


def test_a_redis_that_lost_its_data_mid_run_gets_the_unfinished_jobs_again(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a = start(tmp_path, daemon_factory, redis_server, "a", TCM_LEASE_MS="3000")
    mgr = manager_on(a)
    log = tmp_path / "ran.log"
    tasks = [timed(f"t{i}", log, body=f"sleep 1; echo out-{i}") for i in range(4)]
    run_id = run(a, mgr, tasks, maxConcurrent=2, wait=False)["runId"]
    redis_server.stop()
    redis_server.start()  # empty: no persistence in the tests' Redis
    status = wait_until(
        lambda: (s := a.call("getParallelStatus", {"runId": run_id}))["done"] and s,
        60,
        what="every job to finish after Redis came back empty",
    )
    assert status["completedTasks"] == 4, status
    assert {t["result"].strip() for t in status["tasks"]} == {f"out-{i}" for i in range(4)}


def test_a_node_without_managers_takes_over_a_killed_node_s_jobs(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    # b has no manager of its own, so no claim of its own would reap the dead node's
    # leases: its claim rounds clear expired leases first
    lease = {"TCM_LEASE_MS": "1500"}
    a = start(tmp_path, daemon_factory, redis_server, "a", **lease)
    mgr = manager_on(a)
    log = tmp_path / "ran.log"
    tasks = [
        timed(f"t{i}", log, body=f"[ -e {flag} ] || {{ touch {flag}; sleep 60; }}")
        for i, flag in enumerate(tmp_path / f"t{i}.flag" for i in range(2))
    ]  # the first attempt hangs (its node dies), the next one ends at once
    run_id = run(a, mgr, tasks, maxConcurrent=2, wait=False)["runId"]
    r = redis.Redis(port=redis_server.port, decode_responses=True)
    ids = wait_until(
        lambda: len(held := running_on(r, a, run_id, "a")) == 2 and held, 20, what="a to run both"
    )
    b = start(tmp_path, daemon_factory, redis_server, "b", **lease)
    assert not [row for row in b.call("list", {}) if row["role"] == "manager"]
    a.daemon.kill9()

    def done_on_b() -> bool:
        rows = [r.hmget(f"tcm:{{q}}:job:{i}", "state", "node", "reruns", "extra") for i in ids]
        return all(s == "completed" and '"b"' in x and int(n) >= 1 for s, _, n, x in rows)

    wait_until(done_on_b, 20, what="b to run the killed node's jobs")
    assert not [row for row in b.call("list", {}) if row["role"] == "manager"]
    r.close()
