"""State stores: the StateStore protocol and its backends."""

from tcmd.store.base import JSON, StateDamaged, StateStore

__all__ = ["JSON", "StateDamaged", "StateStore"]
