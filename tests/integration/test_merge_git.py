"""tcmd.work.merge against real git (no daemon): chained plans, order, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcmd.errors import Conflict, InvalidParams, NotFound, Unavailable
from tcmd.work import merge, worktrees
from tcmd.work.merge import Candidate
from tests.integration.test_worktrees import commit_all, git, has_branch, make_repo


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.delenv("GIT_DIR", raising=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def branch(repo: Path, name: str, files: dict[str, str], *, name_text: str | None = None,
           depends_on: tuple[str, ...] = ()) -> Candidate:  # fmt: skip
    """A task branch off main with one commit writing ``files``."""
    base = git(repo, "rev-parse", "main")
    path = repo.parent / "wt" / name
    git(repo, "worktree", "add", "-q", "-b", f"tcm/run_1/{name}", str(path), base)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    commit_all(path, f"task {name}")
    return Candidate(name, f"tcm/run_1/{name}", True, base=base, depends_on=depends_on,
                     name=name_text)  # fmt: skip


async def test_later_merges_are_computed_on_the_earlier_ones(repo: Path) -> None:
    # b and c each merge cleanly into main alone; c conflicts only with b's result
    b = branch(repo, "b", {"file.txt": "from b\n"})
    c = branch(repo, "c", {"file.txt": "from c\n"})
    d = branch(repo, "d", {"d.txt": "d\n"}, depends_on=("c",))
    e = branch(repo, "e", {"e.txt": "e\n"}, depends_on=("d",))
    old = git(repo, "rev-parse", "main")
    plan = await merge.plan(repo, "main", "run_1", [b, c, d, e], squash=False)
    got = [(s.task_id, s.status, s.paths) for s in plan.steps]
    assert got == [("b", "clean", []), ("c", "conflicting", ["file.txt"]),
                   ("d", "blocked", []), ("e", "blocked", [])]  # fmt: skip
    assert plan.steps[2].reason == "depends on c, left out"
    assert git(repo, "rev-parse", "main") == old  # planning moved nothing
    assert git(repo, "show", f"{plan.new}:file.txt") == "from b"
    failed = Candidate("f", "tcm/run_1/f", False, state="failed")
    after = Candidate("g", None, True, depends_on=("f",))
    plan = await merge.plan(repo, "main", "run_1", [after, failed], squash=False)
    got = [(s.task_id, s.status, s.reason) for s in plan.steps]
    assert got == [("f", "not-completed", "the task is failed"),
                   ("g", "blocked", "depends on f, left out")]  # fmt: skip
    assert plan.new == old


async def test_dependency_order_and_a_hostile_task_name(repo: Path) -> None:
    hostile = '$(touch pwned) `x` "; rm -rf ~\n--force'
    late = branch(repo, "late", {"late.txt": "l\n"}, depends_on=("early",), name_text=hostile)
    early = branch(repo, "early", {"early.txt": "e\n"})
    plan = await merge.plan(repo, "main", "run_1", [late, early], squash=False)
    assert [s.task_id for s in plan.steps] == ["early", "late"]
    assert await merge.apply(plan, "run_1") == f"fast-forward in {repo}"
    assert git(repo, "log", "-1", "--format=%B", "main").startswith(
        "Merge task late of run_1 into main\n\n$(touch pwned)"
    )
    assert not (repo / "pwned").exists()
    assert (repo / "late.txt").read_text() == "l\n"  # the checkout followed the branch


async def test_a_target_that_moved_since_the_plan_is_not_moved(repo: Path) -> None:
    git(repo, "branch", "side")
    plan = await merge.plan(repo, "side", "run_1", [branch(repo, "x", {"x": "x\n"})],
                            squash=True)  # fmt: skip
    meanwhile = git(repo, "commit-tree", "main^{tree}", "-p", "side", "-m", "meanwhile")
    git(repo, "update-ref", "refs/heads/side", meanwhile)
    with pytest.raises(Conflict, match="moved since the plan"):
        await merge.apply(plan, "run_1")
    assert git(repo, "rev-parse", "side") == meanwhile
    assert has_branch(repo, "tcm/run_1/x")


async def test_a_branch_being_rebased_is_not_moved(repo: Path) -> None:
    git(repo, "branch", "topic")
    plan = await merge.plan(repo, "topic", "run_1", [branch(repo, "y", {"y": "y\n"})],
                            squash=False)  # fmt: skip
    state = repo / ".git" / "rebase-merge"
    state.mkdir()
    (state / "head-name").write_text("refs/heads/topic\n")
    with pytest.raises(Conflict, match="being rebased"):
        await merge.apply(plan, "run_1")
    state.joinpath("head-name").unlink()
    state.rmdir()
    assert await merge.apply(plan, "run_1") == "update-ref"
    assert git(repo, "show", "topic:y") == "y"


async def test_refusals_name_the_field(repo: Path) -> None:
    x = branch(repo, "x", {"x": "x\n"})
    with pytest.raises(NotFound, match="into: no branch 'nope'"):
        await merge.plan(repo, "nope", "run_1", [x], squash=False)
    with pytest.raises(InvalidParams, match="into"):
        await merge.plan(repo, "a..b", "run_1", [x], squash=False)
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(InvalidParams, match="detached HEAD"):
        await merge.current_branch(repo)


async def test_old_git_is_refused_naming_the_version(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old-git"
    old.write_text("#!/bin/sh\necho 'git version 2.34.1'\n")
    old.chmod(0o755)
    monkeypatch.setattr(worktrees, "GIT_BIN", str(old))
    with pytest.raises(Unavailable, match=r"needs git >= 2\.38.*this is 2\.34"):
        await merge.check_git(repo)


async def test_overlap_looks_are_cached_rate_limited_and_told_once(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git runs at most once per REFRESH_S per running task, once more after it ended,
    and a shared path is announced once."""
    from tcmd.work import overlap
    from tcmd.work.queue.base import Job, JobState

    root = tmp_path / "worktrees"
    wts = [await worktrees.create(repo, root, "run_1", t) for t in ("a", "b")]
    jobs = [Job(f"job_{w.branch[-1]}", "run_1", w.branch[-1], {}, state=JobState.ACTIVE,
                attempts=1, extra={"worktreeInfo": w.to_json()}) for w in wts]  # fmt: skip
    (wts[0].path / "file.txt").write_text("a\n")  # tracked, unstaged
    events: list[dict[str, object]] = []
    looks = overlap.Overlaps(lambda kind, **f: events.append({"kind": kind, **f}))
    calls = 0
    real = overlap.changed_files

    async def counted(wt: worktrees.Worktree) -> list[str]:
        nonlocal calls
        calls += 1
        return await real(wt)

    monkeypatch.setattr(overlap, "changed_files", counted)
    seen = await looks.look("run_1", jobs)
    assert seen == {"files": {"a": ["file.txt"], "b": []}, "shared": {}} and calls == 2
    (wts[1].path / "file.txt").write_text("b\n")
    (wts[1].path / "new dir").mkdir()
    (wts[1].path / "new dir" / "n.txt").write_text("untracked\n")
    assert (await looks.look("run_1", jobs))["shared"] == {} and calls == 2  # cached
    monkeypatch.setattr(overlap, "REFRESH_S", 0.0)
    monkeypatch.setattr(overlap, "REFRESH_PER_TASK_S", 0.0)
    seen = await looks.look("run_1", jobs)
    assert seen["files"]["b"] == ["file.txt", "new dir/n.txt"] and calls == 4
    assert seen["shared"] == {"file.txt": ["a", "b"]}
    await looks.look("run_1", jobs)
    assert [(e["kind"], e["path"], e["taskIds"]) for e in events] == [
        ("run.overlap", "file.txt", ["a", "b"])
    ]
    for job in jobs:
        job.state = JobState.COMPLETED
    await looks.look("run_1", jobs)
    await looks.look("run_1", jobs)
    assert calls == 8  # once more each after the end, then never again
    looks.forget(set())
    assert len(looks) == 0
