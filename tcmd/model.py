"""The nouns of tcm: roles, instance states and the moves allowed between them."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from tcmd.errors import Conflict


class Role(StrEnum):
    EXECUTIVE = "executive"
    MANAGER = "manager"
    SPECIALIST = "specialist"


# which role a parent must have for each role (None: no parent)
PARENT_ROLE: dict[Role, Role | None] = {
    Role.EXECUTIVE: None,
    Role.MANAGER: Role.EXECUTIVE,
    Role.SPECIALIST: Role.MANAGER,
}


class State(StrEnum):
    STARTING = "starting"  # launched, not yet ready for a prompt
    READY = "ready"  # idle at its prompt
    BUSY = "busy"  # working on a turn
    WAITING = "waiting"  # needs input or a permission from a person
    ERRORED = "errored"  # its last turn failed (StopFailure); it may take another
    EXITED = "exited"  # its process is gone; restart brings it back
    TERMINATED = "terminated"  # ended on purpose; final


LIVE = frozenset({State.STARTING, State.READY, State.BUSY, State.WAITING, State.ERRORED})
IDLE = frozenset({State.READY, State.WAITING, State.ERRORED, State.EXITED, State.TERMINATED})

_MOVES: dict[State, frozenset[State]] = {
    State.STARTING: frozenset(
        {State.READY, State.BUSY, State.WAITING, State.ERRORED, State.EXITED, State.TERMINATED}
    ),
    State.READY: frozenset(
        {State.BUSY, State.WAITING, State.ERRORED, State.EXITED, State.TERMINATED, State.STARTING}
    ),
    State.BUSY: frozenset(
        {State.READY, State.WAITING, State.ERRORED, State.EXITED, State.TERMINATED, State.STARTING}
    ),
    State.WAITING: frozenset(
        {State.READY, State.BUSY, State.ERRORED, State.EXITED, State.TERMINATED, State.STARTING}
    ),
    State.ERRORED: frozenset(
        {State.READY, State.BUSY, State.WAITING, State.EXITED, State.TERMINATED, State.STARTING}
    ),
    State.EXITED: frozenset({State.STARTING, State.TERMINATED, State.READY}),
    State.TERMINATED: frozenset(),
}


def check_move(old: State, new: State) -> None:
    """Refuse an illegal state change loudly (Conflict names both states)."""
    if new != old and new not in _MOVES[old]:
        raise Conflict(f"illegal state change {old} → {new}")


@dataclass(slots=True)
class Instance:
    """One agent process in its own tmux session. Persisted in the store as a dict."""

    id: str
    role: Role
    parent_id: str | None
    work_dir: str
    agent: str
    context: str
    token: str
    session_id: str  # the agent's own conversation id (Claude's --session-id)
    model: str | None = None
    status: State = State.STARTING
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    pane_id: str | None = None
    last_result: str | None = None
    last_error: str | None = None
    exit_status: int | None = None
    exit_signal: int | None = None
    turns: int = 0  # turns finished (Stop)
    prompts: int = 0  # prompts accepted (UserPromptSubmit): a conversation exists to resume
    last_exit_code: int | None = None  # the shell agent's last command status
    restarts: int = 0
    launched: int = 0  # how many times its process was started (resume needs > 0)
    next_child: int = 1

    def move(self, new: State) -> bool:
        """Change state if legal; True when it changed."""
        check_move(self.status, new)
        if new == self.status:
            return False
        self.status = new
        self.updated = time.time()
        return True

    def public(self) -> dict[str, Any]:
        """What ``list`` shows (never the token)."""
        return {
            "instanceId": self.id,
            "role": self.role.value,
            "parentId": self.parent_id,
            "workDir": self.work_dir,
            "status": self.status.value,
            "created": self.created,
            "agent": self.agent,
            "model": self.model,
            "lastResult": self.last_result,
            "lastError": self.last_error,
            "lastExitCode": self.last_exit_code,
            "turns": self.turns,
            "restarts": self.restarts,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Instance:
        raw = dict(raw)
        raw["role"] = Role(raw["role"])
        raw["status"] = State(raw["status"])
        return cls(**raw)


def number_of(instance_id: str) -> str:
    """The numeric path of an id: ``mgr_1_2`` → ``1_2`` (used to name children)."""
    return instance_id.split("_", 1)[1]


def child_id(parent: Instance | None, role: Role, n: int) -> str:
    """``exec_N``, ``mgr_<exec>_<n>``, ``spec_<exec>_<mgr>_<n>``."""
    prefix = {Role.EXECUTIVE: "exec", Role.MANAGER: "mgr", Role.SPECIALIST: "spec"}[role]
    if parent is None:
        return f"{prefix}_{n}"
    return f"{prefix}_{number_of(parent.id)}_{n}"
