"""`tcmctl merge RUN_ID`: a worktree run's task branches into one branch (the mergeRun tool).

The plan is printed first, one line per task; the exit code is 0 when the target was moved
(or, with --dry-run, when nothing conflicts) and 1 when conflicts stopped it.
"""

from __future__ import annotations

from typing import Any

import click

from tcmctl import render
from tcmctl.completion import complete_run_id
from tcmctl.context import EXIT_FAILED, Ctx, json_option, pass_ctx

MERGE_TIMEOUT_S = 600.0  # every branch is merged in memory first: many tasks take a while


def describe(out: dict[str, Any]) -> str:
    """The plan, one line per task, then what was done or why not."""
    steps = out["steps"]
    lines = [f"{out['runId']} -> {out['target']} ({out['mode']}, {len(steps)} tasks, "
             f"from {out['old'][:12]})"]  # fmt: skip
    width = max([len(s["taskId"]) for s in steps] + [4])
    for s in steps:
        note = ", ".join(s["paths"]) if s["paths"] else (s["reason"] or "")
        lines.append(f"  {s['taskId']:<{width}}  {s['status']:<16} {render.cell(note)}".rstrip())
    conflicting = [s["taskId"] for s in steps if s["status"] == "conflicting"]
    if out["applied"]:
        merged = ", ".join(out["merged"]) or "nothing"
        lines.append(f"merged {merged} into {out['target']} ({out['how']}): now {out['new'][:12]}")
    elif out["stoppedByConflicts"]:
        lines.append(
            f"{'dry run, ' if out['dryRun'] else ''}stopped: {len(conflicting)} conflicting "
            f"({', '.join(conflicting)}); {out['target']} is untouched. --skip-conflicting "
            "merges the others"
        )
    elif out["dryRun"]:
        lines.append(f"dry run: {out['target']} is untouched")
    else:
        lines.append(f"nothing to merge: {out['target']} is untouched")
    return "\n".join(lines)


@click.command(name="merge")
@click.argument("run_id", shell_complete=complete_run_id)
@click.option(
    "--into",
    "into",
    metavar="BRANCH",
    help="Target branch (default: the one checked out in the run's repository).",
)
@click.option("--squash", is_flag=True, help="One commit per task instead of a merge commit.")
@click.option("--dry-run", is_flag=True, help="Print the plan only; change nothing.")
@click.option(
    "--skip-conflicting",
    is_flag=True,
    help="Merge the clean tasks; leave out the conflicting ones and their dependents.",
)
@json_option
@pass_ctx
def merge(
    obj: Ctx, run_id: str, into: str | None, squash: bool, dry_run: bool, skip_conflicting: bool
) -> None:
    """Merge each completed task's branch of RUN_ID into a branch, conflicts found first."""
    params = {"runId": run_id, "into": into, "squash": squash or None,
              "dryRun": dry_run or None, "skipConflicting": skip_conflicting or None}  # fmt: skip
    out = obj.call("mergeRun", params, timeout_s=MERGE_TIMEOUT_S)
    obj.emit(out, describe)
    if out["stoppedByConflicts"]:
        raise click.exceptions.Exit(EXIT_FAILED)


COMMANDS = [merge]
