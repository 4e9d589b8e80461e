"""Starting tcmd as a new user would: its command line, and the refusal of a second daemon
on the same tmux server. Real processes, real tmux."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tcmd.server.pidlock import tmux_lock_path
from tests.support import DaemonProcess


def run_tcmd(
    *args: str, env: dict[str, str], timeout_s: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcmd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def quiet_env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        TCM_SOCKET=str(tmp_path / "s.sock"),
        TCM_STATE_DIR=str(tmp_path / "state"),
        TCM_TMUX_SOCKET=f"tcmtest-help-{os.getpid()}",
    )


def test_help_prints_usage_and_starts_nothing(tmp_path: Path) -> None:
    env = quiet_env(tmp_path)
    for flag in ("--help", "-h"):
        out = run_tcmd(flag, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("usage: tcmd")
        assert "TCM_SOCKET" in out.stdout and "docs/configuration.md" in out.stdout
    assert not (tmp_path / "s.sock").exists()
    assert not (tmp_path / "state").exists()  # no daemon ever started


def test_version_and_unknown_option(tmp_path: Path) -> None:
    env = quiet_env(tmp_path)
    out = run_tcmd("--version", env=env)
    assert out.returncode == 0
    assert out.stdout.strip().startswith("tcmd ")
    bad = run_tcmd("--frobnicate", env=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("usage: tcmd")
    assert "--frobnicate" in bad.stderr
    assert not (tmp_path / "s.sock").exists()


def test_help_imports_nothing_heavy() -> None:
    probe = (
        "import sys\n"
        "from tcmd.server.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'uvloop', 'structlog', 'pydantic', 'redis', 'orjson', 'asyncio'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_second_daemon_on_the_same_tmux_server_is_refused(
    daemon_factory: type[DaemonProcess], tmp_path: Path
) -> None:
    first = daemon_factory(tmp_path / "one").start()
    second = daemon_factory(tmp_path / "two")  # its own socket and state dir...
    second.tmux_socket = second.env["TCM_TMUX_SOCKET"] = first.tmux_socket  # ...same tmux
    out = run_tcmd(env=second.env)
    assert out.returncode == 1
    assert first.tmux_socket in out.stderr
    assert f"pid {first.proc.pid}" in out.stderr  # type: ignore[union-attr]
    assert str(first.socket) in out.stderr
    assert not second.socket.exists()
    assert first.call("ping")["pong"] is True
    assert first.call("list") == []  # no phantom instance, nothing touched

    # once the first is gone, the second takes the tmux server over
    assert first.terminate() == 0
    second.start()
    assert second.call("status")["pid"] == second.proc.pid  # type: ignore[union-attr]


def test_lock_of_a_dead_daemon_is_taken_over(daemon_factory: type[DaemonProcess]) -> None:
    d = daemon_factory()
    lock = tmux_lock_path(d.tmux_socket)
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n/tmp/gone.sock\n")  # left by a daemon that was killed
    d.start()
    assert lock.read_text().split("\n")[0] == str(d.proc.pid)  # type: ignore[union-attr]
    d.kill9()
    d.start()  # a kill -9 leaves the file; the kernel dropped the flock
    assert d.call("ping")["pong"] is True
    d.terminate()
    assert not lock.exists()  # released on a clean exit
