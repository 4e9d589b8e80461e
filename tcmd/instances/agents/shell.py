"""The ``shell`` profile: each prompt is a shell command line, run by ``shell_runner``.

The runner reports the same hook events as Claude Code (SessionStart, UserPromptSubmit,
Stop with the output and exit status, SessionEnd), so the daemon drives it identically.
It keeps no conversation: a restart starts a fresh runner (``resumed`` is false).
"""

from __future__ import annotations

import re

from tcmd.config import Settings
from tcmd.instances.agents.base import Launch, LaunchEnv, text_in_box
from tcmd.instances.agents.shell_runner import command_line
from tcmd.model import Instance, State

_BUSY = re.compile(r"running… \(esc to interrupt\)")


class ShellProfile:
    name = "shell"
    # a quiet command (a build, a sleep) is no sign of trouble: a shell agent gets an hour
    stall_ms: int | None = 3_600_000
    paced: bool = False

    def check(self, settings: Settings) -> None:
        """Nothing to find: it runs on tcmd's own interpreter."""

    def launch(self, inst: Instance, env: LaunchEnv, *, resume: bool) -> Launch:
        argv = [*command_line(env.python), "--session-id", inst.session_id]
        return Launch(argv=argv, env=dict(env.base_env), resumed=False)

    def screen_state(self, screen: str) -> State | None:
        lines = [ln for ln in screen.splitlines() if ln.strip()]
        if not lines:
            return None
        if lines[-1].lstrip().startswith("❯"):
            return State.READY
        if any(_BUSY.search(ln) for ln in lines[-5:]):
            return State.BUSY
        return None

    def input_pending(self, screen: str, text: str) -> bool:
        return text_in_box(screen, text)

    def task_prompt(self, context: str, instruction: str) -> str:
        return instruction  # the instruction is the command line; context is for people

    def as_prompt(self, text: str) -> str:
        return text  # every line is a command here: that is the point
