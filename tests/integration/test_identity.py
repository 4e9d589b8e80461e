"""Who calls is decided from the kernel: an agent cannot become the operator by dropping,
emptying or swapping its token, nor by double-forking out of its pane, and its token is not
in argv or in tmux. Real daemon, real tmux, shell agents running real tcmctl commands."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import AgentDaemon, wait_until

REFUSED = 4  # tcmctl's exit code for a refusal by the daemon


@pytest.fixture
def team(agents: AgentDaemon) -> AgentDaemon:
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    agents.spawn("specialist", parent="mgr_1_1", agent="shell")
    return agents


def run_in(agents: AgentDaemon, instance_id: str, command: str) -> dict[str, Any]:
    """Have ``instance_id`` (a shell agent) run ``command``; its Stop: output and status."""
    sent = agents.call("send", {"instanceId": instance_id, "text": command})
    assert sent["delivered"] is True
    done = agents.call("wait", {"instanceIds": [instance_id], "timeoutMs": 20_000})
    assert done["done"] is True
    return agents.call("read", {"instanceId": instance_id, "lines": 5})  # type: ignore[no-any-return]


def tcmctl(agents: AgentDaemon) -> str:
    return shlex.quote(str(Path(sys.executable).parent / "tcmctl"))


@pytest.mark.parametrize("strip", ["env -u TCM_INSTANCE_TOKEN", "env TCM_INSTANCE_TOKEN="])
def test_a_specialist_without_its_token_is_still_the_specialist(
    team: AgentDaemon, strip: str
) -> None:
    out = run_in(team, "spec_1_1_1", f"{strip} {tcmctl(team)} spawn executive --agent shell")
    assert out["lastExitCode"] == REFUSED
    assert "[-32002]" in out["lastResult"]
    assert [r["instanceId"] for r in team.call("list") if r["role"] == "executive"] == ["exec_1"]


def test_a_token_of_another_instance_is_refused_from_inside_a_pane(team: AgentDaemon) -> None:
    theirs = team.token("mgr_1_1")
    out = run_in(team, "spec_1_1_1", f"TCM_INSTANCE_TOKEN={theirs} {tcmctl(team)} list")
    assert out["lastExitCode"] == REFUSED
    assert "token of another instance" in out["lastResult"]


def test_its_own_calls_work_without_a_token(team: AgentDaemon) -> None:
    out = run_in(team, "mgr_1_1", f"env -u TCM_INSTANCE_TOKEN {tcmctl(team)} list --json")
    assert out["lastExitCode"] == 0
    seen = {row["instanceId"] for row in json.loads(out["lastResult"])}
    assert seen == {"mgr_1_1", "spec_1_1_1"}  # a manager sees its own subtree, not its parent


def test_a_double_forked_process_stays_its_instance(team: AgentDaemon, tmp_path: Path) -> None:
    report = tmp_path / "escaped.txt"
    # the grandchild loses its parent at once and calls 0.5 s later, parentless
    escape = (
        f"(setsid sh -c 'sleep 0.5; env -u TCM_INSTANCE_TOKEN {tcmctl(team)} spawn executive "
        f"--agent shell > {report}.tmp 2>&1; echo rc=$? >> {report}.tmp; "
        f"mv {report}.tmp {report}' &)"
    )
    assert run_in(team, "spec_1_1_1", escape)["lastExitCode"] == 0
    wait_until(report.exists, 15, what="the escaped process's report")
    text = report.read_text()
    assert f"rc={REFUSED}" in text and "[-32002]" in text
    assert [r["instanceId"] for r in team.call("list") if r["role"] == "executive"] == ["exec_1"]


def test_the_token_is_in_neither_argv_nor_tmux(team: AgentDaemon) -> None:
    token = team.token("spec_1_1_1")
    shown = subprocess.run(
        ["tmux", "-L", team.daemon.tmux_socket, "show-environment", "-t", "=spec_1_1_1:"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "TCM_INSTANCE_ID=spec_1_1_1" in shown and token not in shown
    assert token not in team.daemon.tmux("show-environment", "-g")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert token.encode() not in cmdline, f"token in the argv of pid {proc.name}"
    out = run_in(team, "spec_1_1_1", 'test -n "$TCM_INSTANCE_TOKEN" && echo has-token')
    assert out["lastResult"].strip() == "has-token"  # the agent itself still has it


def test_a_tmux_job_is_nobody(team: AgentDaemon, tmp_path: Path) -> None:
    report = tmp_path / "job.txt"
    team.daemon.tmux(
        "run-shell", f"{tcmctl(team)} spawn executive --agent shell > {report} 2>&1; "
        f"echo rc=$? >> {report}"
    )
    text = report.read_text()
    assert f"rc={REFUSED}" in text and "outside every instance" in text


def test_the_operator_outside_every_pane_may_do_everything(team: AgentDaemon) -> None:
    assert team.spawn("executive", agent="shell")["instanceId"] == "exec_2"
