"""Turns: a submitted prompt's `@directive` lines acted out, its hooks and its transcript."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid

from .flags import number
from .hooks import Hooks, append_line
from .tasks import Cancelled

TYPE_CHECKING = False  # not `from typing import ...`: importing typing costs a start-up
if TYPE_CHECKING:
    from typing import Any

DIRECTIVES = {
    "reply",
    "work",
    "print",
    "fail",
    "ratelimit",
    "hang",
    "crash",
    "kill",
    "exit",
    "permission",
    "recall",
    "tool",
    "usage",
    "grow",
    "late",
}
DIRECTIVE_LINE = re.compile(r"@([a-z]+)(?:[ \t]+(.*))?")
API_ERRORS = {  # StopFailure error -> (HTTP status, API error type, message)
    "server_error": (529, "overloaded_error", "Overloaded"),
    "rate_limit": (429, "rate_limit_error", "Rate limited"),
    "authentication_failed": (401, "authentication_error", "invalid x-api-key"),
    "invalid_request": (400, "invalid_request_error", "Invalid request"),
}
RATE_LIMITED = "Claude usage limit reached. Your limit will reset at"
USAGE_KEYS = {  # `@usage` argument -> the API's usage field
    "in": "input_tokens",
    "out": "output_tokens",
    "cw": "cache_creation_input_tokens",
    "cr": "cache_read_input_tokens",
}
DEFAULT_USAGE = {"in": 10, "out": 5}  # a turn with no `@usage` line: one message of this
INTERRUPTED = "  ⎿ Interrupted · What should Claude do instead?"


def directives(raw: str) -> list[tuple[str, str]]:
    """The `@name arg` lines of a prompt, in order (unknown `@words` are plain content)."""
    found = []
    for line in raw.split("\n"):
        m = DIRECTIVE_LINE.fullmatch(line.rstrip())
        if m and m.group(1) in DIRECTIVES:
            found.append((m.group(1), (m.group(2) or "").strip()))
    return found


def api_error_line(error: str) -> str:
    status, kind, message = API_ERRORS.get(error, (500, "api_error", "Internal server error"))
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return f"API Error: {status} {json.dumps(body, separators=(',', ':'))}"


class Turns(Hooks):
    """Runs one turn at a time (queued prompts after it); a turn is a Task."""

    def start_turn(self, item: tuple[str, str, str]) -> None:
        raw, prompt, display = item
        if raw.strip() == "/exit":
            self.spawn(self.end_session)
            return
        lines = display.split("\n")
        self.emit("", "> " + lines[0], *("  " + line for line in lines[1:]))
        self.working, self.turn_t0 = True, time.monotonic()
        self.turn = self.spawn(lambda: self.run_turn(raw, prompt))

    def prior_turns(self) -> list[dict[str, Any]]:
        """The fake's own record of each turn (the transcript's ``fake-turn`` lines)."""
        if not os.path.exists(self.transcript):
            return []
        with open(self.transcript, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        return [t for t in lines if t.get("type", "fake-turn") == "fake-turn"]

    def save_turn(self, record: dict[str, Any]) -> None:
        append_line(
            self.transcript, json.dumps({"type": "fake-turn", **record}, ensure_ascii=False)
        )

    def entry(self, kind: str, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """A transcript entry as Claude Code writes one (the fields a reader meets)."""
        return {
            "parentUuid": None,
            "isSidechain": False,
            "userType": "external",
            "cwd": os.getcwd(),
            "sessionId": self.session_id,
            "version": "2.1.328",
            "type": kind,
            "message": message,
            "uuid": str(uuid.uuid4()),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            **extra,
        }

    def write_entries(self, *entries: dict[str, Any]) -> None:
        """Queue entries for the transcript: the batch is written ``flush_s`` later."""
        if not self.unwritten and self.flush_s > 0:
            self.spawn(self.flush_later)
        self.unwritten += [
            json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries
        ]
        if self.flush_s <= 0:
            self.flush_entries()

    def flush_later(self) -> None:
        try:
            self.wait(timeout=self.flush_s)
        finally:  # cancelled at the end of the session: written all the same
            self.flush_entries()

    def flush_entries(self) -> None:
        if self.unwritten:
            append_line(self.transcript, "\n".join(self.unwritten))
            self.unwritten = []

    def assistant_message(self, arg: str, text: str) -> None:
        """One API call's answer: ``in=N out=N cw=N cr=N cw1h=N model=M`` (`@usage`).

        Written as Claude Code does: one line per content block (here a text and a
        tool_use block), every line with the message's id, request id and whole usage.
        """
        fields: dict[str, Any] = {} if arg.strip() else dict(DEFAULT_USAGE)
        fields.update(dict(w.partition("=")[::2] for w in arg.split() if "=" in w))
        usage: dict[str, Any] = {k: int(number(str(fields.get(a, 0)), 0))
                                 for a, k in USAGE_KEYS.items()}  # fmt: skip
        hour = int(number(str(fields.get("cw1h", 0)), 0))
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": usage["cache_creation_input_tokens"] - hour,
            "ephemeral_1h_input_tokens": hour,
        }
        usage["service_tier"] = "standard"
        msg_id, request = "msg_" + uuid.uuid4().hex[:24], "req_" + uuid.uuid4().hex[:24]
        model = str(fields.get("model") or self.model)
        blocks = [{"type": "text", "text": text},
                  {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": "Bash",
                   "input": {"command": "true"}}]  # fmt: skip
        self.write_entries(*(
            self.entry("assistant", {"id": msg_id, "type": "message", "role": "assistant",
                                     "model": model, "content": [block], "stop_reason": None,
                                     "stop_sequence": None, "usage": usage},
                       requestId=request)
            for block in blocks
        ))  # fmt: skip
        self.messages_written += 1

    def run_turn(self, raw: str, prompt: str) -> None:
        record: dict[str, Any] = {
            "prompt_id": str(uuid.uuid4()),
            "prompt": prompt,
            "status": "ok",
            "ts": time.time(),
        }
        try:
            for name, arg in directives(raw):  # a starved machine: the hook runs late
                if name == "late":
                    self.wait(timeout=number(arg, 1.0))
            self.fire(
                "UserPromptSubmit",
                prompt=prompt,
                prompt_id=record["prompt_id"],
                permission_mode=self.mode,
            )
            self.write_entries(self.entry("user", {"role": "user", "content": prompt}))
            self.messages_written = 0
            self.wait(timeout=0.05)
            reply, error = self.play(raw)
        except Cancelled:
            if self.closed:
                raise
            self.save_turn({**record, "status": "interrupted", "reply": ""})
            self.working, self.turn = False, None
            self.text = "\n".join([q for q, _, _ in self.queue] + [self.text]).strip("\n")
            self.queue.clear()
            self.emit(INTERRUPTED)  # and no Stop hook, like the real one
            return
        self.working = False
        if error:
            self.write_entries(self.entry(  # what Claude Code writes for an API error
                "assistant",
                {"id": str(uuid.uuid4()), "model": "<synthetic>", "role": "assistant",
                 "type": "message", "content": [{"type": "text", "text": reply}],
                 "usage": {"input_tokens": 0, "output_tokens": 0,
                           "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}},
                isApiErrorMessage=True,
            ))  # fmt: skip
            self.save_turn({**record, "status": "failed", "error": error, "reply": reply})
            self.emit("  ⎿  " + reply)
            self.fire("StopFailure", error=error, last_assistant_message=reply)
        else:
            if not self.messages_written:
                self.assistant_message("", reply)
            self.save_turn({**record, "reply": reply})
            self.emit("⏺ " + reply)
            self.fire(
                "Stop", last_assistant_message=reply, stop_hook_active=False, background_tasks=[]
            )
        self.turn = None
        if self.queue:
            self.start_turn(self.queue.pop(0))
        else:
            self.redraw()

    def play(self, raw: str) -> tuple[str, str | None]:
        """Act out the prompt's directives in order: (reply or error message, error)."""
        reply = "ok: " + raw.split("\n", 1)[0][:80]
        actions = {  # directives that only act: the turn goes on after them
            "print": lambda arg: self.emit("  ⎿  " + arg),
            "work": lambda arg: self.work(number(arg, 1.0)),
            "tool": self.silent_tool,
            "usage": lambda arg: self.assistant_message(arg, "working"),
            "grow": lambda arg: self.ballast.append(b"\x01" * (int(number(arg, 1)) << 20)),
        }
        for name, arg in directives(raw):
            if name in actions:
                actions[name](arg)
            elif name == "reply":
                reply = arg
            elif name == "recall":
                reply = f"turns={len(self.prior_turns())}"
            elif name == "permission" and not self.permission():
                return "denied", None
            elif name == "crash":
                os._exit(int(number(arg, 1)))
            elif name == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif name == "fail":
                return api_error_line(arg or "server_error"), arg or "server_error"
            elif name == "ratelimit":
                return f"{RATE_LIMITED} {arg or '3pm'}.", "rate_limit"
            elif name in ("hang", "exit"):
                if name == "exit":
                    self.end_session()
                self.wait()  # stuck (or ended): only a cancel gets out
        return reply, None

    def tool_call(self, command: str) -> dict[str, Any]:
        return {
            "tool_name": "Bash",
            "tool_use_id": "toolu_" + uuid.uuid4().hex[:24],
            "tool_input": {"command": command, "description": "fake work"},
        }

    def work(self, seconds: float) -> None:
        """Stay busy, with a Bash PreToolUse/PostToolUse pair about once a second."""
        self.emit(f"⏺ Bash(sleep {seconds:g})")
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            call = self.tool_call(f"sleep {min(1.0, left):.1f}")
            self.fire("PreToolUse", **call)
            self.wait(timeout=min(1.0, max(0.0, end - time.monotonic())))
            self.fire("PostToolUse", **call)

    def silent_tool(self, arg: str) -> None:
        """``NAME SECONDS``: one tool call that runs that long with no hook and no output."""
        name, _, seconds = arg.partition(" ")
        call = {**self.tool_call(""), "tool_name": name or "Bash", "tool_input": {}}
        self.emit(f"⏺ {call['tool_name']}(…)")
        self.fire("PreToolUse", **call)
        self.wait(timeout=number(seconds, 1.0))
        self.fire("PostToolUse", **call)

    def permission(self) -> bool:
        """Show the permission dialog; True when the tool may run."""
        call = self.tool_call("echo fake")
        self.emit("⏺ Bash(echo fake)")
        self.fire("PreToolUse", **call)
        self.wait(timeout=max(0.0, 0.7 - (time.monotonic() - self.turn_t0)))
        dialog: list[Any] = [0, None]
        self.dialog = dialog
        self.redraw()
        notify = self.spawn(self.notify_later)
        try:
            self.wait(lambda: dialog[1] is not None)
            choice = dialog[1]
        finally:
            self.dialog = None
            notify.cancel()
            self.redraw()
        if choice == 2:
            return False
        self.fire("PostToolUse", **call)
        return True

    def notify_later(self) -> None:
        self.wait(timeout=self.notify_s)
        self.fire(
            "Notification",
            notification_type="permission_prompt",
            message="Claude needs your permission to use Bash",
        )

    def end_session(self) -> None:
        if self.exit_code is not None:
            return
        self.fire("SessionEnd", reason="prompt_input_exit")
        self.finish(0)
