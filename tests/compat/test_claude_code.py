"""tcm driving the real Claude Code CLI, and Claude Code calling tcm through the MCP shim.

Everything here is real but the model: tcmd, tmux, the pinned `claude` binary with its
own hooks, and `tcmctl mcp` started by Claude from the instance's ``--mcp-config``. The
fake API (tests/fakes/fake_anthropic.py) answers as the script in each prompt says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.fakes.fake_anthropic import FakeAnthropic
from tests.support import AgentDaemon, wait_until


def spawn_ready(claude: AgentDaemon, **params: Any) -> str:
    inst = claude.spawn(**params)
    claude.wait_status(inst["instanceId"], "ready", timeout_s=30)
    return str(inst["instanceId"])


def states_of(claude: AgentDaemon, instance_id: str) -> list[str]:
    events = claude.call("events", {"limit": 1000})["events"]
    return [
        e["new"]
        for e in events
        if e["kind"] == "instance.state" and e.get("instanceId") == instance_id
    ]


def tcm_calls(*calls: tuple[str, dict[str, Any]]) -> str:
    """A prompt that has the fake model call tcm's tools, in order, through the shim."""
    return "\n".join(f"@tool mcp__tcm__{name} {json.dumps(args)}" for name, args in calls)


def list_and_spawn(claude: AgentDaemon) -> str:
    """The prompt that has an executive's model call tcm's list, then spawn a manager."""
    spawn_args = {"role": "manager", "workDir": str(claude.work_dir), "context": "manage docs"}
    return tcm_calls(("list", {}), ("spawn", spawn_args))


def finished_turn(claude: AgentDaemon, instance_id: str) -> dict[str, Any]:
    """Wait for the instance's turn to end (``wait`` until idle); its ``read``."""
    claude.call("wait", {"instanceIds": [instance_id], "until": "idle", "timeoutMs": 30_000})
    result: dict[str, Any] = claude.call("read", {"instanceId": instance_id})
    return result


@pytest.mark.parametrize("hooks", ["http", "command"])
def test_state_follows_real_hooks(
    hooks: str, start_claude: Callable[..., AgentDaemon], fake_api: FakeAnthropic
) -> None:
    """spawn → ready, send → busy → ready with the result: hooks POSTed to tcmd (the
    default) or run as `tcmctl hook` (TCM_HOOKS=command)."""
    claude = start_claude(TCM_HOOKS=hooks)
    exec_id = spawn_ready(claude)
    sent = claude.call("send", {"instanceId": exec_id, "text": "@slow 2\n@reply first answer"})
    assert sent["delivered"] is True
    claude.wait_status(exec_id, "busy", timeout_s=10)  # seen while the API is still answering
    assert finished_turn(claude, exec_id)["lastResult"] == "first answer"
    states = states_of(claude, exec_id)
    assert states[states.index("ready") :][:3] == ["ready", "busy", "ready"], states
    posted = claude.call("status")["counts"]["hookRequests"]
    assert (posted >= 2) if hooks == "http" else (posted == 0), posted  # UserPromptSubmit, Stop


def test_hostile_prompt_arrives_exactly(claude: AgentDaemon, fake_api: FakeAnthropic) -> None:
    exec_id = spawn_ready(claude)
    short = "say \"hi\" 'there' $(rm -rf /) `id` \\n Enter C-c\nÉtoile ✻ 日本語 ${HOME} ; | &&"
    claude.call("send", {"instanceId": exec_id, "text": short})
    assert finished_turn(claude, exec_id)["lastResult"] == f"ok: {len(short)} chars"
    assert short in fake_api.prompts()  # byte-exact: quotes, $(), key names, unicode, newline

    # a long paste is shown folded ("[Pasted text #1 +N lines]") but reaches the model whole
    long = "\n".join(f'line {i}: "q" $(x) `y` Escape C-d ü' for i in range(40))
    claude.call("send", {"instanceId": exec_id, "text": long})
    finished_turn(claude, exec_id)
    assert any(long in p for p in fake_api.prompts()), fake_api.prompts()[-1][:300]


def test_a_leading_bang_is_a_prompt_not_a_shell_command(
    claude: AgentDaemon, fake_api: FakeAnthropic
) -> None:
    """Typed first, "!" puts Claude's input box in bash mode, past every permission."""
    exec_id = spawn_ready(claude)
    marker = claude.work_dir / "ran-as-a-shell-command"
    text = f"!touch {marker}"
    sent = claude.call("send", {"instanceId": exec_id, "text": text})
    assert sent["delivered"] is True  # a prompt: acknowledged by UserPromptSubmit
    finished_turn(claude, exec_id)
    assert any(p.strip() == text for p in fake_api.prompts()), fake_api.prompts()
    assert not marker.exists()


def call_list_and_spawn(claude: AgentDaemon, fake_api: FakeAnthropic) -> str:
    """Have the executive's model call tcm's list and spawn; the manager it made."""
    exec_id = spawn_ready(claude)
    claude.call("send", {"instanceId": exec_id, "text": list_and_spawn(claude)})
    result = finished_turn(claude, exec_id)["lastResult"]

    rows = claude.call("list", {"role": "manager"})
    assert [(r["parentId"], r["role"]) for r in rows] == [(exec_id, "manager")], result
    manager_id = str(rows[0]["instanceId"])
    assert fake_api.tool_results(lambda r: exec_id in r and "instanceId" in r), "no list result"
    assert fake_api.tool_results(lambda r: manager_id in r), "the spawn result never came back"
    assert manager_id in result  # and the model's final answer quoted it
    return manager_id


def test_claude_calls_tcm_tools_through_the_shim(
    claude: AgentDaemon, fake_api: FakeAnthropic
) -> None:
    manager_id = call_list_and_spawn(claude, fake_api)
    claude.wait_status(manager_id, "ready", timeout_s=30)  # a real Claude, spawned by Claude


@pytest.mark.parametrize("mode", ["acceptEdits", "dontAsk", "bypassPermissions"])
def test_tcm_tools_need_no_permission_in_acting_modes(
    mode: str, start_claude: Callable[..., AgentDaemon], fake_api: FakeAnthropic
) -> None:
    claude = start_claude(TCM_CLAUDE_PERMISSION_MODE=mode)
    call_list_and_spawn(claude, fake_api)


def test_plan_mode_holds_acting_tools_for_a_person(
    start_claude: Callable[..., AgentDaemon], fake_api: FakeAnthropic
) -> None:
    """Plan mode is Claude's "look, do not act": no allow rule lets spawn through."""
    claude = start_claude(TCM_CLAUDE_PERMISSION_MODE="plan")
    exec_id = spawn_ready(claude)
    claude.call("send", {"instanceId": exec_id, "text": list_and_spawn(claude)})
    claude.wait_status(exec_id, "waiting", timeout_s=30)  # the dialog, reported by tcm
    assert fake_api.tool_results(lambda r: exec_id in r), "read-only list should have run"
    assert claude.call("list", {"role": "manager"}) == []


def test_a_specialist_is_refused_spawn_through_the_shim(
    claude: AgentDaemon, fake_api: FakeAnthropic
) -> None:
    exec_id = claude.spawn(agent="shell")["instanceId"]
    mgr_id = claude.spawn(role="manager", parent=exec_id, agent="shell")["instanceId"]
    spec_id = spawn_ready(claude, role="specialist", parent=mgr_id)
    spawn_args = {
        "role": "specialist",
        "workDir": str(claude.work_dir),
        "context": "x",
        "parentId": mgr_id,
    }
    claude.call("send", {"instanceId": spec_id, "text": tcm_calls(("spawn", spawn_args))})
    result = finished_turn(claude, spec_id)["lastResult"]
    assert "may not spawn" in result and "-32002" in result, result
    assert len(claude.call("list", {"role": "specialist"})) == 1  # nothing was spawned


def test_overloaded_api_surfaces_as_errored(claude: AgentDaemon, fake_api: FakeAnthropic) -> None:
    exec_id = spawn_ready(claude)
    claude.call("send", {"instanceId": exec_id, "text": "@fail 529"})
    claude.wait_status(exec_id, "errored", timeout_s=30)  # from Claude's StopFailure hook
    out = claude.call("read", {"instanceId": exec_id})
    assert out["lastError"] == "server_error", out
    assert "529" in out["lastResult"], out

    claude.call("send", {"instanceId": exec_id, "text": "@reply back again"})
    assert finished_turn(claude, exec_id)["lastResult"] == "back again"  # it still works


def test_rate_limited_api_holds_new_prompts(
    start_claude: Callable[..., AgentDaemon], fake_api: FakeAnthropic
) -> None:
    claude = start_claude(HEALTH_CHECK_INTERVAL="200")
    exec_id = spawn_ready(claude)
    claude.call("send", {"instanceId": exec_id, "text": "@fail 429"})
    claude.wait_status(exec_id, "errored", timeout_s=30)
    assert claude.call("read", {"instanceId": exec_id})["lastError"] == "rate_limit"
    wait_until(
        lambda: any(
            r["instanceId"] == exec_id and r["verdict"] == "rate-limited"
            for r in claude.call("health", {})["instances"]
        ),
        10,
        what="the rate-limited verdict",
    )
    held = claude.call("send", {"instanceId": exec_id, "text": "@reply later", "timeoutMs": 500})
    assert held["delivered"] is False and held["queued"] is True  # kept, not lost
    assert "@reply later" not in fake_api.prompts()


def test_a_401_holds_every_instance_of_the_account(
    start_claude: Callable[..., AgentDaemon], fake_api: FakeAnthropic
) -> None:
    claude = start_claude(HEALTH_CHECK_INTERVAL="200")
    first, second = spawn_ready(claude), spawn_ready(claude)
    claude.call("send", {"instanceId": first, "text": "@fail 401"})
    claude.wait_status(first, "errored", timeout_s=30)
    error = claude.call("read", {"instanceId": first})["lastError"]
    assert error == "authentication_failed"  # StopFailure of Claude Code 2.1.332 for a 401
    wait_until(
        lambda: any(
            r["instanceId"] == first and r["verdict"] == "auth-failed"
            for r in claude.call("health", {})["instances"]
        ),
        10,
        what=f"the auth-failed verdict (StopFailure error {error!r})",
    )
    events = claude.call("events", {"since": 0, "limit": 10_000})["events"]
    assert [e["instanceId"] for e in events if e["kind"] == "account.auth"] == [first]
    held = claude.call("send", {"instanceId": second, "text": "@reply later", "timeoutMs": 500})
    assert held["delivered"] is False and held["queued"] is True  # the other one is held too
    assert "@reply later" not in fake_api.prompts()


def test_restart_resumes_the_conversation(claude: AgentDaemon, fake_api: FakeAnthropic) -> None:
    exec_id = spawn_ready(claude)
    claude.call("send", {"instanceId": exec_id, "text": "@reply remembered\nfirst prompt"})
    assert finished_turn(claude, exec_id)["lastResult"] == "remembered"

    restarted = claude.call("restart", {"instanceId": exec_id})
    assert restarted["resumed"] is True
    claude.wait_status(exec_id, "ready", timeout_s=30)
    claude.call("send", {"instanceId": exec_id, "text": "second prompt"})
    finished_turn(claude, exec_id)

    last = fake_api.main_requests()[-1]
    history = json.dumps(last["messages"])
    assert "first prompt" in history and "remembered" in history  # the old turn came back
    wait_until(lambda: "second prompt" in fake_api.prompts(), 5, what="the new prompt")


def test_parallel_tasks_run_in_real_claude_specialists(
    claude: AgentDaemon, fake_api: FakeAnthropic
) -> None:
    exec_id = claude.spawn(agent="shell")["instanceId"]
    mgr_id = claude.spawn(role="manager", parent=exec_id, agent="shell")["instanceId"]
    tasks = [
        {"id": "a", "instruction": "@reply alpha done"},
        {"id": "b", "instruction": "@reply beta done", "completionPattern": "^beta"},
        {"id": "c", "instruction": "@reply gamma", "completionPattern": "^beta"},
        {"id": "d", "instruction": "@fail 529"},
    ]
    out = claude.call(
        "executeParallel",
        {
            "managerId": mgr_id,
            "workDir": str(claude.work_dir),
            "tasks": tasks,
            "maxConcurrent": 2,
            "retry": {"attempts": 1},
        },
    )
    by_task = {r["taskId"]: r for r in out["results"]}
    assert (out["completed"], out["failed"]) == (2, 2), out
    assert by_task["a"]["status"] == "completed" and by_task["a"]["result"] == "alpha done"
    assert by_task["b"]["status"] == "completed"
    assert by_task["c"]["status"] == "failed"  # the result missed the completion pattern
    assert by_task["d"]["status"] == "failed" and "server_error" in by_task["d"]["error"]
    assert {"@reply alpha done", "@reply beta done", "@fail 529"} <= set(fake_api.prompts())
    assert claude.call("list", {"role": "specialist"}) == []  # each specialist was ended


def test_a_claude_manager_runs_claude_specialists_through_the_shim(
    claude: AgentDaemon, fake_api: FakeAnthropic
) -> None:
    """The product's loop: a manager's model calls executeParallel; specialists answer."""
    exec_id = claude.spawn(agent="shell")["instanceId"]
    mgr_id = spawn_ready(claude, role="manager", parent=exec_id)
    call = {
        "managerId": mgr_id,
        "workDir": str(claude.work_dir),
        "tasks": [
            {"id": "docs", "instruction": "@reply docs are written"},
            {"id": "tests", "instruction": "@reply tests are green"},
        ],
    }
    claude.call(
        "send",
        {"instanceId": mgr_id, "text": tcm_calls(("executeParallel", call))},
    )
    result = finished_turn(claude, mgr_id)["lastResult"]
    assert "docs are written" in result and "tests are green" in result, result
    specialists = [
        r for r in claude.call("list", {"includeTerminated": True}) if r["role"] == "specialist"
    ]
    assert {r["parentId"] for r in specialists} == {mgr_id} and len(specialists) == 2


def test_a_manager_waiting_on_its_specialists_is_not_stuck(
    start_claude: Callable[..., AgentDaemon], fake_api: FakeAnthropic
) -> None:
    """Its model sits in one long mcp__tcm__ call; health (1 s stall) must not interrupt it.

    (Claude's changing spinner words alone keep it from looking stuck; the tool allowance
    for silent screens is pinned with the fake in tests/integration/test_health.py.)
    """
    claude = start_claude(HEALTH_CHECK_INTERVAL="200", UNHEALTHY_THRESHOLD="2", TCM_STALL_MS="1000")
    exec_id = claude.spawn(agent="shell")["instanceId"]
    mgr_id = spawn_ready(claude, role="manager", parent=exec_id)
    call = {
        "managerId": mgr_id,
        "workDir": str(claude.work_dir),
        "tasks": [{"id": "slow", "instruction": "@slow 4\n@reply slow but done"}],
    }
    claude.call(
        "send",
        {"instanceId": mgr_id, "text": tcm_calls(("executeParallel", call))},
    )
    assert "slow but done" in finished_turn(claude, mgr_id)["lastResult"]
    [row] = claude.call("health", {"instanceId": mgr_id})["instances"]
    assert row["recoveries"] == 0 and row["verdict"] == "healthy", row
