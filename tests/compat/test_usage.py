"""Usage read from the real Claude Code's transcript equals what the (fake) API reported.

Claude Code writes each assistant message of the main loop into its transcript with the
usage the API streamed; tcm reads it at the turn's edges. Side requests Claude Code
makes outside the conversation (none with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC) would
not be in the transcript, so the comparison is over the main loop's answers.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.fake_anthropic import FakeAnthropic
from tests.support import AgentDaemon, wait_until

KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cacheCreation": "cache_creation_input_tokens",
    "cacheRead": "cache_read_input_tokens",
}


def reported(api: FakeAnthropic) -> dict[str, int]:
    """What the fake API reported over the main loop's answers, by kind."""
    main = [r for r in api.reported if r["main"]]
    return {kind: sum(r[field] for r in main) for kind, field in KINDS.items()}


def tokens_of(claude: AgentDaemon, instance_id: str) -> dict[str, int]:
    got = claude.call("usage", {"instanceId": instance_id})["tokens"]
    return {k: got[k] for k in KINDS}


def settles_to(claude: AgentDaemon, instance_id: str, want: dict[str, int]) -> None:
    """Claude Code writes a turn's last message after its Stop hook: tcm reads again."""
    try:
        wait_until(lambda: tokens_of(claude, instance_id) == want, 5, 0.05, what="usage")
    except AssertionError:
        assert tokens_of(claude, instance_id) == want


def turn(claude: AgentDaemon, instance_id: str, text: str) -> None:
    claude.call("send", {"instanceId": instance_id, "text": text})
    claude.call("wait", {"instanceIds": [instance_id], "until": "idle", "timeoutMs": 30_000})


def test_usage_from_the_real_transcript_equals_what_the_api_reported(
    claude: AgentDaemon, fake_api: FakeAnthropic
) -> None:
    exec_id = claude.spawn()["instanceId"]
    claude.wait_status(exec_id, "ready", timeout_s=30)
    # two answers (a tool call, then the text) of scripted usage, then a plain turn
    turn(claude, exec_id, '@usage in=120 out=33 cw=1500 cr=9000\n@tool Bash {"command": "true"}'
                          "\n@reply done")  # fmt: skip
    turn(claude, exec_id, "@reply second")
    want = reported(fake_api)
    assert want["output"] == 2 * 33 + 5, json.dumps(fake_api.reported)  # the script was followed
    settles_to(claude, exec_id, want)
    got: dict[str, Any] = claude.call("usage", {"instanceId": exec_id})
    [model] = {r["model"] for r in fake_api.reported if r["main"]}
    assert [m["model"] for m in got["models"]] == [model]

    # after a restart with --resume the old answers are not counted again
    assert claude.call("restart", {"instanceId": exec_id})["resumed"] is True
    claude.wait_status(exec_id, "ready", timeout_s=30)
    turn(claude, exec_id, "@usage in=7 out=7\n@reply third")
    assert reported(fake_api)["input"] == 120 * 2 + 10 + 7
    settles_to(claude, exec_id, reported(fake_api))


def test_usage_of_a_run_of_real_specialists(claude: AgentDaemon, fake_api: FakeAnthropic) -> None:
    """A specialist is ended right after its task's turn: its last message still counts."""
    exec_id = claude.spawn(agent="shell")["instanceId"]
    mgr_id = claude.spawn(role="manager", parent=exec_id, agent="shell")["instanceId"]
    claude.wait_status(mgr_id, "ready", timeout_s=30)
    tasks = [{"id": f"t{i}", "instruction": f"@usage in={100 + i} out={10 + i}\n@reply t{i}"}
             for i in range(3)]  # fmt: skip
    run = claude.call("executeParallel", {"managerId": mgr_id, "tasks": tasks, "timeoutMs": 60_000})
    assert run["completed"] == 3, run

    def run_tokens() -> dict[str, int]:
        got = claude.call("usage", {"runId": run["runId"]})["tokens"]
        return {k: got[k] for k in KINDS}

    want = reported(fake_api)
    assert want["input"] == 303, json.dumps(fake_api.reported)
    try:
        wait_until(lambda: run_tokens() == want, 5, 0.05, what="the run's usage")
    except AssertionError:
        assert run_tokens() == want
