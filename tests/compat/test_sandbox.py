"""TCM_CLAUDE_SANDBOX against the real Claude Code: its Bash tool runs under bubblewrap,
where Unix sockets are blocked, so an agent's shell reaches neither tcm's tmux server nor
tcm's socket, while tcm's own tools still work through the MCP shim."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.compat.test_claude_code import finished_turn, spawn_ready, tcm_calls
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.support import AgentDaemon, wait_until


def reach_out(claude: AgentDaemon, target: str, marker: Path) -> str:
    """A Bash command that types into ``target``'s pane through tmux, then calls tcm."""
    tcmctl = shlex.quote(str(Path(sys.executable).parent / "tcmctl"))
    sock = claude.daemon.tmux_socket
    return (
        f"tmux -L {sock} send-keys -t ={target}: 'touch {marker}' Enter; echo tmux-rc=$?; "
        f"{tcmctl} list --json > /dev/null; echo tcm-rc=$?"
    )


@pytest.mark.parametrize("sandbox", [True, False])
def test_the_sandbox_keeps_the_agents_shell_away_from_tmux_and_tcm(
    start_claude: Callable[..., AgentDaemon],
    fake_api: FakeAnthropic,
    tmp_path: Path,
    sandbox: bool,
) -> None:
    claude = start_claude(
        TCM_CLAUDE_SANDBOX=str(sandbox).lower(), TCM_CLAUDE_PERMISSION_MODE="bypassPermissions"
    )
    exec_id = spawn_ready(claude)
    other = claude.spawn("executive", agent="shell")["instanceId"]
    settings = json.loads(
        (claude.daemon.state_dir / "instances" / exec_id / "claude-settings.json").read_text()
    )
    assert ("sandbox" in settings) is sandbox
    marker = tmp_path / "typed-through-tmux"
    command = reach_out(claude, other, marker)
    prompt = f"@tool Bash {json.dumps({'command': command})}\n" + tcm_calls(("list", {}))
    claude.call("send", {"instanceId": exec_id, "text": prompt})
    finished_turn(claude, exec_id)
    bash_out = " ".join(fake_api.tool_results(lambda r: "tmux-rc=" in r))
    assert "tmux-rc=" in bash_out and "tcm-rc=" in bash_out, fake_api.tool_results()
    if sandbox:
        assert "tmux-rc=0" not in bash_out and "tcm-rc=0" not in bash_out, bash_out
        assert not marker.exists()
    else:  # the control: without the sandbox the same command reaches both
        assert "tmux-rc=0" in bash_out and "tcm-rc=0" in bash_out, bash_out
        wait_until(marker.exists, 10, what="the command typed into the other pane")
    # tcm's tools still answer through the shim (Claude starts it outside the sandbox)
    assert fake_api.tool_results(lambda r: exec_id in r and "instanceId" in r)
