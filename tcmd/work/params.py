"""The parameters of the parallel tools, as the catalogue validates and describes them.

Names and fields of executeParallel, getParallelStatus and distributeWork are the
original system's; the rest are new beside them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import regex
from pydantic import Field, field_validator

from tcmd.api import ArgText, Params

TaskId = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
InstanceId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_]+$")]
PriorityName = Literal["critical", "high", "medium", "low"]


class TaskSpec(Params):
    id: TaskId = Field(description="Unique within the call; names the task's git branch")
    name: str | None = Field(default=None, max_length=500, description="A short label")
    context: ArgText = Field(
        default="", max_length=1_000_000, description="Background given before the instruction"
    )
    instruction: str = Field(
        min_length=1,
        max_length=1_000_000,
        description="What to do (for the shell agent: a command line)",
    )
    completionPattern: str | None = Field(
        default=None,
        max_length=10_000,
        description="Regex the result must match for the task to count as completed",
    )
    priority: PriorityName = Field(default="medium", description="critical, high, medium, low")
    timeoutMs: int | None = Field(
        default=None, ge=1, le=86_400_000, description="Time limit of one attempt"
    )
    dependsOn: list[TaskId] = Field(
        default_factory=list,
        max_length=10_000,
        description="Ids of tasks of the same run this one waits for; it gets their results "
        "({{ID.result}} in the instruction, else appended to its context)",
    )
    runIfDependencyFails: bool = Field(
        default=False,
        description="Run even when a dependency failed or was cancelled (its error is given "
        "where its result would be); otherwise such a task is cancelled",
    )

    @field_validator("completionPattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                regex.compile(value)  # the engine the dispatcher matches with
            except regex.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class RetrySpec(Params):
    attempts: int = Field(default=3, ge=1, le=100)
    baseMs: int = Field(default=1000, ge=0, le=3_600_000)
    capMs: int = Field(default=60_000, ge=0, le=86_400_000)


class RunOptions(Params):
    workDir: ArgText | None = Field(default=None, max_length=4096)
    maxConcurrent: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Specialists at once per manager (never above MAX_SPECIALISTS_PER_MANAGER)",
    )
    timeoutMs: int = Field(
        default=600_000, ge=1, le=86_400_000, description="Default time limit of one attempt"
    )
    wait: bool = Field(default=True, description="Return the results when all tasks finished")
    agent: str = Field(default="claude", description="Agent profile of the specialists")
    isolation: Literal["worktree", "shared"] | None = Field(
        default=None,
        description="worktree: each task in its own git worktree and branch (default in a "
        "git repository); shared: all in workDir",
    )
    retry: RetrySpec | None = Field(default=None, description="Attempts and backoff")
    keepSpecialists: bool = Field(
        default=False, description="Keep each specialist after its task, to inspect"
    )
    maxCostUsd: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="Budget: once the run's estimated cost reaches it, no new task starts, "
        "running ones finish their turn, waiting ones are cancelled (budget reached)",
    )
    maxTokens: int | None = Field(
        default=None,
        ge=1,
        le=10**15,
        description="Budget in tokens (input, output, cache creation and cache read together)",
    )


class ExecuteParallelParams(RunOptions):
    managerId: InstanceId
    tasks: list[TaskSpec] = Field(min_length=1, max_length=10_000)


class DistributeParams(RunOptions):
    tasks: list[TaskSpec] = Field(min_length=1, max_length=10_000)
    strategy: Literal["round-robin", "least-loaded", "capacity-aware"] = "round-robin"
    wait: bool = False
    managers: int | None = Field(default=None, ge=1, le=100)


class StatusParams(Params):
    managerId: InstanceId | None = None
    runId: str | None = None
    sinceChange: int | None = None  # long poll: answer once the daemon's change count moves
    waitMs: int = Field(default=0, ge=0, le=600_000)


class JobsParams(Params):
    state: Literal["queued", "active", "retrying", "completed", "failed", "cancelled"] | None = None
    runId: str | None = None
    managerId: str | None = None
    limit: int = Field(default=100, ge=1, le=100_000)


class RunsParams(Params):
    limit: int = Field(default=50, ge=1, le=10_000, description="At most this many, newest first")
    unfinishedFirst: bool = Field(
        default=False,
        description="The unfinished runs first (newest first), then the newest finished ones",
    )


class CancelParams(Params):
    jobId: str | None = None
    runId: str | None = None


class WorktreesParams(Params):
    prune: bool = False
