"""Prompt delivery: one ordered outbox per instance, each prompt pasted once and confirmed.

A prompt goes in with bracketed paste and a separate Enter. It counts as delivered when
the agent acknowledges it (UserPromptSubmit). If no acknowledgement comes, Enter is
pressed again only while the text visibly still sits in the input box; once it has left
the box (or tmux, starved, cannot show the box in time: the text went with its Enter) the
acknowledgement is awaited longer (``TCM_ACK_LATE_MS``: a busy machine runs hooks late),
and without it the prompt is reported ``UNCONFIRMED``: the agent has it and
may be running it, so a caller must not hand the work to anyone else. The text itself is
never sent twice. Prompts to a busy instance wait in its outbox and go out, in order,
when it turns ready; prompts to an instance that exits are dropped and reported undelivered.
An outbox holds at most TCM_MAX_QUEUED_PROMPTS prompts and TCM_MAX_QUEUED_PROMPT_BYTES of
their text; past either, ``send`` is refused (Capacity) and nothing is queued.
Terminating an instance drops its outbox with a reason (``drop``): a sender still waiting
gets it in its answer, and the instance's ``lastError`` says it for those who read later.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from tcmd.errors import Capacity, Conflict, TcmError
from tcmd.instances.agents.registry import profile
from tcmd.instances.registry import Instances
from tcmd.model import LIVE, Instance, State

log = structlog.get_logger(__name__)
DELIVERABLE = frozenset({State.READY, State.ERRORED})
ACK_WAIT_S = 2.0  # per try; the notes measured 0.3-0.7 s from paste to UserPromptSubmit
ENTER_TRIES = 3


class Sent(enum.Enum):
    """How the delivery of one prompt ended."""

    ACKNOWLEDGED = "acknowledged"  # its UserPromptSubmit came
    UNCONFIRMED = "unconfirmed"  # it left the input box, but no hook came in time
    NOT_TAKEN = "not taken"  # still in the box after every Enter, dropped, or the pane failed


@dataclass(slots=True)
class Outgoing:
    text: str
    done: asyncio.Future[Sent]
    size: int  # bytes of text in UTF-8, counted against the outbox's limit
    queued_at: float = field(default_factory=time.monotonic)
    dropped: str | None = None  # why it will never be delivered, when it was dropped


class Delivery:
    """The outboxes of every instance and the workers that empty them."""

    def __init__(self, instances: Instances) -> None:
        self.instances = instances
        self.outbox: dict[str, deque[Outgoing]] = {}
        self.max_prompts = instances.settings.max_queued_prompts
        self.max_bytes = instances.settings.max_queued_prompt_bytes
        self.ack_late_s = instances.settings.ack_late_ms / 1000
        # the longest one delivery takes: every Enter tried (a capture each), then the late wait
        self.longest_s = ENTER_TRIES * (ACK_WAIT_S + instances.tmux.timeout_s) + self.ack_late_s
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.last_sent: dict[str, str] = {}  # instance id -> the prompt it last accepted
        # until when an instance takes no new prompt (a rate-limit hold); set by health
        self.hold: Callable[[Instance], float | None] = lambda inst: None
        instances.listeners.append(self._on_state)

    def pending(self, instance_id: str) -> int:
        """Prompts not yet acknowledged (queued or being delivered)."""
        return len(self.outbox.get(instance_id, ()))

    async def send(self, inst: Instance, text: str, timeout_s: float) -> dict[str, Any]:
        """Queue ``text``; when it can go at once, wait for its acknowledgement."""
        if inst.status not in LIVE:
            raise Conflict(
                f"{inst.id} has {inst.status.value}: it cannot take a prompt"
                + ("; restart it first" if inst.status == State.EXITED else "")
            )
        queue = self.outbox.setdefault(inst.id, deque())
        ahead = len(queue)
        out = Outgoing(text, asyncio.get_running_loop().create_future(), len(text.encode()))
        self._check_room(inst, queue, out.size)
        queue.append(out)
        self._kick(inst)
        result: dict[str, Any] = {"instanceId": inst.id, "delivered": False, "queued": True}
        if ahead == 0 and inst.status in DELIVERABLE and self.hold(inst) is None:
            try:
                async with asyncio.timeout(timeout_s):
                    sent = await asyncio.shield(out.done)
                result["delivered"] = sent is Sent.ACKNOWLEDGED
                if sent is Sent.UNCONFIRMED:
                    result["submitted"] = True  # the agent has it: it may be running it
                result["queued"] = False
            except TimeoutError:
                pass  # still in flight: it stays queued and will be confirmed later
        if out.dropped is not None:
            result["queued"], result["error"] = False, out.dropped
        result["status"] = inst.status.value
        if result["queued"]:
            result["position"] = ahead + 1
        return result

    def _check_room(self, inst: Instance, queue: deque[Outgoing], size: int) -> None:
        """Refuse a prompt the outbox has no room for; an empty outbox takes any one."""
        if not queue:
            return
        held = sum(o.size for o in queue)  # at most max_prompts of them
        if len(queue) >= self.max_prompts:
            why = f"{len(queue)} prompts, the limit (TCM_MAX_QUEUED_PROMPTS={self.max_prompts})"
            setting, limit = "TCM_MAX_QUEUED_PROMPTS", self.max_prompts
        elif held + size > self.max_bytes:
            why = (
                f"{held} bytes of prompts; {size} more would pass the limit "
                f"(TCM_MAX_QUEUED_PROMPT_BYTES={self.max_bytes})"
            )
            setting, limit = "TCM_MAX_QUEUED_PROMPT_BYTES", self.max_bytes
        else:
            return
        raise Capacity(
            f"{inst.id} is {inst.status.value} and its outbox already holds {why}; "
            "nothing was queued: send again once it has taken some",
            data={"instanceId": inst.id, "setting": setting, "limit": limit},
        )

    def drop(self, inst: Instance, reason: str) -> list[str]:
        """Fail every prompt not yet delivered to ``inst`` with ``reason``; their texts."""
        queue = self.outbox.pop(inst.id, deque())
        dropped = list(queue)
        queue.clear()  # a worker still holding it stops at once
        for out in dropped:
            out.dropped = reason
            if not out.done.done():
                out.done.set_result(Sent.NOT_TAKEN)
        return [out.text for out in dropped]

    def _on_state(self, inst: Instance, old: State) -> None:
        if inst.status in DELIVERABLE:
            self._kick(inst)
        elif inst.status not in LIVE:
            for out in self.outbox.pop(inst.id, deque()):
                if not out.done.done():
                    out.done.set_result(Sent.NOT_TAKEN)

    def kick_all(self) -> None:
        """Try every outbox again (a hold has ended)."""
        for instance_id in list(self.outbox):
            if (inst := self.instances.find(instance_id)) is not None:
                self._kick(inst)

    def _kick(self, inst: Instance) -> None:
        if inst.id in self.workers or not self.outbox.get(inst.id):
            return
        if inst.status not in DELIVERABLE or self.hold(inst) is not None:
            return
        task = asyncio.get_running_loop().create_task(self._drain(inst))
        self.workers[inst.id] = task
        task.add_done_callback(lambda t: self._drained(inst, t))

    def _drained(self, inst: Instance, task: asyncio.Task[None]) -> None:
        self.workers.pop(inst.id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery worker failed", instance_id=inst.id, exc_info=exc)
        self._kick(inst)  # ready again already (a fast turn): carry on

    async def _drain(self, inst: Instance) -> None:
        queue = self.outbox.get(inst.id)
        while queue and inst.status in DELIVERABLE:
            out = queue[0]
            try:
                sent = await self._deliver(inst, out.text)
            except TcmError as exc:
                log.warning("delivery failed", instance_id=inst.id, error=exc.message)
                sent = Sent.NOT_TAKEN
            if queue and queue[0] is out:
                queue.popleft()
                self.instances.changes.fire(inst.id)  # pending(inst.id) changed
            if not out.done.done():
                out.done.set_result(sent)
            if sent is Sent.NOT_TAKEN:
                inst.last_error = "prompt was not acknowledged by the agent"
            elif sent is Sent.UNCONFIRMED:
                inst.last_error = (
                    "the prompt left the input box, but the agent did not acknowledge it "
                    f"within {self.ack_late_s:g} s (TCM_ACK_LATE_MS): it may still run it"
                )
            if sent is not Sent.ACKNOWLEDGED:
                break  # the next prompt waits for the instance to turn ready again

    async def _deliver(self, inst: Instance, text: str) -> Sent:
        acks = self.instances.acks
        before = acks.get(inst.id, 0)

        def acknowledged() -> bool:
            return acks.get(inst.id, 0) > before or inst.status not in LIVE

        tmux = self.instances.tmux
        started = time.monotonic()
        left_box = False
        await tmux.paste(inst.id, profile(inst.agent).as_prompt(text), enter=True)
        for _ in range(ENTER_TRIES):
            if await self.instances.changes.wait_for(acknowledged, ACK_WAIT_S, inst.id):
                break
            try:
                if profile(inst.agent).input_pending(await tmux.capture(inst.id, 20), text):
                    log.info("prompt still in the input box: Enter again", instance_id=inst.id)
                    await tmux.send_keys(inst.id, "Enter")
                    continue
            except TcmError as exc:
                # tmux too slow to show the box (or take the Enter, which it may still
                # do): the text was pasted with its Enter, so it has most likely gone in
                log.info("prompt's box not seen: taken as gone", instance_id=inst.id,
                         error=exc.message)  # fmt: skip
            # gone from the box, so submitted: on a loaded machine its hook can be late
            left_box = True
            await self.instances.changes.wait_for(acknowledged, self.ack_late_s, inst.id)
            break
        if acks.get(inst.id, 0) > before:
            sent = Sent.ACKNOWLEDGED
        else:
            sent = Sent.UNCONFIRMED if left_box and inst.status in LIVE else Sent.NOT_TAKEN
        if sent is not Sent.NOT_TAKEN:
            self.last_sent[inst.id] = text  # what it runs, for health and terminate
        (log.debug if sent is Sent.ACKNOWLEDGED else log.info)(
            f"prompt {sent.value}",
            instance_id=inst.id,
            chars=len(text),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return sent
