"""Budgets: a run's ``maxCostUsd`` / ``maxTokens`` and the daemon's ``TCM_BUDGET_USD``.

The ledger (``tcmd/usage``) tells every growth of an instance's usage; a specialist's
usage counts for its run. When a scope's spending reaches its budget:

- no new task of that scope starts: the dispatcher asks ``may_start`` before each start,
  and a refused task is cancelled with the reason (after a restart too: the ledger's
  totals are kept, so the check holds without any state of its own);
- tasks running now go on and finish their turn (what they spend is still counted);
- the scope's waiting tasks (queued, waiting for a retry or for their dependencies) are
  cancelled at once with the reason ``budget reached: …``, which ``getParallelStatus``,
  ``jobs`` and the executeParallel result show as the task's error;
- the parent is told: a ``run.budget`` event about each of the run's managers (an
  instance sees events about itself and its subtree), the run's ``budgetReached``, and
  with TCM_NOTIFY_PARENT_PANE a note typed into each ready manager's pane.

Tokens are all four kinds together (input, output, cache creation, cache read). Cost is
the estimate of the priced models only: a model without a price counts toward
``maxTokens`` but not toward a cost budget. The daemon's budget covers this node's
instances; with REDIS_URL, jobs claimed from the shared queue are not held by it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from tcmd.config import Settings
from tcmd.errors import TcmError
from tcmd.model import State
from tcmd.usage.ledger import Account, Ledger
from tcmd.work.dispatcher import Parallel, Run
from tcmd.work.queue.base import FINAL, Job, JobState

log = structlog.get_logger(__name__)
REACHED = "budget reached"


class Budgets:
    """Checks the budgets on every growth of usage and before every task starts."""

    def __init__(
        self, settings: Settings, parallel: Parallel, ledger: Ledger, emit: Callable[..., Any]
    ) -> None:
        self.settings = settings
        self.p = parallel
        self.ledger = ledger
        self.emit = emit
        self.daemon_reached = False
        self._tasks: set[asyncio.Task[None]] = set()
        parallel.may_start = self.may_start
        ledger.listeners.append(self.on_growth)

    # -- the checks ----------------------------------------------------------------------------
    def daemon_over(self) -> str | None:
        budget = self.settings.budget_usd
        if budget is None:
            return None
        _, usd = self.ledger.spent("all")
        if usd < budget:
            return None
        return f"{REACHED}: the daemon's TCM_BUDGET_USD ${budget:g} (spent ${usd:.4f})"

    def run_over(self, run: Run) -> str | None:
        if run.max_cost_usd is None and run.max_tokens is None:
            return None
        tokens, usd = self.ledger.spent("run", run.run_id)
        if run.max_tokens is not None and tokens >= run.max_tokens:
            return f"{REACHED}: {run.run_id} maxTokens {run.max_tokens} (used {tokens})"
        if run.max_cost_usd is not None and usd >= run.max_cost_usd:
            return f"{REACHED}: {run.run_id} maxCostUsd ${run.max_cost_usd:g} (spent ${usd:.4f})"
        return None

    def may_start(self, job: Job) -> str | None:
        """None when ``job`` may start; else why not (it is cancelled with that reason)."""
        if (why := self.daemon_over()) is not None:
            return why
        run = self.p.runs.get(job.run_id)
        return None if run is None else self.run_over(run)

    def on_growth(self, acct: Account, model: str, counts: list[int]) -> None:
        """The ledger counted more: stop what a budget now forbids."""
        if not self.daemon_reached and (why := self.daemon_over()) is not None:
            self.daemon_reached = True
            log.warning("daemon budget reached: no new task starts", reason=why)
            self.emit("budget.reached", scope="daemon", reason=why)
            for run in list(self.p.runs.values()):
                if run.finished_at is None:
                    self.stop(run, why)
        mine = self.p.runs.get(acct.run_id) if acct.run_id else None
        if mine is not None and mine.budget_reached is None and (why := self.run_over(mine)):
            self.stop(mine, why)

    # -- stopping a run ----------------------------------------------------------------------------
    def stop(self, run: Run, why: str) -> None:
        """Cancel the run's waiting tasks with ``why``; running ones finish their turn."""
        cancelled = []
        try:  # the tasks waiting for their dependencies first: none is released meanwhile
            cancelled += [j.task_id for j in self.p.waiting.cancel_run(run.run_id, why)]
        except TcmError as exc:
            log.warning("cannot cancel the waiting tasks of a run over budget",
                        run_id=run.run_id, error=exc.message)  # fmt: skip
        for job in self.p.run_jobs(run):
            if job.state in FINAL or job.state == JobState.ACTIVE:
                continue
            try:
                cancelled.append(self.p.cancel(job, why).task_id)
            except TcmError as exc:  # still waiting: may_start cancels it when it comes up
                log.warning("cannot cancel a task over budget", job_id=job.job_id,
                            error=exc.message)  # fmt: skip
        if run.budget_reached is None:
            run.budget_reached = why
            with contextlib.suppress(TcmError):  # kept in memory; the check holds anyway
                self.p.save_run(run)
        log.warning("run budget reached", run_id=run.run_id, reason=why, cancelled=len(cancelled))
        for manager_id in run.manager_ids:
            self.emit("run.budget", instanceId=manager_id, runId=run.run_id, reason=why,
                      cancelled=cancelled)  # fmt: skip
            self._tell(manager_id, f"[tcm] {run.run_id}: {why}; {len(cancelled)} waiting "
                       "task(s) cancelled, running ones finish their turn")  # fmt: skip
        with contextlib.suppress(TcmError):
            self.p.finish_runs()
        self.p.instances.changes.fire()  # a run waited on (executeParallel) may be done now

    def _tell(self, manager_id: str, note: str) -> None:
        manager = self.p.instances.find(manager_id)
        if not self.settings.notify_parent_pane or manager is None:
            return
        if manager.status != State.READY:
            return
        task = asyncio.get_running_loop().create_task(self._send(manager_id, note))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, manager_id: str, note: str) -> None:
        manager = self.p.instances.find(manager_id)
        if manager is not None:
            with contextlib.suppress(TcmError):
                await self.p.delivery.send(manager, note, 30)

    # -- what the usage tool adds ------------------------------------------------------------------
    def describe(self, kind: str, key: str) -> dict[str, Any]:
        """The budget of a run (or the daemon's), for the ``usage`` tool's answer."""
        if kind == "run" and (run := self.p.runs.get(key)) is not None:
            return {"budget": {"maxCostUsd": run.max_cost_usd, "maxTokens": run.max_tokens,
                               "reached": run.budget_reached}}  # fmt: skip
        if kind == "all" and self.settings.budget_usd is not None:
            return {"budget": {"maxCostUsd": self.settings.budget_usd,
                               "reached": self.daemon_over()}}  # fmt: skip
        return {}
