"""The table of agent profiles, by name."""

from __future__ import annotations

from tcmd.agents.base import AgentProfile
from tcmd.agents.claude import ClaudeProfile
from tcmd.agents.shell import ShellProfile
from tcmd.errors import InvalidParams

PROFILES: dict[str, AgentProfile] = {p.name: p for p in (ClaudeProfile(), ShellProfile())}


def profile(name: str) -> AgentProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise InvalidParams(f"agent: unknown profile {name!r}; known: {known}") from None
