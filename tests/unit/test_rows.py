"""list rows are kept until what they show changes, however the instance was changed."""

from __future__ import annotations

from typing import Any

import orjson

from tcmd.instances.rows import NO_EXTRA, Rows
from tcmd.model import Instance, Role, State


def instance(n: int) -> Instance:
    return Instance(id=f"spec_{n}", role=Role.SPECIALIST, parent_id="mgr_1", work_dir="/w",
                    agent="claude", context="", token="secret", session_id="s")  # fmt: skip


def test_an_unchanged_instance_keeps_its_row() -> None:
    rows, inst = Rows(), instance(1)
    first = rows.of(inst)
    assert rows.of(inst) is first
    assert first["instanceId"] == "spec_1" and first["status"] == "starting"
    assert "secret" not in repr(first)


def test_any_change_to_what_the_row_shows_makes_a_new_one() -> None:
    rows, inst = Rows(), instance(1)
    first = rows.of(inst)
    inst.last_error = "boom"  # a field set directly, with no one told
    second = rows.of(inst)
    assert second is not first and second["lastError"] == "boom"
    inst.move(State.READY)
    assert rows.of(inst)["status"] == "ready"
    assert first["lastError"] is None and first["status"] == "starting"  # handed out: as was


def test_fields_other_services_add_are_part_of_the_row() -> None:
    rows, inst = Rows(), instance(1)
    memory: dict[str, Any] = {}
    rows.added = lambda i: dict(memory)
    assert "memoryMb" not in rows.of(inst)
    memory["memoryMb"] = 512.0
    assert rows.of(inst)["memoryMb"] == 512.0
    memory.clear()  # an extra that goes away leaves the row too
    assert "memoryMb" not in rows.of(inst)


def test_a_forgotten_instance_leaves_nothing_behind() -> None:
    rows, a, b = Rows(), instance(1), instance(2)
    row_a = rows.of(a)
    rows.of(b)
    rows.forget("spec_2")
    assert rows.of(a) is row_a
    assert len(rows._kept) == 1


def test_the_encoded_rows_are_the_rows_and_are_made_again_when_they_change() -> None:
    rows, a, b = Rows(), instance(1), instance(2)
    first = rows.encoded([a, b])
    assert orjson.loads(orjson.dumps(first)) == [rows.of(a), rows.of(b)]
    again = rows.encoded([a, b])
    assert again[0] is first[0] and again[1] is first[1]  # encoded once while a row stands
    b.turns = 3
    memory = {"memoryMb": 64.0}
    rows.added = lambda i: memory if i is a else NO_EXTRA
    third = rows.encoded([a, b])
    assert third[0] is not first[0] and third[1] is not first[1]
    assert [orjson.loads(orjson.dumps(f)) for f in third] == [
        {**rows.of(a), "memoryMb": 64.0},
        {**rows.of(b), "turns": 3},
    ]
    assert rows.encoded([b])[0] is third[1]
