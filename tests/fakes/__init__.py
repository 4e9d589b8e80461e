"""Test doubles for the programs tcm drives (see README.md here)."""

from pathlib import Path

FAKE_CLAUDE = Path(__file__).with_name("fake_claude.py")
"""The fake `claude` executable: pass it as TCM_CLAUDE_COMMAND / the agent command.

A launcher script (`python <path> ...`); the code is the package tests/fakes/claude."""
