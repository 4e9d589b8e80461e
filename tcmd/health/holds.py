"""Holds: no new prompt (and no new task) for instances whose account cannot serve them.

Two causes, one mechanism (``held_until``: a hold key → unix time; Delivery asks
``hold_of`` before every prompt, and is kicked when a hold ends):

- **A rate limit** holds until the reset time the agent announced (five minutes when it
  names none). For Claude the key is ``agent:claude``: every Claude instance of this
  daemon shares one login, so one instance's limit is all of theirs.
- **A failed login** (a 401: StopFailure ``authentication_failed``, or the screen says so)
  holds the account the same way, and more: the dispatcher starts no task of the account
  (``account_held``, shown as ``held: account (…)``) and the health loop restarts none of
  its instances: every one of them would fail the same way, one after another. It is
  reported once per episode (the event ``account.auth`` and a warning saying what to do),
  and lifted when a turn of the account ends well (someone logged in again and tried), or
  after ``AUTH_HOLD_S`` (then the next prompt tries again; a new failure is a new episode).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import structlog

from tcmd.instances.delivery import Delivery
from tcmd.model import Instance

log = structlog.get_logger(__name__)
AUTH_HOLD_S = 300.0  # a failed login holds the account this long (or until a turn succeeds)
LOGIN = ("log in again: run `claude /login` in a terminal as the user tcmd runs as (or set a "
         "valid ANTHROPIC_API_KEY and restart tcmd)")  # fmt: skip


def account(agent: str, instance_id: str) -> str:
    """The hold key of an instance's account: every Claude instance shares one login."""
    return f"agent:{agent}" if agent == "claude" else instance_id


class Holds:
    """The holds in force, who caused them, and what ends them."""

    def __init__(self, delivery: Delivery, emit: Callable[..., Any]) -> None:
        self.delivery = delivery
        self.emit = emit
        self.held_until: dict[str, float] = {}  # hold key -> unix time
        self.auth_held: dict[str, str] = {}  # hold key -> the instance whose login failed
        self.released: Callable[[], object] = lambda: None  # a login hold ended (dispatcher)

    def hold_of(self, inst: Instance) -> float | None:
        """Until when ``inst`` takes no new prompt (None: it may)."""
        now = time.time()
        until = max(self.held_until.get(inst.id, 0), self.held_until.get(f"agent:{inst.agent}", 0))
        return until if until > now else None

    def account_held(self, agent: str) -> str | None:
        """Why no new instance of ``agent`` should start now: its account's login failed
        (None: it may start)."""
        key = account(agent, "")
        if key not in self.auth_held or self.held_until.get(key, 0) <= time.time():
            return None
        return f"held: account (authentication failed on {self.auth_held[key]}; {LOGIN})"

    def rate_limited(self, inst: Instance, reasons: list[str]) -> None:
        """A rate limit: hold until the reset its reasons name (``until …``)."""
        reset = next((r for r in reasons if r.startswith("until ")), "until later")
        when = rate_limit_reset_time(reset.removeprefix("until "))
        key = account(inst.agent, inst.id)
        if self.held_until.get(key, 0) < time.time():  # not held yet (or the hold is over)
            self.held_until[key] = when
            log.info("holding new work", hold=key, until=when)
            self.emit("health.hold", instanceId=inst.id, hold=key, until=when)
            asyncio.get_running_loop().call_later(
                max(0.0, when - time.time()) + 0.05, self.delivery.kick_all
            )

    def login_failed(self, inst: Instance) -> None:
        """A failed login: hold every instance of the account (reported once)."""
        key = account(inst.agent, inst.id)
        now = time.time()
        if key in self.auth_held and self.held_until.get(key, 0) > now:
            return  # held already: this episode was reported
        self.auth_held[key] = inst.id
        self.held_until[key] = until = max(self.held_until.get(key, 0), now + AUTH_HOLD_S)
        log.warning("authentication failed: new prompts and tasks held for every instance "
                    "of the account", instance_id=inst.id, hold=key, until=until,
                    action=LOGIN)  # fmt: skip
        self.emit("account.auth", instanceId=inst.id, hold=key, until=until, action=LOGIN)
        asyncio.get_running_loop().call_later(AUTH_HOLD_S + 0.05, self._expired, key)

    def _expired(self, key: str) -> None:
        if key in self.auth_held and self.held_until.get(key, 0) <= time.time():
            del self.auth_held[key]
            self.delivery.kick_all()
            self.released()

    def turn_ended(self, inst: Instance) -> None:
        """A turn ended well: if its account was held for its login, that works again."""
        key = account(inst.agent, inst.id)
        if key in self.auth_held and inst.last_error is None:
            del self.auth_held[key]
            self.held_until.pop(key, None)
            log.info("authentication works again: hold lifted", instance_id=inst.id, hold=key)
            self.emit("account.resumed", instanceId=inst.id, hold=key)
            self.delivery.kick_all()
            self.released()


def rate_limit_reset_time(text: str) -> float:
    """Unix time of a reset written like ``3pm``, ``3:30pm``, ``15:30`` (``:SS`` allowed),
    in local time, the next such moment; else five minutes from now."""
    now = time.time()
    m = re.search(r"(\d{1,2})(?::(\d{2}))?(?::(\d{2}))?\s*([ap]m)?", text, re.IGNORECASE)
    if not m:
        return now + 300
    hour, minute, second = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if m.group(4):
        hour = hour % 12 + (12 if m.group(4).lower() == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        return now + 300
    local = time.localtime(now)
    target = time.mktime(
        (local.tm_year, local.tm_mon, local.tm_mday, hour, minute, second, 0, 0, -1)
    )
    return target if target > now else target + 86_400
