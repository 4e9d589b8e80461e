"""The table of agent profiles, by name."""

from __future__ import annotations

from tcmd.errors import InvalidParams
from tcmd.instances.agents.base import AgentProfile
from tcmd.instances.agents.claude import ClaudeProfile
from tcmd.instances.agents.shell import ShellProfile

PROFILES: dict[str, AgentProfile] = {p.name: p for p in (ClaudeProfile(), ShellProfile())}


def profile(name: str) -> AgentProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise InvalidParams(f"agent: unknown profile {name!r}; known: {known}") from None
