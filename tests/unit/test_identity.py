"""tcmd.instances.identity over real processes: ancestry, the tmux server, the cache."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcmd.instances.identity import IN_TMUX, OUTSIDE, VANISHED, Identity, InPane
from tests.support import wait_until


def children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture
def tree() -> Iterator[tuple[int, int]]:
    """(a stand-in pane process, its child sleeping), both real."""
    pane = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        wait_until(lambda: children_of(pane.pid), 5, what="the sleeping child")
        yield pane.pid, children_of(pane.pid)[0]
    finally:
        for pid in children_of(pane.pid):
            os.kill(pid, signal.SIGKILL)
        pane.kill()
        pane.wait()


def test_a_descendant_of_a_pane_is_its_instance(tree: tuple[int, int]) -> None:
    pane, child = tree
    ids = Identity()
    assert ids.who(child) == OUTSIDE  # no pane known yet: outside (this test is no tmux)
    ids = Identity()
    ids.pane_started("spec_1_1_1", pane)
    assert ids.who(child) == InPane("spec_1_1_1")
    assert ids.who(pane) == InPane("spec_1_1_1")
    assert ids.who(os.getpid()) == OUTSIDE


def test_under_the_tmux_server_but_in_no_pane_is_nobody(tree: tuple[int, int]) -> None:
    server, job = tree
    ids = Identity()
    ids.tmux_server = server
    assert ids.who(job) == IN_TMUX
    ids.pane_started("exec_1", job)  # the pane's start is recorded a moment later
    assert ids.who(job) == InPane("exec_1")  # "in tmux" was not cached


def test_verdicts_are_cached_and_kept_when_the_pane_goes(tree: tuple[int, int]) -> None:
    pane, child = tree
    ids = Identity()
    ids.pane_started("spec_1_1_1", pane)
    assert ids.who(child) == InPane("spec_1_1_1")
    walks = ids.walks
    assert ids.who(child) == InPane("spec_1_1_1")
    assert ids.walks == walks  # answered from the cache
    ids.pane_gone("spec_1_1_1")
    assert ids.who(child) == InPane("spec_1_1_1")  # never promoted to the operator


def test_a_vanished_or_unnamed_peer_is_vanished() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    ids = Identity()
    assert ids.who(gone.pid) == VANISHED
    assert ids.who(0) == VANISHED  # a peer in another pid namespace
