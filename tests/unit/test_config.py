from __future__ import annotations

from pathlib import Path

import pytest

from tcmd.config import Settings, socket_path_from_env, state_dir_from_env
from tcmd.errors import ConfigError

BASE = {"HOME": "/home/u"}


def test_defaults_follow_the_contract() -> None:
    s = Settings.from_env(BASE)
    assert (s.phase, s.max_manager_concurrency, s.max_specialists_per_manager) == (3, 5, 3)
    assert (s.health_check_interval_ms, s.unhealthy_threshold) == (10_000, 3)
    assert s.redis_url is None
    assert s.tmux_socket == "tcm"
    assert s.claude_command == ("claude",)
    assert s.socket_path == Path("/home/u/.local/state/tcm/tcmd.sock")
    assert s.state_dir == Path("/home/u/.local/state/tcm")
    assert s.agent_nice == 19


def test_xdg_paths() -> None:
    env = {**BASE, "XDG_RUNTIME_DIR": "/run/user/5", "XDG_STATE_HOME": "/st"}
    assert socket_path_from_env(env) == Path("/run/user/5/tcm/tcmd.sock")
    assert state_dir_from_env(env) == Path("/st/tcm")


def test_every_variable_parses() -> None:
    s = Settings.from_env(
        {
            **BASE,
            "PHASE": "2",
            "REDIS_URL": "redis://:pw@localhost:6379/1",
            "MAX_MANAGER_CONCURRENCY": "7",
            "MAX_SPECIALISTS_PER_MANAGER": "4",
            "HEALTH_CHECK_INTERVAL": "500",
            "UNHEALTHY_THRESHOLD": "2",
            "TCM_SOCKET": "/tmp/x.sock",
            "TCM_STATE_DIR": "/tmp/st",
            "TCM_TMUX_SOCKET": "t-1",
            "TCM_CLAUDE_COMMAND": "node 'my cli.js'",
            "TCM_LOG_FORMAT": "json",
            "TCM_LOG_LEVEL": "debug",
        }
    )
    assert s.phase == 2
    assert s.redis_url == "redis://:pw@localhost:6379/1"
    assert s.describe()["redis_url"] == "redis://:***@localhost:6379/1"
    assert (s.max_manager_concurrency, s.max_specialists_per_manager) == (7, 4)
    assert (s.health_check_interval_ms, s.unhealthy_threshold) == (500, 2)
    assert s.claude_command == ("node", "my cli.js")
    assert (s.log_format, s.log_level, s.tmux_socket) == ("json", "debug", "t-1")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PHASE", "1"),
        ("MAX_MANAGER_CONCURRENCY", "0"),
        ("MAX_SPECIALISTS_PER_MANAGER", "x"),
        ("HEALTH_CHECK_INTERVAL", "1.5"),
        ("UNHEALTHY_THRESHOLD", ""),
        ("REDIS_URL", "localhost"),
        ("TCM_TMUX_SOCKET", "../x"),
        ("TCM_CLAUDE_COMMAND", "'unclosed"),
        ("TCM_LOG_FORMAT", "xml"),
        ("TCM_SOCKET", "/tmp/" + "d" * 120),
        ("TCM_AGENT_NICE", "20"),
        ("TCM_AGENT_NICE", "-5"),
        ("TCM_SPAWN_RATE", "fast"),
        ("TCM_SPAWN_RATE", "-1"),
        ("TCM_MEMORY_RESERVE_MB", "-1"),
        ("TCM_MEMORY_ESTIMATE_MB", "0"),
        ("TCM_INSTANCE_MEMORY_MAX_MB", "1.5"),
        ("TCM_MEMORY_OVER_SWEEPS", "0"),
        ("TCM_TEST_MEMORY_FIGURES", "/nonexistent/meminfo"),
    ],
)
def test_invalid_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, var: value})
    assert info.value.variable == var
    assert info.value.message.startswith(f"{var}: ")


def test_toml_file_and_env_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "tcm.toml"
    cfg.write_text('PHASE = 2\nmax_manager_concurrency = 9\nTCM_LOG_LEVEL = "warning"\n')
    s = Settings.from_env({**BASE, "TCM_CONFIG": str(cfg), "MAX_MANAGER_CONCURRENCY": "3"})
    assert (s.phase, s.max_manager_concurrency, s.log_level) == (2, 3, "warning")


def test_toml_errors_are_named(tmp_path: Path) -> None:
    cfg = tmp_path / "tcm.toml"
    cfg.write_text("NOPE = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'NOPE'"):
        Settings.from_env({**BASE, "TCM_CONFIG": str(cfg)})
    cfg.write_text("PHASE = [")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, "TCM_CONFIG": str(cfg)})
    assert info.value.variable == "TCM_CONFIG"
    with pytest.raises(ConfigError, match="file not found"):
        Settings.from_env({**BASE, "TCM_CONFIG": str(tmp_path / "absent.toml")})
    cfg.write_text("PHASE = 7\n")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, "TCM_CONFIG": str(cfg)})
    assert info.value.variable == "PHASE"


def test_error_patterns_file(tmp_path: Path) -> None:
    from tcmd.health.patterns import match_error, with_overrides

    good = tmp_path / "patterns.toml"
    good.write_text('quota = "quota exceeded"\ntraceback = "^Fatal:"\n')
    s = Settings.from_env({**BASE, "TCM_ERROR_PATTERNS": str(good)})
    table = with_overrides(s.error_patterns)
    assert match_error("x\nQuota exceeded for today", patterns=table) == (
        "quota: Quota exceeded for today"
    )
    assert match_error("Fatal: boom", patterns=table) == "traceback: Fatal: boom"
    bad = tmp_path / "bad.toml"
    bad.write_text('broken = "(unclosed"\n')
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, "TCM_ERROR_PATTERNS": str(bad)})
    assert info.value.variable == "TCM_ERROR_PATTERNS"
    assert "broken: bad regex" in info.value.message


def test_limits_on_clients_default_and_parse() -> None:
    s = Settings.from_env(BASE)
    assert (s.max_connections, s.max_pending_bytes) == (1024, 64 << 20)
    assert (s.max_unsent_bytes, s.max_calls_per_connection) == (256 << 10, 64)
    assert (s.max_queued_prompts, s.max_queued_prompt_bytes) == (100, 16 << 20)
    s = Settings.from_env(
        {
            **BASE,
            "TCM_MAX_CONNECTIONS": "10",
            "TCM_MAX_PENDING_BYTES": str(8 << 20),
            "TCM_MAX_UNSENT_BYTES": "65536",
            "TCM_MAX_CALLS_PER_CONNECTION": "2",
            "TCM_MAX_QUEUED_PROMPTS": "5",
            "TCM_MAX_QUEUED_PROMPT_BYTES": "4096",
        }
    )
    assert (s.max_connections, s.max_pending_bytes, s.max_unsent_bytes) == (10, 8 << 20, 65536)
    assert (s.max_calls_per_connection, s.max_queued_prompts) == (2, 5)
    assert s.max_queued_prompt_bytes == 4096
    with pytest.raises(ConfigError, match="TCM_MAX_CONNECTIONS: must be an integer"):
        Settings.from_env({**BASE, "TCM_MAX_CONNECTIONS": "0"})


def test_the_shared_budget_takes_one_largest_frame() -> None:
    big = Settings.from_env({**BASE, "TCM_MAX_FRAME_BYTES": str(256 << 20)})
    assert big.max_pending_bytes == 256 << 20  # the default follows a larger frame limit
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, "TCM_MAX_PENDING_BYTES": str(1 << 20)})
    assert info.value.variable == "TCM_MAX_PENDING_BYTES"
    assert "at least TCM_MAX_FRAME_BYTES (4194304)" in info.value.message


def test_memory_and_pacing_settings(tmp_path: Path) -> None:
    s = Settings.from_env(BASE)
    assert (s.memory_estimate_mb, s.memory_reserve_mb, s.instance_memory_max_mb) == (600, 1024, 0)
    assert (s.memory_over_sweeps, s.spawn_rate, s.memory_figures) == (3, 2.0, None)
    figures = tmp_path / "meminfo"
    figures.write_text("MemAvailable: 1 kB\n")
    s = Settings.from_env({**BASE, "TCM_SPAWN_RATE": "0.5", "TCM_INSTANCE_MEMORY_MAX_MB": "4096",
                           "TCM_TEST_MEMORY_FIGURES": str(figures)})  # fmt: skip
    assert (s.spawn_rate, s.instance_memory_max_mb, s.memory_figures) == (0.5, 4096, figures)
