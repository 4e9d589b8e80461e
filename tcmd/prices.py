"""Prices per model, to turn token counts into an estimated cost in US dollars.

The table shipped with tcm is ``prices.json`` beside this module: USD per million tokens
of input, output, cache writes (5-minute; ``cacheWrite1h`` for the 1-hour cache, 2× input
when not given) and cache reads, per model family. ``TCM_PRICES`` names a JSON or TOML
file of the same shape (``{"models": {NAME: {...}}}``); its entries replace or add to the
shipped ones. A model matches an entry of its own name, or of its name without a date
suffix (``claude-sonnet-4-5-20250929`` → ``claude-sonnet-4-5``); no other guess is made,
so a model the table lacks has no price: its tokens are counted, its cost is unknown.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcmd.errors import ConfigError

SHIPPED = Path(__file__).with_name("prices.json")
PER = 1_000_000
_DATED = re.compile(r"^(?P<base>.+?)(?:-\d{8}|@\d{8})?(?:\[1m\])?$")
_FIELDS = ("input", "output", "cacheWrite", "cacheRead")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of each kind."""

    input: float
    output: float
    cache_write: float
    cache_write_1h: float
    cache_read: float

    def cost(self, counts: list[int] | tuple[int, ...]) -> float:
        """USD for a count vector (input, output, cache creation, cache read, 1-hour part)."""
        inp, out, created, read, hour = counts
        return (
            inp * self.input
            + out * self.output
            + (created - hour) * self.cache_write
            + hour * self.cache_write_1h
            + read * self.cache_read
        ) / PER


class Prices:
    """The table: model name → Price."""

    def __init__(self, table: dict[str, Price]) -> None:
        self.table = table
        self._found: dict[str, Price | None] = {}

    @classmethod
    def load(cls, override: Path | None = None) -> Prices:
        """The shipped table, with the entries of ``override`` (TCM_PRICES) on top."""
        table = parse(_read(SHIPPED), str(SHIPPED))
        if override is not None:
            table.update(parse(_read(override), str(override)))
        return cls(table)

    def of(self, model: str) -> Price | None:
        """The price of ``model``, or None when the table does not know it."""
        if model not in self._found:
            price = self.table.get(model)
            if price is None and (m := _DATED.match(model)):
                price = self.table.get(m["base"])
            self._found[model] = price
        return self._found[model]


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSON and TOML errors too
        raise ConfigError("TCM_PRICES", f"cannot read {path}: {exc}") from None


def parse(raw: Any, where: str) -> dict[str, Price]:
    """The ``models`` table of a prices document; ConfigError names what is wrong."""
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise ConfigError("TCM_PRICES", f"{where}: wants a table `models` of model → prices")
    table: dict[str, Price] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ConfigError("TCM_PRICES", f"{where}: models.{name} is not a table")
        values: dict[str, float] = {}
        for key in (*_FIELDS, "cacheWrite1h"):
            value = entry.get(key, 2 * values["input"] if key == "cacheWrite1h" else None)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(
                    "TCM_PRICES", f"{where}: models.{name}.{key} must be a number >= 0"
                )
            values[key] = float(value)
        if unknown := sorted(set(entry) - {*_FIELDS, "cacheWrite1h"}):
            raise ConfigError("TCM_PRICES", f"{where}: models.{name}: unknown key {unknown[0]}")
        table[name] = Price(
            values["input"],
            values["output"],
            values["cacheWrite"],
            values["cacheWrite1h"],
            values["cacheRead"],
        )
    return table
