"""A real redis-server for tests: its own process on a free port, stopped by its pid.

Each test that needs Redis gets a fresh server (no data on disk, no other client), so tests
never see each other's keys. ``stop()``/``start()`` on the same port and directory let a
test take Redis away mid-run and bring it back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_BIN = "redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``url`` is what REDIS_URL should say."""

    def __init__(self, *extra_args: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tcm-redis-", dir="/tmp"))
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert shutil.which(REDIS_BIN), "redis-server is not installed: run scripts/bootstrap"
        self.proc = subprocess.Popen(
            [
                REDIS_BIN,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"),
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer on {self.port}: {self.log()}")
            time.sleep(0.01)
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill this server (only this process, by its pid) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
