"""Deaths told by the kernel (tcmd/instances/deaths.py), against real processes: the
launcher records how its agent ended, and a pidfd tells tcmd the moment a pane process
ends, only for the pane process of the newest launch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tcmd.instances import launcher
from tcmd.instances.deaths import DeathWatch, decode_status

pytestmark = pytest.mark.skipif(not DeathWatch.available, reason="no pidfd_open here")


def run_launcher(script: str, *, hand_over: bool = True) -> tuple[int, int | None]:
    """Start tcm's launcher with ``sh -c script`` as its agent, hand it over; its exit code
    and the raw wait status it told tcmd."""
    handoff = launcher.Handoff()
    try:
        argv = [*launcher.command_line(sys.executable), handoff.address, "--", "sh", "-c", script]
        proc = subprocess.Popen(argv)  # an argv, never a shell
        if hand_over:
            handoff.hand_over({"TCM_INSTANCE_TOKEN": "t"})
        else:
            handoff.close()
        return proc.wait(timeout=30), handoff.exit_status() if hand_over else None
    finally:
        handoff.close()


def test_the_launcher_tells_its_agents_exit_status_and_signal() -> None:
    code, status = run_launcher('test "$TCM_INSTANCE_TOKEN" = t && exit 3')
    assert code == 3 and status is not None
    assert decode_status(status) == (3, None)
    code, status = run_launcher("kill -9 $$")
    assert code == -9  # the launcher ends the same way
    assert status is not None and decode_status(status) == (None, 9)


def test_a_launcher_not_handed_over_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code, _ = run_launcher(f"touch {marker}", hand_over=False)
    assert code == 1 and not marker.exists()


def test_a_launcher_refuses_a_pipe_that_is_not_the_one_named() -> None:
    """An fd number tcmd closed may name another pipe later: the inode tells them apart."""
    handoff, other = launcher.Handoff(), launcher.Handoff()
    try:
        other.hand_over({"TCM_INSTANCE_TOKEN": "someone else's"})
        path, _, _ = handoff.address.rpartition(":")
        _, _, inode = other.address.rpartition(":")
        assert launcher.read_handoff(f"{path}:{inode}", timeout_s=1) is None
        assert launcher.read_handoff(other.address, timeout_s=1) == {
            "TCM_INSTANCE_TOKEN": "someone else's"
        }
    finally:
        handoff.close()
        other.close()


async def test_a_pidfd_tells_the_death_of_the_newest_pane_process_only() -> None:
    told: asyncio.Queue[str] = asyncio.Queue()
    watch = DeathWatch(told.put_nowait)
    old = await asyncio.create_subprocess_exec("sleep", "30")
    new = await asyncio.create_subprocess_exec("sleep", "30")
    other = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        watch.watch("spec_1_1_1", old.pid)
        watch.watch("spec_1_1_1", new.pid)  # relaunched: the old process no longer speaks
        watch.watch("spec_1_1_2", other.pid)
        old.kill()
        await old.wait()
        other.kill()
        assert await asyncio.wait_for(told.get(), 5) == "spec_1_1_2"
        assert "spec_1_1_1" not in watch.dead
        new.kill()
        assert await asyncio.wait_for(told.get(), 5) == "spec_1_1_1"
        assert set(watch.dead) == {"spec_1_1_1", "spec_1_1_2"}
        watch.forget("spec_1_1_1")  # a relaunch forgets what the old one's end said
        assert set(watch.dead) == {"spec_1_1_2"}
    finally:
        for proc in (old, new, other):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        watch.close()


async def test_a_process_already_gone_is_told_at_once() -> None:
    told: list[str] = []
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()  # reaped: its pid names nothing now
    DeathWatch(told.append).watch("exec_1", proc.pid)
    assert told == ["exec_1"]
