from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FAKE_CLAUDE
from tests.redis_server import RedisServer
from tests.support import AgentDaemon, DaemonProcess


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[type[DaemonProcess]]:
    """Make DaemonProcess objects that are cleaned up after the test (by pid, by name)."""
    made: list[DaemonProcess] = []

    class Factory(DaemonProcess):
        def __init__(self, state_dir: Path | None = None, extra_env: dict[str, str] | None = None):
            super().__init__(state_dir or tmp_path / "state", extra_env)
            made.append(self)

    yield Factory
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(daemon_factory: type[DaemonProcess]) -> DaemonProcess:
    """A running tcmd with its own socket, state dir and tmux server."""
    return daemon_factory().start()


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One running tcmd shared by the tests of a module that need no fresh one.

    Only for tests that call it and look at what they themselves made: each spawns its
    own instances and runs and reads back the ids the daemon handed out (never ``exec_1``
    and the like), and none stops, restarts or reconfigures it, or counts what the whole
    daemon holds. A test that needs any of that takes ``daemon``.
    """
    d = DaemonProcess(tmp_path_factory.mktemp("module-daemon") / "state").start()
    yield d
    d.cleanup()


@pytest.fixture
def agents(tmp_path: Path, daemon_factory: type[DaemonProcess]) -> AgentDaemon:
    """A running tcmd whose `claude` profile launches the fake Claude Code."""
    return AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh real redis-server on a free port, killed (by pid) after the test."""
    server = RedisServer().start()
    yield server
    server.cleanup()
