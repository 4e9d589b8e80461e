"""Socket client of tcmd (sync), with autostart of the daemon.

Stdlib + orjson only: this is imported by every tcmctl command and by the hook entry,
which must answer fast. The async flavour for the MCP shim lives beside it later.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from tcmd import protocol
from tcmd.errors import TcmError, Unavailable, from_json
from tcmd.paths import socket_path_from_env, state_dir_from_env

AUTOSTART_TIMEOUT_S = 10.0


class DaemonUnreachable(Unavailable):
    """No daemon answers on the socket (and none could be started)."""


class Client:
    """One connection to tcmd. Requests may be pipelined with ``send``/``receive``."""

    def __init__(
        self, path: Path, *, token: str | None = None, timeout_s: float | None = 30.0
    ) -> None:
        self.path = path
        self.token = token
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""
        self._next_id = 0

    def connect(self) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnreachable(
                f"tcmd is not running at {self.path} ({exc.strerror})"
            ) from None
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(f"cannot reach tcmd at {self.path}: {exc}") from None
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self if self._sock is not None else self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: Mapping[str, Any] | None = None) -> int:
        """Write one request; the id to match with ``receive``."""
        self._next_id += 1
        self._write(protocol.encode_request(method, dict(params or {}), self._next_id, self.token))
        return self._next_id

    def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        self._write(protocol.encode_request(method, dict(params or {}), None, self.token))

    def receive(self) -> dict[str, Any]:
        """The next answer frame, decoded."""
        assert self._sock is not None, "not connected"
        while (nl := self._buf.find(b"\n")) == -1:
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                raise DaemonUnreachable(f"tcmd did not answer within {self.timeout_s}s") from None
            except OSError as exc:
                raise DaemonUnreachable(f"lost the connection to tcmd: {exc}") from None
            if not chunk:
                raise DaemonUnreachable("tcmd closed the connection")
            self._buf += chunk
        line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
        msg: dict[str, Any] = orjson.loads(line)
        return msg

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result, or raise the daemon's error."""
        req_id = self.send(method, params)
        while True:
            msg = self.receive()
            if msg.get("id") == req_id or msg.get("id") is None:
                break
        if "error" in msg:
            raise from_json(msg["error"])
        return msg.get("result")

    def _write(self, frame: bytes) -> None:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            raise DaemonUnreachable(f"lost the connection to tcmd: {exc}") from None


def connect(
    *,
    env: Mapping[str, str] | None = None,
    socket_path: Path | None = None,
    autostart: bool = True,
    timeout_s: float | None = 30.0,
) -> Client:
    """A connected client; starts tcmd in the background first when allowed and needed."""
    env = os.environ if env is None else env
    path = socket_path or socket_path_from_env(env)
    client = Client(path, token=env.get("TCM_INSTANCE_TOKEN") or None, timeout_s=timeout_s)
    try:
        return client.connect()
    except DaemonUnreachable:
        if not may_autostart(env, autostart):
            raise
    start_daemon(env, path)
    return client.connect()


def may_autostart(env: Mapping[str, str], wanted: bool) -> bool:
    """Whether to start tcmd when it is not running: never from inside an instance.

    An instance's daemon is stopped on purpose or being restarted (by systemd, say); a
    tool call from one of its agents must not bring up a second life of it behind the
    operator's back.
    """
    return wanted and not env.get("TCM_INSTANCE_TOKEN")


def start_daemon(env: Mapping[str, str], path: Path) -> int:
    """Start tcmd detached (own session, output to the state dir's log); its pid.

    Waits until the socket answers. When another client started a daemon at the same
    moment, ours exits (the lock is taken) and the other one answers: that is success.
    """
    log_path = state_dir_from_env(env) / "tcmd.log"
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_start = log_path.stat().st_size if log_path.exists() else 0
    child_env = dict(env)
    child_env["TCM_SOCKET"] = str(path)
    child_env.pop("TCM_INSTANCE_TOKEN", None)  # the daemon is nobody's child instance
    child_env.pop("TCM_INSTANCE_ID", None)
    pid = os.posix_spawn(
        sys.executable,
        [sys.executable, "-m", "tcmd"],
        child_env,
        setsid=True,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
    )
    deadline = time.monotonic() + AUTOSTART_TIMEOUT_S
    exit_code: int | None = None
    while time.monotonic() < deadline:
        if exit_code is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exit_code = os.waitstatus_to_exitcode(status)
        try:
            Client(path, timeout_s=1.0).connect().close()
        except DaemonUnreachable:
            # exit 1: another daemon holds the lock, it will answer soon; anything else
            # (2: invalid configuration) means nobody is coming
            if exit_code not in (None, 1):
                reason = _last_word(log_path, log_start)
                raise DaemonUnreachable(
                    f"tcmd exited with code {exit_code} at start"
                    + (f": {reason}" if reason else "")
                    + f" (log: {log_path})"
                ) from None
            time.sleep(0.01)  # polling the socket to a deadline: there is no event to wait on
            continue
        if exit_code is None:
            sys.stderr.write(f"tcmctl: started tcmd (pid {pid}, log {log_path})\n")
        return pid
    raise DaemonUnreachable(f"tcmd did not answer within {AUTOSTART_TIMEOUT_S}s; see {log_path}")


def _last_word(log_path: Path, start: int) -> str | None:
    """What the daemon that just failed wrote last: its ``tcmd: …`` line (a refused
    configuration), else its last line, cut to one line."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            text = fh.read(1 << 16).decode("utf-8", "replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("tcmd: ")]
    line = said[-1].removeprefix("tcmd: ") if said else (lines[-1] if lines else None)
    return line[:500] if line else None


__all__ = ["Client", "DaemonUnreachable", "TcmError", "connect", "start_daemon"]
