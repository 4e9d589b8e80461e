"""The StateStore protocol: namespaced JSON documents, durable on return.

The daemon is the only writer. Every ``put``/``delete`` is acknowledged only after it
has reached the backend's durable log, so a ``kill -9`` right after a call returns loses
nothing that call wrote.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from tcmd.errors import Unavailable

JSON = Any  # a value orjson can serialise: dict, list, str, int, float, bool, None, and
# dataclasses and enums, stored as the JSON they encode to


class StateDamaged(Unavailable):
    """Persisted state cannot be read as it stands; the daemon refuses to start, naming why.

    Raised by ``open`` for a damaged snapshot and by a service decoding a stored document
    (``data`` names the file, or the namespace and key). Nothing is guessed or rewritten.
    """


@runtime_checkable
class StateStore(Protocol):
    """Namespaced key → JSON document store, owned by one daemon."""

    backend: str

    def open(self) -> None:
        """Load what is persisted (snapshot, then the journal on top of it)."""

    def get(self, ns: str, key: str) -> JSON | None:
        """The document at ``ns/key``, or None."""

    def items(self, ns: str) -> dict[str, JSON]:
        """A shallow copy of every document in ``ns``."""

    def put(self, ns: str, key: str, value: JSON) -> None:
        """Store ``value`` at ``ns/key``; durable when this returns."""

    def delete(self, ns: str, key: str) -> None:
        """Remove ``ns/key`` (no error when absent); durable when this returns."""

    def health(self) -> dict[str, JSON]:
        """``{"backend", "ok", ...}`` figures for ``status``."""

    def close(self) -> None:
        """Write a final snapshot and release files."""
