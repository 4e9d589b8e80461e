"""Shell completion: `tcmctl completion bash|zsh|fish` prints the script, and instance and
run ids are completed from the daemon (click's ``shell_complete``).

Completion runs on every Tab: it never starts tcmd, waits at most a second, and completes
nothing rather than fail when the daemon does not answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from tcmd.errors import TcmError

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_TCMCTL_COMPLETE"  # what click derives from the program name "tcmctl"


def from_daemon(ctx: click.Context, method: str, key: str, incomplete: str) -> list[str]:
    """The ``key`` of each row ``method`` returns that starts with ``incomplete``."""
    from tcmctl.client import Client, DaemonUnreachable
    from tcmd.paths import socket_path_from_env

    given = ctx.find_root().params.get("socket_path")
    path = Path(given) if given else socket_path_from_env(os.environ)
    try:
        with Client(path, timeout_s=1.0).connect() as client:
            rows = client.call(method, {})
    except (DaemonUnreachable, TcmError, OSError):
        return []
    ids = [str(row.get(key)) for row in rows if isinstance(row, dict) and row.get(key)]
    return [i for i in ids if i.startswith(incomplete)]


def complete_instance_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Ids of the live instances."""
    return from_daemon(ctx, "list", "instanceId", incomplete)


def complete_run_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Run ids, newest first."""
    return from_daemon(ctx, "runs", "runId", incomplete)


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash:  eval "$(tcmctl completion bash)"     (in ~/.bashrc)
    zsh:   eval "$(tcmctl completion zsh)"      (in ~/.zshrc)
    fish:  tcmctl completion fish > ~/.config/fish/completions/tcmctl.fish
    """
    from click.shell_completion import get_completion_class

    root = click.get_current_context().find_root().command
    cls = get_completion_class(shell)
    assert cls is not None  # every one of SHELLS is built into click
    click.echo(cls(root, {}, "tcmctl", COMPLETE_VAR).source())
