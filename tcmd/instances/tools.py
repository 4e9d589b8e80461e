"""Catalogue entries for instances: spawn, send, read, list, terminate, restart, wait, hook,
orphans.

Names and parameters are the original system's; ``wait``, ``hook`` and ``orphans`` are new
beside them. Every handler checks the caller's role first (``authz.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

from tcmd.api import ArgText, Caller, Params, Tool, result_schema
from tcmd.errors import Conflict, InvalidParams, NotFound
from tcmd.instances.agents.registry import profile
from tcmd.instances.authz import check_target, is_descendant, spawn_parent
from tcmd.instances.delivery import Delivery
from tcmd.instances.registry import Instances
from tcmd.instances.rows import Rows
from tcmd.model import IDLE, LIVE, Instance, Role, State, public_row

if TYPE_CHECKING:  # Redis is imported only with REDIS_URL
    from tcmd.instances.forward import Forwarder

RoleName = Literal["executive", "manager", "specialist"]
InstanceId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_]+$")]


class SpawnParams(Params):
    role: RoleName = Field(
        description="executive, manager (needs an executive parent) or "
        "specialist (needs a manager parent)"
    )
    workDir: ArgText = Field(
        min_length=1,
        max_length=4096,
        description="Absolute path of the directory the agent works in",
    )
    context: ArgText = Field(
        max_length=1_000_000,
        description="The instance's assignment; Claude gets it as system prompt",
    )
    parentId: InstanceId | None = Field(
        default=None, description="Parent instance; defaults to the calling instance"
    )
    agent: str = Field(default="claude", description="Agent profile: claude or shell")
    model: ArgText | None = Field(default=None, max_length=200, description="Model for the agent")
    wait: bool = Field(default=True, description="Return when the instance is ready")
    timeoutMs: int = Field(
        default=30_000, ge=0, le=600_000, description="How long to wait for ready"
    )


class SpawnResult(BaseModel):
    instanceId: str
    role: str
    parentId: str | None
    status: str
    tmuxTarget: str
    lastError: str | None = None  # why it ended, when it did not start


class SendParams(Params):
    instanceId: InstanceId
    text: str = Field(min_length=1, description="The prompt, delivered exactly as given")
    timeoutMs: int = Field(
        default=15_000, ge=0, le=600_000, description="How long to wait for the agent to accept it"
    )


class SendResult(BaseModel):
    instanceId: str
    delivered: bool
    # not delivered, yet it left the input box: no hook confirmed it within TCM_ACK_LATE_MS,
    # and the agent may be running it (do not send it again)
    submitted: bool | None = None
    queued: bool
    status: str
    position: int | None = None
    error: str | None = None  # why it was dropped undelivered (its instance was terminated)


class ReadParams(Params):
    instanceId: InstanceId
    lines: int = Field(default=50, ge=1, le=50_000, description="Screen lines to return")


class ReadResult(BaseModel):
    instanceId: str
    status: str
    output: str
    lastResult: str | None
    lastError: str | None
    lastExitCode: int | None


class ListParams(Params):
    role: RoleName | None = None
    parentId: str | None = None
    includeTerminated: bool = False
    allNodes: bool = Field(
        default=False,
        description="Also the instances of every other node sharing this Redis (operator)",
    )


class ListRow(BaseModel):
    instanceId: str
    role: str
    parentId: str | None
    workDir: str
    status: str
    created: float
    stateSince: float | None = None
    agent: str
    memoryMb: float | None = None  # RSS of its process tree at the last health sweep
    pssMb: float | None = None  # PSS of the same, where readable (refreshed less often)


class TerminateParams(Params):
    instanceId: InstanceId
    cascade: bool = False
    force: bool = False


class Dropped(BaseModel):
    instanceId: str
    running: str | None  # the start of the prompt it was working on, if busy
    queued: list[str]  # the start of each prompt that never reached it, in order


class TerminateResult(BaseModel):
    instanceId: str
    terminated: list[str]
    dropped: list[Dropped]


class RestartParams(Params):
    instanceId: InstanceId
    wait: bool = True
    timeoutMs: int = Field(default=30_000, ge=0, le=600_000)


class RestartResult(BaseModel):
    instanceId: str
    status: str
    resumed: bool


class WaitParams(Params):
    instanceIds: list[InstanceId] = Field(min_length=1, max_length=1000)
    until: Literal["idle", "any-idle"] = Field(
        default="idle", description="idle: all of them finished their turn; any-idle: one"
    )
    timeoutMs: int = Field(default=600_000, ge=0, le=86_400_000)


class WaitResult(BaseModel):
    done: bool
    timedOut: bool
    instances: list[dict[str, Any]]


class HookParams(Params):
    payload: dict[str, Any]
    launch: int | None = None


class OrphansParams(Params):
    kill: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default=[], max_length=1000, description="Orphan sessions to kill (all or none)"
    )


class OrphanRow(BaseModel):
    session: str
    pid: int
    dead: bool
    command: str
    instanceStatus: str | None  # "terminated": a terminated instance's; None: no record


class OrphansResult(BaseModel):
    orphans: list[OrphanRow]
    killed: list[str]


class InstanceTools:
    """The instance tools, bound to the registry and the outboxes."""

    def __init__(
        self,
        instances: Instances,
        delivery: Delivery,
        peers: Callable[[], dict[str, dict[str, Any]]] = dict,
    ) -> None:
        self.instances = instances
        self.delivery = delivery
        self.peers = peers  # node -> {"alive", "instances"}: other daemons, from Redis
        self.emit: Callable[..., None] = lambda kind, **fields: None  # the event log's
        self.forwarder: Forwarder | None = None  # calls on other nodes' instances (Redis)
        self.rows = Rows()  # `list` rows, kept until they change; rows.added: more fields
        instances.forget_listeners.append(self.rows.forget)

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "spawn",
                "Start an agent instance (executive, manager or specialist) in tmux; "
                "waits until it is ready unless wait=false.",
                SpawnParams,
                self.spawn,
                result_schema(SpawnResult),
            ),
            Tool(
                "send",
                "Send a prompt to an instance. Delivered when the agent acknowledges it; "
                "queued in order while the instance is busy.",
                SendParams,
                self._anywhere("send", self.send),
                result_schema(SendResult),
            ),
            Tool(
                "read",
                "The last lines of an instance's screen, its status and last result.",
                ReadParams,
                self._anywhere("read", self.read),
                result_schema(ReadResult),
                read_only=True,
            ),
            Tool(
                "list",
                "Instances (yours: your descendants), filtered by role or parent.",
                ListParams,
                self.list,
                result_schema(ListRow, many=True),
                inline=True,
                read_only=True,
            ),
            Tool(
                "terminate",
                "End an instance; cascade=true ends its whole subtree, children first. "
                "The answer names the prompts dropped (running or queued).",
                TerminateParams,
                self._anywhere("terminate", self.terminate),
                result_schema(TerminateResult),
                destructive=True,
            ),
            Tool(
                "restart",
                "Relaunch an instance's agent, resuming its conversation when the agent can.",
                RestartParams,
                self._anywhere("restart", self.restart),
                result_schema(RestartResult),
                destructive=True,
            ),
            Tool(
                "wait",
                "Block until the instances finish their turn (idle: all; any-idle: "
                "the first), or the timeout passes.",
                WaitParams,
                self._anywhere("wait", self.wait),
                result_schema(WaitResult),
                read_only=True,
                long_poll=True,
            ),
            Tool(
                "hook",
                "Report an agent hook event (used by `tcmctl hook`).",
                HookParams,
                self.hook,
                inline=True,
            ),
            Tool(
                "orphans",
                "tmux sessions no live instance owns (left by lost state); kill=[names] "
                "kills those named.",
                OrphansParams,
                self.orphans,
                result_schema(OrphansResult),
                destructive=True,
                operator_only=True,
            ),
        ]

    def _target(
        self, caller: Caller, instance_id: str, action: str, *, itself: bool = False
    ) -> Instance:
        inst = self.instances.get(instance_id)
        check_target(caller, inst, self._find_anywhere, action, itself=itself)
        return inst

    def _find_anywhere(self, instance_id: str) -> Instance | None:
        """This node's instance, else another node's mirrored record (for ancestry)."""
        found = self.instances.find(instance_id)
        if found is None and self.forwarder is not None:
            return self.forwarder.record(instance_id)
        return found

    def _anywhere(self, method: str, handler: Callable[[Caller, Any], Awaitable[Any]]) -> Any:
        """``handler``, or, for an instance of another node, the call forwarded there."""

        async def run(caller: Caller, p: Any) -> Any:
            fwd = self.forwarder
            if fwd is None:
                return await handler(caller, p)
            ids = list(getattr(p, "instanceIds", None) or [p.instanceId])
            away = {i: o for i in ids if self.instances.find(i) is None and (o := fwd.owner(i))}
            if not away:
                return await handler(caller, p)
            if len(away) < len(ids) or len(set(away.values())) > 1:
                raise InvalidParams("instanceIds: wait on the instances of one node at a time")
            node, alive = next(iter(away.values()))
            from tcmd.instances.forward import MARGIN_S  # with Redis only: imported then

            timeout_s = getattr(p, "timeoutMs", 0) / 1000 + MARGIN_S
            return await fwd.call(node, alive, method, p.model_dump(), caller, timeout_s)

        return run

    async def spawn(self, caller: Caller, p: SpawnParams) -> dict[str, Any]:
        role = Role(p.role)
        parent = spawn_parent(caller, role, p.parentId, self.instances.get)
        if parent is not None and parent.status not in LIVE:
            raise Conflict(f"parentId: {parent.id} has {parent.status.value}")
        work_dir = Path(p.workDir)
        if not work_dir.is_absolute():
            raise InvalidParams("workDir: must be an absolute path")
        if not work_dir.is_dir():
            raise InvalidParams(f"workDir: {p.workDir} is not a directory")
        profile(p.agent)  # refuse an unknown agent before allocating an id
        inst = await self.instances.spawn(
            role, parent, work_dir=str(work_dir), agent=p.agent, context=p.context, model=p.model
        )
        if p.wait:
            await self.instances.changes.wait_for(
                lambda: inst.status != State.STARTING, p.timeoutMs / 1000
            )
        return {
            "instanceId": inst.id,
            "role": inst.role.value,
            "parentId": inst.parent_id,
            "status": inst.status.value,
            "tmuxTarget": inst.id,
            "lastError": inst.last_error,
        }

    async def send(self, caller: Caller, p: SendParams) -> dict[str, Any]:
        inst = self._target(caller, p.instanceId, "send to")
        return await self.delivery.send(inst, p.text, p.timeoutMs / 1000)

    async def read(self, caller: Caller, p: ReadParams) -> dict[str, Any]:
        inst = self._target(caller, p.instanceId, "read", itself=True)
        output = ""
        if inst.status != State.TERMINATED and await self.instances.tmux.has_session(inst.id):
            output = await self.instances.tmux.capture(inst.id, p.lines)
        return {
            "instanceId": inst.id,
            "status": inst.status.value,
            "output": output,
            "lastResult": inst.last_result,
            "lastError": inst.last_error,
            "lastExitCode": inst.last_exit_code,
        }

    def list(self, caller: Caller, p: ListParams) -> list[Any]:
        """The rows, each JSON encoded once while it stands (``rows.encoded``); as dicts
        where other nodes' rows join them (``allNodes``)."""
        if p.allNodes and caller.is_operator:
            here = self.instances.node
            rows = [{**r, "node": r["node"] or here, "nodeAlive": True}
                    for r in map(self.rows.of, self._listed(caller, p))]  # fmt: skip
            return rows + other_nodes_rows(self.peers(), here, p)
        return self.rows.encoded(self._listed(caller, p))

    def _listed(self, caller: Caller, p: ListParams) -> Iterable[Instance]:
        """The instances ``list`` shows ``caller``, as ``p`` filters them."""
        skip = None if p.includeTerminated else State.TERMINATED
        role, operator = Role(p.role) if p.role else None, caller.is_operator
        every = self.instances.by_id.values()
        if operator and role is None and not p.parentId:  # an operator's plain list
            return [inst for inst in every if inst.status is not skip]
        return self._filtered(caller, p, every, skip, role)

    def _filtered(
        self, caller: Caller, p: ListParams, every: Iterable[Instance],
        skip: State | None, role: Role | None,
    ) -> Iterator[Instance]:  # fmt: skip
        operator = caller.is_operator
        for inst in every:
            if inst.status is skip:
                continue
            if role is not None and inst.role is not role:
                continue
            if p.parentId and inst.parent_id != p.parentId:
                continue
            if (
                not operator
                and inst.id != caller.instance_id
                and not is_descendant(inst, str(caller.instance_id), self.instances.find)
            ):
                continue  # an instance sees itself and its descendants only
            yield inst

    async def terminate(self, caller: Caller, p: TerminateParams) -> dict[str, Any]:
        inst = self._target(caller, p.instanceId, "terminate")
        below = [c for c in self.instances.subtree(inst) if c.status != State.TERMINATED]
        if below and not p.cascade and not p.force:
            names = ", ".join(c.id for c in below[:10])
            raise Conflict(f"{inst.id} has live descendants ({names}); use cascade or force")
        doomed = [*below, inst] if p.cascade else [inst]
        dropped = [d for t in doomed if (d := self._drop_work(t, caller))]
        if p.cascade:
            ended = await self.instances.terminate_tree(inst)
        else:
            await self.instances.terminate(inst)
            ended = [inst]
        for d in dropped:
            self.emit("instance.dropped", **d)
        return {"instanceId": inst.id, "terminated": [t.id for t in ended], "dropped": dropped}

    def _drop_work(self, inst: Instance, caller: Caller) -> dict[str, Any] | None:
        """Before ``inst`` is terminated: fail its queued prompts, and note in its
        ``lastError`` what it loses (read by ``read`` and ``wait``). None if nothing."""
        if inst.status == State.TERMINATED:
            return None
        by = "the operator" if caller.is_operator else caller.instance_id
        reason = f"dropped: {inst.id} was terminated by {by} before this prompt was delivered"
        queued = self.delivery.drop(inst, reason)
        running = self.delivery.last_sent.get(inst.id) if inst.status == State.BUSY else None
        if running is None and not queued:
            return None
        lost = ["its running prompt"] if running is not None else []
        if queued:
            lost.append(f"{len(queued)} queued prompt{'s' if len(queued) > 1 else ''}")
        inst.last_error = f"terminated by {by}: dropped {' and '.join(lost)}"
        return {
            "instanceId": inst.id,
            "running": None if running is None else _preview(running),
            "queued": [_preview(q) for q in queued],
        }

    async def restart(self, caller: Caller, p: RestartParams) -> dict[str, Any]:
        inst = self._target(caller, p.instanceId, "restart")
        if inst.status == State.TERMINATED:
            raise Conflict(f"{inst.id} is terminated; spawn a new instance")
        inst.restarts += 1
        resume = inst.prompts > 0 or inst.turns > 0
        resumed = await self.instances.launch(inst, resume=resume)
        if p.wait:
            await self.instances.changes.wait_for(
                lambda: inst.status != State.STARTING, p.timeoutMs / 1000
            )
        return {"instanceId": inst.id, "status": inst.status.value, "resumed": resumed}

    async def wait(self, caller: Caller, p: WaitParams) -> dict[str, Any]:
        targets = [
            self._target(caller, i, "wait on", itself=True) for i in dict.fromkeys(p.instanceIds)
        ]

        def idle(inst: Instance) -> bool:
            return inst.status in IDLE and not self.delivery.pending(inst.id)

        combine = all if p.until == "idle" else any
        done = await self.instances.changes.wait_for(
            lambda: combine(idle(i) for i in targets), p.timeoutMs / 1000
        )
        return {
            "done": done,
            "timedOut": not done,
            "instances": [
                {
                    "instanceId": i.id,
                    "status": i.status.value,
                    "idle": idle(i),
                    "lastResult": i.last_result,
                    "lastError": i.last_error,
                }
                for i in targets
            ],
        }

    def hook(self, caller: Caller, p: HookParams) -> dict[str, Any]:
        return self.instances.on_hook(caller, p.payload, p.launch)

    async def orphans(self, caller: Caller, p: OrphansParams) -> dict[str, Any]:
        found = {o.session: o for o in await self.instances.orphans()}
        for name in p.kill:  # every name checked before any is killed
            if name in found:
                continue
            owner = self.instances.find(name)
            if owner is not None and owner.status != State.TERMINATED:
                raise Conflict(f"kill: {name} is the session of a {owner.status.value} "
                               "instance; use terminate")  # fmt: skip
            raise NotFound(f"kill: no orphan session {name!r}")
        killed = list(dict.fromkeys(p.kill))
        for name in killed:
            await self.instances.tmux.kill_session(name)
            del found[name]
        rows = [
            {
                "session": o.session,
                "pid": o.pid,
                "dead": o.dead,
                "command": o.command,
                "instanceStatus": "terminated" if self.instances.find(o.session) else None,
            }
            for o in found.values()
        ]
        return {"orphans": rows, "killed": killed}


def _preview(text: str, limit: int = 80) -> str:
    """The start of a prompt, enough to recognise it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def other_nodes_rows(
    peers: dict[str, dict[str, Any]], here: str | None, p: ListParams
) -> list[dict[str, Any]]:
    """Rows of the other nodes' instances, as their mirrors in Redis last said."""
    rows = []
    for node, peer in sorted(peers.items()):
        if node == here:
            continue
        for raw in peer["instances"]:
            row = public_row(raw.get)
            if row["status"] == State.TERMINATED.value and not p.includeTerminated:
                continue
            if (p.role and row["role"] != p.role) or (p.parentId and row["parentId"] != p.parentId):
                continue
            rows.append({**row, "node": node, "nodeAlive": peer["alive"]})
    return rows
