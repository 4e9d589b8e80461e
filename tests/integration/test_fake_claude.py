"""The fake `claude` (tests/fakes/fake_claude.py) driven in a private tmux server.

Each test gets its own `tmux -L` server started with `remain-on-exit on`; events are read
from FAKE_CLAUDE_EVENT_LOG and from a real hook command named in the --settings file.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fakes import FAKE_CLAUDE as FAKE
from tests.support import wait_until

EVENTS = ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Notification",
          "Stop", "StopFailure", "SessionEnd")
T = TypeVar("T")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line still being written
                break
    return rows


class Harness:
    """A private tmux server, a --settings file whose hooks log to hooks.jsonl, state dirs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.socket = f"fakeclaude-{uuid.uuid4().hex[:12]}"
        self.conf = tmp_path / "tmux.conf"
        self.conf.write_text("set -g remain-on-exit on\n")
        self.home = tmp_path / "home"
        self.hook_log = tmp_path / "hooks.jsonl"
        hook = tmp_path / "hook.sh"
        hook.write_text('#!/bin/sh\n{ cat; echo; } >> "$1"\n')
        hook.chmod(0o755)
        command = f"{shlex.quote(str(hook))} {shlex.quote(str(self.hook_log))}"
        entry = [{"matcher": "", "hooks": [{"type": "command", "command": command, "timeout": 10}]}]
        self.settings = tmp_path / "settings.json"
        self.settings.write_text(json.dumps({"hooks": dict.fromkeys(EVENTS, entry)}))
        self.started = False

    def tmux(self, *args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, "-f", str(self.conf), *args],
                              input=stdin, capture_output=True, check=False, timeout=10)
        if done.returncode:
            raise RuntimeError(f"tmux {args}: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def start(self, *flags: str, name: str = "agent", **env: str) -> Pane:
        """Run the fake in a new session (argv list, no shell) with the hook settings."""
        pane = Pane(self, name)
        env = {"FAKE_CLAUDE_HOME": str(self.home), "FAKE_CLAUDE_EVENT_LOG": str(pane.log), **env}
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        self.tmux("new-session", "-d", "-s", name, "-x", "200", "-y", "50", "-c", str(self.tmp),
                  *env_args, str(FAKE), "--settings", str(self.settings), *flags)
        self.started = True
        return pane

    def hook_payloads(self, event: str) -> list[dict[str, Any]]:
        return [e for e in read_jsonl(self.hook_log) if e["hook_event_name"] == event]


class Pane:
    """One fake agent in a tmux session of the harness."""

    def __init__(self, harness: Harness, name: str) -> None:
        self.h = harness
        self.target = f"={name}:"
        self.log = harness.tmp / f"events-{name}.jsonl"

    def screen(self, history: bool = True) -> str:
        return self.h.tmux("capture-pane", "-p", "-J", "-t", self.target,
                           *(("-S", "-") if history else ()))

    def shows(self, text: str, history: bool = True) -> bool:
        return text in self.screen(history)

    def wait(self, predicate: Callable[[], T], what: str, timeout_s: float = 5.0) -> T:
        """wait_until, failing with the screen and the events seen so far."""
        try:
            return wait_until(predicate, timeout_s, what=what)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nevents: {self.names()}\nscreen:\n{self.screen()}") from None

    def wait_for(self, text: str, history: bool = True, present: bool = True) -> None:
        """Wait until `text` is on screen (or, with present=False, gone from it)."""
        self.wait(lambda: self.shows(text, history) == present,
                  f"{text!r} {'on' if present else 'off'} screen")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in read_jsonl(self.log) if name in (None, e["hook_event_name"])]

    def names(self) -> list[str]:
        return [e["hook_event_name"] for e in self.events()]

    def wait_event(self, name: str, count: int = 1, timeout_s: float = 5.0) -> dict[str, Any]:
        """The `count`-th event called `name`, once it has been fired."""
        found = self.wait(lambda: len(self.events(name)) >= count and self.events(name),
                          f"{name} #{count}", timeout_s)
        return found[count - 1]

    def paste(self, text: str) -> None:
        """Bracketed paste, the way the daemon delivers a prompt."""
        self.h.tmux("load-buffer", "-b", "prompt", "-", stdin=text.encode())
        self.h.tmux("paste-buffer", "-p", "-d", "-b", "prompt", "-t", self.target)

    def keys(self, *keys: str) -> None:
        self.h.tmux("send-keys", "-t", self.target, *keys)

    def submit(self, text: str) -> None:
        self.paste(text)
        self.keys("Enter")

    def exit_status(self) -> int:
        """Wait for the pane to die and return its exit status."""

        def status() -> str | None:
            dead, _, code = self.h.tmux(
                "display-message", "-p", "-t", self.target, "#{pane_dead} #{pane_dead_status}",
            ).strip().partition(" ")
            if dead == "1" and not code:
                self.h.tmux("run-shell", "true")  # tmux 3.3a may wait to reap until a job runs
            return code if dead == "1" else None

        return int(self.wait(status, f"{self.target} to exit", 10))


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    if h.started:
        path = h.tmux("display-message", "-p", "#{socket_path}").strip()
        h.tmux("kill-server")
        Path(path).unlink(missing_ok=True)


def test_start_fires_session_start_and_draws_the_box(harness: Harness, tmp_path: Path) -> None:
    mcp = tmp_path / "mcp.json"
    mcp.write_text('{"mcpServers": {}}')
    pane = harness.start(
        "--mcp-config", str(mcp), "--strict-mcp-config", "--model", "opus",
        "--append-system-prompt", "be brief", "--permission-mode", "acceptEdits",
        "--allowedTools", "mcp__tcm__spawn", "Bash(git:*)", "--verbose")
    start = pane.wait_event("SessionStart")
    assert start["source"] == "startup"
    assert start["model"] == "opus"
    assert start["cwd"] == str(tmp_path)
    assert start["transcript_path"] == str(harness.home / f"{start['session_id']}.jsonl")
    pane.wait_for("❯")
    assert pane.shows(f"✻ Fake Claude Code (session {start['session_id']})")
    # the hook command from --settings got the very same payload on its stdin
    assert wait_until(lambda: harness.hook_payloads("SessionStart"), what="hook") == [start]
    pane.submit("hi")
    assert pane.wait_event("UserPromptSubmit")["permission_mode"] == "acceptEdits"


def test_pasted_prompt_arrives_exactly_and_stop_carries_the_reply(
    harness: Harness, tmp_path: Path,
) -> None:
    prompt = ("say \"hi\" and 'bye' $(touch pwned) `touch pwned2` back\\slash\n"
              "ünïcødé ✓ 日本語 🎉\n"
              "\tlast line, tab first")
    pane = harness.start()
    pane.wait_event("SessionStart")
    pane.submit(prompt)
    submitted = pane.wait_event("UserPromptSubmit")
    assert submitted["prompt"] == prompt.replace("\t", "    ")
    assert uuid.UUID(submitted["prompt_id"])
    assert submitted["permission_mode"] == "default"
    stop = pane.wait_event("Stop")
    assert stop["last_assistant_message"] == "ok: " + prompt.partition("\n")[0][:80]
    assert stop["stop_hook_active"] is False
    assert stop["background_tasks"] == []
    assert pane.names() == ["SessionStart", "UserPromptSubmit", "Stop"]
    pane.wait_for("⏺ ok: say \"hi\"")
    assert wait_until(lambda: harness.hook_payloads("Stop"), what="hook") == [stop]
    assert harness.hook_payloads("UserPromptSubmit") == [submitted]
    assert not list(tmp_path.glob("pwned*"))
    entries = read_jsonl(Path(stop["transcript_path"]))
    turns = [e for e in entries if e["type"] == "fake-turn"]
    assert [t["prompt"] for t in turns] == [submitted["prompt"]]

    # and in Claude Code's own format, written in a batch a little later (after the Stop
    # hook, as Claude Code does): the prompt, then the reply's message in two lines
    def claude_code_entries() -> list[str]:
        entries = read_jsonl(Path(stop["transcript_path"]))
        return [e["type"] for e in entries if e["type"] != "fake-turn"]

    wanted = ["user", "assistant", "assistant"]
    assert wait_until(lambda: claude_code_entries() == wanted and wanted, what="entries")


def test_long_paste_shows_a_placeholder_and_directives_combine(harness: Harness) -> None:
    # ~13 kB: the terminal delivers it in pieces, some splitting a UTF-8 character
    text = "@print Shown during the turn\n@reply combined\n" + "\n".join(
        f"line {i}: ünïcødé 日本語 🎉 \"$(x)\" `y`" for i in range(300))
    pane = harness.start()
    pane.wait_event("SessionStart")
    pane.paste(text)
    pane.wait_for("❯ [Pasted text #1 +301 lines]")
    pane.keys("Enter")
    assert text in pane.wait_event("UserPromptSubmit")["prompt"]
    assert pane.wait_event("Stop")["last_assistant_message"] == "combined"
    assert pane.shows("⎿  Shown during the turn")


def test_work_is_busy_with_tool_heartbeats_and_queues_enter(harness: Harness) -> None:
    pane = harness.start()
    pane.wait_event("SessionStart")
    pane.submit("@work 2\n@reply worked")
    pane.wait_for("esc to interrupt", history=False)
    assert pane.shows("❯", history=False)  # the box stays while busy
    pane.submit("@reply queued one")  # Enter while busy: queued, run after this turn
    stop = pane.wait_event("Stop", timeout_s=6)
    assert stop["last_assistant_message"] == "worked"
    second = pane.wait_event("Stop", count=2)
    assert second["last_assistant_message"] == "queued one"
    pre, post = pane.events("PreToolUse"), pane.events("PostToolUse")
    assert len(pre) == len(post) >= 2
    assert {e["tool_name"] for e in pre + post} == {"Bash"}
    assert [e["tool_use_id"] for e in pre] == [e["tool_use_id"] for e in post]
    names = [n for n in pane.names() if n not in ("PreToolUse", "PostToolUse")]
    assert names == ["SessionStart", "UserPromptSubmit", "Stop", "UserPromptSubmit", "Stop"]
    pane.wait_for("esc to interrupt", history=False, present=False)


def test_escape_interrupts_a_hang_without_stop(harness: Harness) -> None:
    pane = harness.start()
    pane.wait_event("SessionStart")
    pane.submit("@hang")
    pane.wait_event("UserPromptSubmit")
    pane.wait_for("esc to interrupt", history=False)
    pane.keys("Escape")
    pane.wait_for("⎿ Interrupted · What should Claude do instead?")
    pane.wait_for("esc to interrupt", history=False, present=False)
    pane.submit("@reply after")
    assert pane.wait_event("Stop")["last_assistant_message"] == "after"
    # the hung turn fired nothing at all, and no Stop when interrupted
    assert pane.names() == ["SessionStart", "UserPromptSubmit", "UserPromptSubmit", "Stop"]


def test_crash_kills_the_pane_with_its_status(harness: Harness) -> None:
    pane = harness.start()
    pane.wait_event("SessionStart")
    pane.submit("@crash 3")
    assert pane.exit_status() == 3
    assert pane.names() == ["SessionStart", "UserPromptSubmit"]


def test_fail_and_ratelimit_fire_stop_failure(harness: Harness) -> None:
    pane = harness.start()
    pane.wait_event("SessionStart")
    pane.submit("@fail")
    failure = pane.wait_event("StopFailure")
    assert failure["error"] == "server_error"
    assert failure["last_assistant_message"].startswith("API Error: 529")
    pane.wait_for('API Error: 529 {"type":"error","error":{"type":"overloaded')
    pane.submit("@ratelimit 5pm (Europe/Paris)")
    limited = pane.wait_event("StopFailure", count=2)
    assert limited["error"] == "rate_limit"
    banner = "Claude usage limit reached. Your limit will reset at 5pm (Europe/Paris)."
    assert limited["last_assistant_message"] == banner
    pane.wait_for(banner)
    assert "Stop" not in pane.names()


def test_permission_dialog_notifies_and_takes_an_answer(harness: Harness) -> None:
    pane = harness.start(FAKE_CLAUDE_NOTIFY_DELAY_MS="200")
    pane.wait_event("SessionStart")
    pane.submit("@permission\n@reply approved")
    pane.wait_for("Do you want to proceed?", history=False)
    assert pane.shows("❯ 1. Yes", history=False)
    note = pane.wait_event("Notification")
    assert note["notification_type"] == "permission_prompt"
    assert note["message"] == "Claude needs your permission to use Bash"
    pane.keys("1", "Enter")
    assert pane.wait_event("Stop")["last_assistant_message"] == "approved"
    pane.submit("@permission")
    pane.wait_for("Do you want to proceed?", history=False)
    pane.keys("Escape")
    assert pane.wait_event("Stop", count=2)["last_assistant_message"] == "denied"


def test_exit_then_resume_keeps_the_conversation(harness: Harness) -> None:
    sid = str(uuid.uuid4())
    first = harness.start("--session-id", sid, name="first")
    assert first.wait_event("SessionStart")["session_id"] == sid
    first.submit("@reply one")
    first.wait_event("Stop")
    # Stop is seen while its hooks still run; Ctrl-C counts only once the turn is over
    first.wait_for("? for shortcuts", history=False)
    first.keys("C-c")
    first.wait_for("Press Ctrl-C again to exit", history=False)
    first.keys("C-c")
    assert first.wait_event("SessionEnd")["reason"] == "prompt_input_exit"
    assert first.exit_status() == 0

    reused = harness.start("--session-id", sid, name="reused")
    assert reused.exit_status() == 1
    assert reused.shows(f"Session ID {sid} is already in use")

    resumed = harness.start("--resume", sid, name="resumed")
    start = resumed.wait_event("SessionStart")
    assert (start["source"], start["session_id"]) == ("resume", sid)
    resumed.wait_for("Resumed conversation (1 prior turns)")
    resumed.submit("@recall")
    assert resumed.wait_event("Stop")["last_assistant_message"] == "turns=1"
    resumed.submit("/exit")
    assert resumed.wait_event("SessionEnd")["reason"] == "prompt_input_exit"
    assert resumed.exit_status() == 0

    unknown = str(uuid.uuid4())
    missing = harness.start("--resume", unknown, name="missing")
    assert missing.exit_status() == 1
    assert missing.shows(f"No conversation found with session ID: {unknown}")


def test_unknown_flag_exits_1() -> None:
    done = subprocess.run([str(FAKE), "--bogus"], capture_output=True, text=True,
                          check=False, timeout=10)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: unknown option '--bogus'"


def test_enter_before_ready_is_dropped(harness: Harness) -> None:
    pane = harness.start(FAKE_CLAUDE_START_MS="1500")
    pane.wait_for("❯")
    pane.paste("early\nbird")  # not bracketed yet: its newline arrives as Enter
    pane.keys("Enter")
    pane.wait_for("❯ earlybird")
    assert pane.events() == []  # still starting
    pane.wait_event("SessionStart")
    assert pane.shows("❯ earlybird", history=False)
    pane.keys("Enter")
    assert pane.wait_event("UserPromptSubmit")["prompt"] == "earlybird"
