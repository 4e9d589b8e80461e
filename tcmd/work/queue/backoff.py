"""Retry delays: exponential backoff with full jitter.

The delay after failed attempt ``n`` (1-based) is drawn uniformly from
``[0, min(cap, base * 2**(n-1))]``. Full jitter spreads the retries of jobs that failed
together (a manager crash fails all its jobs at once) instead of moving the herd in step.
"""

from __future__ import annotations

import random

from tcmd.work.queue.base import RetryPolicy

# 2**64 ms is far beyond any cap; stops a huge attempt number making a huge integer.
_MAX_DOUBLINGS = 64


def retry_delay_s(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retrying after failed attempt ``attempt`` (1-based)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    ceiling_ms = min(policy.cap_ms, policy.base_ms * 2 ** min(attempt - 1, _MAX_DOUBLINGS))
    return rng.uniform(0.0, max(ceiling_ms, 0) / 1000)
