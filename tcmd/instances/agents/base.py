"""What an agent profile is: how to launch an agent CLI and how to read its screen.

Every profile's agent reports its state through hook events (Claude Code natively, the
shell agent through its runner), so the daemon drives them all the same way. Screen
patterns are the fallback for what no hook reports (an Escape interrupt, re-adoption
after a daemon restart).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tcmd.config import Settings
from tcmd.model import Instance, State


@dataclass(frozen=True, slots=True)
class LaunchEnv:
    """What the daemon gives every profile to build a launch."""

    settings: Settings
    instance_dir: Path  # per-instance files (settings, MCP config), 0700
    python: str  # the interpreter tcm runs on, for `python -m tcmctl …`
    base_env: dict[str, str] = field(default_factory=dict)  # TCM_* for the agent process
    hook_url: str | None = None  # tcmd's loopback hook listener (TCM_HOOKS=http), if it runs


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    resumed: bool


class AgentProfile(Protocol):
    name: str
    stall_ms: int | None  # busy this long with no sign of life: stuck (None: TCM_STALL_MS)
    paced: bool  # starts at most TCM_SPAWN_RATE a second (instances/pacing.py)

    def check(self, settings: Settings) -> None:
        """Refuse (InvalidParams) before anything is made when the agent cannot start."""

    def launch(self, inst: Instance, env: LaunchEnv, *, resume: bool) -> Launch:
        """argv and environment to start (or resume) ``inst``; may write its files."""

    def screen_state(self, screen: str) -> State | None:
        """The state the visible screen shows, when it shows one clearly."""

    def input_pending(self, screen: str, text: str) -> bool:
        """Whether ``text`` still sits unsubmitted in the agent's input box."""

    def task_prompt(self, context: str, instruction: str) -> str:
        """The prompt that gives a parallel task to a fresh specialist."""

    def as_prompt(self, text: str) -> str:
        """What to type so the agent takes ``text`` as a prompt (and not as a command)."""


def runnable(program: str) -> bool:
    """Whether ``program`` would start: an executable path, or a name found on PATH."""
    if "/" in program:
        return os.path.isfile(program) and os.access(program, os.X_OK)
    return shutil.which(program) is not None


def prompt_line(screen: str) -> str | None:
    """The text after the last ``❯`` prompt marker on screen, if any."""
    for line in reversed(screen.splitlines()):
        stripped = line.strip().lstrip("│").strip()
        if stripped.startswith("❯"):
            return stripped[1:].strip()
    return None


def text_in_box(screen: str, text: str) -> bool:
    """True when the input line shows the start of ``text`` or a pasted-text placeholder."""
    box = prompt_line(screen)
    if not box:
        return False
    if re.search(r"\[Pasted text #\d+", box):
        return True
    first = text.strip().splitlines()[0] if text.strip() else ""
    return bool(first) and first[:20].strip() in box
