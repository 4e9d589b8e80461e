#!/usr/bin/env python3
"""fake_claude: a stdlib-only stand-in for the `claude` CLI, for tests driving it in tmux.

It behaves like Claude Code where a tmux-driving daemon can see it: the command-line
flags, the screen (header, transcript, a `Working… (Ns · esc to interrupt)` spinner, the
input box), raw-mode input with bracketed paste, the hooks named in `--settings`, and
timing quirks (an Enter sent before it is ready is dropped). What a turn does is chosen
by `@directive` lines in the prompt; see tests/fakes/README.md for the list and the
environment variables (FAKE_CLAUDE_HOME, FAKE_CLAUDE_EVENT_LOG, FAKE_CLAUDE_START_MS,
FAKE_CLAUDE_NOTIFY_DELAY_MS).
"""

from __future__ import annotations

import codecs
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
import unicodedata
import uuid

TYPE_CHECKING = False  # not `from typing import ...`: importing typing costs a start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

VERSION = "2.1.328 (Claude Code)"
VALUE_FLAGS = {"--session-id", "--resume", "--settings", "--mcp-config",
               "--append-system-prompt", "--model", "--permission-mode"}
BOOL_FLAGS = {"--strict-mcp-config", "--dangerously-skip-permissions", "--verbose"}
MODES = ("default", "manual", "acceptEdits", "auto", "plan", "dontAsk", "bypassPermissions")
DIRECTIVES = {"reply", "work", "print", "fail", "ratelimit", "hang", "crash", "kill", "exit",
              "permission", "recall"}
MATCH_FIELD = {"PreToolUse": "tool_name", "PostToolUse": "tool_name", "SessionStart": "source",
               "Notification": "notification_type", "SessionEnd": "reason", "StopFailure": "error"}
API_ERRORS = {  # StopFailure error -> (HTTP status, API error type, message)
    "server_error": (529, "overloaded_error", "Overloaded"),
    "rate_limit": (429, "rate_limit_error", "Rate limited"),
    "authentication_failed": (401, "authentication_error", "invalid x-api-key"),
    "invalid_request": (400, "invalid_request_error", "Invalid request"),
}
PASTE_MAX_CHARS, PASTE_MAX_LINES = 800, 3
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
ESC_SEQ = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|O.)")
ESC_PARTIAL = re.compile(r"\x1b(\[[0-?]*[ -/]*|O)?")
DIRECTIVE_LINE = re.compile(r"@([a-z]+)(?:[ \t]+(.*))?")
CONTROL_KEYS = {"\r": "enter", "\x7f": "backspace", "\x08": "backspace", "\x03": "ctrl-c"}
SPINNER = "·✢✳✶✻✽"
OPTIONS = ("Yes", "Yes, and don't ask again", "No")
RATE_LIMITED = "Claude usage limit reached. Your limit will reset at"
INTERRUPTED = "  ⎿ Interrupted · What should Claude do instead?"


class UsageError(Exception):
    """A start-up error: printed to stderr, exit status 1."""


def parse_args(argv: list[str]) -> dict[str, Any]:
    """Parse Claude-style flags; unknown ones raise UsageError like commander does."""
    opts: dict[str, Any] = {"allowedTools": [], "prompt": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in ("-v", "--version"):
            print(VERSION)
            sys.exit(0)
        if name in BOOL_FLAGS and not eq:
            opts[name[2:]] = True
        elif name in VALUE_FLAGS:
            if not eq:
                if i == len(argv):
                    raise UsageError(f"error: option '{name} <value>' argument missing")
                inline, i = argv[i], i + 1
            opts[name[2:]] = inline
        elif name in ("--allowedTools", "--allowed-tools"):
            values = [inline] if eq else []
            while i < len(argv) and not argv[i].startswith("-"):  # variadic, as in commander
                values.append(argv[i])
                i += 1
            if not values:
                raise UsageError(f"error: option '{name} <tools...>' argument missing")
            opts["allowedTools"] += values
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"error: unknown option '{name}'")
        elif opts["prompt"] is None:
            opts["prompt"] = arg
        else:
            raise UsageError(f"error: too many arguments. Expected 1 argument but got {arg!r}.")
    return opts


def load_json(value: str, what: str) -> dict[str, Any]:
    """Read a JSON object given inline (`{...}`) or as a file path."""
    try:
        if not value.lstrip().startswith("{"):
            with open(value, encoding="utf-8") as f:
                value = f.read()
        data = json.loads(value)
    except FileNotFoundError:
        raise UsageError(f"Error: {what} file not found: {value}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"Error: Invalid {what} {value}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"Error: Invalid {what} {value}: not a JSON object")
    return data


def directives(raw: str) -> list[tuple[str, str]]:
    """The `@name arg` lines of a prompt, in order (unknown `@words` are plain content)."""
    found = []
    for line in raw.split("\n"):
        m = DIRECTIVE_LINE.fullmatch(line.rstrip())
        if m and m.group(1) in DIRECTIVES:
            found.append((m.group(1), (m.group(2) or "").strip()))
    return found


def number(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def api_error_line(error: str) -> str:
    status, kind, message = API_ERRORS.get(error, (500, "api_error", "Internal server error"))
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return f"API Error: {status} {json.dumps(body, separators=(',', ':'))}"


def wrap(text: str, width: int) -> list[str]:
    """Split one line into pieces of at most `width` terminal cells (at least one piece)."""
    pieces, cur, used = [], "", 0
    for ch in text:
        w = 0 if unicodedata.combining(ch) else 1 + (unicodedata.east_asian_width(ch) in "WF")
        if used + w > width:
            pieces.append(cur)
            cur, used = "", 0
        cur += ch
        used += w
    return [*pieces, cur]


def clean_paste(text: str) -> str:
    text = text.replace("\r", "\n").replace("\t", "    ")
    return "".join(ch for ch in text if ch == "\n" or (ch >= " " and ch != "\x7f"))


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


class Cancelled(Exception):
    """Raised in a task at its next wait once it is cancelled (Escape, Ctrl-C, the end)."""


class Task(threading.Thread):
    """A turn or another job that waits: it runs holding the fake's lock, which only its
    waits (``FakeClaude.wait``) release; ``cancel`` makes the current or next wait raise."""

    def __init__(self, fake: FakeClaude, job: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fake, self.job, self.cancelled = fake, job, False

    def cancel(self) -> None:
        with self.fake.cond:
            self.cancelled = True
            self.fake.cond.notify_all()

    def run(self) -> None:
        fake = self.fake
        with fake.cond:
            try:
                self.job()
            except Cancelled:
                pass
            except Exception as exc:
                if not fake.closed:
                    sys.stderr.write(f"[fake-claude] task failed: {exc!r}\r\n")
                    fake.finish(70)
            finally:
                fake.tasks.discard(self)


class FakeClaude:
    """One interactive session: screen, input, turns and hooks.

    Threads, not asyncio (importing asyncio would triple the start-up time, and tests
    start hundreds of these): the main thread reads keys and runs timers, each turn and
    each other waiting job is a Task, each hook command a thread. All of them hold
    ``cond`` (one lock) while they touch the session, so the code reads as if it were one
    thread, and a Task gives the lock up only where it waits.
    """

    def __init__(self, opts: dict[str, Any], session_id: str, transcript: str) -> None:
        self.opts = opts
        self.session_id = session_id
        self.transcript = transcript
        self.resumed = bool(opts.get("resume"))
        settings = load_json(opts["settings"], "settings") if opts.get("settings") else {}
        self.hooks: dict[str, Any] = settings.get("hooks") or {}
        self.model = opts.get("model") or "claude-sonnet-4-5"
        mode = opts.get("permission-mode") or (
            "bypassPermissions" if opts.get("dangerously-skip-permissions") else "default")
        self.mode = "default" if mode == "manual" else mode
        self.verbose = bool(opts.get("verbose"))
        self.event_log = os.environ.get("FAKE_CLAUDE_EVENT_LOG")
        self.start_s = number(os.environ.get("FAKE_CLAUDE_START_MS", ""), 150) / 1000
        self.notify_s = number(os.environ.get("FAKE_CLAUDE_NOTIFY_DELAY_MS", ""), 1000) / 1000
        # screen
        self.pending: list[str] = []  # permanent lines not yet written
        self.history: list[str] = []  # every permanent line, to repaint after a resize
        self.drawn = 0  # rows of the redrawable bottom area now on screen
        self.cols = 0  # terminal width at the last draw
        self.closed = False
        # input
        self.ready = False
        self.inbuf = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.paste: str | None = None  # inside a bracketed paste: its text so far
        self.esc_timer: list[Any] | None = None
        self.text = ""
        self.pastes: dict[str, str] = {}  # placeholder shown in the box -> pasted text
        self.ctrl_c_at = -10.0
        # turns
        self.turn: Task | None = None
        self.working = False  # spinner shown; Escape interrupts
        self.turn_t0 = 0.0
        self.queue: list[tuple[str, str, str]] = []  # (raw, prompt, display)
        self.dialog: list[Any] | None = None  # [selected option, chosen option or None]
        self.tasks: set[Task] = set()
        # threads and the main loop
        self.cond = threading.Condition(threading.RLock())
        self.timers: list[list[Any]] = []  # [due (monotonic), callback]
        self.wake_r = self.wake_w = -1  # a pipe that wakes the main loop: an exit, a signal
        self.reading = True  # stdin still open
        self.resized = False
        self.exit_code: int | None = None

    # ---- screen -------------------------------------------------------------------
    def write(self, data: str) -> None:
        sys.stdout.buffer.write(data.encode())
        sys.stdout.buffer.flush()

    def emit(self, *lines: str) -> None:
        """Add permanent output lines above the input box."""
        for line in lines:
            self.pending += line.split("\n")
            self.history += line.split("\n")
        self.redraw()

    def bottom(self, width: int) -> list[str]:
        rows = []
        if self.working:
            secs = time.monotonic() - self.turn_t0
            spin = SPINNER[int(secs / 0.2) % len(SPINNER)]
            rows += ["", f"{spin} Working… ({int(secs)}s · esc to interrupt)"]
        rows += ["  (queued) " + queued.split("\n")[0] for queued, _, _ in self.queue]
        rows.append("─" * width)
        if self.dialog is not None:
            rows += [" Bash command", "   echo fake", " Do you want to proceed?"]
            rows += [f"{'❯' if i == self.dialog[0] else ' '} {i + 1}. {opt}"
                     for i, opt in enumerate(OPTIONS)]
        else:
            for n, line in enumerate(self.text.split("\n")):
                rows += [("❯ " if n == 0 and k == 0 else "  ") + piece
                         for k, piece in enumerate(wrap(line, width - 2))]
        rows.append("─" * width)
        if time.monotonic() - self.ctrl_c_at < 2:
            rows.append("  Press Ctrl-C again to exit")
        elif not self.turn:  # not while busy, nor while the Stop hooks run
            rows.append("  ? for shortcuts")
        return [wrap(row, width)[0] for row in rows]

    def redraw(self) -> None:
        """Erase the bottom area, write pending permanent lines, draw the bottom area."""
        if self.closed:
            return
        cols = os.get_terminal_size(1).columns if os.isatty(1) else 200
        out, lines = [], self.pending
        if self.drawn and cols != self.cols:  # resized: tmux rewrapped old rows; repaint all
            out.append("\x1b[H\x1b[2J\x1b[3J")
            lines = self.history
        elif self.drawn:
            out.append("\r" + (f"\x1b[{self.drawn - 1}A" if self.drawn > 1 else "") + "\x1b[J")
        out += [line + "\r\n" for line in lines]
        self.pending = []
        rows = self.bottom(max(20, cols - 1))
        self.drawn, self.cols = len(rows), cols
        self.write("".join(out) + "\r\n".join(rows))

    # ---- hooks ----------------------------------------------------------------------
    def fire(self, event: str, **extra: Any) -> None:
        """Log the payload and run the event's hook commands; wait for them (in a Task)."""
        payload = {"session_id": self.session_id, "transcript_path": str(self.transcript),
                   "cwd": os.getcwd(), "hook_event_name": event, **extra}
        line = json.dumps(payload, ensure_ascii=False)
        if self.event_log:
            append_line(self.event_log, line)
        value = extra.get(MATCH_FIELD.get(event, ""))
        commands = [(hook["command"], number(str(hook.get("timeout", 60)), 60))
                    for group in self.hooks.get(event) or []
                    if matches(group.get("matcher"), value)
                    for hook in group.get("hooks") or []
                    if hook.get("type", "command") == "command" and hook.get("command")]
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
                ["/bin/sh", "-c", command], input=payload.encode(), capture_output=True,
                timeout=timeout, env=env, check=False).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
        except OSError as exc:
            status = exc
        if self.verbose:
            sys.stderr.write(f"[fake-claude] hook {command!r} -> {status}\r\n")

    # ---- input ----------------------------------------------------------------------
    def on_input(self) -> None:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:  # the terminal went away
            self.reading = False
            self.finish(0)
            return
        self.cancel_timer(self.esc_timer)
        self.inbuf += self.decoder.decode(data)  # incremental: reads may split a character
        self.parse()
        if self.inbuf.startswith("\x1b") and self.paste is None:  # lone Escape or a slow CSI
            self.esc_timer = self.call_later(0.05, self.flush_escape)
        self.redraw()

    def flush_escape(self) -> None:
        self.inbuf = self.inbuf[1:]
        self.key("esc")
        self.parse()
        self.redraw()

    def parse(self) -> None:
        buf, i = self.inbuf, 0
        while i < len(buf):
            if self.paste is not None:
                end = buf.find(PASTE_END, i)
                if end < 0:  # keep a possibly split end marker for the next read
                    keep = next((k for k in range(len(PASTE_END) - 1, 0, -1)
                                 if buf.endswith(PASTE_END[:k])), 0)
                    self.paste += buf[i:len(buf) - keep]
                    i = len(buf) - keep
                    break
                text, self.paste, i = self.paste + buf[i:end], None, end + len(PASTE_END)
                self.key("paste", clean_paste(text))
                continue
            ch = buf[i]
            if ch == "\x1b":
                m = ESC_SEQ.match(buf, i)
                if m:
                    i = m.end()
                    if m.group() == PASTE_START:
                        self.paste = ""
                    elif m.group() in ("\x1b[A", "\x1b[B"):
                        self.key("up" if m.group() == "\x1b[A" else "down")
                    continue
                if ESC_PARTIAL.fullmatch(buf, i):
                    break  # wait for the rest (or the Escape timeout)
                self.key("esc")
            elif ch in CONTROL_KEYS:
                self.key(CONTROL_KEYS[ch])
            elif ch in "\t\n" or ch >= " ":
                self.key("text", ch.replace("\t", "    "))
            i += 1
        self.inbuf = buf[i:]

    def key(self, kind: str, text: str = "") -> None:
        if not self.ready:  # drawn into the box, but Enter (and everything else) is lost
            if kind == "text":
                self.text += text
        elif self.dialog is not None:
            self.dialog_key(kind, text)
        elif kind == "text":
            self.text += text
        elif kind == "paste":
            self.insert_paste(text)
        elif kind == "backspace":
            ref = next((r for r in self.pastes if self.text.endswith(r)), None)
            self.text = self.text[:-len(ref)] if ref else self.text[:-1]
        elif kind == "enter":
            self.enter()
        elif kind == "esc" and self.working and self.turn:
            self.turn.cancel()
        elif kind == "ctrl-c":
            self.ctrl_c()

    def insert_paste(self, text: str) -> None:
        if len(text) > PASTE_MAX_CHARS or len(text.splitlines()) > PASTE_MAX_LINES:
            n, lines = len(self.pastes) + 1, text.count("\n")
            ref = f"[Pasted text #{n} +{lines} lines]" if lines else f"[Pasted text #{n}]"
            self.pastes[ref] = text
            text = ref
        self.text += text

    def expand(self, text: str, wrapped: bool) -> str:
        for n, (ref, pasted) in enumerate(self.pastes.items(), 1):
            tag = f'pasted_content id="{n}"'
            text = text.replace(ref, f"\n\n<{tag}>\n{pasted}\n</{tag}>" if wrapped else pasted)
        return text

    def enter(self) -> None:
        if self.text.endswith("\\"):  # backslash + Enter inserts a newline, as in Claude
            self.text = self.text[:-1] + "\n"
            return
        if not self.text.strip():
            return
        text = self.text.removesuffix("\n")
        item = (self.expand(text, False), self.expand(text, True), text)
        self.text, self.pastes = "", {}
        if self.turn:
            self.queue.append(item)
        else:
            self.start_turn(item)

    def ctrl_c(self) -> None:
        now = time.monotonic()
        if self.turn:
            if self.working:
                self.turn.cancel()
        elif self.text:
            self.text, self.pastes = "", {}
        elif now - self.ctrl_c_at < 2:
            self.spawn(self.end_session)
        else:
            self.ctrl_c_at = now
            self.call_later(2.05, self.redraw)

    def dialog_key(self, kind: str, text: str) -> None:
        assert self.dialog is not None
        if self.dialog[1] is not None:
            return
        if kind == "text" and text in ("1", "2", "3"):
            self.dialog[1] = int(text) - 1
        elif kind == "enter":
            self.dialog[1] = self.dialog[0]
        elif kind == "esc":
            self.dialog[1] = 2
        elif kind in ("up", "down"):
            self.dialog[0] = (self.dialog[0] + (1 if kind == "down" else -1)) % len(OPTIONS)
        elif kind == "ctrl-c" and self.turn:
            self.turn.cancel()

    # ---- turns ------------------------------------------------------------------------
    def spawn(self, job: Callable[[], object]) -> Task:
        task = Task(self, job)
        self.tasks.add(task)
        task.start()  # it runs once the caller lets the lock go
        return task

    def wait(self, until: Callable[[], bool] = lambda: False, timeout: float | None = None) -> None:
        """In a Task: give the lock up until ``until()`` holds or ``timeout`` s pass.

        Raises Cancelled once the task is cancelled, like an await in asyncio would.
        """
        task = threading.current_thread()
        assert isinstance(task, Task)
        self.cond.wait_for(lambda: task.cancelled or until(), timeout)
        if task.cancelled:
            raise Cancelled

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
        if not os.path.exists(self.transcript):
            return []
        with open(self.transcript, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def save_turn(self, record: dict[str, Any]) -> None:
        append_line(self.transcript, json.dumps(record, ensure_ascii=False))

    def run_turn(self, raw: str, prompt: str) -> None:
        record: dict[str, Any] = {"prompt_id": str(uuid.uuid4()), "prompt": prompt,
                                  "status": "ok", "ts": time.time()}
        try:
            self.fire("UserPromptSubmit", prompt=prompt, prompt_id=record["prompt_id"],
                            permission_mode=self.mode)
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
            self.save_turn({**record, "status": "failed", "error": error, "reply": reply})
            self.emit("  ⎿  " + reply)
            self.fire("StopFailure", error=error, last_assistant_message=reply)
        else:
            self.save_turn({**record, "reply": reply})
            self.emit("⏺ " + reply)
            self.fire("Stop", last_assistant_message=reply, stop_hook_active=False,
                            background_tasks=[])
        self.turn = None
        if self.queue:
            self.start_turn(self.queue.pop(0))
        else:
            self.redraw()

    def play(self, raw: str) -> tuple[str, str | None]:
        """Act out the prompt's directives in order: (reply or error message, error)."""
        reply = "ok: " + raw.split("\n", 1)[0][:80]
        for name, arg in directives(raw):
            if name == "reply":
                reply = arg
            elif name == "print":
                self.emit("  ⎿  " + arg)
            elif name == "recall":
                reply = f"turns={len(self.prior_turns())}"
            elif name == "work":
                self.work(number(arg, 1.0))
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
        return {"tool_name": "Bash", "tool_use_id": "toolu_" + uuid.uuid4().hex[:24],
                "tool_input": {"command": command, "description": "fake work"}}

    def work(self, seconds: float) -> None:
        """Stay busy, with a Bash PreToolUse/PostToolUse pair about once a second."""
        self.emit(f"⏺ Bash(sleep {seconds:g})")
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            call = self.tool_call(f"sleep {min(1.0, left):.1f}")
            self.fire("PreToolUse", **call)
            self.wait(timeout=min(1.0, max(0.0, end - time.monotonic())))
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
        self.fire("Notification", notification_type="permission_prompt",
                        message="Claude needs your permission to use Bash")

    def end_session(self) -> None:
        if self.exit_code is not None:
            return
        self.fire("SessionEnd", reason="prompt_input_exit")
        self.finish(0)

    def finish(self, code: int) -> None:
        """End the session with exit status ``code`` (the first one given wins)."""
        if self.exit_code is None:
            self.exit_code = code
            os.write(self.wake_w, b"x")

    # ---- the main thread --------------------------------------------------------------
    def call_later(self, delay_s: float, callback: Callable[[], object]) -> list[Any]:
        timer = [time.monotonic() + delay_s, callback]
        self.timers.append(timer)
        return timer

    def cancel_timer(self, timer: list[Any] | None) -> None:
        if timer in self.timers:
            self.timers.remove(timer)

    def run_due_timers(self) -> None:
        now = time.monotonic()
        for timer in sorted((t for t in self.timers if t[0] <= now), key=lambda t: t[0]):
            if timer in self.timers:  # an earlier callback may have cancelled it
                self.timers.remove(timer)
                timer[1]()

    def tick(self) -> None:
        self.call_later(0.2, self.tick)
        if self.working:
            self.redraw()

    def become_ready(self) -> None:
        self.ready = True
        self.write("\x1b[?2004h")
        self.tick()
        self.spawn(self.start_session)

    def start_session(self) -> None:
        self.fire("SessionStart", source="resume" if self.resumed else "startup",
                  model=self.model)
        if self.opts["prompt"]:
            self.text = self.opts["prompt"]
            self.enter()
            self.redraw()

    def on_resize(self, signum: int, frame: object) -> None:
        self.resized = True  # the wakeup fd wakes the main loop, which redraws

    def serve(self) -> int:
        """Read keys, redraw on a resize and run timers until the session ends."""
        while self.exit_code is None:
            with self.cond:
                due = min((t[0] for t in self.timers), default=None)
            timeout = None if due is None else max(0.0, due - time.monotonic())
            fds = [0, self.wake_r] if self.reading else [self.wake_r]
            ready = select.select(fds, [], [], timeout)[0]
            with self.cond:
                if self.wake_r in ready:
                    os.read(self.wake_r, 512)
                if self.resized:
                    self.resized = False
                    self.redraw()
                if 0 in ready:
                    self.on_input()
                self.run_due_timers()
                self.cond.notify_all()  # a key may be what a Task waits for (a dialog answer)
        return self.exit_code

    def run(self) -> int:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        saved = termios.tcgetattr(0) if os.isatty(0) else None
        if saved:
            tty.setraw(0, termios.TCSANOW)  # TCSANOW: keep bytes already typed
        try:
            with self.cond:
                self.emit(f"✻ Fake Claude Code (session {self.session_id})",
                          f"  {self.model} · {os.getcwd()}")
                if self.resumed:
                    turns = self.prior_turns()
                    self.emit(f"Resumed conversation ({len(turns)} prior turns)")
                    for turn in turns:
                        first = next((x for x in turn["prompt"].split("\n") if x.strip()), "")
                        self.emit("", "> " + first, "⏺ " + turn.get("reply", ""))
                signal.set_wakeup_fd(self.wake_w)
                signal.signal(signal.SIGWINCH, self.on_resize)
                self.call_later(self.start_s, self.become_ready)
            return self.serve()
        finally:
            with self.cond:
                self.redraw()
                self.closed = True
                for task in self.tasks:  # as asyncio.run cancels what is left
                    task.cancelled = True
                self.cond.notify_all()
                self.write("\x1b[?2004l\r\n")
            if saved:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)


def main(argv: list[str]) -> int:
    try:
        opts = parse_args(argv)
        if opts.get("session-id") and opts.get("resume"):
            raise UsageError("Error: --session-id can only be used with --continue or "
                             "--resume if --fork-session is also specified.")
        mode = opts.get("permission-mode")
        if mode is not None and mode not in MODES:
            raise UsageError(f"error: option '--permission-mode <mode>' argument '{mode}' is "
                             f"invalid. Allowed choices are {', '.join(MODES)}.")
        bypass = opts.get("dangerously-skip-permissions") or mode == "bypassPermissions"
        if bypass and os.geteuid() == 0 and os.environ.get("IS_SANDBOX") != "1":
            raise UsageError("--dangerously-skip-permissions cannot be used with root/sudo "
                             "privileges for security reasons")
        if opts.get("mcp-config"):
            load_json(opts["mcp-config"], "MCP config")
        session_id = opts.get("resume") or opts.get("session-id") or str(uuid.uuid4())
        try:
            session_id = str(uuid.UUID(session_id))
        except ValueError:
            raise UsageError("Error: Invalid session ID. Must be a valid UUID.") from None
        home = os.environ.get("FAKE_CLAUDE_HOME") or os.path.expanduser("~/.fake-claude")
        os.makedirs(home, exist_ok=True)
        transcript = os.path.join(os.path.realpath(home), f"{session_id}.jsonl")
        if opts.get("session-id") and os.path.exists(transcript):
            raise UsageError(f"Error: Session ID {session_id} is already in use.")
        if opts.get("resume") and not os.path.exists(transcript):
            raise UsageError(f"No conversation found with session ID: {session_id}")
        fake = FakeClaude(opts, session_id, transcript)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return fake.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
