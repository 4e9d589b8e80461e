"""Instances end to end: real tcmd, real tmux, the fake Claude Code as the agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tcmd.errors import Conflict, Forbidden, InvalidParams, NotFound
from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess, run_concurrently, wait_until

HOSTILE = (
    "first line with 'single' and \"double\" quotes\n"
    "$(touch /tmp/tcm-pwned) `uname` \\backslash\\ Enter C-c ; && | > <\n"
    "unicode ✓ 中文 🚀 and the end"
)


def test_spawn_reaches_ready_with_hooks_flags_and_context(agents: AgentDaemon) -> None:
    ctx = "Build the parser. Quotes ' \" and $(nothing) stay text."
    exe = agents.spawn("executive", context=ctx)
    assert exe["instanceId"] == "exec_1"
    assert exe["status"] == "ready"
    assert exe["parentId"] is None
    assert exe["tmuxTarget"] == "exec_1"
    [start] = agents.events("SessionStart")
    assert start["source"] == "startup"
    idir = agents.daemon.state_dir / "instances" / "exec_1"
    settings = json.loads((idir / "claude-settings.json").read_text())
    assert set(settings["hooks"]) >= {
        "SessionStart",
        "UserPromptSubmit",
        "Stop",
        "StopFailure",
        "Notification",
        "PermissionRequest",
        "SessionEnd",
    }
    mcp = json.loads((idir / "mcp.json").read_text())
    assert mcp["mcpServers"]["tcm"]["env"]["TCM_INSTANCE_TOKEN"] == agents.token("exec_1")
    claude_json = json.loads((agents.work_dir.parent / "home" / ".claude.json").read_text())
    assert claude_json["projects"][str(agents.work_dir)]["hasTrustDialogAccepted"] is True
    rows = agents.call("list")
    assert [(r["instanceId"], r["status"], r["agent"]) for r in rows] == [
        ("exec_1", "ready", "claude")
    ]
    assert "token" not in json.dumps(rows)


def test_send_delivers_hostile_text_exactly_once_and_read_shows_result(
    agents: AgentDaemon,
) -> None:
    agents.spawn()
    sent = agents.call("send", {"instanceId": "exec_1", "text": HOSTILE})
    assert sent["delivered"] is True
    done = agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 10_000})
    assert done["done"] is True
    prompts = [e["prompt"] for e in agents.events("UserPromptSubmit")]
    assert prompts == [HOSTILE]
    assert not Path("/tmp/tcm-pwned").exists()
    read = agents.call("read", {"instanceId": "exec_1", "lines": 40})
    assert read["status"] == "ready"
    assert read["lastResult"] == "ok: first line with 'single' and \"double\" quotes"
    assert "❯" in read["output"]


def test_large_text_arrives_whole(agents: AgentDaemon) -> None:
    agents.spawn()
    text = "".join(f"line {i}: {'x' * 90} ✓ $(q) 'a' \"b\"\n" for i in range(1000)).rstrip("\n")
    assert len(text.encode()) > 100_000
    sent = agents.call("send", {"instanceId": "exec_1", "text": text})
    assert sent["delivered"] is True
    [prompt] = [e["prompt"] for e in agents.events("UserPromptSubmit")]
    assert text in prompt  # Claude wraps long pastes in <pasted_content>


def test_send_to_busy_instance_is_queued_and_delivered_in_order(agents: AgentDaemon) -> None:
    agents.spawn()
    first = agents.call("send", {"instanceId": "exec_1", "text": "@work 1\n@reply one"})
    assert first["delivered"] is True
    second = agents.call("send", {"instanceId": "exec_1", "text": "@reply two"})
    third = agents.call("send", {"instanceId": "exec_1", "text": "@reply three"})
    assert (second["queued"], second["delivered"], second["position"]) == (True, False, 1)
    assert third["position"] == 2
    wait_until(lambda: len(agents.events("Stop")) == 3, 20, what="three turns")
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 10_000})
    assert [e["last_assistant_message"] for e in agents.events("Stop")] == ["one", "two", "three"]
    prompts = [e["prompt"] for e in agents.events("UserPromptSubmit")]
    assert prompts == ["@work 1\n@reply one", "@reply two", "@reply three"]


def test_role_matrix(agents: AgentDaemon) -> None:
    agents.spawn("executive")
    agents.spawn("executive")
    mgr = agents.call(
        "spawn",
        {
            "role": "manager",
            "workDir": str(agents.work_dir),
            "context": "m",
            "agent": "shell",
            "parentId": "exec_1",
        },
    )
    assert mgr["instanceId"] == "mgr_1_1"
    exec1, exec2, mgr_t = agents.token("exec_1"), agents.token("exec_2"), agents.token("mgr_1_1")
    spec = agents.call(
        "spawn",
        {"role": "specialist", "workDir": str(agents.work_dir), "context": "s", "agent": "shell"},
        token=mgr_t,
    )
    assert (spec["instanceId"], spec["parentId"]) == ("spec_1_1_1", "mgr_1_1")
    spec_t = agents.token("spec_1_1_1")
    base = {"workDir": str(agents.work_dir), "context": "x", "agent": "shell"}
    with pytest.raises(Forbidden, match="a specialist may not spawn"):
        agents.call("spawn", {**base, "role": "specialist"}, token=spec_t)
    with pytest.raises(Forbidden, match="a manager may not spawn a manager"):
        agents.call("spawn", {**base, "role": "manager"}, token=mgr_t)
    with pytest.raises(Forbidden, match="may spawn only under itself"):
        agents.call("spawn", {**base, "role": "manager", "parentId": "exec_1"}, token=exec2)
    with pytest.raises(Forbidden, match="not one of its descendants"):
        agents.call("read", {"instanceId": "mgr_1_1"}, token=exec2)
    with pytest.raises(Forbidden, match="not one of its descendants"):
        agents.call("send", {"instanceId": "exec_1", "text": "hi"}, token=mgr_t)
    with pytest.raises(Forbidden, match="not one of its descendants"):
        agents.call("terminate", {"instanceId": "spec_1_1_1"}, token=exec2)
    assert agents.call("read", {"instanceId": "spec_1_1_1"}, token=exec1)["status"] == "ready"
    with pytest.raises(InvalidParams, match="a manager needs an executive parent"):
        agents.call("spawn", {**base, "role": "manager"})
    with pytest.raises(
        InvalidParams, match="exec_1 is an executive; a specialist needs a manager parent"
    ):
        agents.call("spawn", {**base, "role": "specialist", "parentId": "exec_1"})
    with pytest.raises(Forbidden, match="unknown or revoked"):
        agents.call("list", token="forged-token")
    assert {r["instanceId"] for r in agents.call("list", token=exec1)} == {
        "exec_1",
        "mgr_1_1",
        "spec_1_1_1",
    }
    assert {r["instanceId"] for r in agents.call("list", token=exec2)} == {"exec_2"}
    with pytest.raises(NotFound):
        agents.call("read", {"instanceId": "exec_99"})
    with pytest.raises(InvalidParams, match="agent: unknown profile 'nope'"):
        agents.call("spawn", {**base, "role": "executive", "agent": "nope"})
    with pytest.raises(InvalidParams, match="workDir: must be an absolute path"):
        agents.call("spawn", {**base, "role": "executive", "workDir": "rel/dir"})


def test_an_instance_reads_and_waits_on_itself_but_not_its_kin(agents: AgentDaemon) -> None:
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    agents.spawn("specialist", parent="mgr_1_1", agent="shell")
    agents.spawn("specialist", parent="mgr_1_1", agent="shell")
    for me in ("spec_1_1_1", "mgr_1_1"):
        token = agents.token(me)
        assert agents.call("read", {"instanceId": me}, token=token)["status"] == "ready"
        out = agents.call("wait", {"instanceIds": [me], "timeoutMs": 1000}, token=token)
        assert (out["done"], [i["instanceId"] for i in out["instances"]]) == (True, [me])
    spec_t = agents.token("spec_1_1_1")
    for kin in ("spec_1_1_2", "mgr_1_1", "exec_1"):  # a sibling, the parent, an ancestor
        with pytest.raises(Forbidden, match=f"spec_1_1_1 may not read {kin}"):
            agents.call("read", {"instanceId": kin}, token=spec_t)
        with pytest.raises(Forbidden, match=f"spec_1_1_1 may not wait on {kin}"):
            agents.call("wait", {"instanceIds": ["spec_1_1_1", kin]}, token=spec_t)
    with pytest.raises(Forbidden, match="spec_1_1_1 may not send to spec_1_1_1"):
        agents.call("send", {"instanceId": "spec_1_1_1", "text": "x"}, token=spec_t)


def test_terminate_refuses_live_children_then_cascades_children_first(
    agents: AgentDaemon,
) -> None:
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    agents.spawn("specialist", parent="mgr_1_1", agent="shell")
    agents.spawn("specialist", parent="mgr_1_1", agent="shell")
    with pytest.raises(Conflict, match="live descendants"):
        agents.call("terminate", {"instanceId": "exec_1"})
    token = agents.token("spec_1_1_2")
    out = agents.call("terminate", {"instanceId": "exec_1", "cascade": True})
    assert out["terminated"] == ["spec_1_1_1", "spec_1_1_2", "mgr_1_1", "exec_1"]
    assert agents.call("list") == []
    sessions = agents.daemon.tmux("list-sessions")
    assert "exec_1" not in sessions and "spec_1_1" not in sessions
    with pytest.raises(Forbidden, match="revoked"):
        agents.call("list", token=token)
    with pytest.raises(Conflict, match="terminated"):
        agents.call("send", {"instanceId": "exec_1", "text": "hello"})


def test_crash_is_detected_and_send_to_exited_is_refused(agents: AgentDaemon) -> None:
    agents.spawn()
    agents.call("send", {"instanceId": "exec_1", "text": "@crash 3"})
    assert agents.wait_status("exec_1", "exited", timeout_s=10) == "exited"
    assert agents.call("list")[0]["lastExitCode"] is None  # not a command status: a crash
    with pytest.raises(Conflict, match="restart it first"):
        agents.call("send", {"instanceId": "exec_1", "text": "hello"})


def test_stop_failure_marks_errored_and_the_next_turn_recovers(agents: AgentDaemon) -> None:
    agents.spawn()
    agents.call("send", {"instanceId": "exec_1", "text": "@fail"})
    agents.wait_status("exec_1", "errored")
    read = agents.call("read", {"instanceId": "exec_1"})
    assert read["lastError"] == "server_error"
    agents.call("send", {"instanceId": "exec_1", "text": "@reply fine"})
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 10_000})
    assert agents.call("read", {"instanceId": "exec_1"})["lastResult"] == "fine"


def test_restart_resumes_the_conversation(agents: AgentDaemon) -> None:
    agents.spawn()
    agents.call("send", {"instanceId": "exec_1", "text": "@reply remembered"})
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 10_000})
    out = agents.call("restart", {"instanceId": "exec_1"})
    assert (out["status"], out["resumed"]) == ("ready", True)
    assert [e["source"] for e in agents.events("SessionStart")] == ["startup", "resume"]
    agents.call("send", {"instanceId": "exec_1", "text": "@recall"})
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 10_000})
    assert agents.call("read", {"instanceId": "exec_1"})["lastResult"] == "turns=1"


def test_wait_any_idle_returns_on_the_first(agents: AgentDaemon) -> None:
    agents.spawn()
    agents.spawn()
    agents.call("send", {"instanceId": "exec_1", "text": "@work 30"})
    agents.call("send", {"instanceId": "exec_2", "text": "@reply quick"})
    out = agents.call(
        "wait", {"instanceIds": ["exec_1", "exec_2"], "until": "any-idle", "timeoutMs": 10_000}
    )
    assert out["done"] is True
    by_id = {i["instanceId"]: i for i in out["instances"]}
    assert by_id["exec_2"]["lastResult"] == "quick"
    assert by_id["exec_1"]["status"] == "busy"
    timed = agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 200})
    assert timed["timedOut"] is True


def test_escape_interrupt_without_stop_is_seen_on_screen(agents: AgentDaemon) -> None:
    agents.spawn()
    agents.call("send", {"instanceId": "exec_1", "text": "@hang"})
    assert agents.status("exec_1") == "busy"
    agents.daemon.tmux("send-keys", "-t", "=exec_1:", "Escape")
    agents.wait_status("exec_1", "ready", timeout_s=15)
    assert agents.events("Stop") == []


def test_fifty_concurrent_spawns_get_unique_ids_and_all_ready(agents: AgentDaemon) -> None:
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    results = run_concurrently(
        lambda: agents.spawn("specialist", parent="mgr_1_1", timeoutMs=60_000), 50, timeout_s=90
    )
    ids = [r["instanceId"] for r in results]
    assert sorted(ids) == sorted(f"spec_1_1_{n}" for n in range(1, 51))
    assert {r["status"] for r in results} == {"ready"}


def test_daemon_kill9_then_readoption(agents: AgentDaemon, tmp_path: Path) -> None:
    agents.spawn()
    agents.spawn()
    agents.spawn()
    # busy long enough to outlast a restart of tcmd on a loaded machine (3 s did not)
    agents.call("send", {"instanceId": "exec_2", "text": "@work 6\n@reply late"})
    agents.daemon.kill9()
    # while the daemon is down: one agent dies
    agents.daemon.tmux("kill-session", "-t", "=exec_3:")
    agents.daemon.start()
    assert agents.status("exec_1") == "ready"
    assert agents.status("exec_2") == "busy"  # re-derived from its screen
    assert agents.status("exec_3") == "exited"
    # its Stop hook went nowhere while we were down: the screen tells us it finished
    agents.wait_status("exec_2", "ready", timeout_s=20)
    sent = agents.call("send", {"instanceId": "exec_1", "text": "@reply after restart"})
    assert sent["delivered"] is True
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 10_000})
    assert agents.call("read", {"instanceId": "exec_1"})["lastResult"] == "after restart"
    assert (
        agents.call(
            "spawn",
            {
                "role": "executive",
                "workDir": str(agents.work_dir),
                "context": "x",
                "agent": "shell",
            },
        )["instanceId"]
        == "exec_4"
    )


def test_shell_agent_end_to_end(agents: AgentDaemon) -> None:
    agents.spawn("executive", agent="shell")
    out = agents.call(
        "send",
        {"instanceId": "exec_1", "text": "printf '%s|' \"$TCM_INSTANCE_ID\" 'a b' ✓; exit 3"},
    )
    assert out["delivered"] is True
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 10_000})
    read = agents.call("read", {"instanceId": "exec_1"})
    assert read["lastResult"] == "exec_1|a b|✓|"
    assert read["lastExitCode"] == 3
    assert read["status"] == "ready"


def test_terminated_and_restarted_state_survives_sigterm(
    agents: AgentDaemon, daemon_factory: type[DaemonProcess]
) -> None:
    agents.spawn("executive", agent="shell")
    agents.spawn("executive", agent="shell")
    agents.call("terminate", {"instanceId": "exec_2"})
    agents.daemon.terminate()
    agents.daemon.start()
    rows = {r["instanceId"]: r["status"] for r in agents.call("list", {"includeTerminated": True})}
    assert rows == {"exec_1": "ready", "exec_2": "terminated"}


def test_terminate_force_ends_only_the_parent(agents: AgentDaemon) -> None:
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    out = agents.call("terminate", {"instanceId": "exec_1", "force": True})
    assert out["terminated"] == ["exec_1"]
    rows = {r["instanceId"]: r["status"] for r in agents.call("list", {"includeTerminated": True})}
    assert rows == {"exec_1": "terminated", "mgr_1_1": "ready"}  # the child lives on


def test_claude_permission_mode_is_configurable(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, {"TCM_CLAUDE_PERMISSION_MODE": "acceptEdits"}
    )
    agents.spawn()
    agents.call("send", {"instanceId": "exec_1", "text": "@reply ok"})
    [submit] = agents.events("UserPromptSubmit")
    assert submit["permission_mode"] == "acceptEdits"
