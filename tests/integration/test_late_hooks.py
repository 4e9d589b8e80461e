"""A starved machine runs hooks late: a prompt that left the input box is the agent's.

The fake's `@late N` clears the box at once but fires UserPromptSubmit N seconds later.
With `TCM_ACK_LATE_MS` short, delivery gives up waiting for the hook long before it
comes: the prompt is then reported as submitted but unconfirmed, and a parallel task is
awaited to its end rather than failed and run again by another specialist.
"""

from __future__ import annotations

from pathlib import Path

from tcmd.instances.delivery import ACK_WAIT_S
from tests.fakes import FAKE_CLAUDE
from tests.integration.test_parallel import run_parallel, team
from tests.support import AgentDaemon, DaemonProcess, wait_until

LATE_S = ACK_WAIT_S + 2.5  # the hook comes well after delivery gave up on it


def late_daemon(tmp_path: Path, daemon_factory: type[DaemonProcess]) -> AgentDaemon:
    return AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, extra_env={"TCM_ACK_LATE_MS": "300"}
    )


def test_a_task_whose_hook_is_late_runs_once_and_completes(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = late_daemon(tmp_path, daemon_factory)
    [manager] = team(agents)
    task = {"id": "slow-hook", "instruction": f"@late {LATE_S}\n@reply done once"}
    out = run_parallel(agents, manager, [task], agent="claude")  # 3 attempts allowed
    [row] = out["results"]
    assert (row["status"], row["attempts"], row["result"]) == ("completed", 1, "done once")
    prompts = [e for e in agents.events("UserPromptSubmit") if "@late" in e["prompt"]]
    assert len(prompts) == 1, "the task's prompt ran more than once"


def test_send_says_the_prompt_was_submitted_but_not_confirmed(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = late_daemon(tmp_path, daemon_factory)
    agents.spawn("executive")
    agents.wait_status("exec_1", "ready")
    sent = agents.call("send", {"instanceId": "exec_1", "text": f"@late {LATE_S}\n@reply late"})
    assert (sent["delivered"], sent.get("submitted"), sent["queued"]) == (False, True, False)
    [row] = [r for r in agents.call("list") if r["instanceId"] == "exec_1"]
    assert "did not acknowledge it" in row["lastError"]
    # the agent runs it all the same: its hook arrives, its turn ends with the reply
    wait_until(
        lambda: agents.call("read", {"instanceId": "exec_1"}).get("lastResult") == "late",
        20,
        what="the late prompt's turn to end",
    )
    assert agents.status("exec_1") == "ready"
    assert len(agents.events("UserPromptSubmit")) == 1
