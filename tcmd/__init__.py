"""tcmd: the tcm daemon. One asyncio process that owns tmux, the queue and the store."""

__version__ = "0.1.0"
