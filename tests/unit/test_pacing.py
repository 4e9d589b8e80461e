"""Spawn pacing: slots 1/rate apart, in the order asked, never refused."""

from __future__ import annotations

import pytest

from tcmd.instances.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_starts_asked_together_get_slots_one_interval_apart() -> None:
    clock = Clock()
    pacer = Pacer(2.0, clock)
    assert [pacer.reserve() for _ in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]  # (5-1)/2 s


def test_a_start_after_a_quiet_spell_goes_at_once() -> None:
    clock = Clock()
    pacer = Pacer(4.0, clock)
    assert pacer.reserve() == 0.0
    clock.now += 0.1
    assert pacer.reserve() == pytest.approx(0.15)  # the slot opens 0.25 s after the first
    clock.now += 10
    assert pacer.reserve() == 0.0  # no burst saved up over the quiet spell: one token


def test_rate_zero_never_waits() -> None:
    pacer = Pacer(0.0, Clock())
    assert [pacer.reserve() for _ in range(100)] == [0.0] * 100
