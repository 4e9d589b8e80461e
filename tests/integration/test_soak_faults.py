"""Soak with faults: a run of fake-Claude tasks while tcmd is SIGKILLed and restarted,
specialists are SIGKILLed, agents SIGSTOPped and continued, the tmux server is killed and
Redis (the mirror's) is stopped and started, at random moments.

Short in the suite (``TCM_SOAK_TASKS``, default 40; ``TCM_SOAK_ROUNDS``, default 2: every
kind of fault twice, in random order at random moments, then the work ends undisturbed;
on a loaded machine an unbounded loop kept injecting while the slowed work went on, 3–6×
longer); the full soak faults until the work ends:

    TCM_SOAK_TASKS=300 TCM_SOAK_ROUNDS=0 \
        .venv/bin/python -m pytest -s tests/integration/test_soak_faults.py

(``TCM_SOAK_SEED`` picks the moments and targets.) At the end every task is completed or
failed with a reason, none is lost, no prompt ran that the daemon did not count as an
attempt (the fake's event log against each job's attempts), and the store on disk and the
Redis mirror agree with what the daemon said last. ``-s`` shows the table of faults and
what each cost.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.fakes import FAKE_CLAUDE
from tests.integration.faults import KINDS, Injector, tolerant
from tests.ledger import read_ledger, stored, task_instruction
from tests.redis_server import RedisServer
from tests.support import AgentDaemon, DaemonProcess, wait_until

TASKS = int(os.environ.get("TCM_SOAK_TASKS", "40"))
SEED = int(os.environ.get("TCM_SOAK_SEED", "13"))
ROUNDS = int(os.environ.get("TCM_SOAK_ROUNDS", "2"))  # 0: fault until the work ends
MANAGERS, PER_MANAGER = 2, 4
FINAL = {"completed", "failed", "cancelled"}
PRIORITIES = ("critical", "high", "medium", "low")
NODE = "soak"


def mirror(server: RedisServer) -> dict[str, dict[str, Any]]:
    r = redis.Redis(port=server.port)
    try:
        return {
            key.decode().rsplit(":", 1)[1]: {
                k.decode(): orjson.loads(v) for k, v in r.hgetall(key).items()
            }
            for key in r.scan_iter(f"tcm:{{node:{NODE}}}:doc:*")
        }
    finally:
        r.close()


def submit(agents: AgentDaemon, managers: list[str], rng: random.Random) -> dict[str, str]:
    """One run per manager; the run id of every task tag."""
    owner: dict[str, str] = {}
    for m, manager in enumerate(managers):
        tags = [f"k{i:04}" for i in range(m, TASKS, len(managers))]
        out = agents.call(
            "executeParallel",
            {
                "managerId": manager,
                "agent": "claude",
                "workDir": str(agents.work_dir),
                "isolation": "shared",
                "wait": False,
                "timeoutMs": 15_000,  # a stopped agent past this is an attempt that timed out
                "retry": {"attempts": 6, "baseMs": 100, "capMs": 1000},
                "tasks": [
                    {
                        "id": tag,
                        "instruction": task_instruction(
                            tag, f"@work {rng.choice(('0.5', '1', '1.5'))}"
                        ),
                        "priority": rng.choice(PRIORITIES),
                    }
                    for tag in tags
                ],
            },
        )
        owner.update(dict.fromkeys(tags, out["runId"]))
    return owner


@pytest.mark.slow
@pytest.mark.timeout(120 + TASKS * 3)
def test_soak_with_faults_loses_nothing_and_runs_nothing_uncounted(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    rng = random.Random(SEED)
    agents = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE,
        {"REDIS_URL": redis_server.url, "TCM_NODE_ID": NODE, "TCM_LOG_LEVEL": "info",
         "MAX_MANAGER_CONCURRENCY": str(MANAGERS), "MAX_SPECIALISTS_PER_MANAGER": str(PER_MANAGER),
         "HEALTH_CHECK_INTERVAL": "1000", "UNHEALTHY_THRESHOLD": "2"},
    )  # fmt: skip
    agents.spawn("executive", agent="shell")
    managers = [
        agents.spawn("manager", parent="exec_1", agent="shell")["instanceId"]
        for _ in range(MANAGERS)
    ]
    t0 = time.monotonic()
    owner = submit(agents, managers, rng)
    injector = Injector(agents, redis_server, rng)
    order: list[str] = []
    while injector.pending() != 0 and (not ROUNDS or len(injector.faults) < ROUNDS * len(KINDS)):
        first_round = len(injector.faults) < len(KINDS)  # all kinds while work is in flight
        time.sleep(rng.uniform(0.2, 1.0) if first_round else rng.uniform(0.5, 2.5))  # a moment
        if injector.pending() == 0:  # the work ended meanwhile: a fault now would hit nothing
            break
        if not order:  # every kind once per round, in a random order
            order = rng.sample(KINDS, len(KINDS))
        injector.inject(order.pop())  # its recovery is timed in a thread meanwhile
    injector.join()

    # -- every task final, with a reason when it failed -------------------------------------
    def settled() -> list[dict[str, Any]] | None:
        jobs = tolerant(lambda: agents.call("jobs", {"limit": 100_000}))
        return jobs if jobs and all(j["state"] in FINAL for j in jobs) else None

    jobs = wait_until(settled, 120, interval_s=0.2, what="every job to end")
    elapsed = time.monotonic() - t0
    by_tag = {j["taskId"]: j for j in jobs}
    assert set(by_tag) == set(owner), f"lost: {sorted(set(owner) - set(by_tag))}"
    failed = {t: j["lastError"] for t, j in by_tag.items() if j["state"] != "completed"}
    assert all(failed.values()), f"failed without a reason: {failed}"
    assert not any(j["state"] == "cancelled" for j in jobs), failed

    # -- the fake's own log: no prompt ran that the daemon did not count --------------------
    ledger = read_ledger(agents.event_log)
    uncounted = {
        t: (ledger.prompts[t], ledger.completions[t], j["attempts"])
        for t, j in by_tag.items()
        if ledger.prompts[t] > j["attempts"] or ledger.completions[t] > j["attempts"]
    }
    assert not uncounted, f"prompts/Stops beyond the attempts counted: {uncounted}"
    unseen = [t for t, j in by_tag.items() if j["state"] == "completed" and not ledger.prompts[t]]
    assert not unseen, f"completed without their prompt ever running: {unseen}"

    # -- the Redis mirror and the store on disk agree with the daemon -----------------------
    runs = {r: agents.call("getParallelStatus", {"runId": r}) for r in set(owner.values())}

    def agreed() -> tuple[dict[str, str], dict[str, tuple[str, int, int]]] | None:
        """What the daemon says, once the mirror holds the same (health may still be
        restarting a manager the last tmux kill took: poll until the tree is still)."""
        status = tolerant(lambda: agents.call("status"))
        if not status or status["store"]["backend"] != "redis" or status["store"]["pending"]:
            return None
        rows = {
            r["instanceId"]: r["status"] for r in agents.call("list", {"includeTerminated": True})
        }
        said = {j["jobId"]: (j["state"], j["attempts"], j["reruns"])
                for j in agents.call("jobs", {"limit": 100_000})}  # fmt: skip
        held = mirror(redis_server)
        same = {k: (v["state"], v["attempts"], v["reruns"]) for k, v in held["jobs"].items()}
        if same != said or {k: v["status"] for k, v in held["instances"].items()} != rows:
            return None
        return rows, said

    rows, said = wait_until(agreed, 30, interval_s=0.2, what="the mirror to equal the daemon")
    agents.daemon.terminate()
    local = stored(agents.daemon.state_dir, "jobs", "runs", "instances")
    assert {k: (v["state"], v["attempts"], v["reruns"]) for k, v in local["jobs"].items()} == said
    assert {k: v["status"] for k, v in local["instances"].items()} == rows
    for run_id, status in runs.items():
        doc = local["runs"][run_id]
        assert set(doc["job_ids"].values()) == {r["jobId"] for r in status["tasks"]}
        assert (doc["finished_at"] is not None) == status["done"], (run_id, doc, status)
    for inst in local["instances"].values():
        inst.pop("token", None)
    held = mirror(redis_server)  # the daemon has stopped: its last word is in both
    for ns in ("jobs", "runs", "instances"):
        assert local[ns] == held.get(ns, {}), f"the mirror's {ns} differ from the store's"

    injector.settle_costs({j["jobId"]: j for j in jobs})
    attempts = sum(j["attempts"] for j in jobs)
    print(
        f"\n{TASKS} tasks in {elapsed:.1f} s: {len(jobs) - len(failed)} completed, "
        f"{len(failed)} failed; attempts {attempts} ({attempts - len(jobs)} beyond one each), "
        f"reruns after a tcmd crash {sum(j['reruns'] for j in jobs)}; prompts run "
        f"{sum(ledger.prompts.values())}, Stops {sum(ledger.completions.values())}"
    )
    print(injector.table())
    assert {f.kind for f in injector.faults} == set(KINDS), injector.table()
