"""The tcmctl command line (click). Every command takes --json for machine output.

Exit codes: 0 ok, 1 the command ran but did not succeed, 2 usage, 3 daemon unreachable
(or stopping), 4 refused by the daemon (its error code and message go to stderr), 5 `wait`
timed out, 130 interrupted while following a run (the run goes on).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import orjson

from tcmctl import render
from tcmctl.client import DaemonUnreachable
from tcmctl.context import (
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Ctx,
    json_option,
    pass_ctx,
)
from tcmd.errors import Stopping, TcmError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    envvar="TCM_SOCKET",
    help="Daemon socket (default: $TCM_SOCKET or the standard path).",
)
@click.option("--no-autostart", is_flag=True, help="Do not start tcmd when it is not running.")
@click.version_option(package_name="tcm", prog_name="tcmctl")
@click.pass_context
def cli(ctx: click.Context, socket_path: Path | None, no_autostart: bool) -> None:
    """Drive tcmd: spawn agents in tmux, run tasks in parallel, watch their health."""
    ctx.obj = Ctx(socket_path, autostart=not no_autostart)


@cli.command()
@json_option
@pass_ctx
def status(obj: Ctx) -> None:
    """Version, uptime, store health and counts of the daemon."""
    obj.emit(obj.call("status"), render.status)


@cli.command()
@json_option
@pass_ctx
def ping(obj: Ctx) -> None:
    """Check that the daemon answers."""
    obj.emit(obj.call("ping"), lambda r: "pong")


@cli.command()
@json_option
@pass_ctx
def tools(obj: Ctx) -> None:
    """List the daemon's tools (RPC methods = MCP tools)."""
    obj.emit(
        obj.call("tools"), lambda rows: render.table(rows, ["name", "description"], max_width=90)
    )


@cli.command()
@click.argument("method")
@click.argument("params", required=False, default="{}")
@json_option
@pass_ctx
def call(obj: Ctx, method: str, params: str) -> None:
    """Call any tool with PARAMS as a JSON object ('-' reads stdin)."""
    raw = sys.stdin.read() if params == "-" else params
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="PARAMS") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", param_hint="PARAMS")
    obj.json = True
    obj.emit(obj.client().call(method, parsed))


def _register_subcommands() -> None:
    """Add the commands of tcmctl.commands (they import this one: not at import)."""
    if "spawn" in cli.commands:
        return
    from tcmctl.commands import daemon, instances, mcp, merge, observe, parallel, runs, tree
    from tcmctl.completion import completion

    cli.add_command(daemon.daemon)
    cli.add_command(mcp.mcp)  # its server half (tcmctl.mcp, the SDK) loads on use only
    cli.add_command(completion)
    for command in [*instances.COMMANDS, *parallel.COMMANDS, *runs.COMMANDS, *merge.COMMANDS,
                    *observe.COMMANDS]:  # fmt: skip
        cli.add_command(command)
    for command in tree.COMMANDS:  # tree, top (Textual loads when top runs, not before)
        cli.add_command(command)


def run(argv: list[str]) -> int:
    """Run the CLI; map errors to exit codes in this one place."""
    _register_subcommands()
    try:
        rv = cli.main(args=argv, prog_name="tcmctl", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if exc.exit_code == 2 else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILED
    except (DaemonUnreachable, Stopping) as exc:  # stopping: it is about to be unreachable
        click.echo(f"tcmctl: {exc.message}", err=True)
        return EXIT_UNREACHABLE
    except TcmError as exc:
        click.echo(f"tcmctl: {exc.message} [{exc.code}]", err=True)
        return EXIT_REFUSED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return rv if isinstance(rv, int) else 0
