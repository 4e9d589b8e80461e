"""RedisJobQueue: the job queue shared by every daemon (node) on one Redis.

Every state transition is one Lua script (redis_scripts.py), so two nodes never see a
half-made move, and Redis ``TIME`` is the only clock for due times and leases. A job is a
hash; ready jobs wait in one sorted set per manager plus the pool's, scored by priority
then ``seq``; retries wait in a sorted set by due time and active jobs in one by lease
deadline. A claim promotes due retries, reaps expired leases, then pops the best of the
manager's and the pool's jobs and leases each with a fresh fencing token. Idle nodes block
on the wake list (BLPOP), which every enqueue and reap pushes to. The key layout is in
docs/redis.md ("Job queue").
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from tcmd.errors import NotFound, TcmError
from tcmd.work.queue import redis_scripts as lua
from tcmd.work.queue.base import Job, JobState, Lease, Priority, RetryPolicy, StaleLease

DEFAULT_PREFIX = "tcm:"
DEFAULT_LEASE_MS = 30_000
NOTICES_MAX = 10_000  # job ids waiting for their origin node to read them
BATCH = 500  # jobs per ENQUEUE / ACK script call
QUEUE_TAG = "{q}"  # every key of the queue shares this hash tag: one cluster slot
_OPTIONAL = (
    "next_retry_at", "last_error", "result", "instance_id",
    "started_at", "finished_at", "duration_ms",
)  # fmt: skip
_FLOATS = ("next_retry_at", "queued_at", "started_at", "finished_at", "duration_ms")
_STRINGS = ("manager_id", "last_error", "result", "instance_id")
_INTS = ("seq", "attempts", "reruns")


class RedisJobQueue:
    """The AsyncJobQueue over one ``redis.asyncio.Redis`` client. Construction only
    registers the scripts; nothing is sent before the first call."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease_ms: int = DEFAULT_LEASE_MS,
        rng: random.Random | None = None,
    ) -> None:
        self._redis = client
        self.client = client
        self.base = f"{prefix}{QUEUE_TAG}:"
        self.lease_ms = lease_ms
        self._rng = rng if rng is not None else random.Random()  # noqa: S311  # jitter, not secrets
        self._keys = [self.base + "jobs"]
        self._enqueue = client.register_script(lua.ENQUEUE)
        self._claim = client.register_script(lua.CLAIM)
        self._extend = client.register_script(lua.EXTEND)
        self._ack = client.register_script(lua.ACK)
        self._fail = client.register_script(lua.FAIL)
        self._finish = client.register_script(lua.FINISH)
        self._reap = client.register_script(lua.REAP)
        self._next_due = client.register_script(lua.NEXT_DUE)
        self._stats = client.register_script(lua.STATS)
        self._ids_above = client.register_script(lua.IDS_ABOVE)
        self._prune = client.register_script(lua.PRUNE)

    async def new_job_id(self) -> str:
        """A fresh ``job_<n>`` from INCR: unique across every node on this Redis."""
        return f"job_{await self._redis.incr(self.base + 'ids:job')}"

    async def new_job_ids(self, n: int, above: int = 0) -> list[str]:
        """``n`` fresh ids in one INCRBY (a run's tasks, a batch), all numbered above
        ``above`` (the caller's own ids: a Redis that lost its data starts again at 1)."""
        if above:
            last = int(await self._ids_above(self._keys, [self.base, n, above]))
        else:
            last = await self._redis.incrby(self.base + "ids:job", n)
        return [f"job_{i}" for i in range(last - n + 1, last + 1)]

    async def enqueue(self, job: Job) -> Job:
        """Add ``job`` as queued; a known job id changes nothing (the stored job returned)."""
        return (await self.enqueue_many([job]))[0]

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[Job]:
        """``enqueue`` for many jobs: one script call per ``BATCH`` jobs."""
        out = []
        for at in range(0, len(jobs), BATCH):
            chunk = jobs[at : at + BATCH]
            args: list[str | int] = [self.base]
            for job in chunk:
                fields = _fields(job)
                args += [job.job_id, job.manager_id or "", int(job.priority), len(fields), *fields]
            replies = await self._enqueue(self._keys, args)
            for job, reply in zip(chunk, replies, strict=True):
                if not reply:  # it existed: what is stored wins
                    out.append(await self.get(job.job_id))
                    continue
                job.seq, job.state, job.queued_at = int(reply[0]), JobState.QUEUED, float(reply[1])
                out.append(job)
        return out

    async def claim(
        self, manager_id: str, node_id: str, n: int = 1, limit: int | None = None
    ) -> list[Lease]:
        """Up to ``n`` best ready jobs of ``manager_id`` or the pool, leased to ``node_id``,
        never more than the room left under the manager's limit on every node (``limit``,
        stored for the other nodes; None: the limit its own node stored, if any)."""
        args: list[str | int] = [self.base, manager_id, node_id, n, self.lease_ms]
        args.append("" if limit is None else limit)
        rows = await self._claim(self._keys, args)
        leases = []
        for row in rows:
            raw = _moved(row)
            leases.append(Lease(_job(raw), int(raw["token"]), int(raw["lease_until"]) / 1000))
        return leases

    async def extend(self, job_id: str, token: int) -> float:
        """Renew the lease for ``lease_ms`` from now; the new deadline (unix seconds)."""
        reply = await self._extend(self._keys, [self.base, job_id, token, self.lease_ms])
        return int(_checked(reply, job_id, token)[0]) / 1000

    async def ack(
        self, job_id: str, token: int, result: str | None, extra: dict[str, Any] | None = None
    ) -> Job:
        """active → completed by the lease holder; a stale holder gets StaleLease and the
        stored result stays."""
        [reply] = await self._ack(
            self._keys, [self.base, "1", *_ack_args(job_id, token, result, extra)]
        )
        return _job(_moved(_checked(reply, job_id, token)[0]))

    async def ack_many(
        self, acks: Iterable[tuple[str, int, str | None, dict[str, Any] | None]]
    ) -> list[TcmError | None]:
        """``ack`` for many jobs, one script call per ``BATCH``: per ack, None (completed)
        or the error that refused it (StaleLease, NotFound)."""
        acks = list(acks)
        outcomes: list[TcmError | None] = []
        for at in range(0, len(acks), BATCH):
            chunk = acks[at : at + BATCH]
            args: list[str | int] = [self.base, "0"]
            for ack in chunk:
                args += _ack_args(*ack)
            replies = await self._ack(self._keys, args)
            for (job_id, token, *_), reply in zip(chunk, replies, strict=True):
                try:
                    _checked(reply, job_id, token)
                except TcmError as refused:
                    outcomes.append(refused)
                else:
                    outcomes.append(None)
        return outcomes

    async def fail(self, job_id: str, token: int, error: str) -> Job:
        """active → retrying after backoff.retry_delay_s's full-jitter delay (computed in
        the script from this jitter draw and Redis TIME), or failed when out of attempts."""
        u = self._rng.uniform(0.0, 1.0)
        reply = await self._fail(self._keys, [self.base, job_id, token, error, repr(u)])
        return _job(_pairs(_checked(reply, job_id, token)[0]))

    async def cancel(self, job_id: str) -> Job:
        """queued/retrying/active → cancelled; a final job is returned unchanged."""
        return await self._end(job_id, JobState.CANCELLED, "")

    async def give_up(self, job_id: str, error: str) -> Job:
        """queued/retrying/active → failed with ``error`` at once; final: unchanged."""
        return await self._end(job_id, JobState.FAILED, error)

    async def reap(self) -> list[str]:
        """Active jobs whose lease ran out → queued (reruns + 1), waking idle nodes."""
        return [_text(i) for i in await self._reap(self._keys, [self.base])]

    async def wait(self, timeout_s: float) -> bool:
        """Block on the wake list until a job may be ready (True) or ``timeout_s`` (False).
        Never longer than until the next retry falls due or the next lease runs out."""
        due_ms = int(await self._next_due(self._keys, [self.base]))
        if due_ms == 0:
            return True
        if due_ms > 0:
            timeout_s = min(timeout_s, due_ms / 1000)
        # BLPOP's timeout 0 means forever: wait at least a millisecond
        popped = await self._redis.blpop([self.base + "wake"], timeout=max(timeout_s, 0.001))
        return popped is not None or (due_ms >= 0 and timeout_s * 1000 >= due_ms)

    async def get(self, job_id: str) -> Job:
        """The job (NotFound when unknown)."""
        raw = await self._redis.hgetall(self.base + "job:" + job_id)
        if not raw:
            raise NotFound(f"unknown job {job_id}", data={"jobId": job_id})
        return _job({_text(k): v for k, v in raw.items()})

    async def jobs(
        self,
        *,
        state: JobState | None = None,
        run_id: str | None = None,
        manager_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs, oldest (lowest seq) first; a None filter matches every job."""
        ids = [_text(i) for i in await self._redis.zrange(self.base + "jobs", 0, -1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.base + "job:" + job_id)
            rows = await pipe.execute()
        out = []
        for row in rows:
            if not row:  # forgotten meanwhile
                continue
            job = _job({_text(k): v for k, v in row.items()})
            if (
                (state is None or job.state == state)
                and (run_id is None or job.run_id == run_id)
                and (manager_id is None or job.manager_id == manager_id)
            ):
                out.append(job)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def waiting(self, manager_id: str | None) -> int:
        """Queued + retrying jobs assigned to ``manager_id`` (None: the pool); O(1)."""
        n = await self._redis.hget(self.base + "stats", f"wait:{manager_id or ''}")
        return int(n or 0)

    async def stats(self) -> dict[str, Any]:
        """The figures of LocalJobQueue.stats, over every node's jobs."""
        counts, waits, runs, done, limits = await self._stats(self._keys, [self.base])
        c = {k: int(v) for k, v in _pairs(counts).items()}
        return {
            "byState": {s.value: c.get(f"state:{s.value}", 0) for s in JobState},
            "byPriority": {p.label: c.get(f"prio:{int(p)}", 0) for p in Priority},
            "avgWaitMs": _mean(waits),
            "avgRunMs": _mean(runs),
            "throughputPerMin": int(done),
            "limits": {k: int(v) for k, v in _pairs(limits).items()},
        }

    async def reap_and_limits(self) -> tuple[list[str], dict[str, int]]:
        """``reap()`` then ``limits()``, in one round trip (a claim round starts with both)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._reap(self._keys, [self.base], client=pipe)
            pipe.hgetall(self.base + "limits")
            expired, raw = await pipe.execute()
        return [_text(i) for i in expired], {_text(k): int(v) for k, v in raw.items()}

    async def limits(self) -> dict[str, int]:
        """``active:<manager>`` (attempts running on every node) and ``max:<manager>``."""
        raw = await self._redis.hgetall(self.base + "limits")
        return {_text(k): int(v) for k, v in raw.items()}

    async def set_limits(self, limits: dict[str, int]) -> None:
        """Store managers' limits (``max:<manager>``), which every node's claims obey."""
        if limits:
            mapping = {f"max:{m}": n for m, n in limits.items()}
            await self._redis.hset(self.base + "limits", mapping=mapping)  # type: ignore[arg-type]

    async def prune(self, node: str, run_id: str, job_ids: Sequence[str]) -> int:
        """Forget a finished run's final jobs and, once none is left unfinished, its
        description; one script call per ``BATCH`` ids (no key scan). → jobs forgotten."""
        gone = kept = 0
        for at in range(0, max(len(job_ids), 1), BATCH):
            run_key = f"run:{node}:{run_id}" if at + BATCH >= len(job_ids) and not kept else ""
            n, left = await self._prune(self._keys, [self.base, run_key, *job_ids[at : at + BATCH]])
            gone, kept = gone + int(n), kept + int(left)
        return gone

    # -- what the dispatchers of several nodes share beside the jobs --------------------------
    async def put_run(self, node: str, run_id: str, doc: dict[str, Any]) -> None:
        """What a node running another node's job needs of its run (workDir, agent, …);
        run ids are per node, so the key names the run's node."""
        await self._redis.set(f"{self.base}run:{node}:{run_id}", orjson.dumps(doc))

    async def get_run(self, node: str, run_id: str) -> dict[str, Any] | None:
        raw = await self._redis.get(f"{self.base}run:{node}:{run_id}")
        return None if raw is None else dict(orjson.loads(raw))

    async def notify(self, node: str, job_id: str) -> None:
        """Tell ``node`` (the job's origin) that another node moved its job."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.lpush(self.base + "notice:" + node, job_id)
            pipe.ltrim(self.base + "notice:" + node, 0, NOTICES_MAX - 1)
            await pipe.execute()

    async def notice(self, node: str, timeout_s: float) -> str | None:
        """The next job id another node moved for ``node`` (BLPOP), None after ``timeout_s``."""
        popped = await self._redis.blpop([self.base + "notice:" + node], timeout=timeout_s)
        return None if popped is None else _text(popped[1])

    async def peek(self, manager_id: str, n: int) -> list[tuple[str, str]]:
        """``(node, run_id)`` of the ``n`` best queued jobs of ``manager_id``, unclaimed."""
        ready = await self._redis.zrange(self.base + "ready:" + manager_id, 0, n - 1)
        ids = [_text(i) for i in ready]
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.base + "job:" + job_id, "spec")
            specs = await pipe.execute()
        return [
            (str(parsed.get("node")), str(parsed["run_id"]))
            for spec in specs if spec and (parsed := orjson.loads(spec))
        ]  # fmt: skip

    async def waiting_managers(self) -> dict[str, int]:
        """Managers (not the pool) with queued or retrying jobs → how many."""
        raw = await self._redis.hgetall(self.base + "stats")
        out = {}
        for key, value in raw.items():
            name = _text(key)
            if name.startswith("wait:") and name != "wait:" and int(value) > 0:
                out[name[5:]] = int(value)
        return out

    async def _end(self, job_id: str, state: JobState, error: str) -> Job:
        reply = await self._finish(self._keys, [self.base, job_id, state.value, error])
        return _job(_pairs(_checked(reply, job_id, None)[0]))


def _ack_args(
    job_id: str, token: int, result: str | None, extra: dict[str, Any] | None
) -> list[str | int]:
    """One ack's five ACK arguments."""
    extra_json = orjson.dumps(extra).decode() if extra else ""
    return [job_id, token, "0" if result is None else "1", result or "", extra_json]


def _fields(job: Job) -> list[str]:
    """The new job's hash fields as a flat list: None fields and the defaults ENQUEUE sets
    itself (job_id, priority, manager_id, attempts 0, reruns 0, extra {}) left out. What
    never changes travels as one JSON field, ``spec``; the scripts read only
    ``spec.retry``."""
    spec = {
        "run_id": job.run_id,
        "task_id": job.task_id,
        "task": job.task,
        "retry": [job.retry.attempts, job.retry.base_ms, job.retry.cap_ms],
        "created_at": job.created_at,
        "node": job.node,
    }
    out = ["spec", orjson.dumps(spec).decode()]
    if job.attempts:
        out += ["attempts", str(job.attempts)]
    if job.reruns:
        out += ["reruns", str(job.reruns)]
    if job.extra:
        out += ["extra", orjson.dumps(job.extra).decode()]
    for name in _OPTIONAL:
        if (value := getattr(job, name)) is not None:
            out += [name, repr(value) if isinstance(value, float) else str(value)]
    return out


def _job(raw: dict[str, Any]) -> Job:
    """A Job from its hash (keys decoded, values bytes or str); lease fields stay in Redis."""
    spec = orjson.loads(raw["spec"])
    kw: dict[str, Any] = {
        "job_id": _text(raw["job_id"]),
        "run_id": spec["run_id"],
        "task_id": spec["task_id"],
        "task": spec["task"],
        "retry": RetryPolicy(*spec["retry"]),
        "created_at": spec["created_at"],
        "node": spec.get("node"),
        "priority": Priority(int(raw["priority"])),
        "state": JobState(_text(raw["state"])),
        "extra": orjson.loads(raw["extra"]),
    }
    for name in _STRINGS:
        kw[name] = _text(raw[name]) if name in raw else None
    for name in _INTS:
        kw[name] = int(raw[name])
    for name in _FLOATS:
        kw[name] = float(raw[name]) if name in raw else None
    return Job(**kw)


def _checked(reply: list[Any], job_id: str, token: int | None) -> list[Any]:
    """The payload of an ``{'ok', …}`` reply; a refusal raised as NotFound / StaleLease."""
    status = _text(reply[0])
    if status == "ok":
        return list(reply[1:])
    if status == "notfound":
        raise NotFound(f"unknown job {job_id}", data={"jobId": job_id})
    state, holder, until = (_text(x) for x in reply[1:4])
    raise StaleLease(
        f"stale lease on {job_id}: token {token} no longer holds it (job {state}, "
        f"held by token {holder or 'none'}); nothing was changed",
        data={"jobId": job_id, "state": state, "token": token, "holder": holder or None,
              "leaseUntilMs": int(until) if until else None},
    )  # fmt: skip


def _pairs(flat: list[Any]) -> dict[str, Any]:
    """A flat HGETALL reply as a dict: keys decoded, values as they came (bytes or str)."""
    it = iter(flat)
    return {_text(k): v for k, v in zip(it, it, strict=True)}


def _moved(reply: list[Any]) -> dict[str, Any]:
    """A job's hash after a move: the script's ``{HGETALL before, changes}`` with the changes
    applied (a nil value: the field was deleted)."""
    raw = _pairs(reply[0])
    it = iter(reply[1])
    for name, value in zip(it, it, strict=True):
        if value is None:
            raw.pop(_text(name), None)
        else:
            raw[_text(name)] = value
    return raw


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mean(samples: list[Any]) -> float | None:
    return sum(float(s) for s in samples) / len(samples) if samples else None
