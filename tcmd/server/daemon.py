"""tcmd's lifecycle: start services in order, serve, shut down in reverse, bounded.

``run()`` is what the console script (``server/main.py``) calls after parsing its
arguments. ``serve()`` = start → run until a signal → shutdown.
The first SIGTERM/SIGINT stops gracefully; a second one forces the exit at once (every
acknowledged change is already in the journal, so nothing acknowledged is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from tcmd.api import OPERATOR, Caller, Catalogue
from tcmd.changes import Changes
from tcmd.config import Settings
from tcmd.errors import ConfigError, Forbidden
from tcmd.health.loop import Health
from tcmd.health.tools import HealthTools
from tcmd.instances.authz import may_see
from tcmd.instances.delivery import Delivery
from tcmd.instances.registry import Instances
from tcmd.instances.tools import InstanceTools
from tcmd.model import Instance, Role, State
from tcmd.nodes import node_id
from tcmd.observe import logs
from tcmd.observe.events import EventLog
from tcmd.observe.metrics import Registry, standard
from tcmd.observe.tools import ObserveTools, subtree_visibility
from tcmd.prices import Prices
from tcmd.server import sdnotify
from tcmd.server.hooks_http import HookListener
from tcmd.server.pidlock import AlreadyRunning, PidLocks, tmux_lock_path
from tcmd.server.rpc import Limits, RpcServer
from tcmd.server.tools import CoreTools
from tcmd.store import StateDamaged
from tcmd.store.jsonfile import JsonFileStore
from tcmd.store.locks import Locks, embedded_locks, redis_locks
from tcmd.tmux import Tmux
from tcmd.usage.ledger import Account, Ledger
from tcmd.usage.tools import UsageTools
from tcmd.usage.transcript import KINDS
from tcmd.work.budget import Budgets
from tcmd.work.dispatcher import Parallel
from tcmd.work.queue.local import LocalJobQueue
from tcmd.work.repolocks import RepoLocks
from tcmd.work.retention import Retention
from tcmd.work.tools import ParallelTools

if TYPE_CHECKING:  # Redis is imported only with REDIS_URL: ~0.1 s off every plain start
    from redis.asyncio import Redis

    from tcmd.instances.forward import Forwarder
    from tcmd.store.mirror import Mirror
    from tcmd.work.shared import SharedWork

log = structlog.get_logger(__name__)
SHUTDOWN_GRACE_S = 5.0
STOP_TASKS_S = 2.0  # how long stop() waits for cancelled background tasks
FORWARDED_TOOLS = frozenset({"send", "read", "terminate", "restart", "wait"})
REDIS_TIMEOUT_S = 2.0  # a Redis that does not answer within this is down (for the mirror)
GC_THRESHOLD = 10_000  # allocations between young collections (CPython default: 700)


class Daemon:
    """Everything one tcmd owns. Constructing it has no side effects; ``start`` does."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.boots = 0
        self.store = JsonFileStore(settings.state_dir / "store", fsync=settings.journal_fsync)
        tmux_conf = settings.state_dir / "tmux.conf"
        self.tmux = Tmux(settings.tmux_socket, tmux_conf, use_control=settings.tmux_control)
        self.instances = Instances(settings, self.store, self.tmux)
        self.delivery = Delivery(self.instances)
        self.queue = LocalJobQueue(self.store)
        self.parallel = Parallel(settings, self.store, self.queue, self.instances, self.delivery)
        self.events = EventLog(self.store, Changes())  # its own signal: wakes only followers
        self.registry = Registry()
        self.metrics = standard(self.registry)
        self.health = Health(
            settings,
            self.instances,
            self.delivery,
            busy_with_job=self.parallel.specialists.__contains__,
            emit=self.emit,
            watchdog_s=sdnotify.watchdog_interval_s(),
            on_sweep=self._after_sweep,
        )
        memory = self.health.memory  # the admission of specialists learns from its samples
        self.parallel.admission.estimate = memory.estimates.of
        self.parallel.admission.measured = memory.samples.__contains__
        self.parallel.account_held = self.health.holds.account_held  # a failed login: tasks
        self.health.holds.released = self.parallel.kick  # wait, and go when it works again
        self.retention = Retention(settings, self.instances, self.parallel, emit=self.emit)
        self.ledger = Ledger(self.store, Prices({}))  # the table is read at start
        self.budgets = Budgets(settings, self.parallel, self.ledger, self.emit)
        self.catalogue = Catalogue()
        self.rpc = RpcServer(
            self.catalogue,
            self.instances.resolve_caller,
            limits=Limits(
                connections=settings.max_connections,
                pending_bytes=settings.max_pending_bytes,
                unsent_bytes=settings.max_unsent_bytes,
                calls=settings.max_calls_per_connection,
            ),
            path=settings.socket_path,
            max_frame=settings.max_frame_bytes,
            identify=self.instances.identify,
        )
        self.hooks = HookListener(
            self.instances.tokens.owner,
            self._http_hook,
            port_file=settings.state_dir / "hook-port",
            max_body=settings.max_frame_bytes,
        )
        self.stopping = asyncio.Event()
        self.node = ""  # this daemon's node id, known at start (it may live in the state dir)
        self.mirror: Mirror | None = None
        self.shared: SharedWork | None = None  # the shared job queue (REDIS_URL set)
        self.forwarder: Forwarder | None = None  # calls on other nodes' instances
        self.locks = PidLocks(settings.socket_path)
        self.lock_service: Locks = embedded_locks()  # Redis's when REDIS_URL is set
        self._lock_client: Redis | None = None
        self.repo_locks = RepoLocks(self.lock_service)  # worktree changes, one at a time
        self.parallel.repo_guard = self.repo_locks.hold
        self._background: set[asyncio.Task[Any]] = set()
        self._signals = 0

    # -- events and metrics -------------------------------------------------------------------
    def emit(self, kind: str, **fields: Any) -> None:
        """One event into the log, and the metrics it moves."""
        self.events.emit(kind, **fields)
        m = self.metrics
        if kind == "recovery.result":
            m.recoveries.inc(action=fields["action"], outcome="ok" if fields["ok"] else "failed")
        elif kind == "job.state" and fields["state"] in ("completed", "failed", "cancelled"):
            m.tasks.inc(outcome=fields["state"])
            if fields.get("durationMs") is not None:
                m.task_duration.observe(fields["durationMs"] / 1000)
            if fields.get("waitMs") is not None:
                m.queue_wait.observe(fields["waitMs"] / 1000)

    def _load_learned(self) -> None:
        """What the store kept of the event log, the usage and the memory estimates."""
        self.events.load()
        self.ledger.prices = Prices.load(self.settings.prices_file)  # checked by Settings
        self.ledger.load()  # before any hook, and before the dispatcher asks the budgets
        self.health.memory.load()  # what instances of each profile took, for admission

    def _observe(self) -> None:
        """Connect the services' signals to the event log and the metrics."""
        self.parallel.emit = self.emit
        self.instances.listeners.append(
            lambda inst, old: self.emit(
                "instance.state", instanceId=inst.id, old=old.value, new=inst.status.value
            )
        )
        self.instances.hook_listeners.append(
            lambda event: self.metrics.hook_events.inc(event=event or "unknown")
        )
        self.instances.turn_listeners.append(self.ledger.on_hook)
        self.instances.forget_listeners.append(self.ledger.forgotten)
        for model, counts in self.ledger.of("all").items():  # counters count since the start
            self._count_usage(None, model, counts)
        self.ledger.listeners.append(self._count_usage)

        def collect() -> None:  # gauges are read when asked for
            counts = self.instances.counts()
            self.metrics.instances.set_all({(state,): n for state, n in counts.items()})
            find = self.instances.find
            self.metrics.health_score.set_all(  # live instances only: the text stays bounded
                {
                    (iid,): verdict.score
                    for iid, verdict in self.health.checks.items()
                    if (inst := find(iid)) is not None and inst.status != State.TERMINATED
                }
            )
            samples = self.health.memory.samples
            mb = 1024 * 1024
            self.metrics.memory.set_all({(iid,): s.rss_mb * mb for iid, s in samples.items()})
            self.metrics.pss.set_all(
                {(iid,): s.pss_mb * mb for iid, s in samples.items() if s.pss_mb is not None}
            )
            estimates = self.health.memory.estimates.describe()
            self.metrics.memory_estimate.set_all(
                {(p,): e["estimateMb"] * mb for p, e in estimates.items()}
            )

        self.registry.before_collect(collect)

    def _after_sweep(self) -> None:
        sdnotify.notify("WATCHDOG=1")  # a stalled sweep stops it: systemd restarts us
        if self.parallel.held or self.parallel.claims_held:  # memory may have freed: look again
            self.parallel.kick()

    def _count_usage(self, acct: Account | None, model: str, counts: list[int]) -> None:
        m = self.metrics
        for kind, n in zip(KINDS, counts, strict=False):
            if n:
                m.tokens.inc(n, kind=kind, model=model)
        if (price := self.ledger.prices.of(model)) is not None:
            m.cost.inc(price.cost(counts), model=model)

    def _http_hook(self, token: str, payload: dict[str, Any], launch: int | None) -> None:
        """A hook event POSTed by an agent: the token alone names it (no peer pid on TCP)."""
        caller = self.instances.resolve_caller(token, None, "hook")
        self.instances.on_hook(caller, payload, launch)

    def _row_extra(self, inst: Instance) -> Mapping[str, Any]:
        """What ``list`` adds to an instance's row: its memory (the same object until the
        next sample) and, for a manager, its parallelExecution figures."""
        memory = self.health.memory.row(inst.id)
        if inst.role is not Role.MANAGER:
            return memory
        return {**memory, "parallelExecution": self.parallel.load_of(inst.id)}

    def counts(self, caller: Caller = OPERATOR) -> dict[str, int]:
        """The operator's: connections, requests and instances by state. An instance's:
        the instances of its own subtree (itself included) by state."""
        if not caller.is_operator:
            find = self.instances.find
            mine = [i for i in self.instances.by_id.values() if may_see(caller, i, find)]
            return {f"instances.{k}": v for k, v in Counter(i.status.value for i in mine).items()}
        counts = {"connections": len(self.rpc.connections), "requests": self.rpc.requests}
        counts["hookRequests"] = self.hooks.requests  # hook events POSTed (TCM_HOOKS=http)
        counts.update({f"instances.{k}": v for k, v in self.instances.counts().items()})
        return counts

    async def start(self) -> None:
        sock = self.settings.socket_path
        self.locks.acquire(sock.with_name(sock.name + ".lock"), f"serving {sock}")
        self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.locks.acquire(
            self.settings.state_dir / "tcmd.lock", f"using {self.settings.state_dir}"
        )
        name = self.settings.tmux_socket  # two daemons on one tmux server see ghosts
        tmux_lock = tmux_lock_path(name)
        self.locks.acquire(
            tmux_lock, f"driving the tmux server {name!r} ({tmux_lock.parent / name})", unlink=True
        )
        if sock.exists() or sock.is_symlink():
            log.info("removing stale socket", socket=str(sock))
            sock.unlink()
        self.node = node_id(self.settings.node_id, self.settings.state_dir)
        self.instances.node = self.node
        self.store.open()
        self.boots = int(self.store.get("meta", "boots") or 0) + 1
        self.store.put("meta", "boots", self.boots)
        if self.settings.redis_url:
            self._with_redis(self.settings.redis_url)
        self._load_learned()
        self._observe()
        if self.settings.hooks == "http":  # before any launch: the agents' settings name it
            await self.hooks.start()
            self.instances.hook_url = self.hooks.url
        await self.instances.start()
        self._spawn(self.instances.watch())
        await self.parallel.start()
        self._spawn(self.parallel.timer())
        if self.shared is not None:
            self._spawn(self.shared.run())
            self._spawn(self.shared.notices())
        self._spawn(self.health.run())  # also pings the systemd watchdog
        self._spawn(self.retention.run())
        instance_tools = InstanceTools(
            self.instances, self.delivery, peers=lambda: self.mirror.peers if self.mirror else {}
        )
        instance_tools.rows.added = self._row_extra
        instance_tools.emit = self.emit
        instance_tools.forwarder = self.forwarder
        if self.forwarder is not None:
            self._spawn(self.forwarder.serve(self._forwarded))
        self.catalogue.extend(CoreTools(self, self.counts).tools())
        self.catalogue.extend(instance_tools.tools())
        self.catalogue.extend(ParallelTools(self.parallel, self.shared).tools())
        self.catalogue.extend(HealthTools(self.health).tools())
        usage_tools = UsageTools(self.ledger)
        usage_tools.extras.append(self.budgets.describe)
        self.catalogue.extend(usage_tools.tools())
        self.catalogue.extend(
            ObserveTools(
                self.events,
                self.registry,
                visible=subtree_visibility(self.instances.find),
                node_snapshots=self._node_metrics if self.mirror else None,
            ).tools()
        )
        await self.rpc.start()
        sdnotify.notify("READY=1")
        log.info(
            "tcmd ready",
            socket=str(self.settings.socket_path),
            pid=os.getpid(),
            boots=self.boots,
            store=self.store.backend,
        )

    async def stop(self) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("tcmd stopping")
        self.rpc.stop_accepting()
        await self.rpc.drain(SHUTDOWN_GRACE_S)
        await self.hooks.stop()
        self.health.cancel_recoveries()
        for task in self._background:
            task.cancel()
        # bounded: a task that swallows its cancellation (seen: the mirror inside a pending
        # redis-py call) must not hold the daemon up; every acknowledged change is on disk
        stuck: set[asyncio.Task[Any]] = set()
        if self._background:
            _, stuck = await asyncio.wait(self._background, timeout=STOP_TASKS_S)
        for task in stuck:
            log.warning("background task did not stop in time", task=task.get_name())
        self.tmux.disconnect()  # the control client; the server and its panes live on
        await self.lock_service.close()
        if self.settings.redis_url:
            from redis.exceptions import RedisError  # imported with REDIS_URL only
        if self._lock_client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._lock_client.aclose()
        if self.mirror is not None:
            await self.mirror.close()
        if self.shared is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.shared.q.client.aclose()
        self.store.close()
        self.locks.release()
        log.info("tcmd stopped")

    def _mirror(self, url: str) -> Mirror:
        """The Redis mirror of this node's state (REDIS_URL set): its own client."""
        from redis.asyncio import Redis

        from tcmd.store.mirror import Mirror

        client = Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        return Mirror(
            client,
            self.store,
            node=self.node,
            prefix=self.settings.redis_prefix,
            outbox_max=self.settings.redis_outbox,
            info=lambda: {"pid": os.getpid(), "socket": str(self.settings.socket_path)},
            metrics=self.registry.snapshot,
        )

    def _with_redis(self, url: str) -> None:
        """REDIS_URL set: the mirror, ids numbered across nodes, the shared job queue and
        the forwarding of calls to other nodes' instances."""
        from redis.asyncio import Redis

        from tcmd.instances.forward import Forwarder
        from tcmd.work.shared import WAIT_S

        self.mirror = self._mirror(url)
        self.instances.number_executive = partial(self.mirror.number, "exec")
        self.instances.number_child = self._number_child
        self._spawn(self.mirror.run())  # never fails: Redis down is a fallback, not an end
        blocking = Redis.from_url(  # for BLPOP/XREAD: its reads may wait that long
            url, socket_timeout=REDIS_TIMEOUT_S + WAIT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self.shared = self._shared(blocking)
        # locks: a client whose socket timeout is shorter than their TTLs (docs/redis.md)
        self._lock_client = Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self.lock_service = redis_locks(self._lock_client, self.settings.redis_prefix)
        self.repo_locks.locks = self.lock_service
        self.retention.locks = self.lock_service
        self.retention.prune = partial(self.shared.q.prune, self.node)
        self.forwarder = Forwarder(
            blocking,
            node=self.node,
            prefix=self.settings.redis_prefix,
            peers=lambda: self.mirror.peers if self.mirror else {},
        )

    def _shared(self, client: Redis) -> SharedWork:
        """The shared job queue, on the client whose reads may block for a BLPOP."""
        from tcmd.work.queue.redis import RedisJobQueue
        from tcmd.work.shared import SharedWork

        queue = RedisJobQueue(
            client, prefix=self.settings.redis_prefix, lease_ms=self.settings.lease_ms
        )
        return SharedWork(self.parallel, queue, self.node)

    async def _forwarded(self, method: str, params: dict[str, Any], caller: Caller) -> Any:
        """A call another node forwarded to one of this node's instances."""
        if method not in FORWARDED_TOOLS:
            raise Forbidden(f"{method} is not forwarded between nodes")
        tool = self.catalogue.get(method)
        result = tool.handler(caller, Catalogue.bind(tool, caller, params))
        return await result if inspect.isawaitable(result) else result

    async def _number_child(self, parent_id: str, above: int) -> int | None:
        """A child number of ``parent_id`` shared by every node (None: Redis is away)."""
        assert self.mirror is not None
        return await self.mirror.number(f"child:{parent_id}", above)

    def _node_metrics(self) -> dict[str, Any]:
        """Every node's last published metrics, this node's as of now."""
        assert self.mirror is not None
        snapshots = {n: p["metrics"] for n, p in self.mirror.peers.items() if p.get("metrics")}
        return {**snapshots, self.node: self.registry.snapshot()}

    def store_health(self) -> dict[str, Any]:
        """The store as ``status`` shows it: the local store, and the Redis mirror if any."""
        health = self.store.health()
        if self.mirror is not None:
            health = {**health, **self.mirror.health()}
        return health

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())
            self.stopping.set()  # a dead service is a dead daemon: let systemd restart us

    # -- signals ------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: forcing exit", signal=sig.name)
            with contextlib.suppress(FileNotFoundError):
                Path(self.settings.socket_path).unlink()
            os._exit(1)
        log.info("signal received: shutting down", signal=sig.name)
        self.stopping.set()


async def serve(settings: Settings) -> int:
    """Run one daemon until a signal; the process exit code."""
    daemon = Daemon(settings)
    try:
        await daemon.start()
    except AlreadyRunning as exc:
        daemon.locks.release()  # the ones this daemon took before it met the other's
        log.error("refusing to start", reason=exc.message)
        return 1
    except StateDamaged as exc:  # nothing served yet: exit as found, no final snapshot
        daemon.locks.release()
        log.error("refusing to start", reason=exc.message, store=str(daemon.store.directory))
        return 3
    # What start-up made (modules, the loaded state) lives as long as the daemon: out of
    # the collector's sight, and the youngest generation collected less often, the cyclic
    # GC costs a fraction of what it did per task (docs/performance.md).
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    try:
        daemon.install_signal_handlers()
        await daemon.stopping.wait()
    finally:
        await daemon.stop()
    return 0


def run() -> int:
    """Read the settings, set up logging, serve until a signal; the exit code."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"tcmd: invalid configuration: {exc.message}\n")
        return 2
    logs.configure(settings.log_level, settings.log_format)
    import uvloop

    code: int = uvloop.run(serve(settings))
    return code
