"""Merge-back: bring a run's task branches into one branch, every merge computed first.

`plan` simulates the whole sequence without touching a ref or a checkout: each task's branch
is merged in memory (``git merge-tree --write-tree``, git >= 2.38) into the result of the
merges before it, and the merged tree is written as a commit object (``git commit-tree``)
that the next step merges into. The commits are unreachable until `apply` moves the target
to the last one, so the plan is exact (the later merges are computed against the earlier
ones, not against the original target) and a dry run leaves only loose objects that
``git gc`` drops.

`apply` moves the target in one step and only from the value the plan started from:
``git update-ref NEW OLD`` when no worktree has the target checked out, else ``git merge
--ff-only NEW`` in that worktree (which updates its files too), refused when it holds
uncommitted changes to tracked files. Nothing is ever deleted: every task branch and
worktree stays (docs/operations.md, "Merging a run").

Task names and branch names reach git only as single arguments (never a shell), branch
names as full ``refs/heads/...`` refs, so none can be taken for an option.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from tcmd.errors import Conflict, InvalidParams, NotFound, Unavailable
from tcmd.work.worktrees import GitError, git, git_answer

log = structlog.get_logger(__name__)

MIN_GIT = (2, 38)  # merge-tree --write-tree
_VERSION = re.compile(r"git version (\d+)\.(\d+)")

# What a step of the plan found; only "clean" steps change the target.
CLEAN, CONFLICTING, MERGED, EMPTY, BLOCKED, NOT_COMPLETED = (
    "clean", "conflicting", "already-merged", "nothing-to-merge", "blocked", "not-completed"
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Candidate:
    """A task of the run as merge-back sees it."""

    task_id: str
    branch: str | None  # tcm/<run>/<task>; None: the task never had a worktree
    completed: bool
    state: str = "completed"  # the job's state, for the reason of a task left out
    base: str | None = None  # the commit its worktree started from
    depends_on: tuple[str, ...] = ()
    name: str | None = None
    worktree: str | None = None  # still on disk (kept: it holds uncommitted work)
    dirty: bool = False


@dataclass(slots=True)
class Step:
    """One task's place in the plan."""

    task_id: str
    branch: str | None
    status: str
    paths: list[str] = field(default_factory=list)  # conflicting paths
    reason: str | None = None
    commit: str | None = None  # the target after this step (clean steps)

    def to_json(self) -> dict[str, Any]:
        return {"taskId": self.task_id, "branch": self.branch, "status": self.status,
                "paths": self.paths, "reason": self.reason, "commit": self.commit}  # fmt: skip


@dataclass(slots=True)
class Plan:
    """Every step, the target's value when planned (``old``) and after the clean steps."""

    repo: Path
    target: str
    old: str
    new: str
    squash: bool
    steps: list[Step]

    @property
    def conflicting(self) -> list[Step]:
        return [s for s in self.steps if s.status == CONFLICTING]

    def to_json(self) -> dict[str, Any]:
        return {"repo": str(self.repo), "target": self.target, "old": self.old, "new": self.new,
                "mode": "squash" if self.squash else "merge",
                "steps": [s.to_json() for s in self.steps]}  # fmt: skip


# -- pure parts ---------------------------------------------------------------------------------
def merge_order(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Dependencies first, else task order (a stable topological sort).

    Dependencies on tasks that are not candidates are ignored; should a cycle get here
    (submission refuses them), its tasks follow in task order.
    """
    index = {c.task_id: i for i, c in enumerate(candidates)}
    waiting = {i: {index[d] for d in c.depends_on if d in index and d != c.task_id}
               for i, c in enumerate(candidates)}  # fmt: skip
    dependents: dict[int, list[int]] = {}
    for i, deps in waiting.items():
        for d in deps:
            dependents.setdefault(d, []).append(i)
    ready = [i for i, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in dependents.get(i, ()):
            waiting[j].discard(i)
            if not waiting[j]:
                heapq.heappush(ready, j)
    seen = set(order)
    order += [i for i in range(len(candidates)) if i not in seen]  # a cycle, in task order
    return [candidates[i] for i in order]


def parse_merge_tree(out: str) -> tuple[str, list[str]]:
    """(tree, conflicting paths) from ``merge-tree --write-tree --name-only --no-messages -z``."""
    tree, _, rest = out.partition("\0")
    paths = list(dict.fromkeys(p for p in rest.split("\0") if p))  # a path per stage: once
    return tree.strip(), [shown(p) for p in paths]


def shown(path: str) -> str:
    """A path git printed (bytes as os.fsdecode made them), as valid UTF-8 for JSON."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse_version(out: str) -> tuple[int, int] | None:
    found = _VERSION.search(out)
    return (int(found[1]), int(found[2])) if found else None


def check_branch_name(name: str) -> None:
    """Refuse what cannot be a plain local branch name (before git sees it)."""
    bad = (not name or name.startswith(("-", "refs/")) or "@{" in name or name == "@"
           or any(ord(ch) < 32 or ch == "\x7f" for ch in name) or len(name) > 255)  # fmt: skip
    if bad:
        raise InvalidParams(f"into: {name!r} is not a branch name", data={"field": "into"})


# -- git ---------------------------------------------------------------------------------------
async def check_git(repo: Path) -> None:
    """Refuse, naming the version, a git without ``merge-tree --write-tree``."""
    version = parse_version(await git(repo, "version"))
    if version is not None and version < MIN_GIT:
        raise Unavailable(
            f"merging a run needs git >= {MIN_GIT[0]}.{MIN_GIT[1]} (merge-tree --write-tree); "
            f"this is {version[0]}.{version[1]}"
        )


async def current_branch(repo: Path) -> str:
    """The branch checked out in ``repo`` (the default target)."""
    try:
        return (await git(repo, "symbolic-ref", "--quiet", "--short", "HEAD")).strip()
    except GitError as exc:
        if exc.returncode != 1:
            raise
        raise InvalidParams(
            f"into: {repo} has a detached HEAD; name the target branch", data={"field": "into"}
        ) from None


async def _commit_of(repo: Path, ref: str) -> str | None:
    _, out = await git_answer(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
                              ok=(0, 1))  # fmt: skip
    return out.strip() or None


async def plan(
    repo: Path, target: str, run_id: str, candidates: Sequence[Candidate], *, squash: bool
) -> Plan:
    """Simulate every merge, in order, each on the result of those before; change no ref.

    A conflicting task is left out of the simulation (the later ones are computed without
    it) and the tasks that depend on it, directly or not, are ``blocked``.
    """
    check_branch_name(target)
    await check_git(repo)
    ref = f"refs/heads/{target}"
    rc, _ = await git_answer(repo, "check-ref-format", ref, ok=(0, 1))
    if rc:
        raise InvalidParams(f"into: {target!r} is not a branch name", data={"field": "into"})
    old = await _commit_of(repo, ref)
    if old is None:
        raise NotFound(f"into: no branch {target!r} in {repo}", data={"field": "into"})
    current, left_out, steps = old, set[str](), []
    for c in merge_order(candidates):
        step = Step(c.task_id, c.branch, CLEAN)
        steps.append(step)
        blocked_by = [d for d in c.depends_on if d in left_out]
        if not c.completed:
            step.status, step.reason = NOT_COMPLETED, f"the task is {c.state}"
        elif blocked_by:
            step.status, step.reason = BLOCKED, f"depends on {', '.join(blocked_by)}, left out"
        else:
            current = await _simulate(repo, step, c, current, _message(run_id, c, target, squash),
                                      squash=squash)  # fmt: skip
        if step.status in (NOT_COMPLETED, BLOCKED, CONFLICTING):
            left_out.add(c.task_id)
    return Plan(repo=repo, target=target, old=old, new=current, squash=squash, steps=steps)


async def _simulate(
    repo: Path, step: Step, c: Candidate, current: str, message: str, *, squash: bool
) -> str:
    """Merge ``c``'s branch into ``current`` in memory; fill in ``step``; the new current."""
    tip = await _commit_of(repo, f"refs/heads/{c.branch}") if c.branch else None
    if tip is None:
        step.status = EMPTY
        step.reason = "no branch: the task committed nothing" if c.branch else "no worktree"
        return current
    if c.dirty and c.worktree:
        step.reason = f"uncommitted changes in {c.worktree} are not part of the merge"
    is_in, _ = await git_answer(repo, "merge-base", "--is-ancestor", tip, current, ok=(0, 1))
    if is_in == 0:
        empty = tip == c.base
        step.status = EMPTY if empty else MERGED
        step.reason = step.reason or ("no commits on the branch" if empty else None)
        return current
    rc, out = await git_answer(repo, "merge-tree", "--write-tree", "--name-only",
                               "--no-messages", "-z", current, tip, ok=(0, 1))  # fmt: skip
    tree, paths = parse_merge_tree(out)
    if rc == 1:
        step.status, step.paths = CONFLICTING, paths
        return current
    if squash and tree == (await git(repo, "rev-parse", f"{current}^{{tree}}")).strip():
        step.status, step.reason = MERGED, "its changes are already in the target"
        return current
    parents = ["-p", current] if squash else ["-p", current, "-p", tip]
    try:
        step.commit = (await git(repo, "commit-tree", tree, *parents, "-m", message)).strip()
    except GitError as exc:
        if "identity" in exc.stderr or "tell me who you are" in exc.stderr:
            raise Conflict(f"git has no committer identity in {repo}: set user.name and "
                           "user.email (git config)", data=exc.data) from None  # fmt: skip
        raise
    return step.commit


def _message(run_id: str, c: Candidate, target: str, squash: bool) -> str:
    how = "Squash" if squash else "Merge"
    title = f"{how} task {c.task_id} of {run_id} into {target}"
    body = f"\n\n{c.name}" if c.name else ""
    return f"{title}{body}\n\nBranch: {c.branch}\n"


async def apply(plan_: Plan, run_id: str) -> str:
    """Move the target from ``plan_.old`` to ``plan_.new``; how it was done.

    Refused (Conflict, nothing changed) when the target moved since the plan, when a
    worktree that has it checked out holds uncommitted changes to tracked files, or is
    rebasing it.
    """
    repo, ref = plan_.repo, f"refs/heads/{plan_.target}"
    if plan_.new == plan_.old:
        return "nothing to merge"
    holder = await _checked_out_in(repo, ref)
    await _refuse_rebasing(repo, ref)
    now = await _commit_of(repo, ref)
    if now != plan_.old:
        raise Conflict(f"{plan_.target} moved since the plan ({plan_.old[:12]} -> "
                       f"{(now or 'deleted')[:12]}): nothing was changed, merge again")  # fmt: skip
    if holder is None:
        try:
            await git(repo, "update-ref", "-m", f"tcm merge {run_id}", ref, plan_.new, plan_.old)
        except GitError as exc:
            raise Conflict(f"{plan_.target} was not moved: {exc.stderr}", data=exc.data) from None
        return "update-ref"
    status = await git(holder, "status", "--porcelain", "-z", "--untracked-files=no")
    if status:
        raise Conflict(
            f"{plan_.target} is checked out in {holder} with uncommitted changes: commit or "
            "stash them, then merge again (nothing was changed)",
            data={"worktree": str(holder)},
        )
    try:
        await git(holder, "merge", "--ff-only", "--no-edit", "-q", plan_.new)
    except GitError as exc:
        raise Conflict(f"{plan_.target} was not moved: {exc.stderr}", data=exc.data) from None
    return f"fast-forward in {holder}"


async def _checked_out_in(repo: Path, ref: str) -> Path | None:
    """The worktree (main one included) whose HEAD is ``ref``, if any."""
    out = await git(repo, "worktree", "list", "--porcelain", "-z")
    path: Path | None = None
    for entry in out.split("\0"):
        if entry.startswith("worktree "):
            path = Path(entry[len("worktree ") :])
        elif entry == f"branch {ref}" and path is not None:
            return path if path.is_dir() else None  # a worktree deleted by hand: no files
    return None


async def _refuse_rebasing(repo: Path, ref: str) -> None:
    """A rebase in progress keeps its branch's name in its state dir; HEAD is detached."""
    common = Path((await git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir"))
                  .strip())  # fmt: skip
    dirs = [common, *(common / "worktrees").glob("*")]
    for d in dirs:
        for state in ("rebase-merge", "rebase-apply"):
            try:
                head = (d / state / "head-name").read_text().strip()
            except OSError:
                continue
            if head == ref:
                raise Conflict(f"{ref.removeprefix('refs/heads/')} is being rebased "
                               f"({d / state}): finish or abort the rebase first")  # fmt: skip
