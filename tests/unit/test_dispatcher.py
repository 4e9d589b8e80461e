"""Parallel (the dispatcher) between runs and jobs, over a real JsonFileStore.

No tmux here: every attempt these tests start ends before it would spawn a specialist
(its run is gone, or it is cancelled before it begins). The manager is an Instance put
straight into the registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcmd.api import OPERATOR
from tcmd.config import Settings
from tcmd.errors import Unavailable
from tcmd.instances.delivery import Delivery
from tcmd.instances.registry import Instances
from tcmd.model import Instance, Role, State
from tcmd.store.jsonfile import JsonFileStore
from tcmd.tmux import Tmux
from tcmd.work.dispatcher import RUNS, Parallel, Run
from tcmd.work.params import ExecuteParallelParams
from tcmd.work.queue.base import Job, JobState
from tcmd.work.queue.local import JOBS_NS, LocalJobQueue
from tcmd.work.tools import ParallelTools

MANAGER = "mgr_1_1"


class RunsRefusingStore(JsonFileStore):
    """A JsonFileStore whose writes of runs fail, as on a full disk."""

    refuse_runs = False

    def put(self, ns: str, key: str, value: Any) -> None:
        if self.refuse_runs and ns == RUNS:
            raise Unavailable(f"state store append failed: short write ({ns}/{key})")
        super().put(ns, key, value)


@pytest.fixture
def store(directory: Path) -> Iterator[RunsRefusingStore]:
    s = RunsRefusingStore(directory)
    s.open()
    yield s
    s.close()


def make_parallel(store: JsonFileStore, tmp_path: Path, slots: int = 3) -> Parallel:
    """A Parallel with one live manager; ``slots=0`` dispatches nothing (no tmux needed)."""
    settings = Settings(
        socket_path=tmp_path / "tcmd.sock", state_dir=tmp_path, max_specialists_per_manager=slots
    )
    instances = Instances(settings, store, Tmux("tcm-unit-never-started", tmp_path / "t.conf"))
    instances.by_id[MANAGER] = Instance(
        MANAGER, Role.MANAGER, None, str(tmp_path), "shell", "", "token", "session",
        status=State.READY,
    )  # fmt: skip
    return Parallel(settings, store, LocalJobQueue(store), instances, Delivery(instances))


def new_job(parallel: Parallel, run_id: str, task_id: str = "t1") -> Job:
    job_id = parallel.queue.new_job_id()
    return Job(job_id, run_id, task_id, {"instruction": "true"}, manager_id=MANAGER)


def stored_run(parallel: Parallel, tmp_path: Path, *task_ids: str) -> list[Job]:
    """run_1 with a queued job per task, stored (jobs first, as the daemon stores them)."""
    run = Run("run_1", str(tmp_path), "shell", "shared", None, 1000, False, [MANAGER])
    jobs = [parallel.queue.put(new_job(parallel, run.run_id, task_id)) for task_id in task_ids]
    run.job_ids = {job.task_id: job.job_id for job in jobs}
    parallel.save_run(run)
    return jobs


async def settle(task: asyncio.Task[None]) -> None:
    """Let an attempt end and its done callback run."""
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)


async def test_a_run_that_cannot_be_stored_leaves_nothing_queued(
    store: RunsRefusingStore, tmp_path: Path
) -> None:
    parallel = make_parallel(store, tmp_path, slots=0)
    await parallel.start()
    tools = ParallelTools(parallel)
    store.refuse_runs = True
    params = ExecuteParallelParams(
        managerId=MANAGER,
        tasks=[{"id": "a", "instruction": "true"}, {"id": "b", "instruction": "true"}],
        workDir=str(tmp_path),
        agent="shell",
        isolation="shared",
        wait=False,
    )
    with pytest.raises(Unavailable) as err:
        await tools.execute_parallel(OPERATOR, params)
    assert parallel.queue.jobs() == []
    assert parallel.queue.waiting(MANAGER) == 0
    assert store.items(JOBS_NS) == {}
    assert parallel.runs == {}
    assert err.value.message == (
        "run_1 could not be stored, none of its tasks was queued: "
        "state store append failed: short write (runs/run_1)"
    )

    store.refuse_runs = False  # the disk has room again: the next run is whole
    out = await tools.execute_parallel(OPERATOR, params)
    assert out == {"runId": "run_2", "total": 2}
    assert sorted(store.items(RUNS)["run_2"]["job_ids"]) == ["a", "b"]
    assert [j.task_id for j in parallel.queue.jobs()] == ["a", "b"]


async def test_an_attempt_whose_run_is_gone_fails_and_frees_the_slot(
    store: RunsRefusingStore, tmp_path: Path
) -> None:
    parallel = make_parallel(store, tmp_path)
    await parallel.start()
    job = parallel.queue.put(new_job(parallel, "run_404"))
    parallel.dispatch()
    assert parallel.active[MANAGER] == 1
    await settle(parallel.attempts[job.job_id])
    assert parallel.active[MANAGER] == 0
    assert job.state is JobState.FAILED
    assert "its run run_404 was lost" in str(job.last_error)
    assert parallel.attempts == {}


async def test_an_attempt_cancelled_before_it_begins_frees_the_slot(
    store: RunsRefusingStore, tmp_path: Path
) -> None:
    parallel = make_parallel(store, tmp_path)
    await parallel.start()
    [job] = stored_run(parallel, tmp_path, "t1")
    parallel.dispatch()
    assert parallel.active[MANAGER] == 1
    task = parallel.attempts[job.job_id]
    parallel.cancel(job)  # before the attempt's first step: its body never runs
    await settle(task)
    assert task.cancelled()
    assert parallel.active[MANAGER] == 0
    assert job.state is JobState.CANCELLED


async def test_start_fails_the_jobs_whose_run_is_gone(
    store: RunsRefusingStore, tmp_path: Path
) -> None:
    before = make_parallel(store, tmp_path)
    await before.start()
    kept, lost = stored_run(before, tmp_path, "kept", "lost")
    orphan = before.queue.put(new_job(before, "run_2"))  # a crash before run_2 was stored
    store.delete(JOBS_NS, lost.job_id)  # a crash in an old retention sweep

    after = make_parallel(store, tmp_path, slots=0)  # the test looks at what start() left
    await after.start()
    healed = after.queue.get(orphan.job_id)
    assert healed.state is JobState.FAILED
    assert healed.last_error is not None and "its run run_2 was lost" in healed.last_error
    assert store.get(JOBS_NS, orphan.job_id)["state"] == "failed"
    assert after.queue.waiting(MANAGER) == 1  # run_1's job stays queued
    assert after.runs["run_1"].job_ids == {"kept": kept.job_id}
    assert store.get(RUNS, "run_1")["job_ids"] == {"kept": kept.job_id}
    assert after.runless == {orphan.job_id}
    # retention forgets it like a run's job, by when it ended
    assert after.forget_runless(float(healed.finished_at or 0)) == 0
    assert after.forget_runless(float(healed.finished_at or 0) + 1) == 1
    assert store.get(JOBS_NS, orphan.job_id) is None
    assert after.runless == set()
