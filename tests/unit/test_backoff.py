"""retry_delay_s: exponential backoff with full jitter."""

from __future__ import annotations

import random
import statistics

import pytest

from tcmd.work.queue.backoff import retry_delay_s
from tcmd.work.queue.base import RetryPolicy

POLICY = RetryPolicy(attempts=10, base_ms=1000, cap_ms=60_000)


def draws(policy: RetryPolicy, attempt: int, n: int = 500, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [retry_delay_s(policy, attempt, rng) for _ in range(n)]


@pytest.mark.parametrize(
    ("attempt", "ceiling_s"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (8, 60.0)]
)
def test_delays_stay_within_zero_and_the_doubled_ceiling(attempt: int, ceiling_s: float) -> None:
    delays = draws(POLICY, attempt)
    assert min(delays) >= 0.0
    assert max(delays) <= ceiling_s
    assert max(delays) > ceiling_s * 0.9  # the whole range is used, up to the ceiling


def test_cap_holds_for_huge_attempt_numbers() -> None:
    policy = RetryPolicy(base_ms=250, cap_ms=5_000)
    for attempt in (20, 64, 65, 10_000, 10**9):
        assert all(0.0 <= d <= 5.0 for d in draws(policy, attempt, n=50))


def test_a_seeded_rng_gives_the_same_delays() -> None:
    assert draws(POLICY, 4, seed=42) == draws(POLICY, 4, seed=42)
    assert draws(POLICY, 4, seed=42) != draws(POLICY, 4, seed=43)


def test_full_jitter_spreads_delays_over_the_range() -> None:
    delays = draws(POLICY, 3, n=2000)  # uniform on [0, 4]
    assert len(set(delays)) == len(delays)
    assert 1.8 < statistics.mean(delays) < 2.2
    assert sum(d < 1.0 for d in delays) > 400  # ~1/4 of them, not bunched at the max


def test_it_is_pure() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    first = retry_delay_s(POLICY, 2, rng)
    rng.setstate(state)
    assert retry_delay_s(POLICY, 2, rng) == first


def test_a_zero_base_means_retry_at_once() -> None:
    assert draws(RetryPolicy(base_ms=0), 3, n=10) == [0.0] * 10


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_count_from_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        retry_delay_s(POLICY, attempt, random.Random(0))
