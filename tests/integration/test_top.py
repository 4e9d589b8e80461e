"""`tcmctl top` as a user sees it: run in a real 80×24 tmux pane, driven by send-keys,
read by capture-pane, against a real daemon running shell agents."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import DaemonProcess, wait_until

KEYS_LINE = "a attach  s send  r restart"
# SGR parameters that set a colour (39/49 only reset to the terminal's default)
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:[;m])")


class Terminal:
    """A tmux server of the test's own, one 80×24 session running `tcmctl top`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.name = f"tcmtop-{uuid.uuid4().hex[:8]}"
        self.env = env

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def start(self, width: int = 80, height: int = 24) -> Terminal:
        argv = [sys.executable, "-m", "tcmctl", "top"]
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "top")
        self.tmux("set", "-g", "remain-on-exit", "on")  # a crash stays on screen to read
        self.tmux("resize-window", "-t", "top", "-x", str(width), "-y", str(height))
        self.tmux("respawn-pane", "-k", "-t", "top", shlex.join(argv))
        return self

    def screen(self, colours: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top", *(["-e"] if colours else []))

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def wait_for(self, text: str, timeout_s: float = 10.0) -> str:
        return self.wait_screen(lambda s: text in s, timeout_s, repr(text))

    def wait_screen(self, ok: Callable[[str], bool], timeout_s: float, what: str) -> str:
        """The screen, once ``ok`` holds for it."""

        last = [""]

        def check() -> str | None:
            last[0] = self.screen()
            return last[0] if ok(last[0]) else None

        try:
            return wait_until(check, timeout_s, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{last[0]}") from None

    def row(self, instance_id: str) -> list[str]:
        for line in self.screen().splitlines():
            words = line.split()
            if words and words[0] == instance_id:
                return words
        return []

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, check=False)
        Path(f"/tmp/tmux-{os.getuid()}/{self.name}").unlink(missing_ok=True)  # left by kill-server


@pytest.fixture
def team(daemon: DaemonProcess, tmp_path: Path) -> DaemonProcess:
    """exec_1 with two managers, shell agents."""
    shell = {"workDir": str(tmp_path), "agent": "shell", "context": "t"}
    daemon.call("spawn", {"role": "executive", **shell})
    for _ in range(2):
        daemon.call("spawn", {"role": "manager", "parentId": "exec_1", **shell})
    return daemon


def terminal_for(daemon: DaemonProcess, **extra: str) -> Iterator[Terminal]:
    env = {k: v for k, v in daemon.env.items() if k not in ("TMUX", "NO_COLOR")}
    term = Terminal({**env, "TERM": "xterm-256color", **extra}).start()
    try:
        yield term
    finally:
        term.close()


@pytest.fixture
def term(team: DaemonProcess) -> Iterator[Terminal]:
    yield from terminal_for(team)


def test_top_shows_the_tree_and_follows_a_state_change(team: DaemonProcess, term: Terminal) -> None:
    screen = term.wait_for("mgr_1_2")
    lines = screen.splitlines()
    assert len(lines) == 24 and max(len(ln) for ln in lines) <= 80
    assert KEYS_LINE in screen
    assert "store jsonfile ok" in screen
    assert term.row("exec_1")[1] == "ready"
    assert term.row("mgr_1_1")[1] == "ready"
    assert COLOUR.search(term.screen(colours=True))  # colour unless NO_COLOR says otherwise
    sent = team.call("send", {"instanceId": "exec_1", "text": "sleep 2"})  # > the 1 s below
    assert sent["delivered"]  # acknowledged by the agent: it is busy now
    changed = time.monotonic()
    wait_until(lambda: term.row("exec_1")[1:2] == ["busy"], 1.0, what="exec_1 busy on screen")
    assert time.monotonic() - changed < 1.0
    wait_until(lambda: term.row("exec_1")[1:2] == ["ready"], 10, what="exec_1 ready again")


def test_top_attaches_to_the_selected_instance_and_comes_back(term: Terminal) -> None:
    term.wait_for("mgr_1_2")
    term.keys("Down")  # exec_1 → mgr_1_1
    term.wait_for("── mgr_1_1")
    term.keys("a")
    screen = term.wait_screen(
        lambda s: KEYS_LINE not in s and "❯" in s, 10, "the instance's own pane"
    )
    assert "mgr_1_2" not in screen
    term.keys("C-b", "d")  # tmux's own detach, typed into the attached client
    term.wait_for(KEYS_LINE)
    assert term.row("mgr_1_1")[1] == "ready"


def test_top_sends_filters_and_terminates_with_confirmation(
    team: DaemonProcess, term: Terminal
) -> None:
    term.wait_for("mgr_1_2")
    term.keys("Down", "Down")  # mgr_1_2
    term.wait_for("── mgr_1_2")
    term.keys("s")
    term.wait_for("Send a line to mgr_1_2")
    term.keys("-l", "echo hello-from-top")
    term.keys("Enter")
    wait_until(
        lambda: "hello-from-top" in (team.call("read", {"instanceId": "mgr_1_2"})["output"]),
        10,
        what="the line run by mgr_1_2",
    )
    term.keys("/")
    term.wait_for("Filter")
    term.keys("-l", "mgr_1_1")
    term.keys("Enter")
    wait_until(lambda: not term.row("mgr_1_2") and term.row("mgr_1_1"), 5, what="filtered")
    assert not term.row("exec_1")
    term.keys("/")
    term.wait_for("Filter")
    term.keys("C-u", "Enter")  # an empty filter shows all again
    wait_until(lambda: term.row("mgr_1_2"), 5, what="all rows back")
    term.wait_for("── mgr_1_1")  # the selection followed the filter
    term.keys("Down")
    term.wait_for("── mgr_1_2")
    term.keys("t")
    term.wait_for("Terminate mgr_1_2?")
    term.keys("n")  # no: nothing happens
    wait_until(lambda: "Terminate" not in term.screen(), 5, what="the dialog closed")
    assert {r["instanceId"] for r in team.call("list")} >= {"mgr_1_2"}
    term.keys("t")
    term.wait_for("Terminate mgr_1_2?")
    term.keys("y")
    wait_until(lambda: not term.row("mgr_1_2"), 5, what="mgr_1_2 gone from the tree")
    assert "mgr_1_2" not in {r["instanceId"] for r in team.call("list")}


def test_top_survives_a_resize_and_a_daemon_restart(team: DaemonProcess, term: Terminal) -> None:
    term.wait_for("mgr_1_2")
    for width, height in ((120, 40), (80, 24)):
        term.tmux("resize-window", "-t", "top", "-x", str(width), "-y", str(height))
        term.wait_screen(  # the tree and the keys line, both drawn in the new size
            lambda s, h=height: (
                len(lines := s.splitlines()) == h and KEYS_LINE in lines[-1] and "mgr_1_2" in s
            ),
            10,
            f"top redrawn in {width}x{height}",
        )
    old_pid = team.proc.pid  # type: ignore[union-attr]
    team.terminate()
    term.wait_for("unreachable")
    team.start()
    new_pid = team.proc.pid  # type: ignore[union-attr]
    assert new_pid != old_pid
    term.wait_for(f"pid {new_pid}")
    assert term.row("exec_1")[1] == "ready"
    assert team.call("send", {"instanceId": "exec_1", "text": "sleep 3"})["delivered"]
    wait_until(lambda: term.row("exec_1")[1:2] == ["busy"], 2, what="events after the restart")


def test_top_draws_without_colour_under_no_color(team: DaemonProcess) -> None:
    for term in terminal_for(team, NO_COLOR="1"):
        screen = term.wait_for("mgr_1_2")
        assert KEYS_LINE in screen
        coloured = term.screen(colours=True)
        assert not COLOUR.search(coloured), COLOUR.search(coloured)
        assert "\x1b[" in coloured  # styles remain: the selected row is drawn reversed


def test_top_cancels_a_run_and_restarts_with_confirmation(
    team: DaemonProcess, term: Terminal, tmp_path: Path
) -> None:
    run = team.call(
        "executeParallel",
        {
            "managerId": "mgr_1_1",
            "agent": "shell",
            "workDir": str(tmp_path),
            "wait": False,
            "maxConcurrent": 1,
            "tasks": [{"id": f"nap{n}", "instruction": "sleep 60"} for n in range(3)],
        },
    )
    run_id = run["runId"]
    screen = term.wait_for(f"{run_id} 0/3 (1 active)")
    assert "queue" in screen
    term.keys("c")
    term.wait_for(f"Cancel run {run_id}?")
    term.keys("y")
    term.wait_for(f"{run_id} 3/3 done (3 cancelled)")
    status = team.call("getParallelStatus", {"runId": run_id})
    assert status["done"] and status["cancelledTasks"] == 3
    term.wait_for("── exec_1")  # the first row is selected
    term.keys("r")
    term.wait_for("Restart exec_1?")
    term.keys("y")
    wait_until(
        lambda: next(r for r in team.call("list") if r["instanceId"] == "exec_1")["restarts"],
        10,
        what="exec_1 restarted",
    )
    wait_until(lambda: term.row("exec_1")[1:2] == ["ready"], 10, what="exec_1 ready again")
