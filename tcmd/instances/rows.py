"""``list`` rows, each kept until what it shows changes.

An operator's ``list`` of 200 instances spent most of its time building 200 dicts that were
the same as the call before: between two calls only the few instances that moved differ.
``Rows.of(inst)`` takes the row's values (one C call, model.public_values) and the fields
other services add (``added``: memory, a manager's load), and hands back the row it built
last time when both are equal; otherwise it builds and keeps a new one. Comparing the
values is what makes this safe: no code that changes an Instance has to say so. A row
handed out is shared by every caller until it changes, so callers must not modify it
(copy to add). ``encoded`` hands out the same row as JSON, encoded once while it stands
(an ``orjson.Fragment``: an answer of 200 rows is then copied, not encoded, on each call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from tcmd.model import Instance, public_values, row_of

Extra = Callable[[Instance], Mapping[str, Any]]  # read, never modified
NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


class _Kept:
    """One instance's row, what it was made of, and its JSON once asked for."""

    __slots__ = ("added", "json", "row", "values")

    def __init__(self, values: tuple[Any, ...], added: Mapping[str, Any], row: dict[str, Any]):
        self.values, self.added, self.row = values, added, row
        self.json: orjson.Fragment | None = None

    def encode(self) -> orjson.Fragment:
        self.json = orjson.Fragment(orjson.dumps(self.row))
        return self.json


class Rows:
    def __init__(self) -> None:
        # more fields from other services (memory, a manager's load): one call a row, whose
        # answer is best the same object while nothing changed (compared by identity first)
        self.added: Extra = lambda inst: NO_EXTRA
        self._kept: dict[str, _Kept] = {}

    def of(self, inst: Instance) -> dict[str, Any]:
        """``inst``'s row as ``list`` shows it; do not modify it."""
        return self._current((inst,))[0].row

    def encoded(self, instances: Iterable[Instance]) -> list[orjson.Fragment]:
        """Their rows as JSON, for an answer, each encoded once while the row stands."""
        return [k.json if k.json is not None else k.encode() for k in self._current(instances)]

    def _current(self, instances: Iterable[Instance]) -> list[_Kept]:
        """Their kept rows, made again where what they show changed. One loop for all:
        ``list`` asks for hundreds a call, and a call a row cost more than the rows."""
        out = []
        kept_now, added_to = self._kept.get, self.added
        for inst in instances:
            values, added = public_values(inst), added_to(inst)
            kept = kept_now(inst.id)
            if (
                kept is None
                or kept.values != values
                or (kept.added is not added and kept.added != added)
            ):
                kept = self._keep(inst.id, values, added)
            out.append(kept)
        return out

    def _keep(self, instance_id: str, values: tuple[Any, ...], added: Mapping[str, Any]) -> _Kept:
        row = row_of(values)
        row.update(added)
        kept = self._kept[instance_id] = _Kept(values, added, row)
        return kept

    def forget(self, instance_id: str) -> None:
        """Drop a forgotten instance's row (registry's forget_listeners)."""
        self._kept.pop(instance_id, None)
