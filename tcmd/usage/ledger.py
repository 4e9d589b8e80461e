"""The usage ledger: tokens per instance, run, manager, executive tree and daemon, kept.

Each instance has an ``Account`` in the store (namespace ``usage``): its tokens per model,
how far each of its transcripts was read (byte offsets), and the message identities it
counted last (``transcript.Tally``). The offsets and the totals go to the store in one
write, so after a restart of tcmd a transcript is read on from where the counted part
ends: nothing is counted twice, nothing is lost. An agent restarted with ``--resume``
appends to the same transcript, so its offset holds too.

When a hook of a turn's edges arrives (``READ_ON``), the instance's transcript is read
from its offset; what it adds goes to the account and to the totals of each scope the
instance belongs to, kept in memory (rebuilt from the accounts at start):

    all            the whole daemon
    run R          the specialists that worked on run R's tasks
    manager M      M and its specialists
    tree exec_N    exec_N and everything below it
    instance I     I alone

The scopes come from the ids (``spec_<e>_<m>_<n>`` is under ``mgr_<e>_<m>`` under
``exec_<e>``), so they hold for instances of other nodes and after retention forgot the
records. Listeners hear every growth (metrics, budgets).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from tcmd.errors import TcmError
from tcmd.model import Instance
from tcmd.prices import Prices
from tcmd.store import StateStore
from tcmd.usage.transcript import KINDS, WIDTH, Counts, NotATranscript, Tally, read_new

log = structlog.get_logger(__name__)
NS = "usage"
# a turn's edges: its end (Stop, StopFailure), and catching up before the next one or at
# a (re)start, when the file may have grown while tcmd was down
READ_ON = frozenset({"SessionStart", "UserPromptSubmit", "Stop", "StopFailure", "SessionEnd"})
# Claude Code (2.1.332) writes a turn's last message to the transcript after the Stop hook
# has gone out (its writer flushes in batches): after a turn's end, read again this many
# seconds later (each read that finds nothing new costs an open and an fstat)
SETTLE_S = (0.3, 1.5)
TURN_ENDS = frozenset({"Stop", "StopFailure", "SessionEnd"})
KEEP_PATHS = 8  # transcripts remembered per instance (/clear and compaction start new ones)
_ID = re.compile(r"^(exec|mgr|spec)_(\d+)(?:_(\d+))?(?:_(\d+))?$")
Scope = tuple[str, str]  # ("run", "run_3"), ("all", "")
Growth = Callable[["Account", str, Counts], None]


def scopes_of(instance_id: str) -> tuple[str | None, str | None]:
    """(manager id, executive id) an instance id lies under; a manager is its own."""
    m = _ID.match(instance_id)
    if m is None:
        return None, None
    kind, e, mgr = m[1], m[2], m[3]
    tree = f"exec_{e}"
    if kind == "exec":
        return None, tree
    return f"mgr_{e}_{mgr}", tree


@dataclass(slots=True)
class Account:
    """One instance's usage and reading position, as stored."""

    instance_id: str
    run_id: str | None = None
    manager_id: str | None = None
    tree_id: str | None = None
    models: dict[str, Counts] = field(default_factory=dict)  # model -> count vector
    offsets: dict[str, int] = field(default_factory=dict)  # transcript path -> bytes read
    seen: dict[str, Counts] = field(default_factory=dict)  # recent identities (Tally)
    messages: int = 0  # distinct assistant messages counted
    updated: float = 0.0

    @classmethod
    def for_instance(cls, inst: Instance) -> Account:
        manager, tree = scopes_of(inst.id)
        return cls(inst.id, inst.run_id, manager, tree)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Account:
        return cls(**raw)

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "run_id": self.run_id,
            "manager_id": self.manager_id,
            "tree_id": self.tree_id,
            "models": self.models,
            "offsets": self.offsets,
            "seen": self.seen,
            "messages": self.messages,
            "updated": self.updated,
        }

    def scopes(self) -> list[Scope]:
        found: list[Scope] = [("all", ""), ("instance", self.instance_id)]
        for kind, value in (("run", self.run_id), ("manager", self.manager_id),
                            ("tree", self.tree_id)):  # fmt: skip
            if value:
                found.append((kind, value))
        return found


def add_into(into: dict[str, Counts], model: str, counts: Counts) -> None:
    have = into.get(model)
    if have is None:
        into[model] = list(counts)
    else:
        for i in range(WIDTH):
            have[i] += counts[i]


class Ledger:
    """Every account, the totals per scope, and the reading of transcripts."""

    def __init__(self, store: StateStore, prices: Prices) -> None:
        self.store = store
        self.prices = prices
        self.accounts: dict[str, Account] = {}
        self.totals: dict[Scope, dict[str, Counts]] = {}
        self.members: dict[Scope, set[str]] = {}  # the instances that used tokens in a scope
        self.listeners: list[Growth] = []
        self.reads = 0  # transcript reads (for the bench and `status`)
        self._later: dict[str, asyncio.TimerHandle] = {}  # instance id -> its next re-read

    def load(self) -> None:
        """Accounts from the store; the totals of every scope summed from them."""
        for key, raw in self.store.items(NS).items():
            try:
                acct = Account.from_json(raw)
            except TypeError as exc:
                log.warning("usage record unusable: skipped", key=key, error=str(exc))
                continue
            self.accounts[acct.instance_id] = acct
            for model, counts in acct.models.items():
                self._add_to_scopes(acct, model, counts)

    def _add_to_scopes(self, acct: Account, model: str, counts: Counts) -> None:
        for scope in acct.scopes():
            add_into(self.totals.setdefault(scope, {}), model, counts)
            self.members.setdefault(scope, set()).add(acct.instance_id)

    # -- reading -----------------------------------------------------------------------------
    def on_hook(self, inst: Instance, event: str, payload: dict[str, Any]) -> None:
        """A hook an instance sent: at a turn's edges, read its transcript on."""
        path = payload.get("transcript_path")
        if event in READ_ON and isinstance(path, str) and path.endswith(".jsonl"):
            self.read(inst, path)
            if event in TURN_ENDS:
                self._settle(inst, path, 0)

    def _settle(self, inst: Instance, path: str, step: int) -> None:
        """Read ``path`` again at SETTLE_S[step] after the turn's end (one pending per
        instance: a newer turn's end replaces it). The instance may be gone by then: its
        transcript still says what its last turn cost."""
        if (pending := self._later.pop(inst.id, None)) is not None:
            pending.cancel()
        if step >= len(SETTLE_S):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a bench, a unit test): nothing to wait for
            return
        delay = SETTLE_S[step] - (SETTLE_S[step - 1] if step else 0.0)
        self._later[inst.id] = loop.call_later(delay, self._settled, inst, path, step)

    def _settled(self, inst: Instance, path: str, step: int) -> None:
        self._later.pop(inst.id, None)
        try:
            self.read(inst, path)
        except Exception:  # a bug here must not kill the event loop's callback
            log.exception("usage re-read failed", instance_id=inst.id)
        self._settle(inst, path, step + 1)

    def read(self, inst: Instance, path: str) -> bool:
        """Count what ``path`` gained since the last read; True if the account changed."""
        acct = self.accounts.get(inst.id)
        if acct is None:
            acct = Account.for_instance(inst)
        offset = acct.offsets.get(path, 0)
        try:
            found, end = read_new(path, offset)
        except NotATranscript as exc:
            log.debug("transcript not read", instance_id=inst.id, reason=str(exc))
            return False
        self.reads += 1
        if end == offset:
            return False
        tally = Tally(acct.seen)
        grown: dict[str, Counts] = {}
        for msg in found:
            new = msg.key not in tally.seen
            if (more := tally.add(msg)) is not None:
                acct.messages += new
                add_into(grown, msg.model, more)
        acct.seen = tally.seen
        acct.offsets.pop(path, None)
        acct.offsets[path] = end  # most recent last: the oldest path goes first
        while len(acct.offsets) > KEEP_PATHS:
            del acct.offsets[next(iter(acct.offsets))]
        acct.updated = time.time()
        self.accounts[inst.id] = acct
        for model, counts in grown.items():
            add_into(acct.models, model, counts)
            self._add_to_scopes(acct, model, counts)
        try:  # offsets and totals in one record: a restart reads on from what was counted
            self.store.put(NS, acct.instance_id, acct.to_json())
        except TcmError as exc:  # memory counted it; after a restart it is read again
            log.warning("usage not stored", instance_id=inst.id, error=exc.message)
        for model, counts in grown.items():
            for listener in self.listeners:
                listener(acct, model, counts)
        return True

    def forgotten(self, instance_id: str) -> None:
        """Retention forgot the instance: keep its totals, drop what reading needed."""
        acct = self.accounts.get(instance_id)
        if acct is not None and (acct.offsets or acct.seen):
            acct.offsets, acct.seen = {}, {}
            try:
                self.store.put(NS, instance_id, acct.to_json())
            except TcmError as exc:
                log.warning("usage not stored", instance_id=instance_id, error=exc.message)

    # -- reporting -----------------------------------------------------------------------------
    def of(self, kind: str, key: str = "") -> dict[str, Counts]:
        """Tokens per model of one scope (empty when it used none)."""
        return self.totals.get((kind, key), {})

    def spent(self, kind: str, key: str = "") -> tuple[int, float]:
        """(all tokens, estimated USD of the priced models) of one scope."""
        tokens, usd = 0, 0.0
        for model, counts in self.of(kind, key).items():
            tokens += sum(counts[:4])
            if (price := self.prices.of(model)) is not None:
                usd += price.cost(counts)
        return tokens, usd

    def report(self, kind: str, key: str = "") -> dict[str, Any]:
        """A scope's tokens by kind, its estimated cost, and the same per model."""
        models = []
        total = [0] * WIDTH
        usd = 0.0
        unpriced = []
        for model, counts in sorted(self.of(kind, key).items()):
            price = self.prices.of(model)
            cost = None if price is None else round(price.cost(counts), 6)
            if cost is None:
                unpriced.append(model)
            else:
                usd += cost
            for i in range(WIDTH):
                total[i] += counts[i]
            models.append({"model": model, "tokens": tokens_of(counts), "costUsd": cost})
        priced = len(models) - len(unpriced)
        return {
            "scope": kind,
            "id": key or None,
            "tokens": tokens_of(total),
            # the priced models' part; None when no model used had a price
            "costUsd": round(usd, 6) if priced or not models else None,
            "costComplete": not unpriced,
            "unpricedModels": unpriced,
            "models": models,
            "instances": len(self.members.get((kind, key), ())),
        }


def tokens_of(counts: Counts) -> dict[str, int]:
    out = dict(zip(KINDS, counts[:4], strict=True))
    out["total"] = sum(counts[:4])
    return out
