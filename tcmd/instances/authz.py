"""Who may do what to whom: the role rules of DESIGN.md, as pure functions.

The operator (no token) may do everything. An executive may spawn managers under itself,
a manager specialists under itself, a specialist nothing. An instance may send to,
terminate and restart only its own descendants; it may read and wait on them and itself,
and it sees (in ``list``, ``status``, the jobs and runs of the parallel tools) only itself
and its descendants.
"""

from __future__ import annotations

from collections.abc import Callable

from tcmd.api import Caller
from tcmd.errors import Forbidden, InvalidParams
from tcmd.model import PARENT_ROLE, Instance, Role

Lookup = Callable[[str], Instance]  # raises NotFound


def is_descendant(
    inst: Instance, ancestor_id: str, lookup: Callable[[str], Instance | None]
) -> bool:
    seen = 0
    parent_id = inst.parent_id
    while parent_id is not None and seen < 64:
        if parent_id == ancestor_id:
            return True
        parent = lookup(parent_id)
        parent_id = parent.parent_id if parent else None
        seen += 1
    return False


def may_see(caller: Caller, inst: Instance, lookup: Callable[[str], Instance | None]) -> bool:
    """Whether ``caller`` is the operator, ``inst`` itself or an ancestor of it."""
    if caller.instance_id is None:
        return True
    return inst.id == caller.instance_id or is_descendant(inst, caller.instance_id, lookup)


def check_target(
    caller: Caller,
    target: Instance,
    lookup: Callable[[str], Instance | None],
    action: str,
    *,
    itself: bool = False,
) -> None:
    """Refuse unless the caller is the operator or an ancestor of ``target`` (or, when
    ``itself`` allows it, ``target`` itself)."""
    if caller.is_operator or (itself and target.id == caller.instance_id):
        return
    assert caller.instance_id is not None
    if not is_descendant(target, caller.instance_id, lookup):
        raise Forbidden(
            f"{caller.instance_id} may not {action} {target.id}: not one of its descendants"
        )


def spawn_parent(
    caller: Caller, role: Role, parent_id: str | None, lookup: Lookup
) -> Instance | None:
    """The parent a new ``role`` instance gets; refuses what the role rules forbid."""
    needed = PARENT_ROLE[role]
    if not caller.is_operator:
        caller_role = Role(caller.role) if caller.role else None
        if caller_role is None or PARENT_ROLE[role] != caller_role:
            raise Forbidden(f"a {caller.role} may not spawn a {role}")
        if parent_id not in (None, caller.instance_id):
            raise Forbidden(f"{caller.instance_id} may spawn only under itself, not {parent_id}")
        parent_id = caller.instance_id
    if needed is None:
        if parent_id is not None:
            raise InvalidParams("parentId: an executive has no parent")
        return None
    if parent_id is None:
        raise InvalidParams(f"parentId: a {role} needs {_a(needed)} parent")
    parent = lookup(parent_id)
    if parent.role != needed:
        raise InvalidParams(
            f"parentId: {parent_id} is {_a(parent.role)}; a {role} needs {_a(needed)} parent"
        )
    return parent


def _a(role: Role) -> str:
    return f"an {role}" if role.value[0] in "aeiou" else f"a {role}"
