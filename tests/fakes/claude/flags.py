"""Claude-style command-line flags and the JSON files they name."""

from __future__ import annotations

import json
import sys

TYPE_CHECKING = False  # not `from typing import ...`: importing typing costs a start-up
if TYPE_CHECKING:
    from typing import Any

VERSION = "2.1.328 (Claude Code)"
VALUE_FLAGS = {
    "--session-id",
    "--resume",
    "--settings",
    "--mcp-config",
    "--append-system-prompt",
    "--model",
    "--permission-mode",
}
BOOL_FLAGS = {"--strict-mcp-config", "--dangerously-skip-permissions", "--verbose"}
MODES = ("default", "manual", "acceptEdits", "auto", "plan", "dontAsk", "bypassPermissions")


class UsageError(Exception):
    """A start-up error: printed to stderr, exit status 1."""


def parse_args(argv: list[str]) -> dict[str, Any]:
    """Parse Claude-style flags; unknown ones raise UsageError like commander does."""
    opts: dict[str, Any] = {"allowedTools": [], "prompt": None}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in ("-v", "--version"):
            print(VERSION)
            sys.exit(0)
        if name in BOOL_FLAGS and not eq:
            opts[name[2:]] = True
        elif name in VALUE_FLAGS:
            if not eq:
                if i == len(argv):
                    raise UsageError(f"error: option '{name} <value>' argument missing")
                inline, i = argv[i], i + 1
            opts[name[2:]] = inline
        elif name in ("--allowedTools", "--allowed-tools"):
            values = [inline] if eq else []
            while i < len(argv) and not argv[i].startswith("-"):  # variadic, as in commander
                values.append(argv[i])
                i += 1
            if not values:
                raise UsageError(f"error: option '{name} <tools...>' argument missing")
            opts["allowedTools"] += values
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"error: unknown option '{name}'")
        elif opts["prompt"] is None:
            opts["prompt"] = arg
        else:
            raise UsageError(f"error: too many arguments. Expected 1 argument but got {arg!r}.")
    return opts


def load_json(value: str, what: str) -> dict[str, Any]:
    """Read a JSON object given inline (`{...}`) or as a file path."""
    try:
        if not value.lstrip().startswith("{"):
            with open(value, encoding="utf-8") as f:
                value = f.read()
        data = json.loads(value)
    except FileNotFoundError:
        raise UsageError(f"Error: {what} file not found: {value}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"Error: Invalid {what} {value}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"Error: Invalid {what} {value}: not a JSON object")
    return data


def number(text: str, default: float) -> float:
    """``text`` as a float (a flag, an environment variable, a directive's argument)."""
    try:
        return float(text)
    except ValueError:
        return default
