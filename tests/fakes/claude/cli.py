"""main(): check the flags and the session id as Claude does, then run a FakeClaude."""

from __future__ import annotations

import os
import sys
import uuid

from .app import FakeClaude
from .flags import MODES, UsageError, load_json, parse_args


def main(argv: list[str]) -> int:
    """Run the fake `claude` with these arguments; its exit status."""
    try:
        opts = parse_args(argv)
        if opts.get("session-id") and opts.get("resume"):
            raise UsageError(
                "Error: --session-id can only be used with --continue or "
                "--resume if --fork-session is also specified."
            )
        mode = opts.get("permission-mode")
        if mode is not None and mode not in MODES:
            raise UsageError(
                f"error: option '--permission-mode <mode>' argument '{mode}' is "
                f"invalid. Allowed choices are {', '.join(MODES)}."
            )
        bypass = opts.get("dangerously-skip-permissions") or mode == "bypassPermissions"
        if bypass and os.geteuid() == 0 and os.environ.get("IS_SANDBOX") != "1":
            raise UsageError(
                "--dangerously-skip-permissions cannot be used with root/sudo "
                "privileges for security reasons"
            )
        if opts.get("mcp-config"):
            load_json(opts["mcp-config"], "MCP config")
        session_id = opts.get("resume") or opts.get("session-id") or str(uuid.uuid4())
        try:
            session_id = str(uuid.UUID(session_id))
        except ValueError:
            raise UsageError("Error: Invalid session ID. Must be a valid UUID.") from None
        home = os.environ.get("FAKE_CLAUDE_HOME") or os.path.expanduser("~/.fake-claude")
        os.makedirs(home, exist_ok=True)
        transcript = os.path.join(os.path.realpath(home), f"{session_id}.jsonl")
        if opts.get("session-id") and os.path.exists(transcript):
            raise UsageError(f"Error: Session ID {session_id} is already in use.")
        if opts.get("resume") and not os.path.exists(transcript):
            raise UsageError(f"No conversation found with session ID: {session_id}")
        fake = FakeClaude(opts, session_id, transcript)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return fake.run()
