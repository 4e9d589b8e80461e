"""Memory: the estimates, the sampling of a process tree, the figures and admission."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tcmd.config import Settings
from tcmd.health.memory import Estimates, Memory, percentile, tree
from tcmd.store.jsonfile import JsonFileStore
from tcmd.work.admission import (
    Admission,
    ProcFigures,
    cgroup_dirs,
    cgroup_room_kb,
    meminfo_available_kb,
)


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"TCM_STATE_DIR": str(tmp_path), "TCM_SOCKET": str(tmp_path / "s"),
                              **env})  # fmt: skip


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5.0], 0.9) == 5.0
    assert percentile(range(1, 11), 0.9) == 9
    assert percentile([100, 1, 50], 0.5) == 50


def test_estimate_is_the_default_until_measured_then_the_p90_of_peaks() -> None:
    e = Estimates(default_mb=600)
    assert e.of("claude") == 600
    for i in range(10):
        e.observe(f"spec_{i}", "claude", 100.0 + i * 10)
        e.observe(f"spec_{i}", "claude", 50.0)  # a peak is kept, not the last value
    assert e.of("claude") == 180.0
    assert e.of("shell") == 600  # another profile learns apart
    for i in range(10):
        e.end(f"spec_{i}")  # ended instances' peaks stay in the history
    assert e.of("claude") == 180.0
    assert e.describe() == {"claude": {"estimateMb": 180.0, "samples": 10}}


def test_a_process_tree_is_measured_with_its_children() -> None:
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                          stdin=subprocess.PIPE) as child:  # fmt: skip
        assert child.pid in tree(os.getpid())
        memory = Memory(default_estimate_mb=600)
        memory.sample({"exec_1": (os.getpid(), "claude")})
        alone = Memory(default_estimate_mb=600)
        alone.sample({"exec_1": (child.pid, "claude")})
        row, child_row = memory.row("exec_1"), alone.row("exec_1")
        assert row["memoryMb"] > child_row["memoryMb"] > 1
        assert memory.samples["exec_1"].processes >= 2
        assert "pssMb" in row  # the first instance's PSS is read on the first sweep
        assert memory.estimates.of("claude") == memory.samples["exec_1"].rss_mb
        child.kill()
    memory.sample({})  # the instance is gone: no row, its peak kept for the estimate
    assert memory.row("exec_1") == {}
    assert memory.estimates.of("claude") > 1


def test_meminfo_and_cgroup_figures(tmp_path: Path) -> None:
    assert meminfo_available_kb("MemTotal: 10 kB\nMemAvailable:  2048 kB\n") == 2048
    assert meminfo_available_kb("MemTotal: 10 kB\n") is None
    v2 = tmp_path / "sys"
    leaf = v2 / "user.slice" / "tcmd.service"
    leaf.mkdir(parents=True)
    (leaf / "memory.max").write_text(f"{4 << 30}\n")
    (leaf / "memory.current").write_text(f"{1 << 30}\n")
    (v2 / "user.slice" / "memory.max").write_text("max\n")
    (v2 / "user.slice" / "memory.current").write_text(f"{8 << 30}\n")
    dirs = cgroup_dirs("0::/user.slice/tcmd.service\n", v2)
    assert [d for d, _, _ in dirs] == [leaf, v2 / "user.slice", v2]
    assert cgroup_room_kb(dirs) == (3 << 30) // 1024  # the unlimited parent does not bind
    v1 = cgroup_dirs("4:memory:/not/visible/here\n1:cpu:/\n", tmp_path)
    assert v1 == [(tmp_path / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes")]


def test_admission_holds_with_the_reason_until_room_appears(tmp_path: Path) -> None:
    figures = tmp_path / "meminfo"
    figures.write_text("MemAvailable: 1536000 kB\n")  # 1500 MB
    s = settings(tmp_path, TCM_TEST_MEMORY_FIGURES=str(figures), TCM_MEMORY_RESERVE_MB="1000")
    admission = Admission(s, ProcFigures(s.memory_figures))
    assert admission.check("claude", []) == "held: memory (need 600 MB, have 500 MB)"
    admission.estimate = lambda agent: 400.0
    assert admission.check("claude", []) is None
    # one specialist admitted but not measured yet counts its estimate
    assert admission.check("claude", [("claude", None)]) == (
        "held: memory (need 400 MB, have 100 MB)"
    )
    admission.measured = lambda iid: iid == "spec_1_1_1"
    assert admission.check("claude", [("claude", "spec_1_1_1")]) is None
    figures.write_text("MemAvailable: 512000 kB\n")
    fresh = Admission(s, ProcFigures(s.memory_figures))  # (figures are kept 0.1 s)
    fresh.estimate = admission.estimate
    assert fresh.check("claude", []) == "held: memory (need 400 MB, have 0 MB)"


def test_sampling_stays_within_its_budget_and_reaches_everyone_in_turn() -> None:
    memory = Memory(default_estimate_mb=600, cap_mb=1)
    panes = {f"spec_1_1_{i}": (os.getpid(), "claude") for i in range(3000)}
    memory.sample(panes)
    first = set(memory.samples)
    assert 0 < len(first) < len(panes)  # not all 3000 in one sweep: the budget held
    assert memory.last_ms < 50
    for _ in range(200):
        if len(memory.samples) == len(panes):
            break
        memory.sample(panes)
    assert len(memory.samples) == len(panes)  # everyone measured, newcomers first
    assert all(s.over >= 1 for s in memory.samples.values())  # 1 MB cap: over at once
    before = {iid: s.over for iid, s in memory.samples.items()}
    memory.sample(panes)  # then round-robin: the next ones in turn are measured again
    again = [iid for iid, s in memory.samples.items() if s.over == before[iid] + 1]
    assert len(again) == memory.last_measured > 0


def test_the_kernels_figures_are_read_without_a_test_file() -> None:
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(
        next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1]
    )
    available = ProcFigures().available_mb()  # MemAvailable, or the cgroup's room if less
    assert available is not None
    assert 0 < available <= total_kb / 1024


def test_what_ended_instances_took_is_kept_across_a_restart(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "store")
    store.open()
    memory = Memory(default_estimate_mb=600, store=store)
    for i, mb in enumerate((300.0, 320.0, 900.0)):
        memory.estimates.observe(f"spec_{i}", "claude", mb)
        memory.forget(f"spec_{i}")
    store.close()
    again = JsonFileStore(tmp_path / "store")
    again.open()
    restarted = Memory(default_estimate_mb=600, store=again)
    assert restarted.estimates.of("claude") == 600  # nothing read yet
    restarted.load()
    assert restarted.estimates.of("claude") == 900.0
    assert restarted.estimates.describe()["claude"]["samples"] == 3
    again.close()
