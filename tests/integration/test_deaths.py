"""Deaths told by the kernel (tcmd/instances/deaths.py), against real processes: the
launcher records how its agent ended, and a pidfd tells tcmd the moment a pane process
ends, only for the pane process of the newest launch."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcmd.instances import launcher
from tcmd.instances.deaths import DeathWatch, clear_exit, read_exit

pytestmark = pytest.mark.skipif(not DeathWatch.available, reason="no pidfd_open here")


def run_launcher(idir: Path, script: str) -> int:
    """Start tcm's launcher with ``sh -c script`` as its agent, hand it over; its exit code."""
    handoff = idir / "handoff"
    fd = launcher.open_handoff(handoff)
    try:
        argv = [*launcher.command_line(sys.executable), str(handoff), "--", "sh", "-c", script]
        proc = subprocess.Popen(argv)  # an argv, never a shell
        launcher.hand_over(fd, {"TCM_INSTANCE_TOKEN": "t"})
        return proc.wait(timeout=30)
    finally:
        os.close(fd)


def test_the_launcher_records_its_agents_exit_status_and_signal(tmp_path: Path) -> None:
    assert run_launcher(tmp_path, "exit 3") == 3
    assert read_exit(tmp_path) == (3, None)
    assert run_launcher(tmp_path, "kill -9 $$") == -9  # the launcher ends the same way
    assert read_exit(tmp_path) == (None, 9)
    clear_exit(tmp_path)
    assert read_exit(tmp_path) == (None, None)  # a new launch: nothing speaks for it yet


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
