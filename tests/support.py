"""Test support: a real tcmd process on a short socket path, and polling to a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tcmctl.client import Client, DaemonUnreachable

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = 10.0,
    interval_s: float = 0.01,
    what: str = "condition",
    max_interval_s: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``.

    The first polls are ``interval_s`` apart, later ones further (x1.5 each, up to
    ``max_interval_s``): a quick condition is seen at once, and a long wait does not take
    the CPU from the daemon, tmux and agents it waits for (2 cores, two xdist workers).
    """
    deadline = time.monotonic() + timeout_s
    interval = interval_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, max(interval_s, max_interval_s))


def run_concurrently(fn: Callable[[], T], n: int, timeout_s: float = 60) -> list[T]:
    """Call ``fn`` from ``n`` threads at once; every result, or the first error raised."""
    results: list[T] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    if errors:
        raise errors[0]
    assert len(results) == n, f"{n - len(results)} of {n} calls did not finish in time"
    return results


class DaemonProcess:
    """A real tcmd subprocess with its own socket, state dir and tmux server name."""

    def __init__(self, state_dir: Path, extra_env: Mapping[str, str] | None = None) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.sock_dir = Path(tempfile.mkdtemp(prefix=f"tcm-{self.tag}-", dir="/tmp"))
        self.socket = self.sock_dir / "tcmd.sock"
        self.state_dir = state_dir
        self.tmux_socket = f"tcmtest-{self.tag}"
        self.env = {
            **os.environ,
            "TCM_SOCKET": str(self.socket),
            "TCM_STATE_DIR": str(state_dir),
            "TCM_TMUX_SOCKET": self.tmux_socket,
            "TCM_LOG_FORMAT": "json",
            "TCM_LOG_LEVEL": "debug",
            # Claude starts unpaced (the default is 2 a second): the suite's agents are the
            # fake and a few real Claudes; test_resources tests the pacing with its own rate
            "TCM_SPAWN_RATE": "0",
            **(extra_env or {}),
        }
        self.env.pop("TCM_INSTANCE_TOKEN", None)
        self.env.pop("TCM_INSTANCE_ID", None)
        # xdist's workers set COLUMNS=80 LINES=24: a pane's size must come from its tty
        self.env.pop("COLUMNS", None)
        self.env.pop("LINES", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"tcmd-{self.tag}.log"

    def start(self, wait: bool = True) -> DaemonProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tcmd"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # a session of its own, as systemd starts a service: where the kernel groups
                # by session (autogroups), the test's own busy processes are not tcmd's group
                start_new_session=True,
            )
        if wait:
            wait_until(self.answers, 15, what=f"tcmd on {self.socket}")
        return self

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"tcmd exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with Client(self.socket, timeout_s=2) as c:
                c.call("ping")
        except DaemonUnreachable:
            return False
        return True

    def tmux(self, *args: str) -> str:
        """Run a tmux command on this daemon's private server; its output (errors raise)."""
        done = subprocess.run(
            ["tmux", "-L", self.tmux_socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def client(self, token: str | None = None, timeout_s: float = 30.0) -> Client:
        return Client(self.socket, token=token, timeout_s=timeout_s).connect()

    def call(
        self, method: str, params: dict[str, Any] | None = None, token: str | None = None
    ) -> Any:
        with self.client(token) as c:
            return c.call(method, params)

    def terminate(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _kill_strays(self, *, tmux_too: bool = False) -> None:
        """Daemons tcmctl autostarted for this socket (found by their environment); with
        ``tmux_too``, tmux processes on this test's own tmux socket name that kill-server
        could not reach: a server whose socket file a racing start (tcmd killed mid-start)
        took over."""
        marker = f"TCM_SOCKET={self.socket}".encode()
        tmux_socket = self.tmux_socket.encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            tcmd = marker in environ and any(b"tcmd" in arg for arg in argv)
            tmux = argv[0] == b"tmux" and b"-L" in argv[:-1]
            if tcmd or (tmux_too and tmux and argv[argv.index(b"-L") + 1] == tmux_socket):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._kill_strays()
        subprocess.run(
            ["tmux", "-L", self.tmux_socket, "kill-server"], capture_output=True, check=False
        )
        self._kill_strays(tmux_too=True)
        tmux_sock = Path(f"/tmp/tmux-{os.getuid()}/{self.tmux_socket}")
        tmux_sock.unlink(missing_ok=True)  # kill-server leaves its socket file behind
        tmux_sock.with_name(tmux_sock.name + ".tcmd.lock").unlink(missing_ok=True)  # a kill -9's
        shutil.rmtree(self.sock_dir, ignore_errors=True)


class AgentDaemon:
    """A tcmd driving fake Claude Code agents, with the fake's hook log at hand."""

    def __init__(self, daemon: DaemonProcess, event_log: Path, work_dir: Path) -> None:
        self.daemon = daemon
        self.event_log = event_log
        self.work_dir = work_dir

    @classmethod
    def start_in(
        cls,
        tmp_path: Path,
        factory: type[DaemonProcess],
        fake: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> AgentDaemon:
        home = tmp_path / "home"
        work = tmp_path / "work"
        home.mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        log = tmp_path / "events.jsonl"
        env = {
            "HOME": str(home),
            "TCM_CLAUDE_COMMAND": shlex.join([sys.executable, str(fake)]),
            "FAKE_CLAUDE_HOME": str(home / ".fake-claude"),
            "FAKE_CLAUDE_EVENT_LOG": str(log),
            "FAKE_CLAUDE_START_MS": "50",
            **(extra_env or {}),
        }
        return cls(factory(tmp_path / "state", env).start(), log, work)

    def call(
        self, method: str, params: dict[str, Any] | None = None, token: str | None = None
    ) -> Any:
        return self.daemon.call(method, params, token)

    def spawn(
        self,
        role: str = "executive",
        parent: str | None = None,
        agent: str = "claude",
        context: str = "test",
        **extra: Any,
    ) -> dict[str, Any]:
        params = {
            "role": role,
            "workDir": str(self.work_dir),
            "context": context,
            "agent": agent,
            **extra,
        }
        if parent:
            params["parentId"] = parent
        result: dict[str, Any] = self.call("spawn", params)
        return result

    def token(self, instance_id: str) -> str:
        """The instance's token, read where only it is: its agent's process environment."""
        target = f"={instance_id}:"
        pane = int(self.daemon.tmux("display-message", "-p", "-t", target, "#{pane_pid}"))
        [agent] = Path(f"/proc/{pane}/task/{pane}/children").read_text().split()
        for var in Path(f"/proc/{agent}/environ").read_bytes().split(b"\0"):
            if var.startswith(b"TCM_INSTANCE_TOKEN="):
                return var.split(b"=", 1)[1].decode()
        raise AssertionError(f"no token in the environment of {instance_id}'s agent")

    def events(self, event: str | None = None, session: str | None = None) -> list[dict[str, Any]]:
        if not self.event_log.exists():
            return []
        out = []
        for line in self.event_log.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if event and rec.get("hook_event_name") != event:
                continue
            if session and rec.get("session_id") != session:
                continue
            out.append(rec)
        return out

    def status(self, instance_id: str) -> str:
        rows = self.call("list", {"includeTerminated": True})
        return str(next(r["status"] for r in rows if r["instanceId"] == instance_id))

    def wait_status(self, instance_id: str, *wanted: str, timeout_s: float = 15) -> str:
        return wait_until(
            lambda: self.status(instance_id) in wanted and self.status(instance_id),
            timeout_s,
            what=f"{instance_id} to become {wanted}",
        )
