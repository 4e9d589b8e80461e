"""Benchmark: one hook event POSTed to tcmd vs one `tcmctl hook` process, with the REAL
Claude Code CLI (the compat suite's pinned binary, against the fake API). Prints figures.

    .venv/bin/python -m tests.bench.bench_hooks

For each of TCM_HOOKS=http and command, one Claude instance runs turns of TOOLS Bash
calls (``true``) and turns with none; each tool call fires PreToolUse and PostToolUse,
so the difference between the two turns is 2 × TOOLS hook events plus the same tool and
model work in both modes. CPU is the agent's (Claude with its reaped children: the hook
processes, the Bash tool) plus tcmd's, read from /proc; wall is the turn as `wait` sees
it (Claude waits for each PreToolUse hook before it runs the tool).
"""

from __future__ import annotations

import json
import shlex
import statistics
import time
from pathlib import Path

from tests.bench.common import agent_daemon, cpu_seconds
from tests.compat.conftest import API_KEY, claude_binary
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.support import AgentDaemon

TOOLS = 20
ROUNDS = 5


def agent_pid(agents: AgentDaemon, instance_id: str) -> int:
    pane = int(agents.daemon.tmux("display-message", "-p", "-t", f"={instance_id}:", "#{pane_pid}"))
    [agent] = Path(f"/proc/{pane}/task/{pane}/children").read_text().split()
    return int(agent)


def turn(agents: AgentDaemon, exec_id: str, text: str, pids: list[int]) -> list[float]:
    """CPU seconds of each of ``pids`` (with reaped children) and wall seconds of a turn."""
    cpu0, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
    agents.call("send", {"instanceId": exec_id, "text": text})
    done = agents.call("wait", {"instanceIds": [exec_id], "until": "idle", "timeoutMs": 120_000})
    assert done["done"], done
    return [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)] + [time.monotonic() - t0]


def measure(mode: str, api: FakeAnthropic) -> list[float]:
    """Median extra CPU of the agent's tree, of tcmd, and wall (ms) per hook event of a
    turn with tools over one without."""
    env = {
        "TCM_CLAUDE_COMMAND": shlex.join([str(claude_binary())]),
        "ANTHROPIC_BASE_URL": api.url,
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_ALTERNATE_SCREEN": "1",
        "IS_SANDBOX": "1",
        "TCM_CLAUDE_PERMISSION_MODE": "bypassPermissions",  # Bash without a dialog
        "TCM_HOOKS": mode,
    }
    with agent_daemon(env, claude=claude_binary()) as (agents, tmp):
        answers = {"approved": [API_KEY[-20:]], "rejected": []}
        dialogs = {"hasCompletedOnboarding": True, "customApiKeyResponses": answers}
        (tmp / "home" / ".claude.json").write_text(json.dumps(dialogs))
        exec_id = agents.spawn()["instanceId"]
        agents.wait_status(exec_id, "ready", timeout_s=60)
        assert agents.daemon.proc is not None
        pids = [agent_pid(agents, exec_id), agents.daemon.proc.pid]
        tools = "\n".join(['@tool Bash {"command": "true"}'] * TOOLS)
        turn(agents, exec_id, tools, pids)  # warm-up
        rounds = []
        for _ in range(ROUNDS):
            with_tools = turn(agents, exec_id, tools, pids)
            without = turn(agents, exec_id, "@reply none", pids)
            pairs = zip(with_tools, without, strict=True)
            rounds.append([(w - o) / (2 * TOOLS) * 1e3 for w, o in pairs])
        posted = agents.call("status")["counts"]["hookRequests"]
        print(f"  {mode}: {posted} hook events posted over HTTP")
        return [statistics.median(column) for column in zip(*rounds, strict=True)]


def main() -> None:
    print(f"per hook event (a turn of {TOOLS} Bash calls minus a turn without, median of")
    print(f"{ROUNDS}; it includes the tool's and the model's own work, equal in both modes):")
    with FakeAnthropic() as api:
        results = {mode: measure(mode, api) for mode in ("command", "http")}
    for mode, (agent, tcmd, wall) in results.items():
        print(f"  TCM_HOOKS={mode:8s} CPU agent {agent:6.1f} ms + tcmd {tcmd:5.2f} ms"
              f"   wall {wall:6.1f} ms")  # fmt: skip
    (c_agent, c_tcmd, c_wall), (h_agent, h_tcmd, h_wall) = results["command"], results["http"]
    saved = c_agent + c_tcmd - h_agent - h_tcmd
    print(f"  http saves {saved:.1f} ms CPU and {c_wall - h_wall:.1f} ms wall per event")


if __name__ == "__main__":
    main()
