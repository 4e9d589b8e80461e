"""The tmux circuit breaker's counting (pure logic: no tmux is involved)."""

from __future__ import annotations

import time

import pytest

from tcmd.errors import Unavailable
from tcmd.tmux import _Breaker


def test_timeouts_of_a_server_that_answers_nothing_open_the_circuit() -> None:
    breaker = _Breaker(threshold=3, cooldown_s=60)
    for _ in range(3):
        breaker.check()
        assert breaker.timed_out(time.monotonic())
    with pytest.raises(Unavailable, match="circuit open after 3 timeouts"):
        breaker.check()


def test_a_timeout_while_others_were_answered_is_slowness_not_death() -> None:
    breaker = _Breaker(threshold=3, cooldown_s=60)
    for _ in range(10):
        started = time.monotonic()
        breaker.answered()  # another call's answer came while this one waited
        assert not breaker.timed_out(started)
    breaker.check()  # still closed after 10 slow calls
    assert breaker.timeouts == 0


def test_any_answer_closes_an_open_circuit() -> None:
    breaker = _Breaker(threshold=2, cooldown_s=60)
    breaker.timed_out(time.monotonic())
    breaker.timed_out(time.monotonic())
    with pytest.raises(Unavailable):
        breaker.check()
    breaker.answered()  # e.g. the late answer to a call that gave up
    breaker.check()
