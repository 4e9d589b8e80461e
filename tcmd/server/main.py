"""Console script ``tcmd``: parse the command line, then start the daemon.

Only the standard library is imported before the arguments are parsed, so ``tcmd --help``
and ``tcmd --version`` answer at once and start nothing; unknown options exit 2 with the
usage line (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
tcmd: the tcm daemon. Runs AI coding agents in a private tmux server and answers
tcmctl, the MCP shim and the agents' hooks over a Unix socket (JSON-RPC 2.0).
It runs in the foreground until SIGTERM or SIGINT; tcmctl starts it on demand.
"""

EPILOG = """\
configuration (environment variables; a TOML file named by TCM_CONFIG may set them):
  TCM_SOCKET        the daemon's socket (default $XDG_RUNTIME_DIR/tcm/tcmd.sock)
  TCM_STATE_DIR     store, journal, logs (default $XDG_STATE_HOME/tcm)
  TCM_TMUX_SOCKET   name of the private tmux server, tmux -L (default tcm)
  REDIS_URL         mirror state to Redis and share work between daemons
  TCM_LOG_FORMAT, TCM_LOG_LEVEL, PHASE, MAX_MANAGER_CONCURRENCY, ... : see
  docs/configuration.md for the whole table. An invalid value stops tcmd with exit 2.

exit status: 0 stopped by a signal, 1 another tcmd already owns the socket, the state
directory or the tmux server, 2 bad usage or configuration, 3 damaged state.
"""


def parser() -> argparse.ArgumentParser:
    from tcmd import __version__

    p = argparse.ArgumentParser(
        prog="tcmd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-V", "--version", action="version", version=f"tcmd {__version__}")
    return p


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (help, version, usage errors exit here), then run the daemon."""
    parser().parse_args(sys.argv[1:] if argv is None else argv)
    from tcmd.server.daemon import run

    sys.exit(run())
