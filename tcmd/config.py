"""Settings: every knob of tcmd, read once from the environment and an optional TOML file.

``Settings.from_env()`` is the one place configuration is read. Environment variables win
over the file named by ``TCM_CONFIG``; the file may use the same names (``PHASE = 2``) or
their lower-case form. Anything invalid raises ``ConfigError`` naming the variable.
Nothing here reads the environment at import time, and nothing imports more than the
standard library (the thin clients use the path helpers).
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tcmd.errors import ConfigError
from tcmd.paths import socket_path_from_env, state_dir_from_env

__all__ = ["Settings", "socket_path_from_env", "state_dir_from_env"]

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the NUL
_TMUX_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _int(lo: int, hi: int | None = None) -> Callable[[str, str], int]:
    def parse(var: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ConfigError(var, f"must be an integer {bound}, got {raw!r}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(var: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ConfigError(var, f"must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(var, f"must be true or false, got {raw!r}")


def _redis_url(var: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(var, f"must be a redis://, rediss:// or unix:// URL, got {raw!r}")
    return value


def _redis_prefix(var: str, raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        raise ConfigError(var, f"must be 1-64 of A-Z a-z 0-9 _ . : -, got {raw!r}")
    return value


def _node_id(var: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ConfigError(var, f"must be 1-64 of A-Z a-z 0-9 _ . -, got {raw!r}")
    return value


def _socket(var: str, raw: str) -> Path:
    path = Path(raw).expanduser().absolute()
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        raise ConfigError(var, f"socket path is longer than {SOCKET_PATH_MAX} bytes: {path}")
    return path


def _dir(var: str, raw: str) -> Path:
    if not raw.strip():
        raise ConfigError(var, "must be a directory path, got an empty value")
    return Path(raw).expanduser().absolute()


def _tmux_name(var: str, raw: str) -> str:
    if not _TMUX_NAME.match(raw):
        raise ConfigError(var, f"must be 1-64 characters of A-Z a-z 0-9 _ . -, got {raw!r}")
    return raw


def _command(var: str, raw: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError(var, f"cannot be split into arguments ({exc}): {raw!r}") from None
    if not argv:
        raise ConfigError(var, "must name a program, got an empty value")
    return argv


def _pattern_file(var: str, raw: str) -> Path:
    path = _dir(var, raw)
    read_pattern_file(path)  # a bad file stops the daemon at start, naming the variable
    return path


def read_pattern_file(path: Path) -> dict[str, re.Pattern[str]]:
    """The ``name = "regex"`` entries of a TCM_ERROR_PATTERNS file, compiled (checked)."""
    try:
        extra = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("TCM_ERROR_PATTERNS", f"cannot read {path}: {exc}") from None
    table: dict[str, re.Pattern[str]] = {}
    for name, regex in extra.items():
        if not isinstance(regex, str):
            raise ConfigError("TCM_ERROR_PATTERNS", f"{name}: must be a regex string")
        try:
            table[name] = re.compile(regex, re.I | re.M)
        except re.error as exc:
            raise ConfigError("TCM_ERROR_PATTERNS", f"{name}: bad regex ({exc})") from None
    return table


_MODES = ("default", "manual", "acceptEdits", "auto", "plan", "dontAsk", "bypassPermissions")


def _prices_file(var: str, raw: str) -> Path:
    from tcmd.prices import Prices

    path = _dir(var, raw)
    Prices.load(path)  # a bad file stops the daemon at start, naming the variable
    return path


def _usd(var: str, raw: str) -> float | None:
    if not raw.strip():
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(var, f"must be an amount of US dollars > 0, got {raw!r}")
    return value


def _rate(var: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1000:
        raise ConfigError(var, f"must be a number of starts per second 0-1000 (0: no limit), "
                          f"got {raw!r}")  # fmt: skip
    return value


def _figures_file(var: str, raw: str) -> Path | None:
    if not raw.strip():
        return None
    path = _dir(var, raw)
    if not path.is_file():
        raise ConfigError(var, f"file not found: {path}")
    return path


def _permission_mode(var: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if value not in _MODES:
        raise ConfigError(var, f"must be one of {', '.join(_MODES)}, got {raw!r}")
    return value


def _log_format(var: str, raw: str) -> str | None:
    value = _choice("console", "json", "auto")(var, raw)
    return None if value == "auto" else value


# field name -> (environment variable, parser, default as the raw string the env would hold)
_SPEC: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "phase": ("PHASE", lambda v, r: int(_choice("2", "3")(v, r))),
    "redis_url": ("REDIS_URL", _redis_url),
    "redis_prefix": ("TCM_REDIS_PREFIX", _redis_prefix),
    "redis_outbox": ("TCM_REDIS_OUTBOX", _int(100, 10_000_000)),
    "node_id": ("TCM_NODE_ID", _node_id),
    "lease_ms": ("TCM_LEASE_MS", _int(500, 3_600_000)),
    "max_manager_concurrency": ("MAX_MANAGER_CONCURRENCY", _int(1, 1000)),
    "max_specialists_per_manager": ("MAX_SPECIALISTS_PER_MANAGER", _int(1, 1000)),
    "health_check_interval_ms": ("HEALTH_CHECK_INTERVAL", _int(50, 86_400_000)),
    "unhealthy_threshold": ("UNHEALTHY_THRESHOLD", _int(1, 1000)),
    "socket_path": ("TCM_SOCKET", _socket),
    "state_dir": ("TCM_STATE_DIR", _dir),
    "tmux_socket": ("TCM_TMUX_SOCKET", _tmux_name),
    "claude_command": ("TCM_CLAUDE_COMMAND", _command),
    "log_format": ("TCM_LOG_FORMAT", _log_format),
    "log_level": ("TCM_LOG_LEVEL", _choice(*_LOG_LEVELS)),
    "max_frame_bytes": ("TCM_MAX_FRAME_BYTES", _int(1024, 1 << 30)),
    "max_connections": ("TCM_MAX_CONNECTIONS", _int(1, 1_000_000)),
    "max_pending_bytes": ("TCM_MAX_PENDING_BYTES", _int(1024, 1 << 40)),
    "max_unsent_bytes": ("TCM_MAX_UNSENT_BYTES", _int(1024, 1 << 30)),
    "max_calls_per_connection": ("TCM_MAX_CALLS_PER_CONNECTION", _int(1, 100_000)),
    "max_queued_prompts": ("TCM_MAX_QUEUED_PROMPTS", _int(1, 100_000)),
    "max_queued_prompt_bytes": ("TCM_MAX_QUEUED_PROMPT_BYTES", _int(1024, 1 << 40)),
    "ack_late_ms": ("TCM_ACK_LATE_MS", _int(100, 3_600_000)),
    "journal_fsync": ("TCM_JOURNAL_FSYNC", _bool),
    "trust_workdirs": ("TCM_TRUST_WORKDIRS", _bool),
    "stall_ms": ("TCM_STALL_MS", _int(100, 86_400_000)),
    "tool_stall_ms": ("TCM_TOOL_STALL_MS", _int(100, 86_400_000)),
    "dialog_grace_ms": ("TCM_DIALOG_GRACE_MS", _int(100, 86_400_000)),
    "recovery_max": ("TCM_RECOVERY_MAX", _int(0, 1000)),
    "recovery_window_ms": ("TCM_RECOVERY_WINDOW_MS", _int(1000, 86_400_000)),
    "notify_parent_pane": ("TCM_NOTIFY_PARENT_PANE", _bool),
    "error_patterns": ("TCM_ERROR_PATTERNS", _pattern_file),
    "claude_permission_mode": ("TCM_CLAUDE_PERMISSION_MODE", _permission_mode),
    "claude_sandbox": ("TCM_CLAUDE_SANDBOX", _bool),
    "retention_ms": ("TCM_RETENTION_MS", _int(0, 3_650 * 86_400_000)),
    "agent_nice": ("TCM_AGENT_NICE", _int(0, 19)),
    "tmux_control": ("TCM_TMUX_CONTROL", _bool),
    "hooks": ("TCM_HOOKS", _choice("http", "command")),
    "prices_file": ("TCM_PRICES", _prices_file),
    "budget_usd": ("TCM_BUDGET_USD", _usd),
    "memory_estimate_mb": ("TCM_MEMORY_ESTIMATE_MB", _int(1, 10_000_000)),
    "memory_reserve_mb": ("TCM_MEMORY_RESERVE_MB", _int(0, 10_000_000)),
    "instance_memory_max_mb": ("TCM_INSTANCE_MEMORY_MAX_MB", _int(0, 10_000_000)),
    "memory_over_sweeps": ("TCM_MEMORY_OVER_SWEEPS", _int(1, 1000)),
    "memory_figures": ("TCM_TEST_MEMORY_FIGURES", _figures_file),
    "spawn_rate": ("TCM_SPAWN_RATE", _rate),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated configuration of one tcmd. Units are in the names."""

    socket_path: Path
    state_dir: Path
    phase: int = 3
    redis_url: str | None = None
    redis_prefix: str = "tcm:"  # every key tcm writes starts with it
    redis_outbox: int = 50_000  # documents waiting for Redis; past it: a full resync
    node_id: str | None = None  # None: hostname + a suffix kept in the state dir
    lease_ms: int = 30_000  # a shared-queue lease: a dead node's jobs run elsewhere after it
    max_manager_concurrency: int = 5
    max_specialists_per_manager: int = 3
    health_check_interval_ms: int = 10_000
    unhealthy_threshold: int = 3
    tmux_socket: str = "tcm"
    claude_command: tuple[str, ...] = ("claude",)
    log_format: str | None = None  # None: console on a tty, json otherwise
    log_level: str = "info"
    max_frame_bytes: int = 4 * 1024 * 1024
    # what clients may make tcmd hold; the reasons for each default: docs/configuration.md
    max_connections: int = 1024
    max_pending_bytes: int = 64 * 1024 * 1024  # unfinished frames, all connections together
    max_unsent_bytes: int = 256 * 1024  # per connection: answers the peer has not read
    max_calls_per_connection: int = 64  # calls running at once on one connection
    max_queued_prompts: int = 100  # per instance: prompts waiting or being delivered
    max_queued_prompt_bytes: int = 16 * 1024 * 1024  # per instance: their text, UTF-8
    ack_late_ms: int = 20_000  # a prompt gone from the input box: its hook awaited this long
    journal_fsync: bool = False
    trust_workdirs: bool = True
    stall_ms: int = 600_000  # busy with no hook and no screen change this long: stuck
    tool_stall_ms: int = 3_600_000  # the same while one tool call runs (builds, subagents)
    dialog_grace_ms: int = 300_000  # waiting on a dialog this long: stuck
    recovery_max: int = 3  # recoveries per instance within recovery_window_ms
    recovery_window_ms: int = 600_000
    notify_parent_pane: bool = False  # also type a note into the parent's pane on give-up
    error_patterns: Path | None = None  # TOML file of extra health error patterns
    claude_permission_mode: str | None = None  # None: Claude's own default
    claude_sandbox: bool = False  # Claude Code's own sandbox (bubblewrap) for its Bash tool
    retention_ms: int = 7 * 86_400_000  # finished runs, terminated instances: then forgotten
    agent_nice: int = 19  # agents run this much nicer than tcmd (0: as tcmd; capped at 19)
    tmux_control: bool = True  # tmux calls over one control-mode client (off: a client each)
    hooks: str = "http"  # how Claude reports hook events: POST to tcmd, or run `tcmctl hook`
    prices_file: Path | None = None  # prices per model over the shipped table (tcmd/prices.json)
    budget_usd: float | None = None  # estimated cost at which no new task starts, daemon-wide
    # memory (docs/resources.md): admission of specialists, the cap per instance
    memory_estimate_mb: int = 600  # what a new instance is expected to use, until measured
    memory_reserve_mb: int = 1024  # kept free for the rest of the machine
    instance_memory_max_mb: int = 0  # above it an instance is flagged, then restarted (0: off)
    memory_over_sweeps: int = 3  # sweeps in a row above the cap before the restart
    memory_figures: Path | None = None  # TESTS ONLY: read instead of /proc/meminfo and cgroups
    spawn_rate: float = 2.0  # Claude starts per second at most (0: no pacing)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build Settings from ``env`` (default ``os.environ``) and the TCM_CONFIG file."""
        env = dict(os.environ if env is None else env)
        raw: dict[str, str] = {}
        if env.get("TCM_CONFIG"):
            raw.update(_read_toml(Path(env["TCM_CONFIG"]).expanduser()))
        for var, _ in _SPEC.values():
            if var in env:
                raw[var] = env[var]
        values: dict[str, Any] = {
            "socket_path": _socket("TCM_SOCKET", str(socket_path_from_env(raw | env))),
            "state_dir": _dir("TCM_STATE_DIR", str(state_dir_from_env(raw | env))),
        }
        for name, (var, parse) in _SPEC.items():
            if var in raw and name not in ("socket_path", "state_dir"):
                values[name] = parse(var, raw[var])
        _budget_holds_a_frame(values)
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly view for ``status`` (no secrets: the Redis password is masked)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        if self.redis_url:
            out["redis_url"] = re.sub(r"//([^@/]*):[^@/]*@", r"//\1:***@", self.redis_url)
        return out


def _budget_holds_a_frame(values: dict[str, Any]) -> None:
    """The shared budget of unfinished frames must take one frame of the largest size."""
    default = {f.name: f.default for f in fields(Settings)}
    frame = values.get("max_frame_bytes", default["max_frame_bytes"])
    if "max_pending_bytes" not in values:
        values["max_pending_bytes"] = max(default["max_pending_bytes"], frame)
    elif values["max_pending_bytes"] < frame:
        raise ConfigError(
            "TCM_MAX_PENDING_BYTES",
            f"must be at least TCM_MAX_FRAME_BYTES ({frame}), got {values['max_pending_bytes']}",
        )


def _read_toml(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("TCM_CONFIG", f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("TCM_CONFIG", f"cannot read {path}: {exc}") from None
    known = {var for var, _ in _SPEC.values()}
    out: dict[str, str] = {}
    for key, value in data.items():
        var = key.upper()
        if var not in known:
            raise ConfigError("TCM_CONFIG", f"unknown key {key!r} in {path}")
        if isinstance(value, bool):
            out[var] = "true" if value else "false"
        elif isinstance(value, str | int):
            out[var] = str(value)
        else:
            raise ConfigError(var, f"must be a string, integer or boolean in {path}")
    return out
