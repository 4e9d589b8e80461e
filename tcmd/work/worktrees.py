"""Git worktrees: each specialist works in its own checkout, on its own branch.

Layout under ``root``, one directory per repository (its name plus a hash of its path):

    <root>/<repo-name>-<hash8>/<run>/<task>        the worktree, on branch tcm/<run>/<task>
    <root>/<repo-name>-<hash8>/<run>/.<task>.json  Worktree.to_json(): repo, branch, base, …

``<run>`` is the run id, or ``<node>.<run id>`` with Redis (run ids are per node: two
nodes' ``run_1`` must not pick one branch in a repository both use). Changes
to a repository's worktrees run under a ``Guard`` (repolocks.py: one at a time, every node).

The metadata (written before ``git worktree add``, deleted with the worktree; ids never start
with a dot, so it is never mistaken for a task) counts only where ``git worktree list`` agrees.

Work is never thrown away: a worktree is removed (never ``--force``; ignored files such as
build output go with it) only when it is clean and no commit would be left behind on a detached
HEAD; its branch is deleted (``-d``, never ``-D``) only when it has no commits beyond its base
and the worktree is gone. Every git call goes through `git`: argument lists, stdin from
/dev/null, its own session (no terminal to prompt on), GIT_TERMINAL_PROMPT=0, LC_ALL=C (stderr
is matched), a timeout; the user's hooks still run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from tcmd.children import run_child
from tcmd.errors import Conflict, InvalidParams, TcmError, Unavailable

log = structlog.get_logger(__name__)

GIT_BIN = "git"
GIT_TIMEOUT_S = 30.0
ADD_TIMEOUT_S = 300.0  # a checkout of a big tree plus the user's post-checkout hook
# Variables that would point git at another repository than the one we name with -C.
_LOCATING = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_NAMESPACE",
             "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")  # fmt: skip
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")

# What every change to a repository's worktrees runs under: a context manager taking the
# repository's top level (repolocks.RepoLocks.hold: one change at a time on every node).
Guard = Callable[[Path], contextlib.AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def unguarded(repo: Path) -> AsyncIterator[None]:
    """No guard: the caller makes sure nothing else changes the repository's worktrees."""
    yield


class GitError(Unavailable):
    """git exited non-zero; ``stderr`` holds what it said."""

    def __init__(self, command: str, returncode: int, stderr: str) -> None:
        super().__init__(f"{stderr} (git {command})", data={"command": command, "stderr": stderr})
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True, slots=True)
class Worktree:
    """One specialist's checkout."""

    path: Path  # the worktree directory
    branch: str  # tcm/<run_id>/<task_id>
    repo: Path  # top level of the repository the task was started in
    base: str  # the commit it started from
    workdir: Path  # where the specialist works: path + work_dir's place in the repo

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Worktree:
        """Rebuild one from `to_json` (a retry works on in the same worktree)."""
        return cls(path=Path(raw["path"]), branch=raw["branch"], repo=Path(raw["repo"]),
                   base=raw["base"], workdir=Path(raw.get("workdir") or raw["path"]))  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorktreeState:
    """What a worktree holds that removing it could lose."""

    commits: int  # on the branch beyond base
    dirty: bool  # uncommitted changes or untracked files (ignored ones do not count)
    detached_commits: int = 0  # reachable only from a detached HEAD: removal would lose them


async def git(cwd: Path, *args: str, timeout_s: float = GIT_TIMEOUT_S) -> str:
    """Run ``git -C cwd ARGS``; return stdout, raise GitError (or Unavailable: no git, timeout)."""
    return (await git_answer(cwd, *args, timeout_s=timeout_s))[1]


async def git_answer(
    cwd: Path, *args: str, timeout_s: float = GIT_TIMEOUT_S, ok: tuple[int, ...] = (0,)
) -> tuple[int, str]:
    """`git` that also returns the exit status; the statuses in ``ok`` are answers, not
    errors (merge-tree's 1: conflicts)."""
    command = " ".join(args[:2])
    env = {k: v for k, v in os.environ.items() if k not in _LOCATING}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_OPTIONAL_LOCKS="0")
    started = time.monotonic()
    try:
        done = await run_child(
            [GIT_BIN, "-C", str(cwd), *args], env=env, new_session=True, timeout_s=timeout_s
        )  # its own session: a timeout takes its hooks down too
    except TimeoutError:
        raise Unavailable(f"git {command}: no answer in {timeout_s}s") from None
    except OSError as exc:  # after TimeoutError, one of its subclasses
        raise Unavailable(f"cannot run git: {exc}") from exc
    rc = done.returncode
    stdout, stderr = os.fsdecode(done.stdout), os.fsdecode(done.stderr).strip()
    log.debug("git", command=command, rc=rc, ms=round((time.monotonic() - started) * 1e3, 1))
    if rc not in ok:
        raise GitError(command, rc, stderr or f"exit status {rc}")
    return rc, stdout


async def repo_root(path: Path) -> Path | None:
    """Top level of the git repository holding `path`; None outside one or without git."""
    found = await _locate(path) if shutil.which(GIT_BIN) else None
    return None if found is None else found[0]


async def create(
    work_dir: Path, root: Path, run_id: str, task_id: str, guard: Guard = unguarded
) -> Worktree:
    """Make a worktree on a new branch at HEAD of the repository holding `work_dir`.
    ``run_id`` names the run's directory and branch (``<node>.<run>`` with Redis: two
    nodes' runs share ids)."""
    _check_id("runId", run_id)
    _check_id("taskId", task_id)
    found = await _locate(work_dir)
    if found is None:
        raise Conflict(f"{work_dir} is not in a git repository; use isolation=shared")
    top, prefix = found
    try:
        base = (await git(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")).strip()
    except GitError as exc:
        if exc.returncode != 1:  # --quiet: 1 is "no such commit", an unborn HEAD
            raise
        why = "has no commits: worktree isolation needs one; use isolation=shared"
        raise Conflict(f"{top} {why}") from None
    digest = hashlib.sha256(os.fsencode(top)).hexdigest()[:8]
    path = root.absolute() / f"{top.name or 'root'}-{digest}" / run_id / task_id
    meta, branch = _meta_path(path), f"tcm/{run_id}/{task_id}"
    if path.exists() or meta.exists():
        raise Conflict(f"worktree {path} already exists")
    # No await between mkdir and write: a finish() in this loop cannot rmdir the run dir between.
    meta.parent.mkdir(parents=True, exist_ok=True)
    wt = Worktree(path=path, branch=branch, repo=top, base=base, workdir=path / prefix)
    meta.write_text(json.dumps(wt.to_json()))
    try:
        async with guard(top):
            await git(top, "worktree", "add", "-b", branch, str(path), base,
                      timeout_s=ADD_TIMEOUT_S)  # fmt: skip
    except TcmError as exc:
        if not path.exists():
            _forget(path)
        if isinstance(exc, GitError) and "already exists" in exc.stderr:
            raise Conflict(exc.stderr, data=exc.data) from None
        raise
    wt.workdir.mkdir(parents=True, exist_ok=True)  # an untracked subdirectory is not checked out
    log.info("worktree created", path=str(path), branch=branch, base=base)
    return wt


def node_run(node: str, run_id: str) -> str:
    """``<node>.<run id>``: a run's name in worktree paths and branches with Redis. A node id
    may hold what a branch may not (a leading dot or dash, ``..``): those become ``_``."""
    name = f"{node}.{run_id}"
    if _ID.fullmatch(name) and ".." not in name:
        return name
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', node)}.{run_id}"


async def inspect(wt: Worktree) -> WorktreeState:
    """Count the branch's commits beyond base; see whether the checkout holds changes."""
    present, count = wt.path.is_dir(), ("rev-list", "--count", "--ignore-missing")
    ref = f"refs/heads/{wt.branch}"
    commits = int(await git(wt.path if present else wt.repo, *count, ref, f"^{wt.base}"))
    if not present:  # the directory is gone: nothing uncommitted is left to lose
        return WorktreeState(commits=commits, dirty=False)
    status = await git(wt.path, "status", "--porcelain", "-z", "--untracked-files=normal")
    detached = await git(wt.path, *count, "HEAD", "--not", "--branches", "--tags", "--remotes")
    return WorktreeState(commits=commits, dirty=bool(status), detached_commits=int(detached))


async def finish(wt: Worktree, guard: Guard = unguarded) -> dict[str, Any]:
    """Remove a clean worktree and an empty branch; keep (and say why) anything holding work.

    Raises only when the worktree cannot even be inspected; nothing is removed then.
    """
    state = await inspect(wt)
    done: dict[str, Any] = {"branch": wt.branch, "worktree": str(wt.path),
                            "hasCommits": state.commits > 0, "dirty": state.dirty,
                            "removed": False, "branchDeleted": False}  # fmt: skip
    try:
        async with guard(wt.repo):
            await _remove(wt, state, done)
    except GitError as exc:  # refused (locked, submodules, not merged, …): keep it, say why
        done["error"] = exc.stderr
    log.info("worktree finished", **done)
    return done


async def _remove(wt: Worktree, state: WorktreeState, done: dict[str, Any]) -> None:
    """finish()'s changes to the repository, under its guard."""
    if not wt.path.is_dir():  # deleted by hand: let git forget it
        await git(wt.repo, "worktree", "prune")
        done["removed"] = True
    elif not state.dirty and not state.detached_commits:
        await git(wt.repo, "worktree", "remove", str(wt.path))
        done["removed"] = True
    if done["removed"]:
        _forget(wt.path)
    if done["removed"] and not state.commits:
        try:
            await git(wt.repo, "branch", "-d", wt.branch)
        except GitError as exc:
            if "not found" not in exc.stderr:  # else: finished twice, already deleted
                raise
        done["branchDeleted"] = True


async def list_worktrees(root: Path) -> list[dict[str, Any]]:
    """Every tcm worktree under `root` that its repository still knows, with its state."""
    listed: list[dict[str, Any]] = []
    for wt in await _known(root):
        entry: dict[str, Any] = wt.to_json()
        del entry["workdir"]
        try:
            state = await inspect(wt)
            entry.update(commits=state.commits, dirty=state.dirty)
        except GitError as exc:
            entry["error"] = exc.stderr
        listed.append(entry)
    return listed


async def prune(root: Path, guard: Guard = unguarded) -> list[dict[str, Any]]:
    """`finish` every tcm worktree under `root`, then ``git worktree prune`` each repository."""
    done: list[dict[str, Any]] = []
    for wt in (known := await _known(root)):
        try:
            done.append(await finish(wt, guard))
        except TcmError as exc:
            done.append({"branch": wt.branch, "worktree": str(wt.path), "error": exc.message})
    for repo in sorted({wt.repo for wt in known}):
        async with guard(repo):
            await git(repo, "worktree", "prune")
    return done


async def _locate(path: Path) -> tuple[Path, str] | None:
    """(top level, path of `path` below it) of the repository holding `path`, or None."""
    if not path.is_dir():
        raise InvalidParams(f"workDir: {path} is not a directory", data={"field": "workDir"})
    try:
        out = await git(path, "rev-parse", "--show-toplevel", "--show-prefix")
    except GitError as exc:
        if "not a git repository" in exc.stderr:
            return None
        raise  # e.g. unsafe ownership: refuse rather than silently run unisolated
    top, prefix = out.removesuffix("\n").rsplit("\n", 1)
    return Path(top), prefix


async def _known(root: Path) -> list[Worktree]:
    """Worktrees described by metadata under `root` that ``git worktree list`` confirms."""
    by_repo: dict[Path, list[Worktree]] = {}
    for meta in sorted(root.glob("*/*/.*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            path = str(meta.with_name(meta.name[1 : -len(".json")]))
            wt = Worktree.from_json(json.loads(meta.read_text()) | {"path": path})
            by_repo.setdefault(wt.repo, []).append(wt)
    known = []
    for repo, wts in by_repo.items():
        try:
            out = await git(repo, "worktree", "list", "--porcelain", "-z")
        except GitError as exc:
            log.warning("worktree repo unreadable", repo=str(repo), error=str(exc))
            continue
        paths = {os.path.realpath(f[len("worktree ") :]) for f in out.split("\0")
                 if f.startswith("worktree ")}  # fmt: skip
        known += [wt for wt in wts if os.path.realpath(wt.path) in paths]
    return known


def _meta_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.json")


def _forget(path: Path) -> None:
    """Drop a worktree's metadata and the run/repo directories it leaves empty."""
    _meta_path(path).unlink(missing_ok=True)
    for parent in (path.parent, path.parent.parent):
        with contextlib.suppress(OSError):  # not empty: another task still lives there
            parent.rmdir()


def _check_id(field: str, value: str) -> None:
    if not _ID.fullmatch(value) or ".." in value or value.endswith((".", ".lock")):
        why = "1-100 of [A-Za-z0-9._-]; no leading . or -, no '..', no trailing . or .lock"
        raise InvalidParams(f"{field}: {value!r} is not {why}", data={"field": field})
