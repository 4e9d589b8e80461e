"""The instance registry and lifecycle: spawn, launch, state from hooks, exit, adoption.

Each instance is one agent process in its own tmux session (named by its id) on the
private tmux server. The daemon learns its state from hook events (``on_hook``), from
tmux (pane death, via a ``pane-died`` tmux hook and a periodic reconcile) and, only for
what no event reports, from the screen. Prompt delivery lives in ``delivery.py``; the
catalogue entries and the role checks in ``tools.py`` and ``authz.py``; the sessions no
instance owns (orphans, names in use, doomed sessions) in ``sessions.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import os
import re
import secrets
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from tcmd.api import OPERATOR, Caller
from tcmd.changes import Changes
from tcmd.config import Settings
from tcmd.errors import Conflict, Forbidden, NotFound, TcmError
from tcmd.instances import launcher
from tcmd.instances.agents.base import LaunchEnv
from tcmd.instances.agents.registry import profile
from tcmd.instances.deaths import DeathWatch
from tcmd.instances.identity import IN_TMUX, OUTSIDE, VANISHED, Identity, InPane, Who
from tcmd.instances.pacing import Pacer
from tcmd.instances.sessions import Sessions
from tcmd.instances.tokens import Tokens
from tcmd.model import LIVE, Instance, Role, State, check_move, child_id, number_of
from tcmd.store import StateDamaged, StateStore
from tcmd.tmux import NoServer, PaneInfo, SessionExists, Tmux

log = structlog.get_logger(__name__)
_STATUS = operator.attrgetter("status")
NS = "instances"
# Deaths come from the kernel (a pidfd per pane process, instances/deaths.py), so the
# reconcile's one list-panes call is a safety net every 2 s. Without pidfds: tmux 3.3a
# sometimes notices a pane's death only when a client next talks to it (seen: seconds
# late, or never while idle), so the reconcile every half second is both the safety net
# and the nudge, and tmux's pane-died hook covers the prompt cases.
RECONCILE_INTERVAL_S = 2.0 if DeathWatch.available else 0.5
TMUX_CATCH_UP_S = 1.0  # a death the kernel told: how long to wait for tmux's record of it
SCREEN_FALLBACK_AFTER_S = 3.0  # busy with no hook for this long: look at the screen
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")
EARLY_EXIT_S = 10.0  # an agent that ends this soon after its start did not start
EARLY_EXIT_LINES = 5  # of its screen kept as its lastError
Listener = Callable[[Instance, State], None]


class Instances:
    """Every instance the daemon knows, live or not, and the one place their state moves."""

    def __init__(self, settings: Settings, store: StateStore, tmux: Tmux) -> None:
        self.settings = settings
        self.store = store
        self.tmux = tmux
        self.python = sys.executable
        self.by_id: dict[str, Instance] = {}
        self.hook_url: str | None = None  # where agents may POST hook events (TCM_HOOKS=http)
        self.tokens = Tokens()  # live tokens → instance ids, looked up in constant time
        self.last_event: dict[str, float] = {}  # instance id -> monotonic time of last hook
        self.tool_running: dict[str, str] = {}  # instance id -> tool between Pre/PostToolUse
        self.acks: dict[str, int] = {}  # instance id -> prompts acknowledged since boot
        # instance id -> (prompt, times submitted in a row with no finished turn between)
        self.repeats: dict[str, tuple[str, int]] = {}
        self.changes = Changes()
        self.listeners: list[Listener] = []
        self.hook_listeners: list[Callable[[str], None]] = []  # called with each event name
        self.forget_listeners: list[Callable[[str], None]] = []  # called with a forgotten id
        # called with each accepted hook of an instance (the usage ledger reads transcripts)
        self.turn_listeners: list[Callable[[Instance, str, dict[str, Any]], None]] = []
        self._reconcile_soon = asyncio.Event()
        self.deaths = DeathWatch(self._pane_ended)
        # instance id -> monotonic time its pane was last (re)created, inf while that is
        # in flight: a tmux listing taken before then cannot speak about its pane
        self.pane_since: dict[str, float] = {}
        self.screen_checked: dict[str, float] = {}  # last screen fallback look, monotonic
        self.identity = Identity()  # pane processes: who calls, from the kernel
        self.pacer = Pacer(settings.spawn_rate)  # starts of paced agents (Claude) per second
        self.node: str | None = None  # this daemon's node id, recorded in each new instance
        # with Redis: the next executive number across every node (above the local counter);
        # None when Redis cannot say (then the local counter numbers it)
        self.number_executive: Callable[[int], Awaitable[int | None]] | None = None
        # with Redis: the next child number of a parent across every node (a manager's
        # specialists may run on other nodes), above the parent's own counter
        self.number_child: Callable[[str, int], Awaitable[int | None]] | None = None
        self.sessions = Sessions(tmux)  # names in use, orphans, doomed sessions
        self.unsaved: set[str] = set()  # ids whose last change the store refused: retried

    # -- start-up and adoption ------------------------------------------------------------
    async def start(self) -> None:
        """Load instances from the store, make sure tmux runs, re-adopt what still lives."""
        for key, raw in self.store.items(NS).items():
            try:
                inst = Instance.from_json(raw)
            except ValueError as exc:
                message = f"stored instance {NS}/{key} is unusable: {exc}"
                raise StateDamaged(message, data={"ns": NS, "key": key}) from None
            self.by_id[inst.id] = inst
            if inst.status != State.TERMINATED:
                self.tokens.add(inst.token, inst.id)
        await self.ensure_tmux()
        await self.adopt()

    async def ensure_tmux(self) -> None:
        await self.tmux.ensure_server()
        self.identity.tmux_server = int(await self.tmux.run("display-message", "-p", "#{pid}"))
        await self.tmux.run("set-environment", "-g", "TCM_SOCKET", str(self.settings.socket_path))
        if not DeathWatch.available and _SAFE_PATH.match(self.python):
            # tmux tells us at once when an agent's process dies; reconcile is the safety net
            await self.tmux.run(
                "set-hook",
                "-gw",  # pane-died is a window hook: -g alone sets a session hook that never fires
                "pane-died",
                f"run-shell -b '{self.python} -m tcmctl hook TmuxPaneDied'",
            )

    async def adopt(self) -> None:
        """Re-derive the state of every non-terminated instance from tmux (after a restart)."""
        panes = self.sessions.saw(await self.tmux.panes())
        if orphans := [p.session for p in self.sessions.orphans(panes, self.find)]:
            log.warning("orphan tmux sessions: no instance owns them (see `orphans`)",
                        sessions=orphans)  # fmt: skip
        for inst in self.by_id.values():
            if inst.status == State.TERMINATED:
                if inst.id in panes:  # terminated, then tcmd died before its kill: end it now
                    log.info("killing the session of a terminated instance", instance_id=inst.id)
                    await self._kill(inst)
                continue
            pane = panes.get(inst.id)
            if pane is None or pane.dead:
                self._exited(inst, pane)
                continue
            self.identity.pane_started(inst.id, pane.pid)
            self.deaths.watch(inst.id, pane.pid)
            screen = await self._screen(inst)
            seen = profile(inst.agent).screen_state(screen) or State.READY
            inst.pane_id = pane.pane_id
            if inst.status != seen:
                log.info("adopted", instance_id=inst.id, was=inst.status, now=seen)
                self._set(inst, seen, check=False)
        self.changes.fire()

    # -- lookups --------------------------------------------------------------------------
    def get(self, instance_id: str) -> Instance:
        try:
            return self.by_id[instance_id]
        except KeyError:
            raise NotFound(
                f"no instance {instance_id!r}", data={"instanceId": instance_id}
            ) from None

    def find(self, instance_id: str) -> Instance | None:
        return self.by_id.get(instance_id)

    def identify(self, pid: int | None) -> Who | None:
        """What the peer process ``pid`` is to tcm (None: the channel has no peer pid)."""
        return None if pid is None else self.identity.who(pid)

    def resolve_caller(self, token: str | None, who: Who | None, method: str) -> Caller:
        """Who calls: the kernel's word (``who``) first, the token second.

        Inside an instance's pane tree the caller is that instance, with its own token or
        none; another instance's token is refused. Outside every pane a caller is the
        operator, or the instance whose token it presents. A process in tcm's tmux server
        but in no known pane (a tmux job) may only poke ``hook``; a peer that vanished before
        it was identified is refused, unless it sent a hook with a valid token; a channel
        without a peer pid needs a token.
        """
        owner = self.tokens.owner(token)
        if token and owner is None:
            raise Forbidden("unknown or revoked instance token")
        if isinstance(who, InPane):
            if owner is not None and owner != who.instance_id:
                raise Forbidden(
                    f"a process of {who.instance_id} presented the token of another instance"
                )
            inst = self.by_id.get(who.instance_id)
            if inst is None or inst.status == State.TERMINATED:
                raise Forbidden(f"instance {who.instance_id} is terminated")
            return Caller(inst.id, inst.role.value)
        if owner is not None and (who is not VANISHED or method == "hook"):
            # A hook's sender may be gone before tcmd gets to it (a loaded machine): its
            # token still names it. Hooks only report state; every other call needs a peer
            # that is still there to be identified.
            return Caller(owner, self.by_id[owner].role.value)
        if who == OUTSIDE:
            return OPERATOR
        if who == IN_TMUX and method == "hook":
            return OPERATOR  # tmux's pane-died hook: it only makes tcmd look at tmux
        if who == IN_TMUX:
            raise Forbidden("a process in tcm's tmux server outside every instance may not call")
        if who is None:
            raise Forbidden("this channel names no peer process: an instance token is required")
        raise Forbidden("the calling process exited before it could be identified")

    def children(self, inst: Instance) -> list[Instance]:
        return [i for i in self.by_id.values() if i.parent_id == inst.id]

    def subtree(self, inst: Instance) -> Iterator[Instance]:
        """Descendants of ``inst``, children before their parents (terminate order)."""
        for child in self.children(inst):
            yield from self.subtree(child)
            yield child

    def counts(self) -> dict[str, int]:
        """Instances by state, terminated ones too (``status`` asks this on every call:
        counted in C, without an enum's slow ``.value`` per instance)."""
        by_state = Counter(map(_STATUS, self.by_id.values()))
        return {state.value: n for state, n in by_state.items()}

    # -- lifecycle ------------------------------------------------------------------------
    def create(
        self, role: Role, parent: Instance | None, *, at_least: int = 0, **fields: Any
    ) -> Instance:
        """Allocate the next free id under ``parent`` (persisted counter) and register.

        A terminated parent takes no children: a cascade marks a whole subtree terminated
        in one step, so nothing slips in under it while its sessions are killed.
        """
        if parent is not None and parent.status == State.TERMINATED:
            raise Conflict(f"parentId: {parent.id} has terminated", data={"parentId": parent.id})
        inst = Instance(
            id=self._next_id(role, parent, at_least),
            role=role,
            parent_id=parent.id if parent else None,
            token=secrets.token_urlsafe(32),
            session_id=str(uuid.uuid4()),
            node=self.node,
            **fields,
        )
        return self._register(inst)

    def create_under(self, parent_id: str, n: int, **fields: Any) -> Instance:
        """A specialist under a manager of another node, numbered from ``n`` (which that
        parent's shared counter gave): it runs here, its parent lives there."""
        taken = self.sessions.in_use
        while (new_id := f"spec_{number_of(parent_id)}_{n}") in self.by_id or new_id in taken:
            n += 1
        inst = Instance(
            id=new_id,
            role=Role.SPECIALIST,
            parent_id=parent_id,
            token=secrets.token_urlsafe(32),
            session_id=str(uuid.uuid4()),
            node=self.node,
            **fields,
        )
        return self._register(inst)

    def _register(self, inst: Instance) -> Instance:
        self.by_id[inst.id] = inst
        self.tokens.add(inst.token, inst.id)
        try:
            self._save(inst)
        except BaseException:  # not in the store: not at all (its id stays used up)
            del self.by_id[inst.id]
            self.tokens.revoke(inst.token)
            raise
        return inst

    def _next_id(self, role: Role, parent: Instance | None, at_least: int = 0) -> str:
        """The next id from the counter whose name is free: no record, no tmux session.

        After state loss (a state dir moved away, a journal cut short) the counters may
        be behind the sessions that survived in tmux; their names are skipped, not reused.
        ``at_least``: the number Redis gave (executives are numbered across all nodes).
        """
        n = parent.next_child if parent else self.exec_counter() + 1
        n = max(n, at_least)
        taken = self.sessions.in_use
        while (new_id := child_id(parent, role, n)) in self.by_id or new_id in taken:
            log.warning("id skipped: its name is in use", instance_id=new_id)
            n += 1
        if parent is None:
            self.store.put("counters", "exec", n)
        else:
            parent.next_child = n + 1
            self._save(parent)
        return new_id

    def exec_counter(self) -> int:
        return int(self.store.get("counters", "exec") or 0)

    async def spawn(self, role: Role, parent: Instance | None, **fields: Any) -> Instance:
        """Create and launch a new instance; on any failure it ends terminated, no duplicate.

        A failed spawn is rolled back whatever failed (tmux, the store, a cancellation):
        the record is terminated with the reason in ``last_error`` and its session killed,
        so a caller that retries gets exactly one new instance. The error it gets carries
        ``instanceId`` (the id rolled back) in its data.
        """
        profile(fields.get("agent", "claude")).check(self.settings)  # before any record or file
        at_least = 0
        if parent is None and self.number_executive is not None:
            at_least = await self.number_executive(self.exec_counter()) or 0
        elif parent is not None and self.number_child is not None:
            at_least = await self.number_child(parent.id, parent.next_child - 1) or 0
        inst = self.create(role, parent, at_least=at_least, **fields)
        try:
            await self.launch(inst, resume=False)
        except BaseException as exc:
            await self._roll_back(inst, exc)
            if isinstance(exc, SessionExists):  # raced by someone else's session: not ours
                raise Conflict(
                    f"{inst.id}: a tmux session of that name exists that tcm does not know "
                    "(see `orphans`); a retry takes the next free id",
                    data={"instanceId": inst.id},
                ) from exc
            if isinstance(exc, TcmError):
                exc.data = {**(exc.data or {}), "instanceId": inst.id}
            raise
        if inst.status == State.TERMINATED:  # a cascade got it while its pane was made
            await self._kill(inst)
            raise Conflict(
                f"{inst.id} was terminated while it started", data={"instanceId": inst.id}
            )
        return inst

    async def _roll_back(self, inst: Instance, exc: BaseException) -> None:
        reason = (
            exc.message if isinstance(exc, TcmError)
            else "cancelled" if isinstance(exc, asyncio.CancelledError)
            else repr(exc)
        )  # fmt: skip
        log.warning("spawn failed: rolled back", instance_id=inst.id, error=reason)
        self._end(inst, f"spawn failed: {reason}")
        if isinstance(exc, SessionExists):
            self.sessions.in_use.add(inst.id)  # someone else's: never kill it, never take it
        else:
            await self._kill(inst)

    async def launch(self, inst: Instance, *, resume: bool) -> bool:
        """Start (or restart in place) the agent process of ``inst``; whether it resumed.
        A paced profile's start first waits for its slot (TCM_SPAWN_RATE)."""
        prof = profile(inst.agent)
        if prof.paced:
            await self._paced(inst)
        env = self._agent_env(inst, launch=inst.launched + 1)
        launch_env = LaunchEnv(
            self.settings, self.instance_dir(inst), self.python, env, hook_url=self.hook_url
        )
        spec = prof.launch(inst, launch_env, resume=resume)
        # The pane runs the agent under tcm's launcher, which starts it only once handed its
        # token (never in argv or tmux) after its pid is recorded here (instances/launcher.py).
        secret = {k: v for k, v in spec.env.items() if k == "TCM_INSTANCE_TOKEN"}
        pane_env = {k: v for k, v in spec.env.items() if k not in secret}
        handoff = launcher.Handoff()
        nice = launcher.niceness_for(self.settings.agent_nice)
        lower = ["--nice", str(nice)] if nice is not None else []
        argv = [*launcher.command_line(self.python), handoff.address, *lower, "--", *spec.argv]
        cwd = Path(inst.work_dir)
        if inst.status != State.STARTING:
            self._set(inst, State.STARTING)
        self.pane_since[inst.id] = float("inf")
        self.deaths.forget(inst.id)
        inst.launched += 1  # before the process exists: its first hook names this launch
        try:
            try:
                pane = await self._start_pane(inst, argv, cwd, pane_env)
            except NoServer:
                await self.ensure_tmux()
                pane = await self._start_pane(inst, argv, cwd, pane_env)
            finally:
                self.pane_since[inst.id] = time.monotonic()
            self.identity.pane_started(inst.id, pane.pid)
        except BaseException:
            handoff.close()  # the launcher, if any, reads nothing and does not start the agent
            raise
        self.deaths.watch(inst.id, pane.pid, handoff)
        handoff.hand_over(secret)
        inst.pane_id = pane.pane_id
        inst.exit_status = inst.exit_signal = None
        self._save(inst)
        log.info(
            "launched",
            instance_id=inst.id,
            agent=inst.agent,
            resume=spec.resumed,
            pane=pane.pane_id,
        )
        return spec.resumed

    async def _paced(self, inst: Instance) -> None:
        """Wait for the start's slot (TCM_SPAWN_RATE). Meanwhile the instance is starting
        (a restart too: its old pane is gone), and a listing must not take the pane it has
        not got yet for one that vanished."""
        if inst.status not in (State.STARTING, State.TERMINATED):
            self._set(inst, State.STARTING)
        self.pane_since[inst.id] = float("inf")
        try:
            await self.pacer.wait()
        except BaseException:
            self.pane_since[inst.id] = time.monotonic()
            raise
        if inst.status == State.TERMINATED:
            self.pane_since[inst.id] = time.monotonic()
            raise Conflict(f"{inst.id} was terminated while it waited for its turn to start",
                           data={"instanceId": inst.id})  # fmt: skip

    async def _start_pane(
        self, inst: Instance, argv: list[str], cwd: Path, env: dict[str, str]
    ) -> PaneInfo:
        if inst.launched > 1 and await self.tmux.has_session(inst.id):
            return await self.tmux.respawn(inst.id, argv, cwd=cwd, env=env)
        return await self.tmux.new_session(inst.id, argv, cwd=cwd, env=env)

    def _agent_env(self, inst: Instance, *, launch: int) -> dict[str, str]:
        bin_dir = str(Path(self.python).parent)
        path = os.environ.get("PATH", "")
        return {
            "TCM_INSTANCE_ID": inst.id,
            "TCM_INSTANCE_TOKEN": inst.token,
            "TCM_INSTANCE_LAUNCH": str(launch),
            "TCM_SOCKET": str(self.settings.socket_path),
            "PATH": path if bin_dir in path.split(os.pathsep) else f"{bin_dir}{os.pathsep}{path}",
        }

    async def terminate(self, inst: Instance) -> None:
        """Mark it terminated (final; its token is revoked), then kill its tmux session."""
        self._end(inst)
        await self._kill(inst)

    async def terminate_tree(self, root: Instance) -> list[Instance]:
        """Terminate ``root`` and all its descendants; those ended, children first.

        Every one is marked terminated before the first await, so no spawn can add a child
        anywhere in the tree meanwhile (``create`` refuses a terminated parent); the loop
        re-reads the tree until nothing in it lives. Then the sessions are killed.
        """
        ended: list[Instance] = []
        while below := [i for i in self.subtree(root) if i.status != State.TERMINATED]:
            for inst in below:
                self._end(inst)
            ended += below
        if root.status != State.TERMINATED:
            self._end(root)
        ended.append(root)
        await asyncio.gather(*(self._kill(inst) for inst in ended))
        return ended

    def _end(self, inst: Instance, reason: str | None = None) -> None:
        """Terminated now, in memory first: its token revoked, its hooks and new children
        refused. A store that refuses the record gets it again on the next reconcile."""
        self.identity.pane_gone(inst.id)
        self.deaths.forget(inst.id)
        self.tokens.revoke(inst.token)
        if inst.status == State.TERMINATED:
            return
        if reason is not None:
            inst.last_error = reason
        try:
            self._set(inst, State.TERMINATED)
        except TcmError as exc:
            self.unsaved.add(inst.id)
            log.warning("terminated record not stored yet", instance_id=inst.id, error=exc.message)

    async def _kill(self, inst: Instance) -> None:
        launching = self.pane_since.get(inst.id) == float("inf")  # its pane is being made
        await self.sessions.kill(inst.id, launching=launching)

    def forget(self, inst: Instance) -> None:
        """Drop a terminated instance for good (retention): memory, store record, files."""
        if inst.status != State.TERMINATED:
            raise Conflict(f"instance {inst.id} is {inst.status.value}: only a terminated one")
        self.store.delete(NS, inst.id)
        del self.by_id[inst.id]
        for per_instance in (self.last_event, self.acks, self.repeats, self.pane_since,
                             self.tool_running, self.screen_checked):  # fmt: skip
            per_instance.pop(inst.id, None)
        self.unsaved.discard(inst.id)
        shutil.rmtree(self.instance_dir(inst), ignore_errors=True)
        for forgot in self.forget_listeners:
            forgot(inst.id)

    # -- state ----------------------------------------------------------------------------
    def set_state(self, inst: Instance, new: State) -> None:
        """Move ``inst`` to ``new`` (checked), persist, tell the listeners."""
        self._set(inst, new)

    def _set(self, inst: Instance, new: State, *, check: bool = True) -> None:
        old = inst.status
        if check:
            check_move(old, new)
        inst.status = new
        inst.updated = time.time()
        try:
            self._save(inst)
        finally:  # memory moved even if the store refused: the listeners must know
            if old != new:
                log.debug("state", instance_id=inst.id, old=old, new=new)
                for listener in self.listeners:
                    listener(inst, old)
            self.changes.fire(inst.id)

    def _save(self, inst: Instance) -> None:
        # the dataclass itself: orjson encodes it as to_json() would, without asdict's copy
        self.store.put(NS, inst.id, inst)

    def instance_dir(self, inst: Instance) -> Path:
        """Where the instance's files live, if its agent has any (Claude's settings); made
        by the profile that writes them."""
        return self.settings.state_dir / "instances" / inst.id

    def _exited(self, inst: Instance, pane: PaneInfo | None) -> None:
        """``pane``: tmux's record of the dead pane, else what the launcher told (if any)."""
        if pane is not None:
            inst.exit_status, inst.exit_signal = pane.dead_status, pane.dead_signal
        else:
            inst.exit_status, inst.exit_signal = self.deaths.exits.get(inst.id, (None, None))
        if inst.status not in (State.EXITED, State.TERMINATED):
            log.info(
                "exited", instance_id=inst.id, status=inst.exit_status, signal=inst.exit_signal
            )
            self._set(inst, State.EXITED, check=False)

    def on_hook(
        self, caller: Caller, payload: dict[str, Any], launch: int | None = None
    ) -> dict[str, Any]:
        """Map one hook event of an instance to its state (see docs/architecture.md).

        ``launch`` says which start of the agent's process sent it: events of a process
        that was since replaced (a restart) are ignored.
        """
        event = str(payload.get("hook_event_name", ""))
        for listener in self.hook_listeners:
            listener(event)
        if event == "TmuxPaneDied":
            # from tmux's pane-died hook (run with the dead session's environment, so it
            # usually carries that instance's token): look at tmux now, trust tmux only
            log.debug("tmux reports a dead pane", instance_id=caller.instance_id)
            self._reconcile_soon.set()
            return {"accepted": True}
        if caller.is_operator:
            return {"accepted": False}
        assert caller.instance_id is not None
        inst = self.by_id[caller.instance_id]
        self.last_event[inst.id] = time.monotonic()
        if inst.status == State.TERMINATED or (launch is not None and launch != inst.launched):
            return {"accepted": False}
        if event == "PreToolUse":
            self.tool_running[inst.id] = str(payload.get("tool_name", ""))
        elif event not in ("Notification", "PermissionRequest"):  # a dialog: still in the tool
            self.tool_running.pop(inst.id, None)  # (of parallel calls, the first end ends it)
        new = self._apply(inst, event, payload)
        for heard in self.turn_listeners:
            try:
                heard(inst, event, payload)
            except Exception:  # a listener's bug must not cost the agent its state
                log.exception("hook listener failed", instance_id=inst.id, hook=event)
        if new is not None and new != inst.status:
            try:
                self._set(inst, new)
            except Conflict:
                log.warning("hook ignored", instance_id=inst.id, hook=event, status=inst.status)
                return {"accepted": False}
        else:
            self._save(inst)
            self.changes.fire(inst.id)
        return {"accepted": True, "status": inst.status.value}

    def _apply(self, inst: Instance, event: str, p: dict[str, Any]) -> State | None:
        """Record what ``event`` says about ``inst``; the state it implies, if any."""
        if event == "SessionStart":
            if isinstance(p.get("session_id"), str) and p["session_id"]:
                inst.session_id = p["session_id"]  # /clear and compaction start new sessions
            return State.READY
        if event == "UserPromptSubmit":
            self.acks[inst.id] = self.acks.get(inst.id, 0) + 1
            inst.prompts += 1
            prompt = str(p.get("prompt", ""))
            last, count = self.repeats.get(inst.id, ("", 0))
            self.repeats[inst.id] = (prompt, count + 1 if prompt == last else 1)
            return State.BUSY
        if event in ("PreToolUse", "PostToolUse"):
            return State.BUSY
        if event in ("Stop", "StopFailure"):
            self.repeats.pop(inst.id, None)  # a turn finished: that was progress
        if event == "Stop":
            inst.turns += 1
            inst.last_result = _text(p.get("last_assistant_message"))
            code = p.get("exit_status")
            inst.last_exit_code = code if isinstance(code, int) else None
            inst.last_error = None
            return State.READY
        if event == "StopFailure":
            inst.turns += 1
            inst.last_error = _text(p.get("error")) or "error"
            inst.last_result = _text(p.get("last_assistant_message"))
            return State.ERRORED
        if event == "Notification":
            kind = p.get("notification_type")
            return None if kind == "idle_prompt" else State.WAITING
        if event == "PermissionRequest":
            return State.WAITING
        if event == "SessionEnd":
            return State.EXITED
        return None

    # -- the watch over tmux ----------------------------------------------------------------
    async def watch(self) -> None:
        """Reconcile with tmux every few seconds, or at once when tmux reports a dead pane."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONCILE_INTERVAL_S):
                    await self._reconcile_soon.wait()
            self._reconcile_soon.clear()
            try:
                if not self.tmux.connected and await self.tmux.connect():
                    log.info("tmux control client attached again")
                await self.reconcile()
            except TcmError as exc:
                log.warning("reconcile failed", error=exc.message)
            except Exception:  # a bug here must not stop the watch over tmux
                log.exception("reconcile crashed")

    async def _screen(self, inst: Instance) -> str:
        """The bottom of its screen; "" when its session vanished meanwhile."""
        try:
            return await self.tmux.capture(inst.id, 30)
        except TcmError:
            return ""

    async def reconcile(self) -> None:
        """One batched tmux query: dead or vanished panes → exited; busy screens re-read;
        sessions of terminated instances killed; records the store refused written again."""
        self._save_unsaved()
        live = [i for i in self.by_id.values() if i.status in LIVE]
        if not live and not self.sessions.doomed:
            return
        listed_at = time.monotonic()
        try:
            panes = self.sessions.saw(await self.tmux.panes())
        except NoServer:
            panes = self.sessions.saw([])
        await self.sessions.bury(panes, listed_at, self.pane_since)
        now = time.monotonic()
        for inst in live:
            if self.pane_since.get(inst.id, 0) >= listed_at or inst.status not in LIVE:
                continue  # launched (or changed) while we listed: our listing is stale for it
            pane = panes.get(inst.id)
            told = self.deaths.dead.get(inst.id)  # the kernel says its pane process ended
            if pane is None or pane.dead or told is not None:
                early = now - self.pane_since.get(inst.id, 0) < EARLY_EXIT_S
                untold = told is not None and inst.id not in self.deaths.exits
                waits = early or untold  # for its last words on tmux's screen, or its status
                if pane is not None and not pane.dead and waits and not self._tmux_late(inst):
                    continue
                if pane is not None and early:
                    await self._early_exit(inst, pane, now - self.pane_since[inst.id])
                self._exited(inst, pane if pane is not None and pane.dead else None)
            elif (
                inst.status == State.BUSY
                and now - self.last_event.get(inst.id, 0) > SCREEN_FALLBACK_AFTER_S
                and now - self.screen_checked.get(inst.id, 0) > SCREEN_FALLBACK_AFTER_S
            ):
                # an Escape interrupt fires no Stop: the screen is the only witness
                self.screen_checked[inst.id] = now
                screen = await self._screen(inst)
                if profile(inst.agent).screen_state(screen) == State.READY:
                    log.info("screen shows ready", instance_id=inst.id)
                    self._set(inst, State.READY)

    def _pane_ended(self, instance_id: str) -> None:
        """The kernel says the pane process of ``instance_id`` ended: exited now, with the
        status its launcher recorded; an early death waits for tmux's screen (its last
        words become ``last_error``), which the reconcile reads."""
        inst = self.by_id.get(instance_id)
        since = self.pane_since.get(instance_id, 0.0)
        early = time.monotonic() - since < EARLY_EXIT_S
        if inst is None or inst.status not in LIVE or early or instance_id not in self.deaths.exits:
            self._reconcile_soon.set()  # (not told: adopted after a restart, tmux knows how)
            return
        self._exited(inst, None)

    def _tmux_late(self, inst: Instance) -> bool:
        """A death the kernel told that tmux has not recorded yet: ask again shortly, and
        after ``TMUX_CATCH_UP_S`` stop waiting for tmux (True)."""
        if time.monotonic() - self.deaths.dead.get(inst.id, 0.0) >= TMUX_CATCH_UP_S:
            return True
        asyncio.get_running_loop().call_later(0.05, self._reconcile_soon.set)
        return False

    async def _early_exit(self, inst: Instance, pane: PaneInfo, after_s: float) -> None:
        """An agent that ended within its first seconds did not start: the last lines it
        wrote (a missing program, a bad flag) become its ``last_error``."""
        try:  # the whole pane: what it wrote sits at the top of a tall, otherwise empty screen
            screen = await self.tmux.capture(inst.id, 1000)
        except TcmError:
            screen = ""
        lines = [
            ln.rstrip()
            for ln in screen.splitlines()
            if ln.strip() and not ln.startswith("Pane is dead")  # tmux's own remain-on-exit line
        ]
        how = f"signal {pane.dead_signal}" if pane.dead_signal else f"status {pane.dead_status}"
        inst.last_error = f"exited ({how}) {after_s:.1f}s after its start: " + (
            " ⏎ ".join(lines[-EARLY_EXIT_LINES:]) or "(no output)"
        )

    def _save_unsaved(self) -> None:
        for instance_id in list(self.unsaved):
            inst = self.by_id.get(instance_id)
            if inst is not None:
                try:
                    self._save(inst)
                except TcmError:
                    return  # the store still refuses: next time
            self.unsaved.discard(instance_id)

    async def orphans(self) -> list[PaneInfo]:
        """Sessions on the private tmux server that no live instance owns, one pane each."""
        return self.sessions.orphans(self.sessions.saw(await self.tmux.panes()), self.find)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
