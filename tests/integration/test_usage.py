"""Tokens, cost and budgets end to end: real tcmd and tmux, fake Claude agents that write
their usage into transcripts in Claude Code's format (``@usage`` lines script it).

What the fake reported is known exactly here, so every total is compared with ``==``.
Like Claude Code, the fake writes its transcript in batches, a turn's last message after
its Stop hook: a total is awaited (to a deadline), not read once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess, wait_until

TCMCTL = [sys.executable, "-m", "tcmctl"]
SONNET = "claude-sonnet-4-5"  # the fake's default model, in the shipped price table


def usage_line(inp: int, out: int, cw: int = 0, cr: int = 0) -> str:
    return f"@usage in={inp} out={out} cw={cw} cr={cr}"


def tokens(inp: int, out: int, cw: int = 0, cr: int = 0) -> dict[str, int]:
    return {"input": inp, "output": out, "cacheCreation": cw, "cacheRead": cr,
            "total": inp + out + cw + cr}  # fmt: skip


def team(agents: AgentDaemon) -> str:
    """An executive and a manager, both fake Claude; the manager's id."""
    exec_id = agents.spawn("executive")["instanceId"]
    manager: str = agents.spawn("manager", parent=exec_id)["instanceId"]
    agents.wait_status(manager, "ready")
    return manager


def turn(agents: AgentDaemon, instance_id: str, text: str) -> None:
    agents.call("send", {"instanceId": instance_id, "text": text})
    done = agents.call("wait", {"instanceIds": [instance_id], "until": "idle", "timeoutMs": 15_000})
    assert done["done"], done


def usage(agents: AgentDaemon, **scope: str) -> dict[str, Any]:
    result: dict[str, Any] = agents.call("usage", scope)
    return result


def settled(agents: AgentDaemon, want: dict[str, int], **scope: str) -> dict[str, Any]:
    """The scope's usage once its tokens are ``want`` (fails with the last seen if never)."""
    seen: list[dict[str, Any]] = []

    def done() -> bool:
        seen[:] = [usage(agents, **scope)]
        return bool(seen[0]["tokens"] == want)

    try:
        wait_until(done, 5, 0.05, what=f"usage of {scope} to be {want}")
    except AssertionError:
        assert seen[0]["tokens"] == want  # shows the difference
    return seen[0]


def test_run_totals_equal_what_the_agents_reported_across_restarts(agents: AgentDaemon) -> None:
    manager = team(agents)
    tasks = [  # each task: two API calls (a tool round trip, then the answer)
        {"id": f"t{i}", "instruction": f"{usage_line(100 * i, 20 + i, 1000, 5000 * i)}\n"
                                       f"{usage_line(7, 3)}\n@reply done {i}"}
        for i in range(1, 4)
    ]  # fmt: skip
    run = agents.call("executeParallel", {"managerId": manager, "tasks": tasks})
    assert run["completed"] == 3, run
    want = tokens(600 + 21, 66 + 9, 3000, 30_000)
    got = settled(agents, want, runId=run["runId"])
    assert [m["model"] for m in got["models"]] == [SONNET]
    cost = (621 * 3 + 75 * 15 + 3000 * 3.75 + 30_000 * 0.3) / 1e6
    assert got["costUsd"] == pytest.approx(cost)
    assert got["costComplete"] is True
    assert got["instances"] == 3  # one specialist per task

    # the manager's own turn counts for the manager and the tree, not for the run
    turn(agents, manager, usage_line(50, 5))
    settled(agents, tokens(621 + 50, 80, 3000, 30_000), managerId=manager)
    assert usage(agents, tree="exec_1")["tokens"]["total"] == want["total"] + 55

    # tcmd restarts: the totals are kept and the manager's next turn adds only itself
    agents.daemon.terminate()
    agents.daemon.start()
    assert usage(agents, runId=run["runId"])["tokens"] == want
    turn(agents, manager, usage_line(1, 2))
    settled(agents, tokens(621 + 51, 82, 3000, 30_000), managerId=manager)

    # the agent restarts with --resume (same transcript, read on from where it was)
    restarted = agents.call("restart", {"instanceId": manager})
    assert restarted["resumed"] is True
    agents.wait_status(manager, "ready")
    turn(agents, manager, usage_line(4, 4))
    settled(agents, tokens(621 + 55, 86, 3000, 30_000), managerId=manager)
    assert usage(agents)["tokens"] == usage(agents, tree="exec_1")["tokens"]

    # the counters of `metrics` count the same tokens
    samples = agents.call("metrics")["metrics"]["tcm_tokens_total"]["samples"]
    by_kind = {s["labels"]["kind"]: s["value"] for s in samples if s["labels"]["model"] == SONNET}
    assert by_kind["input"] == 621 + 55

    # and the CLI shows them
    env = agents.daemon.env
    out = subprocess.run([*TCMCTL, "usage", "--run", run["runId"], "--json"], env=env,
                         capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    assert json.loads(out.stdout)["tokens"] == want
    table = subprocess.run([*TCMCTL, "usage", "--tree", "exec_1"], env=env,
                           capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    assert "estimated cost" in table.stdout
    assert SONNET in table.stdout


def test_an_instance_sees_only_its_own_subtree_usage(agents: AgentDaemon) -> None:
    manager = team(agents)
    turn(agents, manager, usage_line(10, 1))
    settled(agents, tokens(10, 1), managerId=manager)
    token = agents.token(manager)
    mine = agents.call("usage", {}, token=token)
    assert (mine["scope"], mine["id"], mine["tokens"]["total"]) == ("manager", manager, 11)
    with pytest.raises(Exception, match="may see the usage of itself"):
        agents.call("usage", {"tree": "exec_1"}, token=token)


def ten_tasks(agents: AgentDaemon, manager: str, **budget: Any) -> dict[str, Any]:
    """Ten tasks one at a time, each an API call of 1000 input tokens, then 0.3 s of tool
    work (the message is in the transcript by the turn's end), then the answer."""
    params = {"managerId": manager, "tasks": task_list(), "maxConcurrent": 1, **budget}
    run: dict[str, Any] = agents.call("executeParallel", params)
    return run


def task_list() -> list[dict[str, str]]:
    return [{"id": f"t{i:02}", "instruction": f"{usage_line(1000, 0)}\n@work 0.3\n@reply t{i:02}"}
            for i in range(10)]  # fmt: skip


def ten_tasks_from_a_file(agents: AgentDaemon, manager: str, **budget: Any) -> dict[str, Any]:
    """The same ten tasks as a tasks file run by `tcmctl parallel` (exit 1: not all done)."""
    path = agents.work_dir.parent / "tasks.json"
    path.write_text(json.dumps({"maxConcurrent": 1, **budget, "tasks": task_list()}))
    out = subprocess.run([*TCMCTL, "parallel", manager, str(path), "--json"], env=agents.daemon.env,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 1, out.stderr
    status = json.loads(out.stdout)
    run: dict[str, Any] = agents.call("runs", {"limit": 1})[0]
    return {"runId": status["runId"], "results": status["tasks"], **run}


@pytest.mark.parametrize(
    ("start", "budget", "why"),
    [
        (ten_tasks, {"maxTokens": 2500}, "maxTokens 2500 (used 3000)"),
        # 1000 input tokens of Sonnet = $0.003: the third task passes $0.0075
        (ten_tasks_from_a_file, {"maxCostUsd": 0.0075}, "maxCostUsd $0.0075 (spent $0.0090)"),
    ],
    ids=["maxTokens-executeParallel", "maxCostUsd-tasks-file"],
)
def test_a_run_budget_stops_the_run_once_passed(
    agents: AgentDaemon, start: Any, budget: dict[str, Any], why: str
) -> None:
    manager = team(agents)
    run = start(agents, manager, **budget)
    states = [r["status"] for r in run["results"]]
    assert states == ["completed"] * 3 + ["cancelled"] * 7, run["results"]
    errors = {r["error"] for r in run["results"][3:]}
    assert errors == {f"budget reached: {run['runId']} {why}"}
    assert run["budgetReached"] == errors.pop()
    got = settled(agents, tokens(3000, 0), runId=run["runId"])
    assert got["budget"] == {"maxCostUsd": None, "maxTokens": None, **budget,
                             "reached": run["budgetReached"]}  # fmt: skip
    # the manager is told: an event about it, which it may read itself
    told = agents.call("events", {"limit": 1000}, token=agents.token(manager))["events"]
    notes = [e for e in told if e["kind"] == "run.budget"]
    assert [(e["instanceId"], e["runId"], len(e["cancelled"])) for e in notes] == [
        (manager, run["runId"], 7)
    ]


def test_a_run_budget_cancels_the_tasks_waiting_for_their_dependencies(
    agents: AgentDaemon,
) -> None:
    manager = team(agents)
    chain = task_list()[:3]
    chain[1]["dependsOn"], chain[2]["dependsOn"] = ["t00"], ["t01"]  # type: ignore[assignment]
    run = agents.call("executeParallel", {"managerId": manager, "tasks": chain, "maxTokens": 500})
    assert [r["status"] for r in run["results"]] == ["completed", "cancelled", "cancelled"]
    why = f"budget reached: {run['runId']} maxTokens 500 (used 1000)"
    assert [r["error"] for r in run["results"][1:]] == [why, why]  # the budget's, not t00's


def test_the_daemon_budget_stops_every_run(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    env = {"TCM_BUDGET_USD": "0.005"}
    agents = AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE, extra_env=env)
    manager = team(agents)
    # 1000 input tokens of Sonnet = $0.003: the second task passes $0.005
    run = ten_tasks(agents, manager)
    states = [r["status"] for r in run["results"]]
    assert states == ["completed"] * 2 + ["cancelled"] * 8, run["results"]
    assert all(r["error"].startswith("budget reached: the daemon's TCM_BUDGET_USD $0.005")
               for r in run["results"][2:])  # fmt: skip
    later = ten_tasks(agents, manager)  # nothing new starts any more
    assert [r["status"] for r in later["results"]] == ["cancelled"] * 10
