"""How a delivery ends when the agent's hook is late or tmux is too slow to show the box.

The tmux side is a stand-in at its boundary (paste, capture, send_keys): what these tests
vary is what tmux answers, which a real server under load does only by chance. The
instance is put straight into a real registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcmd.config import Settings
from tcmd.errors import Unavailable
from tcmd.instances import delivery
from tcmd.instances.delivery import Delivery
from tcmd.instances.registry import Instances
from tcmd.model import Instance, Role, State
from tcmd.store.jsonfile import JsonFileStore
from tcmd.tmux import Tmux

TEXT = "do the task"
BOX = "───\n❯ do the task\n───"  # the text still unsubmitted in the fake's input box
EMPTY_BOX = "───\n❯ \n───"


class Screen:
    """What tmux answers: each capture takes the next screen (or raises it)."""

    timeout_s = 5.0

    def __init__(self, *screens: str | Exception) -> None:
        self.screens = list(screens)
        self.pasted: list[str] = []
        self.keys: list[str] = []
        self.captured = asyncio.Event()

    async def paste(self, target: str, text: str, *, enter: bool = False) -> None:
        self.pasted.append(text)

    async def capture(self, target: str, lines: int = 50) -> str:
        self.captured.set()
        screen = self.screens.pop(0) if len(self.screens) > 1 else self.screens[0]
        if isinstance(screen, Exception):
            raise screen
        return screen

    async def send_keys(self, target: str, *keys: str) -> None:
        self.keys.extend(keys)


@pytest.fixture
def instances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Instances]:
    monkeypatch.setattr(delivery, "ACK_WAIT_S", 0.05)
    store = JsonFileStore(tmp_path / "store")
    store.open()
    settings = Settings(tmp_path / "tcmd.sock", tmp_path, ack_late_ms=100)
    registry = Instances(settings, store, Tmux("tcm-unit-never-started", tmp_path / "t.conf"))
    registry.by_id["exec_1"] = Instance(
        "exec_1", Role.EXECUTIVE, None, str(tmp_path), "claude", "", "token", "session",
        status=State.READY,
    )  # fmt: skip
    yield registry
    store.close()


def with_tmux(instances: Instances, screen: Screen) -> Delivery:
    instances.tmux = screen  # type: ignore[assignment]
    return Delivery(instances)


async def test_a_box_tmux_cannot_show_counts_as_gone_not_as_refused(instances: Instances) -> None:
    screen = Screen(Unavailable("tmux did not answer within 5.0s"))
    out = await with_tmux(instances, screen).send(instances.by_id["exec_1"], TEXT, 5)
    assert (out["delivered"], out.get("submitted")) == (False, True)
    assert screen.pasted == [TEXT] and screen.keys == []  # neither the text nor Enter again
    assert "may still run it" in str(instances.by_id["exec_1"].last_error)


async def test_text_left_in_the_box_gets_enter_again_then_is_refused(
    instances: Instances,
) -> None:
    screen = Screen(BOX)
    out = await with_tmux(instances, screen).send(instances.by_id["exec_1"], TEXT, 5)
    assert (out["delivered"], out.get("submitted")) == (False, None)
    assert screen.keys == ["Enter"] * delivery.ENTER_TRIES
    assert instances.by_id["exec_1"].last_error == "prompt was not acknowledged by the agent"


async def test_a_hook_that_comes_after_the_box_emptied_delivers_it(instances: Instances) -> None:
    screen = Screen(EMPTY_BOX)
    deliver = with_tmux(instances, screen)
    inst = instances.by_id["exec_1"]
    sending = asyncio.create_task(deliver.send(inst, TEXT, 5))
    # past the first wait for the hook: the box is read, found empty
    await asyncio.wait_for(screen.captured.wait(), 5)
    instances.acks[inst.id] = 1  # the late UserPromptSubmit
    instances.changes.fire(inst.id)
    out = await sending
    assert (out["delivered"], out.get("submitted")) == (True, None)
    assert deliver.last_sent[inst.id] == TEXT
