"""Hooks: run the `--settings` hook commands (or POST to hook URLs) for an event; log it."""

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


NO_HTTP = ("SessionStart", "Setup")  # Claude Code skips HTTP hooks on these


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
        hooks = [
            hook
            for group in self.hooks.get(event) or []
            if matches(group.get("matcher"), value)
            for hook in group.get("hooks") or []
            if (hook.get("type", "command") == "command" and hook.get("command"))
            or (hook.get("type") == "http" and hook.get("url") and event not in NO_HTTP)
        ]
        # Threads: a hook keeps running to its end even when the waiting turn is cancelled,
        # and (not daemons) the process waits for them before it exits.
        finished: list[object] = []

        def run(hook: dict[str, Any]) -> None:
            timeout = number(str(hook.get("timeout", 60)), 60)
            if hook.get("type") == "http":
                self.post_hook(hook, timeout, line)
            else:
                self.run_hook(hook["command"], timeout, line)
            with self.cond:
                finished.append(hook)
                self.cond.notify_all()

        for hook in hooks:
            threading.Thread(target=run, args=(hook,)).start()
        self.wait(lambda: len(finished) == len(hooks))

    def post_hook(self, hook: dict[str, Any], timeout: float, payload: str) -> None:
        """POST the payload as Claude does: headers may name only ``allowedEnvVars``."""
        import urllib.error
        import urllib.request

        allowed = set(hook.get("allowedEnvVars") or [])

        def value(m: re.Match[str]) -> str:
            name = m[1] or m[2]
            return os.environ.get(name, "") if name in allowed else ""  # others: empty

        var = r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))"
        headers = {k: re.sub(var, value, str(v)) for k, v in (hook.get("headers") or {}).items()}
        headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 (the settings' URL, as Claude would)
            str(hook["url"]), data=payload.encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
                status: object = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            status = exc
        if self.verbose:
            sys.stderr.write(f"[fake-claude] hook {hook['url']!r} -> {status}\r\n")

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
