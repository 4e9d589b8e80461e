"""The real Claude Code CLI, offline: a pinned npm release against tests/fakes' fake API.

`scripts/bootstrap` installs the version in ``CLAUDE_CODE_VERSION`` into a cache
directory; a missing binary fails these tests (it is never skipped). Each test gets a
throwaway HOME whose ``~/.claude.json`` pre-answers the start-up dialogs, and a tcmd
whose `claude` profile launches the real binary.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.fake_anthropic import FakeAnthropic
from tests.support import AgentDaemon, DaemonProcess

VERSION = (Path(__file__).parent / "CLAUDE_CODE_VERSION").read_text().strip()
API_KEY = "sk-ant-api03-tcm-compat-fake-key-0123456789abcdef"


def claude_binary() -> Path:
    """Where scripts/bootstrap put the pinned release (TCM_COMPAT_CLAUDE overrides)."""
    if os.environ.get("TCM_COMPAT_CLAUDE"):
        return Path(os.environ["TCM_COMPAT_CLAUDE"])
    cache = os.environ.get("TCM_COMPAT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tcm-compat"
    )
    return Path(cache) / f"claude-code-{VERSION}" / "node_modules" / ".bin" / "claude"


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        yield api


@pytest.fixture
def start_claude(
    tmp_path: Path, daemon_factory: type[DaemonProcess], fake_api: FakeAnthropic
) -> Callable[..., AgentDaemon]:
    """Start a tcmd whose `claude` profile runs the real Claude Code against the fake API."""

    def start(**extra_env: str) -> AgentDaemon:
        binary = claude_binary()
        assert binary.exists(), f"Claude Code {VERSION} is not at {binary}: run scripts/bootstrap"
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        (home / ".claude.json").write_text(
            json.dumps(
                {
                    "hasCompletedOnboarding": True,
                    "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
                }
            )
        )
        env = {
            "HOME": str(home),
            "TCM_CLAUDE_COMMAND": shlex.join([str(binary)]),
            "ANTHROPIC_BASE_URL": fake_api.url,
            "ANTHROPIC_API_KEY": API_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_MAX_RETRIES": "1",
            "CLAUDE_CODE_DISABLE_ALTERNATE_SCREEN": "1",
            "IS_SANDBOX": "1",  # CI runs as root, where Claude refuses bypassPermissions
            **extra_env,
        }
        return AgentDaemon.start_in(tmp_path, daemon_factory, binary, extra_env=env)

    return start


@pytest.fixture
def claude(start_claude: Callable[..., AgentDaemon]) -> AgentDaemon:
    """A tcmd driving the real Claude Code in its default permission mode."""
    return start_claude()
