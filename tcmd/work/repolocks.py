"""One change to a repository's worktrees at a time, across every node sharing it.

``git worktree add`` and ``remove`` (and the branch deletion after a removal) write the
repository's shared ``.git``: two at once (two attempts of one node, or two nodes with one
repository on a shared disk) can fail the second on git's own ``*.lock`` files instead of
waiting. ``RepoLocks.hold(repo)`` queues them: first on this process's ``asyncio.Lock`` for
the repository, then on the lock service's lock ``worktree:<repository path>`` (Redis with
``REDIS_URL``, so every node waits its turn; embedded otherwise). While the lock service
cannot answer (Redis away) the process's lock alone is held, and a warning is logged:
work goes on, and a race with another node shows as a git error its attempt retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import structlog

from tcmd.errors import Unavailable
from tcmd.store.locks import LockService

log = structlog.get_logger(__name__)
TTL_MS = 30_000  # renewed at a third while held, so a slow checkout keeps it
WAIT_MS = 660_000  # two checkouts ahead of us at worktrees.ADD_TIMEOUT_S each, and some


def lock_name(repo: Path) -> str:
    """``worktree:<path>``; characters a lock name may not hold (braces, spaces, newlines)
    are %-escaped, so every path names one lock."""
    return "worktree:" + quote(str(repo), safe="/")


class RepoLocks:
    """The guard worktrees.py takes around every change to a repository's worktrees."""

    def __init__(self, locks: LockService) -> None:
        self.locks = locks
        self._local: dict[Path, asyncio.Lock] = {}  # repository → this process's turn

    @contextlib.asynccontextmanager
    async def hold(self, repo: Path) -> AsyncIterator[None]:
        async with self._local.setdefault(repo, asyncio.Lock()):
            try:
                lease = await self.locks.acquire(lock_name(repo), TTL_MS, WAIT_MS)
            except Unavailable as exc:
                log.warning("repository lock unavailable: held on this node only",
                            repo=str(repo), error=exc.message)  # fmt: skip
                yield
                return
            try:
                yield
            finally:
                await self.locks.release(lease)
