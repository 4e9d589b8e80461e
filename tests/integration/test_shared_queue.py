"""The shared job queue across two real daemons on one real redis-server: a manager's jobs
run on the other node when its own slots are full, each job once; a node stopped past its
lease loses the job to the other, and its late word is refused as stale."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from tests.fakes import FAKE_CLAUDE
from tests.integration.test_parallel import intervals, timed
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


def manager_on(agents: AgentDaemon) -> str:
    agents.spawn("executive", agent="shell")
    execs = [r["instanceId"] for r in agents.call("list", {}) if r["role"] == "executive"]
    mgr: str = agents.spawn("manager", parent=execs[0], agent="shell")["instanceId"]
    return mgr


def run(agents: AgentDaemon, mgr: str, tasks: list[dict[str, Any]], **opts: Any) -> Any:
    params = {"managerId": mgr, "tasks": tasks, "workDir": str(agents.work_dir)}
    return agents.call("executeParallel", {**params, "agent": "shell", **opts})


def test_a_full_manager_s_jobs_run_on_the_other_node_each_once(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a = start(tmp_path, daemon_factory, redis_server, "a")
    b = start(tmp_path, daemon_factory, redis_server, "b")
    # b's own run first: run ids are per node, so both nodes have a run_1
    assert run(b, manager_on(b), [{"id": "own", "instruction": "pwd"}])["runId"] == "run_1"
    mgr = manager_on(a)
    log = tmp_path / "ran.log"
    tasks = [timed(f"t{i}", log, body=f"sleep 0.8; echo out-{i} $PWD") for i in range(10)]
    done = run(a, mgr, tasks, maxConcurrent=2)
    assert done["runId"] == "run_1"
    assert done["completed"] == 10 and done["done"], done
    rows = {r["taskId"]: r for r in done["results"]}
    assert {t: r["result"].strip() for t, r in rows.items()} == {
        f"t{i}": f"out-{i} {a.work_dir}" for i in range(10)  # a's run's workDir, on b too
    }
    ran = Counter(line.split()[1] for line in log.read_text().splitlines() if line[0] == "S")
    assert ran == dict.fromkeys(rows, 1), ran  # every task started exactly once
    on = Counter(r["ranOn"] for r in rows.values())
    assert on["a"] >= 1 and on["b"] >= 1, on  # A was full: B took some of its manager's jobs
    assert len(intervals(log)) == 10
    # B's specialists are B's instances, under A's manager, with ids A never made
    b_specs = {
        r["instanceId"]: r
        for r in b.call("list", {"includeTerminated": True})
        if r["role"] == "specialist"
    }
    on_b = {r["instanceId"] for r in rows.values() if r["ranOn"] == "b"}
    assert on_b <= b_specs.keys()
    assert {b_specs[i]["parentId"] for i in on_b} == {mgr}
    a_specs = {
        r["instanceId"]
        for r in a.call("list", {"includeTerminated": True})
        if r["role"] == "specialist"
    }
    assert not a_specs & b_specs.keys()
    assert len({r["instanceId"] for r in rows.values()}) == 10
    # A's inline views count its run whatever node ran the jobs
    assert a.call("queueStats")["byState"]["completed"] == 10
    assert {j["state"] for j in a.call("jobs", {})} == {"completed"}


def b_runs_one_of_as_jobs(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer, n: int
) -> tuple[AgentDaemon, AgentDaemon, str, list[str], redis.Redis]:
    """Nodes a and b (leases of 1.5 s), a run of ``n`` 2-s tasks under a's manager limited
    to 2, and the moment b runs some of them: (a, b, run id, the jobs b holds, a client)."""
    lease = {"TCM_LEASE_MS": "1500"}
    a = start(tmp_path, daemon_factory, redis_server, "a", **lease)
    b = start(tmp_path, daemon_factory, redis_server, "b", **lease)
    mgr = manager_on(a)
    log = tmp_path / "ran.log"
    tasks = [timed(f"t{i}", log, body=f"sleep 2; echo out-{i}") for i in range(n)]
    run_id = run(a, mgr, tasks, maxConcurrent=2, wait=False)["runId"]
    ids = [j["jobId"] for j in a.call("jobs", {"runId": run_id})]
    r = redis.Redis(port=redis_server.port, decode_responses=True)

    def held_by_b() -> list[str]:
        rows = [(i, r.hmget(f"tcm:{{q}}:job:{i}", "state", "node")) for i in ids]
        return [i for i, (state, node) in rows if state == "active" and node == "b"]

    held = wait_until(held_by_b, 20, what="node b to run one of a's jobs")
    return a, b, run_id, held, r


def test_a_node_stopped_past_its_lease_loses_the_job_and_its_ack_is_stale(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    a, b, run_id, held, r = b_runs_one_of_as_jobs(tmp_path, daemon_factory, redis_server, 4)
    assert b.daemon.proc is not None
    os.kill(b.daemon.proc.pid, signal.SIGSTOP)
    try:

        def finished() -> Any:
            status = a.call("getParallelStatus", {"runId": run_id})
            return status if status["done"] else None

        status = wait_until(finished, 40, what="a to finish every job, b's too")
    finally:
        os.kill(b.daemon.proc.pid, signal.SIGCONT)
    rows = {t["jobId"]: t for t in status["tasks"]}
    assert status["completedTasks"] == 4, status
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
    a, b, run_id, held, r = b_runs_one_of_as_jobs(tmp_path, daemon_factory, redis_server, 5)
    b.daemon.kill9()
    status = wait_until(
        lambda: (s := a.call("getParallelStatus", {"runId": run_id}))["done"] and s,
        40,
        what="a to finish every job, the killed node's too",
    )
    assert status["completedTasks"] == 5, status
    rows = {t["jobId"]: t for t in status["tasks"]}
    for job_id in held:
        assert rows[job_id]["ranOn"] == "a" and rows[job_id]["reruns"] >= 1, rows[job_id]
    ids = [j["jobId"] for j in a.call("jobs", {"runId": run_id})]
    completions = [int(r.hget(f"tcm:{{q}}:job:{i}", "attempts") or 0) for i in ids]
    assert r.hget("tcm:{q}:stats", "state:completed") == "5", completions
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
