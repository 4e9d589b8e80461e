"""Health: a sweep over every instance each HEALTH_CHECK_INTERVAL, and recovery.

A death, a failed turn or a newcomer is looked at once, alone (its own pane), between
sweeps; while a verdict awaits confirmation the sweeps come every interval ÷ threshold,
so a crash is recovered within about one interval plus the agent's start. One sweep = one
batched tmux query (``list-panes -a``) plus a screen capture only where one is needed (a
busy instance silent for the stall time). A finished turn's output is read for error
patterns. Each instance gets a score, a verdict and reasons:

    healthy · dead · stuck · errored · rate-limited · auth-failed · over-memory ·
    unresponsive · failed

After UNHEALTHY_THRESHOLD bad sweeps in a row an instance is recovered: dead → restart
(resuming its conversation); stuck → Escape and re-deliver the prompt in flight once,
then restart; rate-limited → no new prompts (for Claude: to any Claude instance, it is
the account's limit) until the reset time; auth-failed (a 401: the account's login) → the
same hold on every instance of the account, no restart, no new task, reported once, until
a turn succeeds again or AUTH_HOLD_S pass; over-memory (above TCM_INSTANCE_MEMORY_MAX_MB,
for TCM_MEMORY_OVER_SWEEPS sweeps in a row) → restart, resuming. Each sweep also measures
every instance's memory (health/memory.py). An instance that runs a job's attempt is left
to the job (its timeout and retries recover the work). Recoveries are bounded per
instance (TCM_RECOVERY_MAX per TCM_RECOVERY_WINDOW_MS); past that it is given up on, and
its parent is told through an event (and its pane, if configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import structlog

from tcmd.config import Settings
from tcmd.errors import TcmError, Unavailable
from tcmd.health.holds import LOGIN, Holds
from tcmd.health.memory import Memory
from tcmd.health.patterns import auth_failure, match_error, rate_limit_reset, with_overrides
from tcmd.instances.agents.registry import profile
from tcmd.instances.delivery import Delivery
from tcmd.instances.registry import Instances
from tcmd.model import Instance, State
from tcmd.tmux import PaneInfo

log = structlog.get_logger(__name__)
Emit = Callable[..., Any]
SCORES = {"healthy": 100, "errored": 60, "rate-limited": 50, "auth-failed": 50,
          "over-memory": 40, "stuck": 30, "unresponsive": 20, "dead": 0, "failed": 0}  # fmt: skip
REPEATS_STUCK = 3  # the same prompt submitted this often with no finished turn: stuck
TCM_TOOLS = "mcp__tcm__"  # how Claude names tcm's own tools (the shim is server "tcm")
_SPINNER = re.compile(r"[\d⠀-⣿✻✶✳✢✽·*●]+")  # spinners and timers animate while stuck


@dataclass(slots=True)
class Verdict:
    verdict: str
    reasons: list[str]
    at: float = field(default_factory=time.time)

    @property
    def score(self) -> int:
        return SCORES[self.verdict]


class Health:
    """The health loop, its verdicts, the holds and the recoveries."""

    def __init__(
        self,
        settings: Settings,
        instances: Instances,
        delivery: Delivery,
        busy_with_job: Callable[[str], bool],
        emit: Emit | None = None,
        watchdog_s: float | None = None,
        on_sweep: Callable[[], object] = lambda: None,
    ) -> None:
        self.settings = settings
        self.instances = instances
        self.delivery = delivery
        self.busy_with_job = busy_with_job
        self.emit: Emit = emit or (lambda kind, **fields: None)
        self.watchdog_s = watchdog_s  # ping at least this often (systemd's WatchdogSec / 2)
        self.on_sweep = on_sweep
        self.patterns = with_overrides(settings.error_patterns)
        self.checks: dict[str, Verdict] = {}
        self.streak: dict[str, int] = {}
        self.recoveries: dict[str, deque[float]] = {}
        self.recovering: set[str] = set()
        self.given_up: set[str] = set()
        self.redelivered: set[str] = set()
        self.holds = Holds(delivery, self.emit)  # rate limits and failed logins
        self._fingerprint: dict[str, tuple[str, float]] = {}  # screen, when it last changed
        self._activity: dict[str, float] = {}
        self._problem: dict[str, str | None] = {}  # error pattern seen on a ready screen
        self._reset: dict[str, str | None] = {}  # reset time an errored screen announced
        self._scanned_turn: dict[str, int] = {}  # the turn whose screen was last scanned
        self.memory = Memory(
            settings.memory_estimate_mb, settings.instance_memory_max_mb, instances.store
        )
        self.sweeps = 0
        self.last_sweep_ms = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._look_now: set[str] = set()  # instances to look at before the next sweep
        delivery.hold = self.holds.hold_of
        instances.listeners.append(self._on_state)
        instances.forget_listeners.append(self.forget)

    def forget(self, instance_id: str) -> None:
        """Drop what is kept about an instance retention has forgotten."""
        for per_instance in (self.checks, self.streak, self.recoveries, self._fingerprint,
                             self._activity, self._problem, self._reset, self._scanned_turn,
                             self.holds.held_until):  # fmt: skip
            per_instance.pop(instance_id, None)
        for ids in (self.recovering, self.given_up, self.redelivered):
            ids.discard(instance_id)
        self.memory.forget(instance_id)

    def cancel_recoveries(self) -> None:
        """Stop every recovery in flight (the daemon is stopping)."""
        for task in list(self._tasks):
            task.cancel()

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Sweep every interval (every interval ÷ threshold while a verdict awaits
        confirmation); between sweeps, look at once at the instances `_on_state` names."""
        next_sweep = 0.0
        while True:
            try:
                if time.monotonic() >= next_sweep:
                    self._look_now.clear()
                    await self.sweep()
                    next_sweep = time.monotonic() + self._pause()
                elif self._look_now:
                    due, self._look_now = self._look_now, set()
                    await self.sweep(only=due)
                    next_sweep = min(next_sweep, time.monotonic() + self._pause())
            except Exception:  # a bug in one sweep must not end health checking for good
                log.exception("health sweep failed")
                next_sweep = time.monotonic() + self._pause()
            self.on_sweep()  # the watchdog ping: a stalled sweep stops it, systemd restarts us
            if not self._look_now:  # named while that sweep ran: look at them now
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_sweep - time.monotonic())):
                        await self._wake.wait()

    def _pause(self) -> float:
        """Seconds to the next sweep."""
        interval = self.settings.health_check_interval_ms / 1000
        threshold = self.settings.unhealthy_threshold
        confirming = any(0 < n < threshold for n in self.streak.values())
        wait = interval / threshold if confirming else interval
        return wait if self.watchdog_s is None else min(wait, self.watchdog_s)

    def _on_state(self, inst: Instance, old: State) -> None:
        if old == State.BUSY and inst.status == State.READY:
            self.holds.turn_ended(inst)
        if inst.status in (State.EXITED, State.ERRORED) or (
            inst.status == State.READY and inst.id not in self.checks
        ):
            self._look_now.add(inst.id)  # a death, a failed turn, a newcomer: look now, not at
            self._wake.set()  # the tick, and at it alone (not every instance a spawn)

    async def sweep(self, only: Collection[str] | None = None) -> dict[str, Verdict]:
        """Check every instance, or `only` these (each its own pane, no memory sampling:
        a sweep measures everyone in turn)."""
        started = time.perf_counter()
        candidates = (
            self.instances.by_id.values()
            if only is None
            else [i for i in map(self.instances.by_id.get, only) if i is not None]
        )
        watched = [
            i for i in candidates if i.status != State.TERMINATED and i.id not in self.given_up
        ]
        tmux = self.instances.tmux
        try:
            if only is None:
                panes: dict[str, PaneInfo] | None = {p.session: p for p in await tmux.panes()}
            else:
                panes = {i.id: p for i in watched if (p := await tmux.pane(i.id)) is not None}
        except Unavailable as exc:
            panes = None
            log.warning("tmux does not answer", error=exc.message)
        if panes is not None and only is None:
            self.memory.sample({
                inst.id: (pane.pid, inst.agent)
                for inst in watched
                if (pane := panes.get(inst.id)) is not None and not pane.dead
            })  # fmt: skip
        for inst in watched:
            if self.instances.pane_since.get(inst.id) == math.inf:
                continue  # its pane is being made (or its start waits its turn): not dead
            if panes is None:
                verdict = Verdict("unresponsive", ["tmux does not answer"])
            else:
                try:
                    verdict = await self._check(inst, panes.get(inst.id))
                except TcmError as exc:  # e.g. its session vanished since the listing
                    log.debug("check skipped", instance_id=inst.id, error=exc.message)
                    continue
            if inst.status == State.TERMINATED:
                continue  # terminated while we looked
            self._record(inst, verdict)
        if only is None:
            self.sweeps += 1
            self.last_sweep_ms = (time.perf_counter() - started) * 1000
        return self.checks

    def _record(self, inst: Instance, verdict: Verdict) -> None:
        old = self.checks.get(inst.id)
        self.checks[inst.id] = verdict
        bad = verdict.verdict != "healthy"
        self.streak[inst.id] = self.streak.get(inst.id, 0) + 1 if bad else 0
        if old is None or old.verdict != verdict.verdict:
            self.emit(
                "health.verdict",
                instanceId=inst.id,
                verdict=verdict.verdict,
                score=verdict.score,
                reasons=verdict.reasons,
            )
        if (
            verdict.verdict == "rate-limited"
            and (old is None or old.verdict != "rate-limited")
            and not self.busy_with_job(inst.id)  # a job's attempt: its retries and backoff decide
        ):
            self.holds.rate_limited(inst, verdict.reasons)  # once per episode
        if verdict.verdict == "auth-failed" and (old is None or old.verdict != "auth-failed"):
            self.holds.login_failed(inst)  # a job's specialist too: every retry would fail alike
        if verdict.verdict == "over-memory" and (old is None or old.verdict != "over-memory"):
            log.warning("instance over its memory cap", instance_id=inst.id,
                        reason=verdict.reasons[0])  # fmt: skip
            self.emit("memory.over", instanceId=inst.id, **self.memory.row(inst.id),
                      maxMb=self.settings.instance_memory_max_mb)  # fmt: skip
        if (
            bad
            and self._due(inst.id, verdict)
            and inst.id not in self.recovering
            and not self.busy_with_job(inst.id)
            and verdict.verdict in ("dead", "stuck", "over-memory")  # unresponsive: tmux itself
            and self.holds.account_held(inst.agent) is None  # must come back; a failed login: a
        ):  # restart would fail the same way
            self._start_recovery(inst, verdict)

    def _due(self, instance_id: str, verdict: Verdict) -> bool:
        """Bad for long enough to recover: UNHEALTHY_THRESHOLD sweeps in a row, or for
        memory TCM_MEMORY_OVER_SWEEPS measurements in a row above the cap."""
        if verdict.verdict != "over-memory":
            return self.streak[instance_id] >= self.settings.unhealthy_threshold
        sample = self.memory.samples.get(instance_id)
        return sample is not None and sample.over >= self.settings.memory_over_sweeps

    async def _check(self, inst: Instance, pane: PaneInfo | None) -> Verdict:
        if inst.status == State.EXITED or pane is None or pane.dead:
            how = (
                f"signal {inst.exit_signal}"
                if inst.exit_signal
                else f"exit status {inst.exit_status}"
                if inst.exit_status is not None
                else "its pane is gone"
                if pane is None
                else "its process ended"
            )
            return Verdict("dead", [how])
        now = time.monotonic()
        seen = self._activity.get(inst.id)
        changed = seen is not None and seen != pane.activity  # first sight is no change
        self._activity[inst.id] = pane.activity
        silent_s = now - self.instances.last_event.get(inst.id, 0)
        if inst.status == State.ERRORED:
            return await self._errored(inst, changed)
        prompt, repeated = self.instances.repeats.get(inst.id, ("", 0))
        if repeated >= REPEATS_STUCK and inst.status in (State.BUSY, State.READY):
            return Verdict("stuck", [f"the same prompt was submitted {repeated} times without "
                                     f"a finished turn: {prompt[:60]!r}"])  # fmt: skip
        stall_s = self._stall_s(inst)
        stalled = inst.status == State.BUSY and silent_s > stall_s
        if stalled and self._screen_still(
            inst.id, await self.instances.tmux.capture(inst.id, 40), now, stall_s
        ):
            return Verdict("stuck", [f"busy, no hook event and no screen change for "
                                     f"{int(silent_s)} s"])  # fmt: skip
        if inst.status == State.WAITING and silent_s > self.settings.dialog_grace_ms / 1000:
            return Verdict("stuck", [f"waiting on a dialog for {int(silent_s)} s"])
        if inst.status == State.READY:
            if self._scanned_turn.get(inst.id, 0) != inst.turns:  # a turn ended: read it once
                self._scanned_turn[inst.id] = inst.turns  # (its output, not old scrollback)
                self._problem[inst.id] = match_error(
                    inst.last_result or "", last_lines=200, patterns=self.patterns
                )
            problem = self._problem.get(inst.id)
            if auth_failure(None, problem):
                return Verdict("auth-failed", [str(problem), LOGIN])
            if problem is not None:
                reset = rate_limit_reset(problem)
                if reset is not None:
                    return Verdict("rate-limited", [problem, f"until {reset}"])
                return Verdict("errored", [problem])
        return self._memory_verdict(inst)

    def _memory_verdict(self, inst: Instance) -> Verdict:
        cap = self.settings.instance_memory_max_mb
        sample = self.memory.samples.get(inst.id)
        if cap and sample is not None and sample.over:
            return Verdict("over-memory", [f"uses {sample.rss_mb:.0f} MB, over "
                                           f"TCM_INSTANCE_MEMORY_MAX_MB {cap}"])  # fmt: skip
        return Verdict("healthy", [])

    async def _errored(self, inst: Instance, changed: bool) -> Verdict:
        """A failed turn: the account's login, its rate limit, or another error."""
        reasons = [f"turn failed: {inst.last_error}"]
        if auth_failure(inst.last_error):
            return Verdict("auth-failed", [*reasons, LOGIN])
        if changed or inst.id not in self._reset:
            screen = await self.instances.tmux.capture(inst.id, 40)
            self._reset[inst.id] = rate_limit_reset(screen)
        reset = self._reset[inst.id]
        if inst.last_error == "rate_limit" or reset is not None:
            return Verdict("rate-limited", [*reasons, f"until {reset or 'later'}"])
        return Verdict("errored", reasons)

    def _stall_s(self, inst: Instance) -> float:
        """How long ``inst`` may stay busy in silence: longer while one tool call runs, and
        without end while that call is tcm's own (the daemon answers it: `wait`, a run)."""
        stall_s = (profile(inst.agent).stall_ms or self.settings.stall_ms) / 1000
        tool = self.instances.tool_running.get(inst.id)
        if tool is None:
            return stall_s
        if tool.startswith(TCM_TOOLS):
            return math.inf
        return max(stall_s, self.settings.tool_stall_ms / 1000)

    def _screen_still(self, instance_id: str, screen: str, now: float, stall_s: float) -> bool:
        """True when the screen, spinner and timers aside, has not changed for the stall time."""
        fingerprint = _SPINNER.sub("#", screen)
        old = self._fingerprint.get(instance_id)
        if old is None or old[0] != fingerprint:
            self._fingerprint[instance_id] = (fingerprint, now)
            return False
        return now - old[1] > stall_s

    # -- recovery ---------------------------------------------------------------------------
    def _start_recovery(self, inst: Instance, verdict: Verdict) -> None:
        window = self.settings.recovery_window_ms / 1000
        times = self.recoveries.setdefault(inst.id, deque())
        now = time.time()
        while times and now - times[0] > window:
            times.popleft()
        if len(times) >= self.settings.recovery_max:
            self._give_up(inst, verdict)
            return
        if times and now - times[-1] < (self.settings.health_check_interval_ms / 1000) * 2 ** len(
            times
        ):
            return  # back off: 1, 2, 4 … intervals between attempts
        times.append(now)
        self.recovering.add(inst.id)
        task = asyncio.get_running_loop().create_task(self._recover(inst, verdict))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover(self, inst: Instance, verdict: Verdict) -> None:
        action = "restart"
        try:
            if (
                verdict.verdict == "stuck"
                and inst.id not in self.redelivered
                and inst.status in (State.BUSY, State.WAITING)
            ):
                action = "interrupt"
                await self._interrupt_and_redeliver(inst)
            else:
                await self._restart(inst)
            ok, error = True, None
        except TcmError as exc:
            ok, error = False, exc.message
        finally:
            self.recovering.discard(inst.id)
        self.streak[inst.id] = 0
        if (sample := self.memory.samples.get(inst.id)) is not None:
            sample.over = 0  # the new process is measured afresh
        log.info("recovery", instance_id=inst.id, action=action, ok=ok, error=error)
        self.emit("recovery.result", instanceId=inst.id, action=action, ok=ok, error=error)

    async def _interrupt_and_redeliver(self, inst: Instance) -> None:
        self.redelivered.add(inst.id)
        prompt = self.delivery.last_sent.get(inst.id)
        await self.instances.tmux.send_keys(inst.id, "Escape")
        await self.instances.changes.wait_for(lambda: inst.status != State.BUSY, 5)
        if inst.status == State.BUSY:  # no hook for an Escape: believe the screen
            screen = await self.instances.tmux.capture(inst.id, 30)
            if profile(inst.agent).screen_state(screen) == State.READY:
                self.instances.set_state(inst, State.READY)
        if prompt and inst.status == State.READY:
            await self.delivery.send(inst, prompt, 30)

    async def _restart(self, inst: Instance) -> None:
        self.redelivered.discard(inst.id)
        inst.restarts += 1
        await self.instances.launch(inst, resume=inst.prompts > 0 or inst.turns > 0)
        await self.instances.changes.wait_for(lambda: inst.status != State.STARTING, 60)
        if inst.status not in (State.READY, State.BUSY):
            raise Unavailable(f"{inst.id} did not come back ({inst.status.value})")

    def _give_up(self, inst: Instance, verdict: Verdict) -> None:
        self.given_up.add(inst.id)
        reason = (
            f"gave up after {self.settings.recovery_max} recoveries in "
            f"{self.settings.recovery_window_ms // 1000} s: {', '.join(verdict.reasons)}"
        )
        inst.last_error = reason
        self.checks[inst.id] = Verdict("failed", [reason])
        log.warning("instance failed", instance_id=inst.id, reason=reason)
        self.emit("instance.failed", instanceId=inst.id, parentId=inst.parent_id, reason=reason)
        parent = self.instances.find(inst.parent_id) if inst.parent_id else None
        if parent is not None and self.settings.notify_parent_pane and parent.status == State.READY:
            note = f"[tcm] {inst.id} failed and will not be restarted again: {reason}"
            task = asyncio.get_running_loop().create_task(self._notify(parent, note))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _notify(self, parent: Instance, note: str) -> None:
        with contextlib.suppress(TcmError):
            await self.delivery.send(parent, note, 30)

    # -- the summary ------------------------------------------------------------------------
    def summary(self, visible: Callable[[str], bool] = lambda iid: True) -> dict[str, Any]:
        """The ``health`` tool's answer over the instances ``visible`` accepts."""
        rows = [
            {
                "instanceId": iid,
                "score": v.score,
                "verdict": v.verdict,
                "reasons": v.reasons,
                "lastCheck": v.at,
                "recoveries": len(self.recoveries.get(iid, ())),
                "recovering": iid in self.recovering,
                **self.memory.row(iid),
            }
            for iid, v in sorted(self.checks.items())
            if visible(iid)
            and iid in self.instances.by_id
            and self.instances.by_id[iid].status != State.TERMINATED
        ]
        return {
            "total": len(rows),
            "healthy": sum(r["verdict"] == "healthy" for r in rows),
            "unhealthy": sum(r["verdict"] != "healthy" for r in rows),
            "recovering": sum(bool(r["recovering"]) for r in rows),
            "dead": sum(r["verdict"] == "dead" for r in rows),
            "sweeps": self.sweeps,
            "lastSweepMs": round(self.last_sweep_ms, 2),
            "memorySampleMs": round(self.memory.last_ms, 2),
            "memorySampleCpuMs": round(self.memory.last_cpu_ms, 2),
            "memoryMeasured": self.memory.last_measured,
            "memoryEstimates": self.memory.estimates.describe(),
            "instances": rows,
        }
