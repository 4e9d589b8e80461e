"""Two nodes on one Redis and one repository: worktree jobs of both nodes' runs (both with
a run_1 of the same task ids) get their worktrees and branches without a git lock error
(the repository's lock, node-qualified branch names); retention forgets the runs in Redis
too, and only while it holds the ``retention`` lock."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from tests.integration.test_shared_queue import manager_on, start
from tests.integration.test_worktrees import git, make_repo
from tests.redis_server import RedisServer
from tests.support import DaemonProcess, wait_until

TASKS = 4


def commit_task(i: int) -> dict[str, Any]:
    return {
        "id": f"t{i}",
        "instruction": f"echo {i} > f{i}.txt && git add f{i}.txt && git commit -qm t{i} && pwd",
    }


def test_two_nodes_make_worktrees_in_one_repository(
    tmp_path: Path, daemon_factory: type[DaemonProcess], redis_server: RedisServer
) -> None:
    repo = make_repo(tmp_path / "repo")
    env = {"TCM_RETENTION_MS": "1000", "GIT_CONFIG_NOSYSTEM": "1"}
    nodes = [start(tmp_path, daemon_factory, redis_server, n, **env) for n in ("a", "b")]
    mgrs = [manager_on(node) for node in nodes]
    r = redis.Redis(port=redis_server.port, decode_responses=True)
    r.set("tcm:{lock:retention}", "another-node", px=60_000)  # no node may prune yet
    tasks = [commit_task(i) for i in range(TASKS)]

    def run(k: int) -> Any:
        params = {"managerId": mgrs[k], "tasks": tasks, "workDir": str(repo),
                  "agent": "shell", "isolation": "worktree"}  # fmt: skip
        return nodes[k].call("executeParallel", params)

    with ThreadPoolExecutor(2) as pool:
        a_run, b_run = pool.map(run, range(2))
    for node, out in zip("ab", (a_run, b_run), strict=True):
        assert out["runId"] == "run_1" and out["completed"] == TASKS, out
        rows = out["results"]
        assert all(row["attempts"] == 1 for row in rows), rows  # no attempt failed on git
        assert {row["branch"] for row in rows} == {f"tcm/{node}.run_1/t{i}" for i in range(TASKS)}
        assert all(row["hasCommits"] and "worktrees" in row["result"] for row in rows), rows
    branches = git(repo, "branch", "--list", "tcm/*", "--format=%(refname:short)").split()
    assert len(branches) == 2 * TASKS
    for branch in branches:  # each branch holds its task's own commit
        assert git(repo, "log", "-1", "--format=%s", branch) == branch.rsplit("/", 1)[1]
    listed = subprocess.run(
        ["git", "-C", str(repo), "worktree", "list", "--porcelain"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert listed.count("worktree ") == 1  # every clean worktree was removed again

    # retention: both nodes forget their run, but prune Redis only under the lock
    ids = [row["jobId"] for out in (a_run, b_run) for row in out["results"]]
    for node in nodes:
        wait_until(lambda n=node: not n.call("runs", {}), 15, what="runs forgotten")
    assert all(r.exists(f"tcm:{{q}}:job:{i}") for i in ids)  # the lock is someone else's
    r.delete("tcm:{lock:retention}")
    wait_until(
        lambda: not any(r.exists(f"tcm:{{q}}:job:{i}") for i in ids)
        and not r.exists("tcm:{q}:run:a:run_1", "tcm:{q}:run:b:run_1"),
        15,
        what="the runs pruned in Redis",
    )
    assert r.zcard("tcm:{q}:jobs") == 0
    r.close()
