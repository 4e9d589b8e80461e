"""Hooks: run the `--settings` hook commands for an event, and log its payload."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

from .flags import number
from .tasks import Runtime

TYPE_CHECKING = False  # not `from typing import ...`: importing typing costs a start-up
if TYPE_CHECKING:
    from typing import Any

MATCH_FIELD = {
    "PreToolUse": "tool_name",
    "PostToolUse": "tool_name",
    "SessionStart": "source",
    "Notification": "notification_type",
    "SessionEnd": "reason",
    "StopFailure": "error",
}


def append_line(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def matches(matcher: str | None, value: Any) -> bool:
    if not matcher or matcher == "*" or not isinstance(value, str):
        return True
    try:
        return re.fullmatch(matcher, value) is not None
    except re.error:
        return matcher == value


class Hooks(Runtime):
    """Fires hook events: each matching command runs as `/bin/sh -c` with the payload."""

    def fire(self, event: str, **extra: Any) -> None:
        """Log the payload and run the event's hook commands; wait for them (in a Task)."""
        payload = {
            "session_id": self.session_id,
            "transcript_path": str(self.transcript),
            "cwd": os.getcwd(),
            "hook_event_name": event,
            **extra,
        }
        line = json.dumps(payload, ensure_ascii=False)
        if self.event_log:
            append_line(self.event_log, line)
        value = extra.get(MATCH_FIELD.get(event, ""))
        commands = [
            (hook["command"], number(str(hook.get("timeout", 60)), 60))
            for group in self.hooks.get(event) or []
            if matches(group.get("matcher"), value)
            for hook in group.get("hooks") or []
            if hook.get("type", "command") == "command" and hook.get("command")
        ]
        # Threads: a hook keeps running to its end even when the waiting turn is cancelled,
        # and (not daemons) the process waits for them before it exits.
        finished: list[str] = []

        def run(command: str, timeout: float) -> None:
            self.run_hook(command, timeout, line)
            with self.cond:
                finished.append(command)
                self.cond.notify_all()

        for command, timeout in commands:
            threading.Thread(target=run, args=(command, timeout)).start()
        self.wait(lambda: len(finished) == len(commands))

    def run_hook(self, command: str, timeout: float, payload: str) -> None:
        env = {**os.environ, "CLAUDE_PROJECT_DIR": os.getcwd()}
        try:
            status: object = subprocess.run(
                ["/bin/sh", "-c", command],
                input=payload.encode(),
                capture_output=True,
                timeout=timeout,
                env=env,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
        except OSError as exc:
            status = exc
        if self.verbose:
            sys.stderr.write(f"[fake-claude] hook {command!r} -> {status}\r\n")
