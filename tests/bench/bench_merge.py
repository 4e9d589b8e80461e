"""Benchmark: merge-back planning and overlap looks over N task worktrees (real git).

    .venv/bin/python -m tests.bench.bench_merge [N]

Measures the plan of N branches (each merge simulated on the ones before it; every fifth
task also writes a shared file, so some conflict), and a getParallelStatus overlap look
over N running worktrees: the first (git in each) and the next (from the cache).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from tcmd.work import merge, overlap, worktrees
from tcmd.work.queue.base import Job, JobState


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


async def bench(n: int, tmp: Path) -> None:
    repo = tmp / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "bench")
    git(repo, "config", "user.email", "bench@example.invalid")
    for i in range(max(n, 200)):
        (repo / f"f{i}.txt").write_text(f"{i}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    wts = []
    for i in range(n):
        wt = await worktrees.create(repo, tmp / "wt", "run_1", f"t{i}")
        (wt.path / f"f{i}.txt").write_text("changed\n")
        if i % 5 == 0:
            (wt.path / "common.txt").write_text(f"{i}\n")
        git(wt.path, "add", "-A")
        git(wt.path, "commit", "-qm", f"t{i}")
        wts.append(wt)
    tasks = [merge.Candidate(f"t{i}", w.branch, True, base=w.base) for i, w in enumerate(wts)]
    t = time.perf_counter()
    plan = await merge.plan(repo, "main", "run_1", tasks, squash=False)
    took = time.perf_counter() - t
    print(f"plan of {n} branches: {took * 1000:.0f} ms ({took / n * 1000:.1f} ms a branch), "
          f"{len(plan.conflicting)} conflicting")  # fmt: skip
    jobs = [Job(f"j{i}", "run_1", f"t{i}", {}, state=JobState.ACTIVE, attempts=1,
                extra={"worktreeInfo": w.to_json()}) for i, w in enumerate(wts)]  # fmt: skip
    looks = overlap.Overlaps(lambda kind, **fields: None)
    t = time.perf_counter()
    seen = await looks.look("run_1", jobs)
    first = time.perf_counter() - t
    t = time.perf_counter()
    await looks.look("run_1", jobs)
    cached = time.perf_counter() - t
    print(f"overlap look over {n} running worktrees: first {first * 1000:.0f} ms, "
          f"cached {cached * 1000:.2f} ms; shared paths {len(seen['shared'])}")  # fmt: skip


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        asyncio.run(bench(n, Path(tmp)))


if __name__ == "__main__":
    main()
