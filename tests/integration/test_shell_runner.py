"""The shell agent's runner (tcmd/instances/agents/shell_runner.py) driven in a private tmux server.

Prompts are delivered the way tcmd delivers them (load-buffer, bracketed paste-buffer, a
separate Enter); the hooks it reports are collected by a small Unix-socket listener that
stands in for the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tcmd.instances.agents.shell_runner import command_line

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
HOSTILE = (
    "printf '%s|' 'single \"dq\" inside' \"double 'sq' $(printf x) `printf y`\" Enter\n"
    "echo ✓ 中文 'a\\b' \"$((6 * 7))\""
)


def wait_until(pred: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return value


class Listener:
    """A stand-in for tcmd's socket: accepts connections, keeps every JSON line received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by the test
            with conn, conn.makefile("rb") as lines:
                self.messages.extend(json.loads(line) for line in lines if line.strip())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(2)


class Agent:
    """One runner in a session of a private tmux server."""

    def __init__(
        self, server: str, conf: Path, listener: Listener | None, sock: Path, *args: str
    ) -> None:
        self.server, self.conf, self.listener = server, conf, listener
        self.name = f"sh{uuid.uuid4().hex[:6]}"
        env = {"TCM_SOCKET": str(sock), "TCM_INSTANCE_TOKEN": "tok", "SHELL": "/bin/bash"}
        env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        self.tmux("new-session", "-d", "-s", self.name, "-x", "200", "-y", "50",
                  "-c", str(REPO), *env_args, "--", *command_line(sys.executable), *args)

    def tmux(self, *args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(["tmux", "-L", self.server, "-f", str(self.conf), *args],
                              input=stdin, capture_output=True, check=False, timeout=10)
        if done.returncode:
            raise RuntimeError(f"tmux {args}: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", f"={self.name}:")

    def prompt_ready(self) -> bool:
        lines = [ln for ln in self.screen().splitlines() if ln.strip()]
        return bool(lines) and lines[-1].startswith("❯")

    def send(self, text: str) -> None:
        buf = f"b{uuid.uuid4().hex[:8]}"
        self.tmux("load-buffer", "-b", buf, "-", stdin=text.encode())
        self.tmux("paste-buffer", "-p", "-d", "-b", buf, "-t", f"={self.name}:")
        self.keys("Enter")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", f"={self.name}:", *keys)

    def events(self, name: str) -> list[dict[str, Any]]:
        assert self.listener is not None
        return [m for m in list(self.listener.messages)
                if m["params"]["payload"]["hook_event_name"] == name]

    def event(self, name: str, count: int = 1, timeout: float = 5.0) -> dict[str, Any]:
        """The payload of the ``count``-th ``name`` event, once it has arrived."""
        try:
            found = wait_until(lambda: self.events(name)[count - 1:], timeout, f"{name}#{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nscreen:\n{self.screen()}") from None
        return dict(found[0]["params"]["payload"])

    def pane_dead(self) -> bool:
        return self.tmux("display", "-p", "-t", f"={self.name}:", "#{pane_dead}").strip() == "1"


@pytest.fixture
def harness() -> Iterator[Callable[..., Agent]]:
    """Start runners on a private tmux server; a listener on a short socket path."""
    tmp = Path(tempfile.mkdtemp(prefix="tcmsh-", dir="/tmp"))
    server = f"tcmsh-{uuid.uuid4().hex[:10]}"
    conf = tmp / "tmux.conf"
    conf.write_text("set -g remain-on-exit on\nset -s exit-empty off\nset -s escape-time 0\n")
    sock = tmp / "s.sock"
    listener = Listener(sock)
    started: list[Agent] = []

    def start(*args: str, listen: bool = True) -> Agent:
        agent = Agent(server, conf, listener if listen else None,
                      sock if listen else tmp / "absent.sock", *args)
        started.append(agent)
        return agent

    yield start
    if started:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            started[0].tmux("kill-server")
    # kill-server leaves its socket file behind
    Path(f"/tmp/tmux-{os.getuid()}/{server}").unlink(missing_ok=True)
    listener.close()
    shutil.rmtree(tmp, ignore_errors=True)


def test_session_start_then_a_command_and_its_output(harness: Callable[..., Agent]) -> None:
    agent = harness()
    start = agent.event("SessionStart")
    msg = agent.events("SessionStart")[0]
    assert msg["token"] == "tok" and msg["method"] == "hook" and msg["jsonrpc"] == "2.0"
    assert start["source"] == "startup" and start["model"] == "shell"
    assert start["cwd"] == str(REPO) and uuid.UUID(start["session_id"]).version == 4
    agent.send("echo hello")
    submit = agent.event("UserPromptSubmit")
    assert submit["prompt"] == "echo hello" and submit["permission_mode"] == "default"
    assert uuid.UUID(submit["prompt_id"]).version == 4
    stop = agent.event("Stop")
    assert stop["last_assistant_message"] == "hello"
    assert stop["exit_status"] == 0 and stop["interrupted"] is False
    assert stop["session_id"] == start["session_id"]
    wait_until(agent.prompt_ready, what="prompt back")
    agent.tmux("kill-session", "-t", f"={agent.name}")  # SIGHUP, as tcmd's kill does
    assert agent.event("SessionEnd")["reason"] == "other"


def test_a_command_runs_in_its_own_session_reading_nothing_output_merged(
    harness: Callable[..., Agent],
) -> None:
    agent = harness("--shell", "/bin/sh", "--session-id", "s-1")
    assert agent.event("SessionStart")["session_id"] == "s-1"
    agent.send('echo "sid=$(ps -o sid= -p $$ | tr -d " ") pid=$$"; readlink /proc/$$/fd/0; '
               "echo to-stderr >&2; cat; echo shell=$(readlink /proc/$$/exe)")
    lines = agent.event("Stop")["last_assistant_message"].splitlines()
    sid, pid = (field.split("=")[1] for field in lines[0].split())
    assert sid == pid  # the command leads its own session: Escape signals its whole group
    assert lines[1:] == ["/dev/null", "to-stderr", f"shell={os.path.realpath('/bin/sh')}"]


def test_resume_reports_the_session_it_resumes(harness: Callable[..., Agent]) -> None:
    start = harness("--resume", "s-9").event("SessionStart")
    assert (start["source"], start["session_id"]) == ("resume", "s-9")


def test_hostile_text_arrives_byte_exact_and_runs_as_bash_would(
    harness: Callable[..., Agent],
) -> None:
    agent = harness()
    agent.event("SessionStart")
    agent.send(HOSTILE)
    assert agent.event("UserPromptSubmit")["prompt"] == HOSTILE
    expected = subprocess.run(["/bin/bash", "-c", HOSTILE], capture_output=True, check=True,
                              text=True).stdout.removesuffix("\n")
    assert agent.event("Stop")["last_assistant_message"] == expected
    assert expected == "single \"dq\" inside|double 'sq' x y|Enter|✓ 中文 a\\b 42"


def test_failure_interrupt_and_queue(harness: Callable[..., Agent]) -> None:
    agent = harness()
    agent.event("SessionStart")
    agent.send("echo oops >&2; exit 3")
    stop = agent.event("Stop")
    assert stop["exit_status"] == 3 and stop["last_assistant_message"] == "oops"
    wait_until(lambda: "[exit 3]" in agent.screen(), what="[exit 3] on screen")

    agent.send("sleep 30")
    agent.event("UserPromptSubmit", 2)
    wait_until(lambda: "running… (esc to interrupt)" in agent.screen(), what="busy line")
    began = time.monotonic()
    agent.keys("Escape")
    stop = agent.event("Stop", 2)
    assert stop["interrupted"] is True and stop["exit_status"] == 128 + 2
    assert time.monotonic() - began < 3

    agent.send("sleep 1; echo first")
    agent.event("UserPromptSubmit", 3)
    agent.send("echo second")
    assert agent.event("Stop", 3)["last_assistant_message"] == "first"
    assert agent.event("UserPromptSubmit", 4)["prompt"] == "echo second"
    assert agent.event("Stop", 4)["last_assistant_message"] == "second"


def test_ctrl_d_ends_the_session(harness: Callable[..., Agent]) -> None:
    agent = harness()
    agent.event("SessionStart")
    agent.keys("C-d")
    assert agent.event("SessionEnd")["reason"] == "prompt_input_exit"
    wait_until(agent.pane_dead, what="pane dead")

    def dead_status() -> str:
        status = agent.tmux("display", "-p", "-t", f"={agent.name}:", "#{pane_dead_status}")
        if not status.strip():  # tmux 3.3a may reap late; any job it runs makes it reap
            agent.tmux("run-shell", "true")
        return status.strip()

    assert wait_until(dead_status, what="pane_dead_status") == "0"


def test_runs_without_a_daemon(harness: Callable[..., Agent]) -> None:
    agent = harness(listen=False)
    wait_until(agent.prompt_ready, what="first prompt")
    agent.send("echo nobody-listens")
    wait_until(lambda: "nobody-listens\n" in agent.screen() and agent.prompt_ready(),
               what="output and the prompt again")
