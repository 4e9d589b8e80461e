"""What an agent's screen says when something is wrong: the one table of error patterns.

Each entry is (name, regex). The first that matches the last lines of a screen names the
problem. Add a pattern here and every health check uses it; a deployment adds or
replaces entries with a TOML file named by TCM_ERROR_PATTERNS (``name = "regex"`` lines),
read once at start (``with_overrides``).
"""

from __future__ import annotations

import re
from pathlib import Path

from tcmd.config import read_pattern_file

_AUTH = (r"API Error: 401|authentication_error|invalid x-api-key|Invalid API key|"
         r"Please run /login|OAuth token has expired")
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("usage limit", re.compile(r"usage limit reached|limit will reset|rate limit", re.I)),
    ("overloaded", re.compile(r"\boverloaded(_error)?\b|API Error: 529", re.I)),
    ("authentication", re.compile(_AUTH, re.I)),
    ("api error", re.compile(r"API Error: \d{3}", re.I)),
    ("connection error", re.compile(r"connection error|ECONNREFUSED|ETIMEDOUT|fetch failed", re.I)),
    ("credit balance", re.compile(r"Credit balance is too low|credit balance", re.I)),
    ("out of memory", re.compile(r"out of memory|JavaScript heap out of memory|MemoryError", re.I)),
    ("traceback", re.compile(r"^Traceback \(most recent call last\):", re.M)),
]
_RESET = re.compile(r"reset(?:s)?(?: at)?\s+(\d{1,2}(?::\d{2}){0,2}\s*(?:[ap]m)?)", re.I)


Patterns = list[tuple[str, re.Pattern[str]]]


def with_overrides(path: Path | None) -> Patterns:
    """The table, with the entries of ``path`` replacing or added to it (checked)."""
    if path is None:
        return PATTERNS
    return list({**dict(PATTERNS), **read_pattern_file(path)}.items())


def match_error(screen: str, last_lines: int = 15, patterns: Patterns = PATTERNS) -> str | None:
    """``"<name>: <the matching line>"`` for the first pattern found near the bottom."""
    tail = "\n".join(screen.splitlines()[-last_lines:])
    for name, pattern in patterns:
        m = pattern.search(tail)
        if m:
            line = tail[tail.rfind("\n", 0, m.start()) + 1 :].split("\n", 1)[0].strip()
            return f"{name}: {line[:200]}"
    return None


def rate_limit_reset(text: str) -> str | None:
    """The reset time a usage-limit message announces (``3pm``, ``15:30``), if any."""
    if not re.search(r"limit", text, re.I):
        return None
    m = _RESET.search(text)
    return m.group(1).strip() if m else None


def auth_failure(error: str | None, problem: str | None = None) -> bool:
    """Whether a failed turn's ``error`` (StopFailure) or a screen's problem is a failed
    login: the account's, not the instance's."""
    return bool(error and "auth" in error.lower()) or bool(
        problem and problem.startswith("authentication:")
    )
