"""Benchmark: `tcmctl top` with many instances, event → screen latency.

    .venv/bin/python -m tests.bench.bench_top [INSTANCES] [FINISHED_JOBS]

A real daemon runs INSTANCES shell agents (default 200: one executive, 9 managers, the
rest specialists spawned under them); `tcmctl top` runs in an 80×24 tmux pane. Each round
sends exec_1 a prompt and times its ``instance.state`` event (the daemon's clock) to the
first capture-pane that shows the new state on exec_1's row. Target (issue 14): <= 100 ms
from an event to the screen; figures in docs/operations.md (Watching the tree).

FINISHED_JOBS (default 0) completed jobs, in runs of 100, are written to the store before
tcmd starts (as a daemon that has run that much work holds them), and the time of one of
top's snapshots is measured too: it should not grow with them.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tcmctl.top.feed import Daemon
from tcmd.store.jsonfile import JsonFileStore
from tcmd.work.dispatcher import Run
from tcmd.work.queue.base import Job, JobState
from tests.integration.test_top import Terminal
from tests.support import DaemonProcess, wait_until

ROUNDS = 10
MANAGERS = 9
PER_RUN = 100


def seed_finished_jobs(state_dir: Path, work: Path, jobs: int) -> None:
    """``jobs`` completed jobs of mgr_1_1, in runs of PER_RUN, straight into the store."""
    store = JsonFileStore(state_dir / "store")
    store.open()
    now = time.time()
    n = 0
    for r in range(1, (jobs + PER_RUN - 1) // PER_RUN + 1):
        run_id, job_ids = f"run_{r}", {}
        for t in range(min(PER_RUN, jobs - n)):
            n += 1
            task = {"id": f"t{t}", "instruction": "true"}
            job = Job(f"job_{n}", run_id, f"t{t}", task, manager_id="mgr_1_1",
                      state=JobState.COMPLETED, seq=n, attempts=1, result="ok",
                      started_at=now, finished_at=now, duration_ms=1.0)  # fmt: skip
            store.put("jobs", job.job_id, job.to_json())
            job_ids[job.task_id] = job.job_id
        run = Run(run_id, str(work), "shell", "shared", None, 600_000, False, ["mgr_1_1"],
                  job_ids, created_at=now, finished_at=now)  # fmt: skip
        store.put("runs", run_id, run.to_json())
        store.put("counters", "run", r)
    store.put("counters", "job", n)
    store.close()


def snapshot_ms(daemon: DaemonProcess) -> tuple[float, int]:
    """The median time of one of top's snapshots, and the jobs it carried."""
    client = Daemon(daemon.socket)
    times, carried = [], 0
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        snap = client.snapshot()
        times.append((time.perf_counter() - t0) * 1000)
        carried = len(snap.jobs)
    return statistics.median(times), carried


def spawn_team(daemon: DaemonProcess, work: Path, total: int) -> None:
    shell = {"workDir": str(work), "agent": "shell", "context": "bench", "wait": False}
    daemon.call("spawn", {"role": "executive", **shell})
    for _ in range(MANAGERS):
        daemon.call("spawn", {"role": "manager", "parentId": "exec_1", **shell})
    for n in range(total - 1 - MANAGERS):
        parent = f"mgr_1_{n % MANAGERS + 1}"
        daemon.call("spawn", {"role": "specialist", "parentId": parent, **shell})
    wait_until(
        lambda: all(r["status"] == "ready" for r in daemon.call("list")),
        600,
        interval_s=0.5,
        what=f"{total} instances ready",
    )


def seen(term: Terminal, state: str) -> float:
    """When exec_1's row first shows ``state`` (polled as fast as capture-pane goes)."""
    wait_until(
        lambda: term.row("exec_1")[1:2] == [state],
        10,
        interval_s=0.002,
        what=state,
        max_interval_s=0.002,  # the latency measured includes this poll: keep it fine
    )
    return time.time()


def event_time(daemon: DaemonProcess, since: int, state: str) -> tuple[float, int]:
    answer = daemon.call("events", {"since": since, "limit": 10_000})
    for e in answer["events"]:
        if e["kind"] == "instance.state" and e["instanceId"] == "exec_1" and e["new"] == state:
            return float(e["time"]), int(answer["lastSeq"])
    raise AssertionError(f"no event for exec_1 → {state}")


def main(total: int, finished: int) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        daemon = DaemonProcess(Path(tmp) / "state", {"TCM_LOG_LEVEL": "info"})
        if finished:
            daemon.state_dir.mkdir(parents=True)
            seed_finished_jobs(daemon.state_dir, Path(tmp), finished)
        daemon.start()
        term: Terminal | None = None
        try:
            t0 = time.monotonic()
            spawn_team(daemon, Path(tmp), total)
            print(f"{total} instances ready in {time.monotonic() - t0:.1f}s")
            took, carried = snapshot_ms(daemon)
            print(f"one snapshot with {finished} finished jobs: p50 {took:.1f} ms, "
                  f"{carried} jobs carried")  # fmt: skip
            env = {k: v for k, v in daemon.env.items() if k != "TMUX"}
            term = Terminal({**env, "TERM": "xterm-256color"}).start()
            term.wait_for("exec_1", 30)
            wait_until(lambda: term.row("exec_1")[1:2] == ["ready"], 30, what="top drawn")
            latencies = []
            since = daemon.call("events", {"since": 10**15})["lastSeq"]
            for _ in range(ROUNDS):
                daemon.call("send", {"instanceId": "exec_1", "text": "sleep 0.3"})
                shown = seen(term, "busy")
                when, since = event_time(daemon, since, "busy")
                latencies.append((shown - when) * 1000)
                seen(term, "ready")
            latencies.sort()
            print(
                f"event → screen, {ROUNDS} rounds: p50 {statistics.median(latencies):.0f} ms, "
                f"max {latencies[-1]:.0f} ms (capture-pane polling included)"
            )
        finally:
            if term is not None:
                term.close()
            daemon.cleanup()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*args, *[200, 0][len(args) :])
