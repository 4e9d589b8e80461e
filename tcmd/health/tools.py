"""Catalogue entry for health: ``health {instanceId?}``."""

from __future__ import annotations

from typing import Any

from tcmd.api import Caller, Params, Tool
from tcmd.health.loop import Health
from tcmd.instances.authz import check_target, is_descendant


class HealthParams(Params):
    instanceId: str | None = None


class HealthTools:
    def __init__(self, health: Health) -> None:
        self.health = health

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "health",
                "Health of every instance (or one): score, verdict, reasons, last "
                "check, recoveries.",
                HealthParams,
                self.summary,
                inline=True,
                read_only=True,
            ),
        ]

    def summary(self, caller: Caller, p: HealthParams) -> dict[str, Any]:
        instances = self.health.instances
        if p.instanceId is not None:
            inst = instances.get(p.instanceId)
            if caller.instance_id != inst.id:
                check_target(caller, inst, instances.find, "watch")
            return self.health.summary(lambda iid: iid == p.instanceId)
        if caller.is_operator:
            return self.health.summary()

        def mine(iid: str) -> bool:  # an instance sees itself and its descendants
            inst = instances.find(iid)
            return inst is not None and (
                iid == caller.instance_id
                or is_descendant(inst, str(caller.instance_id), instances.find)
            )

        return self.health.summary(mine)
