"""Watching the daemon: the event log, metrics, logging, and their tools."""
