"""State stores: the StateStore protocol and its backends."""

from tcmd.store.base import JSON, StateStore

__all__ = ["JSON", "StateStore"]
