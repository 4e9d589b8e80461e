"""tcmd.work.worktrees against real git: every test makes its own repositories under tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tcmd.errors import Conflict, InvalidParams, Unavailable
from tcmd.work import worktrees
from tcmd.work.worktrees import GitError, Worktree


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def has_branch(repo: Path, branch: str) -> bool:
    ref = ["git", "-C", str(repo), "show-ref", "--verify", "--quiet", f"refs/heads/{branch}"]
    return subprocess.run(ref, check=False, timeout=30).returncode == 0


def commit_all(cwd: Path, message: str) -> None:
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", message)


def make_repo(path: Path, *, commit: bool = True) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    if commit:
        (path / "file.txt").write_text("original\n")
        (path / "sub").mkdir()
        (path / "sub" / "notes.md").write_text("notes\n")
        (path / ".gitignore").write_text("build/\n")
        commit_all(path, "initial")
    return path


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No system or user git config (signing, hooksPath, templates) leaks into a test."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.delenv("GIT_DIR", raising=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "worktrees"


async def test_repo_root(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await worktrees.repo_root(repo / "sub") == repo
    assert await worktrees.repo_root(repo) == repo
    (tmp_path / "plain").mkdir()
    assert await worktrees.repo_root(tmp_path / "plain") is None
    monkeypatch.setattr(worktrees, "GIT_BIN", str(tmp_path / "no-such-git"))
    assert await worktrees.repo_root(repo) is None


async def test_create_starts_at_head_and_maps_workdir(repo: Path, root: Path) -> None:
    wt = await worktrees.create(repo / "sub", root, "run_1", "t01")
    assert wt.branch == "tcm/run_1/t01"
    assert wt.repo == repo
    assert wt.base == git(repo, "rev-parse", "HEAD")
    assert wt.path.parent.parent.parent == root
    assert wt.path.parent.parent.name.startswith("repo-")
    assert wt.path.parts[-2:] == ("run_1", "t01")
    assert git(wt.path, "rev-parse", "HEAD") == wt.base
    assert git(wt.path, "symbolic-ref", "--short", "HEAD") == wt.branch
    assert wt.workdir == wt.path / "sub"
    assert (wt.workdir / "notes.md").read_text() == "notes\n"
    assert Worktree.from_json(wt.to_json()) == wt
    top = await worktrees.create(repo, root, "run_1", "t02")
    assert top.workdir == top.path


async def test_parallel_tasks_keep_both_changes(repo: Path, root: Path) -> None:
    # Two `git worktree add` at once on one repository can fail the second one reading the
    # first's half-written .git/worktrees/<name>: tcmd queues them (repolocks), and so do we.
    lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def one_at_a_time(repo: Path) -> AsyncIterator[None]:
        async with lock:
            yield

    a, b = await asyncio.gather(
        worktrees.create(repo, root, "run_1", "a", one_at_a_time),
        worktrees.create(repo, root, "run_1", "b", one_at_a_time),
    )
    (a.path / "file.txt").write_text("from a\n")
    (b.path / "file.txt").write_text("from b\n")
    commit_all(a.path, "a's change")
    commit_all(b.path, "b's change")
    assert (repo / "file.txt").read_text() == "original\n"
    for wt in (a, b):
        assert await worktrees.inspect(wt) == worktrees.WorktreeState(commits=1, dirty=False)
        done = await worktrees.finish(wt)
        assert done == {"branch": wt.branch, "worktree": str(wt.path), "hasCommits": True,
                        "dirty": False, "removed": True, "branchDeleted": False}  # fmt: skip
        assert not wt.path.exists()
    assert git(repo, "show", "tcm/run_1/a:file.txt") == "from a"
    assert git(repo, "show", "tcm/run_1/b:file.txt") == "from b"
    assert not root.exists() or not any(root.iterdir())  # empty run/repo dirs went too


@pytest.mark.parametrize(
    "leave",
    [
        pytest.param({"file.txt": "edited\n"}, id="modified"),
        pytest.param({"new.txt": "new\n"}, id="untracked"),
        pytest.param({"sub/deep/new.txt": "new\n"}, id="untracked-dir"),
    ],
)
async def test_uncommitted_work_keeps_the_worktree(
    repo: Path, root: Path, leave: dict[str, str]
) -> None:
    wt = await worktrees.create(repo, root, "run_1", "t01")
    for name, text in leave.items():
        (wt.path / name).parent.mkdir(parents=True, exist_ok=True)
        (wt.path / name).write_text(text)
    done = await worktrees.finish(wt)
    assert done["dirty"] is True and done["removed"] is False
    assert done["hasCommits"] is False and done["branchDeleted"] is False
    for name, text in leave.items():  # never --force: the work is still there
        assert (wt.path / name).read_text() == text
    assert has_branch(repo, wt.branch)
    assert git(wt.path, "symbolic-ref", "--short", "HEAD") == wt.branch


async def test_idle_task_removes_worktree_and_branch(repo: Path, root: Path) -> None:
    wt = await worktrees.create(repo / "sub", root, "run_1", "t01")
    (wt.path / "build").mkdir()
    (wt.path / "build" / "out.o").write_text("ignored output\n")  # does not count as work
    done = await worktrees.finish(wt)
    assert done["removed"] is True and done["branchDeleted"] is True
    assert done["dirty"] is False and done["hasCommits"] is False
    assert not wt.path.exists()
    assert not has_branch(repo, wt.branch)
    assert "t01" not in git(repo, "worktree", "list")
    again = await worktrees.create(repo, root, "run_1", "t01")  # ids are free again
    assert again.path == wt.path


async def test_refusals_are_reported_never_forced(repo: Path, root: Path) -> None:
    locked = await worktrees.create(repo, root, "run_1", "locked")
    unmerged = await worktrees.create(repo, root, "run_1", "unmerged")
    git(repo, "worktree", "lock", str(locked.path))
    git(repo, "checkout", "-q", "--orphan", "elsewhere")  # base is no longer merged into HEAD
    git(repo, "commit", "-q", "-m", "unrelated")
    done = await worktrees.finish(locked)
    assert not done["removed"] and "locked" in done["error"]
    assert locked.path.is_dir() and has_branch(repo, locked.branch)
    done = await worktrees.finish(unmerged)
    assert done["removed"] and not done["branchDeleted"] and "not fully merged" in done["error"]
    assert has_branch(repo, unmerged.branch)


async def test_finish_twice_and_a_hostile_environment(
    repo: Path, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_repo(tmp_path / "other")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))  # the daemon's env must not steer git
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    wt = await worktrees.create(repo, root, "run_1", "t01")
    assert wt.repo == repo
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    assert has_branch(repo, wt.branch) and not has_branch(other, wt.branch)
    first, second = await worktrees.finish(wt), await worktrees.finish(wt)
    assert first["removed"] and first["branchDeleted"] and "error" not in first
    assert second["removed"] and second["branchDeleted"] and "error" not in second
    with pytest.raises(InvalidParams, match="workDir"):
        await worktrees.repo_root(tmp_path / "missing")


async def test_commits_on_a_detached_head_keep_the_worktree(repo: Path, root: Path) -> None:
    wt = await worktrees.create(repo, root, "run_1", "t01")
    git(wt.path, "checkout", "-q", "--detach")
    (wt.path / "file.txt").write_text("detached work\n")
    commit_all(wt.path, "on no branch")
    state = await worktrees.inspect(wt)
    assert state.detached_commits == 1 and state.commits == 0 and not state.dirty
    done = await worktrees.finish(wt)
    assert done["removed"] is False
    assert (wt.path / "file.txt").read_text() == "detached work\n"
    assert has_branch(repo, wt.branch)


async def test_list_and_prune(repo: Path, root: Path, tmp_path: Path) -> None:
    other = make_repo(tmp_path / "other")
    idle = await worktrees.create(repo, root, "run_1", "idle")
    dirty = await worktrees.create(repo, root, "run_1", "dirty")
    done = await worktrees.create(other, root, "run_2", "done")
    vanished = await worktrees.create(repo, root, "run_2", "vanished")
    (dirty.path / "file.txt").write_text("half way\n")
    (done.path / "file.txt").write_text("finished\n")
    commit_all(done.path, "done")
    git(repo, "worktree", "add", "-q", str(root / "not-ours"))  # no metadata: not listed
    shutil.rmtree(vanished.path)

    listed = {e["branch"]: e for e in await worktrees.list_worktrees(root)}
    assert set(listed) == {idle.branch, dirty.branch, done.branch, vanished.branch}
    assert (listed[dirty.branch]["dirty"], listed[dirty.branch]["commits"]) == (True, 0)
    assert (listed[done.branch]["dirty"], listed[done.branch]["commits"]) == (False, 1)
    assert listed[done.branch]["repo"] == str(other)
    assert listed[idle.branch]["path"] == str(idle.path)

    pruned = {e["branch"]: e for e in await worktrees.prune(root)}
    assert pruned[idle.branch]["removed"] and pruned[idle.branch]["branchDeleted"]
    assert pruned[done.branch]["removed"] and not pruned[done.branch]["branchDeleted"]
    assert pruned[vanished.branch]["removed"] and pruned[vanished.branch]["branchDeleted"]
    assert not pruned[dirty.branch]["removed"]
    assert (dirty.path / "file.txt").read_text() == "half way\n"
    assert git(other, "show", f"{done.branch}:file.txt") == "finished"
    assert [e["branch"] for e in await worktrees.list_worktrees(root)] == [dirty.branch]
    assert str(vanished.path) not in git(repo, "worktree", "list", "--porcelain")


async def test_unborn_repo_is_a_conflict(tmp_path: Path, root: Path) -> None:
    empty = make_repo(tmp_path / "empty", commit=False)
    with pytest.raises(Conflict, match="has no commits"):
        await worktrees.create(empty, root, "run_1", "t01")
    assert not root.exists() or not any(root.rglob("*"))


async def test_outside_a_repo_and_reused_ids_are_conflicts(
    repo: Path, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(Conflict, match="not in a git repository"):
        await worktrees.create(tmp_path / "plain", root, "run_1", "t01")
    await worktrees.create(repo, root, "run_1", "t01")
    with pytest.raises(Conflict, match="already exists"):
        await worktrees.create(repo, root, "run_1", "t01")
    git(repo, "branch", "tcm/run_1/t02")  # the branch is taken, the path is not
    with pytest.raises(Conflict, match="already exists"):
        await worktrees.create(repo, root, "run_1", "t02")
    assert [e["branch"] for e in await worktrees.list_worktrees(root)] == ["tcm/run_1/t01"]


@pytest.mark.parametrize(
    "bad",
    ["", "../x", "a/b", "-rf", ".hidden", "x.lock", "a..b", "x.", "a b", "ü", "x\n", "a:b",
     "a@{1}", "*", "~1", "x" * 101],
)  # fmt: skip
@pytest.mark.parametrize("field", ["runId", "taskId"])
async def test_hostile_ids_are_refused(repo: Path, root: Path, bad: str, field: str) -> None:
    ids = {"runId": "run_1", "taskId": "t01"} | {field: bad}
    with pytest.raises(InvalidParams, match=field) as caught:
        await worktrees.create(repo, root, ids["runId"], ids["taskId"])
    assert caught.value.data == {"field": field}
    assert not root.exists()


async def test_spaces_and_unicode_in_paths(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "my repo ü ✓ " / "src dir")
    root = tmp_path / "work trees é"
    wt = await worktrees.create(repo / "sub", root, "run.1", "t01")
    assert await worktrees.repo_root(repo / "sub") == repo
    assert wt.workdir == wt.path / "sub" and wt.workdir.is_dir()
    assert wt.path.parent.parent.name.startswith("src dir-")
    (wt.workdir / "notes.md").write_text("changed ✓\n")
    commit_all(wt.path, "unicode ✓")
    [entry] = await worktrees.list_worktrees(root)
    assert (entry["path"], entry["repo"], entry["commits"]) == (str(wt.path), str(repo), 1)
    done = await worktrees.finish(wt)
    assert done["removed"] and not done["branchDeleted"]
    assert git(repo, "show", f"{wt.branch}:sub/notes.md") == "changed ✓"


async def test_hooks_run_without_a_terminal(repo: Path, root: Path) -> None:
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\ncat > ../hook-ran\n")  # runs in the new worktree
    hook.chmod(0o755)
    wt = await worktrees.create(repo, root, "run_1", "t01")  # stdin is /dev/null: cat ends
    assert (wt.path.parent / "hook-ran").exists()


async def test_git_errors_and_timeouts(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(GitError, match="unknown revision") as caught:
        await worktrees.git(repo, "show", "no-such-ref")
    assert isinstance(caught.value, Unavailable)
    assert caught.value.returncode == 128 and "no-such-ref" in caught.value.stderr
    slow = tmp_path / "slow-git"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setattr(worktrees, "GIT_BIN", str(slow))
    with pytest.raises(Unavailable, match="no answer in"):
        await worktrees.git(repo, "status", timeout_s=0.2)


def test_node_run_names_are_valid_run_ids() -> None:
    assert worktrees.node_run("a", "run_1") == "a.run_1"
    assert worktrees.node_run("host-x1.lan", "run_7") == "host-x1.lan.run_7"
    for node in (".a", "-a", "a.", "a..b"):  # legal node ids a branch name may not hold
        name = worktrees.node_run(node, "run_1")
        worktrees._check_id("runId", name)
        assert name.endswith(".run_1")
