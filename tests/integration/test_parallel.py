"""Parallel runs end to end: real tcmd, real tmux, shell and fake-Claude specialists.

Concurrency is measured, not taken from the daemon's word: every task appends its start
and end time to a shared file, and the peak is computed from those intervals.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tcmd.errors import Forbidden
from tcmd.store.jsonfile import JsonFileStore
from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess, wait_until

FAST_RETRY = {"attempts": 3, "baseMs": 50, "capMs": 200}


def timed(task_id: str, log: Path, body: str = "sleep 0.3", **extra: Any) -> dict[str, Any]:
    """A shell task that records when it ran: ``S id t`` and ``E id t`` lines in ``log``."""
    cmd = (
        f'echo "S {task_id} $(date +%s.%N)" >> {log}; {body}; rc=$?; '
        f'echo "E {task_id} $(date +%s.%N)" >> {log}; exit $rc'
    )
    return {"id": task_id, "instruction": cmd, **extra}


def intervals(log: Path) -> dict[str, tuple[float, float]]:
    start: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}
    for line in log.read_text().splitlines():
        kind, task_id, at = line.split()
        if kind == "S":
            start[task_id] = float(at)
        else:
            spans[task_id] = (start.pop(task_id), float(at))
    return spans


def peak(spans: dict[str, tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    best = now = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def team(agents: AgentDaemon, managers: int = 1) -> list[str]:
    agents.spawn("executive", agent="shell")
    return [
        agents.spawn("manager", parent="exec_1", agent="shell")["instanceId"]
        for _ in range(managers)
    ]


def run_parallel(
    agents: AgentDaemon, manager: str, tasks: list[dict[str, Any]], **params: Any
) -> dict[str, Any]:
    result: dict[str, Any] = agents.call(
        "executeParallel",
        {
            "managerId": manager,
            "tasks": tasks,
            "workDir": str(agents.work_dir),
            "agent": "shell",
            "retry": FAST_RETRY,
            **params,
        },
    )
    return result


def test_twelve_tasks_over_a_limit_of_three(agents: AgentDaemon, tmp_path: Path) -> None:
    [mgr] = team(agents)
    log = tmp_path / "spans.log"
    out = run_parallel(agents, mgr, [timed(f"t{i:02}", log) for i in range(12)], maxConcurrent=3)
    assert (out["total"], out["completed"], out["failed"]) == (12, 12, 0)
    spans = intervals(log)
    assert len(spans) == 12
    assert peak(spans) == 3
    assert all(r["status"] == "completed" and r["attempts"] == 1 for r in out["results"])
    status = agents.call("getParallelStatus", {"runId": out["runId"]})
    assert status["peakActive"] == 3
    row = next(r for r in agents.call("list") if r["instanceId"] == mgr)
    assert row["parallelExecution"] == {
        "active": 0,
        "queued": 0,
        "completed": 12,
        "failed": 0,
        "maxConcurrent": 3,
    }
    # the specialists were terminated after their tasks
    assert [r["role"] for r in agents.call("list")] == ["executive", "manager"]


def test_max_concurrent_never_exceeds_the_setting(agents: AgentDaemon, tmp_path: Path) -> None:
    [mgr] = team(agents)
    log = tmp_path / "spans.log"
    out = run_parallel(agents, mgr, [timed(f"t{i}", log) for i in range(6)], maxConcurrent=50)
    assert out["completed"] == 6
    assert peak(intervals(log)) == 3  # MAX_SPECIALISTS_PER_MANAGER caps the call's value


def test_manager_concurrency_and_phase_two(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, {"MAX_MANAGER_CONCURRENCY": "2"}
    )
    team(agents, managers=3)
    log = tmp_path / "spans.log"
    out = agents.call(
        "distributeWork",
        {
            "tasks": [timed(f"t{i:02}", log) for i in range(12)],
            "strategy": "round-robin",
            "workDir": str(agents.work_dir),
            "agent": "shell",
            "wait": True,
        },
    )
    assert out["completed"] == 12
    spans = intervals(log)
    by_manager = {r["taskId"]: r["managerId"] for r in out["results"]}
    # at any moment at most 2 managers had tasks running
    times = sorted({t for span in spans.values() for t in span})
    for t in times:
        running = {by_manager[k] for k, (s, e) in spans.items() if s <= t < e}
        assert len(running) <= 2
    assert agents.call("queueStats")["peakManagers"] == 2

    phase2 = AgentDaemon.start_in(tmp_path / "p2", daemon_factory, FAKE_CLAUDE, {"PHASE": "2"})
    team(phase2, managers=2)
    log2 = tmp_path / "p2.log"
    out2 = phase2.call(
        "distributeWork",
        {
            "tasks": [timed(f"u{i}", log2) for i in range(4)],
            "workDir": str(phase2.work_dir),
            "agent": "shell",
            "wait": True,
        },
    )
    assert out2["completed"] == 4
    assert peak(intervals(log2)) == 1


def test_priorities_overtake_in_the_queue(agents: AgentDaemon, tmp_path: Path) -> None:
    [mgr] = team(agents)
    log = tmp_path / "spans.log"
    tasks = [
        timed("low_a", log, "sleep 0.05", priority="low"),
        timed("medium_b", log, "sleep 0.05"),
        timed("low_c", log, "sleep 0.05", priority="low"),
        timed("high_d", log, "sleep 0.05", priority="high"),
        timed("critical_e", log, "sleep 0.05", priority="critical"),
    ]
    out = run_parallel(agents, mgr, tasks, maxConcurrent=1)
    assert out["completed"] == 5
    order = [k for k, _ in sorted(intervals(log).items(), key=lambda kv: kv[1][0])]
    assert order == ["critical_e", "high_d", "medium_b", "low_a", "low_c"]


def test_retry_with_backoff_then_success_and_dead_after_attempts(
    agents: AgentDaemon, tmp_path: Path
) -> None:
    [mgr] = team(agents)
    marker = tmp_path / "marker"
    flaky = {
        "id": "flaky",
        "instruction": f"[ -e {marker} ] && echo second "
        f"|| {{ touch {marker}; echo first >&2; exit 1; }}",
    }
    broken = {"id": "broken", "instruction": "echo 'cannot do it' >&2; exit 7"}
    pattern = {"id": "pattern", "instruction": "echo nope", "completionPattern": "^yes"}
    out = run_parallel(agents, mgr, [flaky, broken, pattern])
    rows = {r["taskId"]: r for r in out["results"]}
    assert (rows["flaky"]["status"], rows["flaky"]["attempts"], rows["flaky"]["result"]) == (
        "completed",
        2,
        "second",
    )
    assert (rows["broken"]["status"], rows["broken"]["attempts"]) == ("failed", 3)
    assert rows["broken"]["error"] == "exit status 7: cannot do it"
    assert rows["pattern"]["status"] == "failed"
    assert "completionPattern '^yes' did not match" in rows["pattern"]["error"]
    jobs = {j["taskId"]: j for j in agents.call("jobs", {"runId": out["runId"]})}
    assert jobs["broken"]["state"] == "failed"
    assert jobs["broken"]["lastError"] == "exit status 7: cannot do it"


def test_hang_times_out_and_crash_is_retried(agents: AgentDaemon, tmp_path: Path) -> None:
    agents.spawn("executive")
    mgr = agents.spawn("manager", parent="exec_1")["instanceId"]
    out = agents.call(
        "executeParallel",
        {
            "managerId": mgr,
            "workDir": str(agents.work_dir),
            "agent": "claude",
            "retry": {"attempts": 2, "baseMs": 10, "capMs": 20},
            "tasks": [
                {"id": "hang", "instruction": "@hang", "timeoutMs": 1500},
                {"id": "crash", "instruction": "@crash 4"},
                {"id": "fail", "instruction": "@fail rate_limit"},
                {"id": "fine", "instruction": "@reply all good", "context": "ctx line"},
            ],
        },
    )
    rows = {r["taskId"]: r for r in out["results"]}
    assert rows["hang"]["status"] == "failed"
    assert rows["hang"]["attempts"] == 2
    assert rows["hang"]["error"].startswith("timed out after 1500 ms")
    assert rows["crash"]["status"] == "failed"
    assert "exited (status 4)" in rows["crash"]["error"]
    assert rows["fail"]["error"] == "agent error: rate_limit"
    assert (rows["fine"]["status"], rows["fine"]["result"]) == ("completed", "all good")
    prompts = [e["prompt"] for e in agents.events("UserPromptSubmit")]
    assert "ctx line\n\n@reply all good" in prompts


def test_crash_then_success_on_retry(agents: AgentDaemon, tmp_path: Path) -> None:
    [mgr] = team(agents)
    marker = tmp_path / "crashed-once"
    # the first attempt kills its own agent (the shell runner) outright
    task = {
        "id": "c",
        "instruction": f"[ -e {marker} ] && echo recovered || {{ touch {marker}; kill -9 $PPID; }}",
    }
    out = run_parallel(agents, mgr, [task])
    [row] = out["results"]
    assert (row["status"], row["attempts"], row["result"]) == ("completed", 2, "recovered")


def test_round_robin_keeps_its_position_and_capacity_aware_drops_nothing(
    agents: AgentDaemon,
) -> None:
    managers = team(agents, managers=3)
    first = agents.call(
        "distributeWork",
        {
            "tasks": [{"id": f"a{i}", "instruction": "true"} for i in range(10)],
            "agent": "shell",
            "workDir": str(agents.work_dir),
            "wait": True,
        },
    )
    counts = [len(d["taskIds"]) for d in first["distribution"]]
    assert (first["managers"], counts) == (managers, [4, 3, 3])
    second = agents.call(
        "distributeWork",
        {
            "tasks": [{"id": f"b{i}", "instruction": "true"} for i in range(2)],
            "agent": "shell",
            "workDir": str(agents.work_dir),
            "wait": True,
        },
    )
    assert [d["taskIds"] for d in second["distribution"]] == [[], ["b0"], ["b1"]]
    cap = agents.call(
        "distributeWork",
        {
            "tasks": [{"id": f"c{i}", "instruction": "sleep 0.2"} for i in range(14)],
            "strategy": "capacity-aware",
            "agent": "shell",
            "workDir": str(agents.work_dir),
            "wait": True,
        },
    )
    assigned = [t for d in cap["distribution"] for t in d["taskIds"]]
    assert sorted(assigned) == sorted(f"c{i}" for i in range(14))
    assert cap["distribution"][-1]["managerId"] is None  # overflow waits for a free slot
    assert cap["completed"] == 14


def test_a_dead_managers_queued_tasks_go_to_the_others(agents: AgentDaemon) -> None:
    team(agents, managers=2)
    run = agents.call(
        "distributeWork",
        {
            "tasks": [{"id": f"t{i}", "instruction": "sleep 0.5"} for i in range(8)],
            "agent": "shell",
            "workDir": str(agents.work_dir),
            "maxConcurrent": 1,
        },
    )
    wait_until(
        lambda: agents.call("getParallelStatus", {"runId": run["runId"]})["activeSpecialists"] >= 1,
        10,
    )
    agents.daemon.tmux("kill-session", "-t", "=mgr_1_1:")
    agents.wait_status("mgr_1_1", "exited")
    status = wait_until(
        lambda: (s := agents.call("getParallelStatus", {"runId": run["runId"]}))["done"] and s,
        30,
        what="the run to finish",
    )
    assert status["completedTasks"] == 8
    late = [t for t in status["tasks"] if t["managerId"] != "mgr_1_1"]
    assert len(late) >= 4  # mgr_1_1's waiting tasks moved to mgr_1_2


def test_daemon_kill9_mid_run_then_every_task_completes(
    agents: AgentDaemon, tmp_path: Path
) -> None:
    [mgr] = team(agents)
    log = tmp_path / "spans.log"
    run = run_parallel(
        agents, mgr, [timed(f"t{i}", log, "sleep 1") for i in range(6)], wait=False, maxConcurrent=2
    )
    wait_until(
        lambda: agents.call("getParallelStatus", {"runId": run["runId"]})["activeSpecialists"] == 2,
        10,
    )
    agents.daemon.kill9()
    agents.daemon.start()
    status = wait_until(
        lambda: (s := agents.call("getParallelStatus", {"runId": run["runId"]}))["done"] and s,
        40,
        what="the run to finish after the restart",
    )
    assert status["completedTasks"] == 6
    assert sum(t["reruns"] for t in status["tasks"]) >= 1  # re-runs are counted and visible
    jobs = agents.call("jobs", {"runId": run["runId"]})
    assert sorted(j["taskId"] for j in jobs if j["state"] == "completed") == [
        f"t{i}" for i in range(6)
    ]


def test_cancel_a_run(agents: AgentDaemon) -> None:
    [mgr] = team(agents)
    run = run_parallel(
        agents,
        mgr,
        [{"id": f"t{i}", "instruction": "sleep 30"} for i in range(4)],
        wait=False,
        maxConcurrent=2,
    )
    wait_until(
        lambda: agents.call("getParallelStatus", {"runId": run["runId"]})["activeSpecialists"] == 2,
        10,
    )
    out = agents.call("cancel", {"runId": run["runId"]})
    assert sorted(out["cancelled"]) == sorted(
        j["jobId"] for j in agents.call("jobs", {"runId": run["runId"]})
    )
    status = wait_until(
        lambda: (s := agents.call("getParallelStatus", {"runId": run["runId"]}))["done"] and s, 10
    )
    assert status["cancelledTasks"] == 4
    wait_until(
        lambda: [r["role"] for r in agents.call("list")] == ["executive", "manager"],
        10,
        what="the cancelled specialists to be terminated",
    )


def test_roles_for_parallel_tools(agents: AgentDaemon) -> None:
    [mgr] = team(agents)
    spec = agents.spawn("specialist", parent=mgr, agent="shell")["instanceId"]
    task = [{"id": "x", "instruction": "true"}]
    with pytest.raises(Forbidden):
        agents.call(
            "executeParallel",
            {"managerId": mgr, "tasks": task, "agent": "shell"},
            token=agents.token(spec),
        )
    with pytest.raises(Forbidden):
        agents.call("distributeWork", {"tasks": task, "agent": "shell"}, token=agents.token(mgr))
    own = agents.call(
        "executeParallel",
        {"managerId": mgr, "tasks": task, "agent": "shell"},
        token=agents.token(mgr),
    )
    assert own["completed"] == 1
    # another team's executive sees none of these jobs and may not cancel the run
    outsider = agents.spawn("executive", agent="shell")["instanceId"]
    assert agents.call("jobs", {}, token=agents.token(outsider)) == []
    assert [j["taskId"] for j in agents.call("jobs", {}, token=agents.token("exec_1"))] == ["x"]
    with pytest.raises(Forbidden, match="only the jobs of its own runs"):
        agents.call("cancel", {"runId": own["runId"]}, token=agents.token(outsider))


def test_worktrees_keep_parallel_edits_apart(agents: AgentDaemon, tmp_path: Path) -> None:
    repo = agents.work_dir
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "config", "user.email", "t@example.com"], check=True)
    subprocess.run([*git, "config", "user.name", "t"], check=True)
    (repo / "shared.txt").write_text("base\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "base"], check=True)
    [mgr] = team(agents)
    edit = (
        "echo '{0}' > shared.txt && git add shared.txt && "
        "git -c user.email=a@b -c user.name=a commit -qm {0} && echo done {0}"
    )
    out = run_parallel(
        agents,
        mgr,
        [
            {"id": "a", "instruction": edit.format("from-a")},
            {"id": "b", "instruction": edit.format("from-b")},
            {"id": "c", "instruction": "echo untracked > new.txt"},
        ],
    )
    assert out["completed"] == 3, [(r["taskId"], r["error"]) for r in out["results"]]
    rows = {r["taskId"]: r for r in out["results"]}
    run_id = out["runId"]
    for task in ("a", "b"):
        branch = f"tcm/{run_id}/{task}"
        assert rows[task]["branch"] == branch
        assert rows[task]["hasCommits"] is True
        shown = subprocess.run(
            [*git, "show", f"{branch}:shared.txt"], capture_output=True, text=True, check=True
        ).stdout
        assert shown == f"from-{task}\n"
    assert rows["c"]["dirty"] is True  # kept: never thrown away
    assert (repo / "shared.txt").read_text() == "base\n"  # the main checkout is untouched
    listed = agents.call("worktrees")["worktrees"]
    assert any(w["branch"] == f"tcm/{run_id}/c" for w in listed)


def test_a_rate_limited_task_does_not_hold_the_next_tasks(agents: AgentDaemon) -> None:
    """A specialist's rate limit inside a job is the job's to retry: it puts no hold on
    every Claude instance, so the run's next task is delivered, not failed at once."""
    agents.spawn("executive")
    mgr = agents.spawn("manager", parent="exec_1")["instanceId"]
    out = agents.call(
        "executeParallel",
        {
            "managerId": mgr,
            "workDir": str(agents.work_dir),
            "agent": "claude",
            "maxConcurrent": 1,
            "retry": {"attempts": 1},
            "tasks": [
                {"id": "limited", "instruction": "@fail rate_limit"},
                {"id": "next", "instruction": "@reply after the limit"},
            ],
        },
    )
    rows = {r["taskId"]: r for r in out["results"]}
    assert rows["limited"]["error"] == "agent error: rate_limit"
    assert (rows["next"]["status"], rows["next"]["result"]) == ("completed", "after the limit")
    events = agents.call("events", {"since": 0, "limit": 10000})["events"]
    assert [e for e in events if e["kind"] == "health.hold"] == []


def test_jobs_whose_run_is_gone_fail_on_load_and_the_manager_runs_on(
    agents: AgentDaemon,
) -> None:
    """A run's record lost between two daemon runs (a crash between storing the jobs and
    the run): its jobs fail with the reason at the next start, and die in no attempt that
    would keep the manager's slots (they used to: the manager never ran anything again)."""
    [mgr] = team(agents)
    tasks = [{"id": f"t{i}", "instruction": "sleep 30"} for i in range(5)]
    run = run_parallel(agents, mgr, tasks, wait=False, maxConcurrent=1)
    run_id = run["runId"]
    wait_until(
        lambda: agents.call("getParallelStatus", {"runId": run_id})["activeSpecialists"] == 1, 10
    )
    assert agents.daemon.terminate() == 0
    store = JsonFileStore(agents.daemon.state_dir / "store")
    store.open()
    try:
        assert store.get("runs", run_id) is not None
        store.delete("runs", run_id)
    finally:
        store.close()
    agents.daemon.start()

    jobs = agents.call("jobs", {"runId": run_id})
    assert [(j["taskId"], j["state"]) for j in jobs] == [(t["id"], "failed") for t in tasks]
    assert all(f"its run {run_id} was lost" in j["lastError"] for j in jobs)
    after = run_parallel(agents, mgr, [{"id": "after", "instruction": "echo fine"}], wait=False)
    status = wait_until(
        lambda: (s := agents.call("getParallelStatus", {"runId": after["runId"]}))["done"] and s,
        15,
        what="a run after the restart to finish",
    )
    assert [(t["status"], t["result"]) for t in status["tasks"]] == [("completed", "fine")]
    wait_until(
        lambda: [r["role"] for r in agents.call("list")] == ["executive", "manager"],
        10,
        what="the lost run's specialist to be terminated",
    )


def one_run_and_onlookers(agents: AgentDaemon) -> tuple[str, str, dict[str, str]]:
    """exec_1 > mgr_1_1 > spec_1_1_1, and exec_2; a finished run of one task under
    mgr_1_1. The manager, the run id, and every instance's token."""
    [mgr] = team(agents)
    spec = agents.spawn("specialist", parent=mgr, agent="shell")["instanceId"]
    outsider = agents.spawn("executive", agent="shell")["instanceId"]
    out = run_parallel(agents, mgr, [{"id": "x", "instruction": "echo secret"}])
    return mgr, out["runId"], {who: agents.token(who) for who in ("exec_1", mgr, spec, outsider)}


def test_a_runs_status_is_for_its_manager_and_above(agents: AgentDaemon) -> None:
    """getParallelStatus {runId} follows the rule of {managerId}: run ids are sequential,
    and any instance could read any run's results."""
    mgr, run_id, token = one_run_and_onlookers(agents)
    for who in ("exec_1", mgr):
        seen = agents.call("getParallelStatus", {"runId": run_id}, token=token[who])
        assert [t["result"] for t in seen["tasks"]] == ["secret"]
    for who in ("exec_2", "spec_1_1_1"):
        with pytest.raises(Forbidden, match=f"{who} may not watch {run_id}"):
            agents.call("getParallelStatus", {"runId": run_id}, token=token[who])
        with pytest.raises(Forbidden, match=f"{who} may not watch {mgr}"):
            agents.call("getParallelStatus", {"managerId": mgr}, token=token[who])


def test_status_and_queue_stats_show_an_instance_its_own_subtree(agents: AgentDaemon) -> None:
    """status: version, uptime and the counts of its own subtree, the rest (pid, paths,
    settings, store, connections) is the operator's; queueStats: the jobs of its runs."""
    mgr, _, token = one_run_and_onlookers(agents)
    outsider, spec = "exec_2", "spec_1_1_1"
    operator = agents.call("status")
    assert {"pid", "socket", "stateDir", "store", "settings"} <= operator.keys()
    assert operator["counts"]["connections"] >= 1
    for who in token:
        st = agents.call("status", token=token[who])
        assert set(st) == {"version", "uptimeS", "counts"}, who
        rows = agents.call("list", {"includeTerminated": True}, token=token[who])
        assert st["counts"] == dict(Counter(f"instances.{r['status']}" for r in rows)), who
    assert agents.call("status", token=token[outsider])["counts"] == {"instances.ready": 1}
    stats = {who: agents.call("queueStats", token=token[who]) for who in token}
    assert stats["exec_1"]["byState"]["completed"] == stats[mgr]["byState"]["completed"] == 1
    assert stats["exec_1"]["peakPerManager"] == {mgr: 1}
    assert stats["exec_1"]["avgRunMs"] is not None
    for who in (outsider, spec):
        assert set(stats[who]["byState"].values()) == {0}, who
        assert (stats[who]["peakPerManager"], stats[who]["avgRunMs"]) == ({}, None)
        assert "peakManagers" not in stats[who]
    assert agents.call("queueStats")["peakManagers"] == 1


def test_a_backtracking_completion_pattern_does_not_stall_tcmd(agents: AgentDaemon) -> None:
    """`(a|aa)+$` on 'a'*40 + 'b' backtracks for hours with `re`: the match is given up
    after a moment, the task fails saying why, and tcmd answers meanwhile."""
    [mgr] = team(agents)
    run = run_parallel(
        agents,
        mgr,
        [{"id": "evil", "instruction": "printf 'a%.0s' $(seq 40); echo b",
          "completionPattern": "(a|aa)+$"}],
        wait=False,
        retry={"attempts": 1},
    )  # fmt: skip
    status = wait_until(
        lambda: (s := agents.call("getParallelStatus", {"runId": run["runId"]}))["done"] and s,
        20,
        what="the run to end",
    )
    [task] = status["tasks"]
    assert task["status"] == "failed" and "took longer than" in task["error"], task
    with agents.daemon.client(timeout_s=2) as c:
        assert c.call("ping")["pong"] is True
