"""Agents run at a lower CPU priority than tcmd (TCM_AGENT_NICE), and all they start too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def autogroups() -> bool:
    """Whether the kernel shares the CPU between sessions first (autogroups)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def autogroup_nice(pid: int) -> int | None:
    """The niceness of the autogroup ``pid`` is in ("/autogroup-N nice K"); None when it is
    in none (the kernel prints nothing for the boot session's processes, for example)."""
    shown = Path(f"/proc/{pid}/autogroup").read_text().split()
    return int(shown[-1]) if shown else None


def agent_pid(agents: AgentDaemon, instance_id: str) -> int:
    """The agent's process: the only child of the pane's launcher."""
    pane = int(agents.daemon.tmux("display-message", "-p", "-t", f"={instance_id}:", "#{pane_pid}"))
    [agent] = Path(f"/proc/{pane}/task/{pane}/children").read_text().split()
    return int(agent)


def nice_of_a_command(agents: AgentDaemon, instance_id: str) -> str:
    """What ``nice`` prints when the (shell) agent runs it: the niceness of its commands."""
    agents.call("send", {"instanceId": instance_id, "text": "nice"})
    agents.call("wait", {"instanceIds": [instance_id], "timeoutMs": 10_000})
    return str(agents.call("read", {"instanceId": instance_id})["lastResult"]).strip()


def test_agents_and_their_commands_run_nicer_than_tcmd(agents: AgentDaemon) -> None:
    assert agents.daemon.proc is not None
    tcmd = niceness(agents.daemon.proc.pid)
    want = min(19, tcmd + 19)  # the default TCM_AGENT_NICE
    claude = agents.spawn("executive")["instanceId"]
    shell = agents.spawn("executive", agent="shell")["instanceId"]
    agents.wait_status(claude, "ready")
    agents.wait_status(shell, "ready")

    assert niceness(agent_pid(agents, claude)) == want
    assert nice_of_a_command(agents, shell) == str(want)
    assert niceness(agents.daemon.proc.pid) == tcmd  # tcmd itself keeps its priority


def test_agent_nice_zero_leaves_agents_at_tcmds_priority(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, extra_env={"TCM_AGENT_NICE": "0"}
    )
    assert agents.daemon.proc is not None
    shell = agents.spawn("executive", agent="shell")["instanceId"]
    agents.wait_status(shell, "ready")
    assert nice_of_a_command(agents, shell) == str(niceness(agents.daemon.proc.pid))


@pytest.mark.skipif(not autogroups(), reason="the kernel groups no sessions here")
def test_each_panes_autogroup_is_as_nice_as_its_agent(agents: AgentDaemon) -> None:
    """tmux makes every pane a session, hence an autogroup of its own: the group's niceness
    is what ranks an agent against tcmd, so it must be lowered too."""
    assert agents.daemon.proc is not None
    want = min(19, niceness(agents.daemon.proc.pid) + 19)
    shell = agents.spawn("executive", agent="shell")["instanceId"]
    agents.wait_status(shell, "ready")
    assert autogroup_nice(agent_pid(agents, shell)) == want
    assert autogroup_nice(agents.daemon.proc.pid) == 0  # tcmd's session's group: as it began
