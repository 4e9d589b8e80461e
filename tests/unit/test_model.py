"""Instance.from_json: a stored record that cannot be an instance says which field is wrong."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tcmd.model import Instance, Role, State


def record(**changes: Any) -> dict[str, Any]:
    inst = Instance("mgr_1_1", Role.MANAGER, "exec_1", "/w", "claude", "ctx", "tok", "sid")
    return inst.to_json() | changes


def test_a_stored_instance_round_trips() -> None:
    inst = Instance.from_json(record(status="busy", turns=3, created=5))
    assert inst.role is Role.MANAGER
    assert inst.status is State.BUSY
    assert Instance.from_json(inst.to_json()) == inst


def test_fields_added_later_may_be_missing() -> None:
    raw = record()
    del raw["launched"], raw["next_child"]
    assert Instance.from_json(raw).next_child == 1


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ([1, 2], "not an object"),
        ({k: v for k, v in record().items() if k != "role"}, "missing field 'role'"),
        ({k: v for k, v in record().items() if k != "status"}, "missing field 'status'"),
        (record(role="boss"), "field 'role' is 'boss', not one of executive, manager, specialist"),
        (record(status=None), "field 'status' is None"),
        (record(token=7), "field 'token' is 7, not str"),
        (record(turns="3"), "field 'turns' is '3', not int"),
        (record(turns=True), "field 'turns' is True, not int"),
        (record(pane_id=["%1"]), "field 'pane_id' is ['%1'], not str | None"),
        (record(colour="red"), "unknown field 'colour'"),
    ],
)
def test_a_bad_record_names_the_field(raw: Any, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as refused:
        Instance.from_json(raw)
    assert "\n" not in str(refused.value)
