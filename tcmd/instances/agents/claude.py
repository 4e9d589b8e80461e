"""The ``claude`` profile: Claude Code, driven by its own hooks.

Launch: ``$TCM_CLAUDE_COMMAND --session-id UUID`` (``--resume UUID`` on restart),
``--settings`` with hooks that POST every event to tcmd's loopback listener with the
instance's token in a header (``TCM_HOOKS=http``, server/hooks_http.py), or command hooks
that run ``tcmctl hook`` (``TCM_HOOKS=command``; as ``python -I -S -c``: it runs on every
event, so it skips site and runpy), ``--append-system-prompt``
with the role's instructions and the spawn context (nothing is written into the user's
repository), and ``--mcp-config`` (strict) naming the tcm MCP shim with the instance's
token, so the instance can call tcm's tools as itself and as nothing more.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import orjson

from tcmctl.hook import command_line as hook_command_line
from tcmd.config import Settings
from tcmd.errors import InvalidParams
from tcmd.instances.agents.base import Launch, LaunchEnv, runnable, text_in_box
from tcmd.instances.agents.claude_json import mark_trusted
from tcmd.model import Instance, Role, State

HOOK_EVENTS = (
    "SessionStart",
    "UserPromptSubmit",
    "PreToolUse",
    "PostToolUse",
    "PostToolUseFailure",  # what ends a tool call that failed (no PostToolUse then)
    "Stop",
    "StopFailure",
    "Notification",
    "PermissionRequest",
    "SessionEnd",
)

COMMAND_ONLY_EVENTS = ("SessionStart",)  # Claude Code sends no HTTP hook for these

ROLE_INSTRUCTIONS = {
    Role.EXECUTIVE: (
        "You are the executive of a tcm team of Claude Code instances. Break the goal into "
        "areas and give each to a manager you spawn with the tcm `spawn` tool "
        "(role=manager). Follow their progress with `wait` and `read`; do not do the "
        "detailed work yourself."
    ),
    Role.MANAGER: (
        "You are a manager in a tcm team. Split your assignment into independent tasks "
        "and run them with specialists: `executeParallel` for a batch, or `spawn` "
        "(role=specialist) + `send` + `wait`. Check their results and report a summary."
    ),
    Role.SPECIALIST: (
        "You are a specialist in a tcm team. Do the one task you are given, completely, "
        "in the working directory. Your final message is your result: make it a short, "
        "factual report of what you did and what is left."
    ),
}

_BUSY = re.compile(r"esc to interrupt", re.IGNORECASE)
_DIALOG = re.compile(
    r"Do you want to proceed\?|trust the files in this folder|Bypass Permissions mode",
    re.IGNORECASE,
)


class ClaudeProfile:
    name = "claude"
    stall_ms: int | None = None  # TCM_STALL_MS: tool hooks are its heartbeat
    paced: bool = True  # many starts of one login at once: paced (TCM_SPAWN_RATE)

    def check(self, settings: Settings) -> None:
        program = settings.claude_command[0]
        if not runnable(program):
            raise InvalidParams(
                f"agent: claude's command {program!r} is not found or not executable; "
                "set TCM_CLAUDE_COMMAND (in tcmd's environment) to the Claude Code CLI",
                data={"command": program, "variable": "TCM_CLAUDE_COMMAND"},
            )

    def launch(self, inst: Instance, env: LaunchEnv, *, resume: bool) -> Launch:
        settings_path = env.instance_dir / "claude-settings.json"
        mcp_path = env.instance_dir / "mcp.json"
        hooks = {event: [{"matcher": "", "hooks": [_hook(env, event)]}] for event in HOOK_EVENTS}
        settings: dict[str, object] = {
            "hooks": hooks,
            "permissions": {"allow": ["mcp__tcm"]},  # tcm's own tools never stop on a dialog
        }
        if env.settings.claude_sandbox:
            # The agent's shell commands run under bubblewrap, where Unix sockets are blocked:
            # no tmux, no tcm socket. tcm stays reachable through the MCP shim, which Claude
            # starts outside the sandbox. A sandbox that cannot start is an error, not a
            # silent fallback to no sandbox.
            settings["sandbox"] = {"enabled": True, "failIfUnavailable": True}
        if env.settings.claude_permission_mode == "bypassPermissions":
            # the operator chose this mode: its start-up warning would block every launch
            settings["skipDangerousModePermissionPrompt"] = True
        _write_private(settings_path, settings)
        _write_private(
            mcp_path,
            {
                "mcpServers": {
                    "tcm": {
                        "type": "stdio",
                        "command": env.python,
                        "args": ["-m", "tcmctl", "mcp"],
                        "env": {k: v for k, v in env.base_env.items() if k.startswith("TCM_")},
                    }
                }
            },
        )
        if env.settings.trust_workdirs:
            home = Path(env.base_env.get("HOME") or os.environ.get("HOME") or Path.home())
            mark_trusted(home / ".claude.json", Path(inst.work_dir))
        system = ROLE_INSTRUCTIONS[inst.role]
        if inst.context:
            system += "\n\n## Your assignment\n" + inst.context
        argv = [*env.settings.claude_command]
        argv += ["--resume", inst.session_id] if resume else ["--session-id", inst.session_id]
        argv += [
            "--settings",
            str(settings_path),
            "--mcp-config",
            str(mcp_path),
            "--strict-mcp-config",
            "--append-system-prompt",
            system,
        ]
        if inst.model:
            argv += ["--model", inst.model]
        if env.settings.claude_permission_mode:
            argv += ["--permission-mode", env.settings.claude_permission_mode]
        return Launch(argv=argv, env=dict(env.base_env), resumed=resume)

    def screen_state(self, screen: str) -> State | None:
        tail = "\n".join(screen.splitlines()[-15:])
        if _DIALOG.search(tail):
            return State.WAITING
        if _BUSY.search(tail):
            return State.BUSY
        if "❯" in tail:
            return State.READY
        return None

    def input_pending(self, screen: str, text: str) -> bool:
        return text_in_box(screen, text)

    def task_prompt(self, context: str, instruction: str) -> str:
        return f"{context.strip()}\n\n{instruction.strip()}" if context.strip() else instruction

    def as_prompt(self, text: str) -> str:
        # A "!" first turns Claude's input box into a shell (bash mode): it would run the
        # line itself, past every permission check. One leading space keeps it a prompt.
        return " " + text if text.startswith("!") else text


def _hook(env: LaunchEnv, event: str) -> dict[str, object]:
    """One hook entry: a POST to tcmd's loopback listener, or the `tcmctl hook` command.

    Claude Code skips HTTP hooks on SessionStart (seen in 2.1.332: "HTTP hooks are not
    supported for SessionStart"), so that one event, once per start, stays a command.
    """
    if env.hook_url is None or event in COMMAND_ONLY_EVENTS:  # a process for this event
        command = shlex.join(hook_command_line(env.python))  # `tcmctl hook`, started faster
        return {"type": "command", "command": command, "timeout": 10}
    launch = env.base_env.get("TCM_INSTANCE_LAUNCH", "")  # events of an older launch: ignored
    return {
        "type": "http",
        "url": f"{env.hook_url}/{launch}" if launch.isdigit() else env.hook_url,
        "headers": {"Authorization": "Bearer $TCM_INSTANCE_TOKEN"},  # read from Claude's env
        "allowedEnvVars": ["TCM_INSTANCE_TOKEN"],  # the only variable a header may carry
        "timeout": 10,
    }


def _write_private(path: Path, content: object) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:  # orjson: json.dump with an indent encodes in Python
        fh.write(orjson.dumps(content, option=orjson.OPT_INDENT_2))
