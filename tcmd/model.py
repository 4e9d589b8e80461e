"""The nouns of tcm: roles, instance states and the moves allowed between them."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
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
    node: str | None = None  # the node (daemon) that runs it; None: made before nodes
    run_id: str | None = None  # the run whose task a specialist works on (usage, budgets)

    def move(self, new: State) -> bool:
        """Change state if legal; True when it changed."""
        check_move(self.status, new)
        if new == self.status:
            return False
        self.status = new
        self.updated = time.time()
        return True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> Instance:
        """Rebuild a stored instance; ValueError names the field that is missing or wrong."""
        if not isinstance(raw, dict):
            raise ValueError(f"not an object: {raw!r:.60}")
        types = {f.name: str(f.type) for f in fields(cls)}
        if unknown := sorted(raw.keys() - types.keys()):
            raise ValueError(f"unknown field {unknown[0]!r}")
        if missing := [name for name in _REQUIRED if name not in raw]:
            raise ValueError(f"missing field {missing[0]!r}")
        for name, value in raw.items():
            if wanted := _misfit(value, types[name]):
                raise ValueError(f"field {name!r} is {value!r:.60}, not {wanted}")
        return cls(**raw | {"role": Role(raw["role"]), "status": State(raw["status"])})


# Fields with a default came later and older records lack them; status was always stored.
_REQUIRED = [
    f.name for f in fields(Instance) if f.default is MISSING and f.default_factory is MISSING
] + ["status"]
_ENUMS: dict[str, type[StrEnum]] = {"Role": Role, "State": State}
_PLAIN: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float)}


def _misfit(value: Any, annotation: str) -> str | None:
    """What a stored field should have been, or None when ``value`` fits ``annotation``."""
    name, _, rest = annotation.partition(" | ")
    if value is None:
        return None if rest == "None" else annotation
    if enum := _ENUMS.get(name):
        fits = isinstance(value, str) and value in enum._value2member_map_
        return None if fits else f"one of {', '.join(enum)}"
    fits = isinstance(value, _PLAIN.get(name, (object,))) and not isinstance(value, bool)
    return None if fits else annotation


def number_of(instance_id: str) -> str:
    """The numeric path of an id: ``mgr_1_2`` → ``1_2`` (used to name children)."""
    return instance_id.split("_", 1)[1]


def child_id(parent: Instance | None, role: Role, n: int) -> str:
    """``exec_N``, ``mgr_<exec>_<n>``, ``spec_<exec>_<mgr>_<n>``."""
    prefix = {Role.EXECUTIVE: "exec", Role.MANAGER: "mgr", Role.SPECIALIST: "spec"}[role]
    if parent is None:
        return f"{prefix}_{n}"
    return f"{prefix}_{number_of(parent.id)}_{n}"


_VALUES: dict[str, str] = {m: m.value for m in (*Role, *State)}
_PUBLIC = {  # what ``list`` shows -> the Instance field it comes from (never the token)
    "instanceId": "id",
    "role": "role",
    "parentId": "parent_id",
    "workDir": "work_dir",
    "status": "status",
    "created": "created",
    "stateSince": "updated",  # when it entered its status (time in state)
    "agent": "agent",
    "model": "model",
    "lastResult": "last_result",
    "lastError": "last_error",
    "lastExitCode": "last_exit_code",
    "turns": "turns",
    "restarts": "restarts",
    "node": "node",
}
_PUBLIC_KEYS = tuple(_PUBLIC)
_PUBLIC_FIELDS = tuple(_PUBLIC.values())
# an Instance's public fields as a tuple, in one C call (instances/rows.py compares them)
public_values = operator.attrgetter(*_PUBLIC_FIELDS)


def public_row(get: Callable[[str], Any]) -> dict[str, Any]:
    """What ``list`` shows of a stored record (another node's, from the Redis mirror), its
    fields read by ``get``; an Instance's own is ``row_of(public_values(inst))``, kept
    by instances/rows.py (the same keys)."""
    return row_of(tuple(get(name) for name in _PUBLIC_FIELDS))


def row_of(values: tuple[Any, ...]) -> dict[str, Any]:
    """A ``list`` row of an Instance's ``public_values``."""
    row = dict(zip(_PUBLIC_KEYS, values, strict=True))
    role, status = row["role"], row["status"]
    # a dict, not ``.value``: an enum's value is a descriptor, slow across hundreds of rows
    row["role"], row["status"] = _VALUES.get(role, role), _VALUES.get(status, status)
    return row
