#!/usr/bin/env python3
"""fake_claude: a stdlib-only stand-in for the `claude` CLI, for tests driving it in tmux.

It behaves like Claude Code where a tmux-driving daemon can see it: the command-line
flags, the screen (header, transcript, a `Working… (Ns · esc to interrupt)` spinner, the
input box), raw-mode input with bracketed paste, the hooks named in `--settings`, and
timing quirks (an Enter sent before it is ready is dropped). What a turn does is chosen
by `@directive` lines in the prompt; see tests/fakes/README.md for the list and the
environment variables (FAKE_CLAUDE_HOME, FAKE_CLAUDE_EVENT_LOG, FAKE_CLAUDE_START_MS,
FAKE_CLAUDE_NOTIFY_DELAY_MS).

This script only starts the package next to it (tests/fakes/claude, imported as `claude`:
the script's directory is sys.path[0]). A script is compiled on every start, imported
modules are not: their bytecode is cached in __pycache__, which is written here even under
PYTHONDONTWRITEBYTECODE (tcmd starts the fake as `python <this file>`, so that setting
would otherwise reach it from the test's environment and cost every start the compile).
"""

import sys

sys.dont_write_bytecode = False
from claude.cli import main  # noqa: E402  (after the bytecode setting, on purpose)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
