"""Changes: a waiter on a key is woken by changes of that key (and by keyless ones) only."""

from __future__ import annotations

import asyncio

from tcmd.changes import Changes


async def test_a_keyed_waiter_checks_again_only_for_its_own_key() -> None:
    changes = Changes()
    checked = {"a": 0, "any": 0}
    state = {"a": False, "any": False}

    def on(name: str) -> bool:
        checked[name] += 1
        return state[name]

    a = asyncio.create_task(changes.wait_for(lambda: on("a"), 5, "spec_1"))
    anything = asyncio.create_task(changes.wait_for(lambda: on("any"), 5))
    await asyncio.sleep(0)  # both check once and block
    assert checked == {"a": 1, "any": 1}

    changes.fire("spec_2")  # another instance changed
    await asyncio.sleep(0)
    assert checked == {"a": 1, "any": 2}  # the keyed waiter was not woken

    state["a"] = True
    changes.fire("spec_1")
    assert await a is True
    assert checked["a"] == 2

    state["any"] = True
    changes.fire()  # no key: every waiter checks again
    assert await anything is True


async def test_a_keyless_change_wakes_keyed_waiters_and_timeouts_still_answer() -> None:
    changes = Changes()
    ready = False
    waiter = asyncio.create_task(changes.wait_for(lambda: ready, 5, "spec_1"))
    await asyncio.sleep(0)
    ready = True
    changes.fire()
    assert await waiter is True
    assert await changes.wait_for(lambda: False, 0.01, "spec_1") is False
    assert changes._waiting == {}  # nobody left registered
