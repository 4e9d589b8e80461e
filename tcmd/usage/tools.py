"""The ``usage`` tool: tokens and estimated cost of the daemon, a run, a tree, a manager or
an instance.

The operator may ask about any scope. An instance may ask about itself and what lies
below it (an executive its tree, a manager itself and its specialists, a run whose
specialists are all below it); with no scope named it gets its own (tree, manager's
scope, or itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from tcmd.api import Caller, Params, Tool
from tcmd.errors import Forbidden, InvalidParams
from tcmd.usage.ledger import Ledger, scopes_of

Id = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_]+$")
Extra = Callable[[str, str], dict[str, Any]]


class UsageParams(Params):
    runId: str | None = Id
    tree: str | None = Field(
        default=None, pattern=r"^exec_[0-9]+$", description="An executive's id: its whole tree"
    )
    managerId: str | None = Id
    instanceId: str | None = Id


def within(caller_id: str, target_id: str) -> bool:
    """Whether ``target_id`` is ``caller_id`` or lies below it (read from the ids)."""
    if target_id == caller_id:
        return True
    manager, tree = scopes_of(target_id)
    if caller_id.startswith("exec_"):
        return tree == caller_id
    return caller_id.startswith("mgr_") and manager == caller_id


class UsageTools:
    """The ledger as a tool; ``extras`` add to a scope's answer (the work package: budgets)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.extras: list[Extra] = []

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "usage",
                "Tokens (input, output, cache creation, cache read) and estimated cost in USD "
                "of the whole daemon, a run (runId), an executive's tree (tree), a manager "
                "and its specialists (managerId) or one instance (instanceId), per model. "
                "A model without a price has its tokens counted and its cost unknown.",
                UsageParams,
                self.usage,
                inline=True,
                read_only=True,
            )
        ]

    def usage(self, caller: Caller, p: UsageParams) -> dict[str, Any]:
        given = {"run": p.runId, "tree": p.tree, "manager": p.managerId, "instance": p.instanceId}
        named = [(kind, value) for kind, value in given.items() if value is not None]
        if len(named) > 1:
            raise InvalidParams("params: give at most one of runId, tree, managerId, instanceId")
        kind, key = named[0] if named else self._own(caller)
        self._check(caller, kind, key)
        report = self.ledger.report(kind, key)
        for extra in self.extras:
            report.update(extra(kind, key))
        return report

    @staticmethod
    def _own(caller: Caller) -> tuple[str, str]:
        me = caller.instance_id
        if me is None:
            return "all", ""
        if me.startswith("exec_"):
            return "tree", me
        if me.startswith("mgr_"):
            return "manager", me
        return "instance", me

    def _check(self, caller: Caller, kind: str, key: str) -> None:
        me = caller.instance_id
        if me is None:
            return
        if kind == "run":
            members = self.ledger.members.get(("run", key), set())
            ok = all(within(me, m) for m in members)
        else:
            ok = kind != "all" and within(me, key)
        if not ok:
            raise Forbidden(f"{me} may see the usage of itself and what lies below it only")
