"""`tcmctl mcp` (serve MCP on stdio) and `tcmctl mcp install` (register it with Claude).

Registration goes through `claude mcp add` when the `claude` CLI is on PATH, else the
config file is edited directly: read, merge our one `tcm` entry, replace atomically,
every other key kept. `~/.claude.json` is edited under the same lock file tcmd uses
(Claude itself rewrites that file while it runs). A file that is not a JSON object is
refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import orjson

from tcmctl.context import Ctx, json_option, pass_ctx

SERVER_NAME = "tcm"
SCOPES = ("user", "project", "local")
PASSED_ENV = ("TCM_SOCKET", "TCM_STATE_DIR", "TCM_CONFIG")  # where the daemon is, if set


@click.group(invoke_without_command=True)
@click.pass_context
def mcp(ctx: click.Context) -> None:
    """Serve tcm's tools over MCP on stdin/stdout (what Claude runs); see `install`."""
    if ctx.invoked_subcommand is None:
        from tcmctl.mcp import main

        obj = ctx.find_object(Ctx)
        assert obj is not None
        ctx.exit(main(socket_path=obj.socket_path, autostart=obj.autostart))


@mcp.command()
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default="user",
    show_default=True,
    help="user: all your projects; project: .mcp.json here; local: this directory.",
)
@click.option("--desktop", is_flag=True, help="Register with Claude Desktop instead.")
@click.option("--print", "dry_run", is_flag=True, help="Print the JSON; change nothing.")
@click.option(
    "--file",
    "force_file",
    is_flag=True,
    help="Edit the config file even when the claude CLI is on PATH.",
)
@json_option
@pass_ctx
def install(obj: Ctx, scope: str, desktop: bool, dry_run: bool, force_file: bool) -> None:
    """Register `tcmctl mcp` with Claude Code (or Claude Desktop) as the server `tcm`."""
    import shutil  # imported here: every tcmctl command loads this module
    import subprocess

    home, cwd = Path.home(), Path.cwd()
    entry = server_entry(os.environ, desktop=desktop)
    path, keys = config_target(scope, desktop=desktop, home=home, cwd=cwd)
    fragment: dict[str, Any] = {SERVER_NAME: entry}
    for key in reversed(keys):
        fragment = {key: fragment}
    claude = None if desktop or force_file else shutil.which("claude")
    command = claude_command(claude, scope, entry) if claude else None
    action = f"run: {' '.join(command)}" if command else f"merge into {path}"
    if dry_run:
        click.echo(f"tcmctl: would {action}", err=True)
        click.echo(orjson.dumps(fragment, option=orjson.OPT_INDENT_2).decode())
        return
    if command:
        subprocess.run(
            [*command[:2], "remove", SERVER_NAME, "-s", scope],  # idempotent
            capture_output=True,
            check=False,
            timeout=60,
        )
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise click.ClickException(f"claude mcp add failed: {done.stderr.strip()}")
    else:
        merge_entry(path, keys, entry)
    obj.emit(
        {
            "server": SERVER_NAME,
            "scope": "desktop" if desktop else scope,
            "command": command,
            "path": None if command else str(path),
            "entry": entry,
        },
        lambda r: f"registered {SERVER_NAME}: {action.replace('merge into', 'wrote')}",
    )


def server_entry(env: Mapping[str, str], *, desktop: bool) -> dict[str, Any]:
    """How Claude starts the shim; Claude Desktop wants no `type` and absolute paths."""
    entry: dict[str, Any] = {} if desktop else {"type": "stdio"}
    entry["command"] = str(Path(sys.executable).absolute())  # not resolved: keep the venv
    entry["args"] = ["-m", "tcmctl", "mcp"]
    passed = {k: str(Path(env[k]).expanduser().absolute()) for k in PASSED_ENV if env.get(k)}
    if passed:
        entry["env"] = passed
    return entry


def config_target(scope: str, *, desktop: bool, home: Path, cwd: Path) -> tuple[Path, list[str]]:
    """The file to edit and the keys leading to its `mcpServers` object."""
    if desktop:
        return desktop_config(home), ["mcpServers"]
    if scope == "project":
        return cwd / ".mcp.json", ["mcpServers"]
    if scope == "user":
        return home / ".claude.json", ["mcpServers"]
    return home / ".claude.json", ["projects", str(cwd), "mcpServers"]


def desktop_config(home: Path) -> Path:
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return base / "Claude" / "claude_desktop_config.json"


def claude_command(claude: str, scope: str, entry: Mapping[str, Any]) -> list[str]:
    """`claude mcp add tcm -s SCOPE [-e K=V]... -- CMD ARGS...` (the name before -e)."""
    env = [arg for k, v in entry.get("env", {}).items() for arg in ("-e", f"{k}={v}")]
    return [
        claude,
        "mcp",
        "add",
        SERVER_NAME,
        "-s",
        scope,
        *env,
        "--",
        entry["command"],
        *entry["args"],
    ]


def merge_entry(path: Path, keys: list[str], entry: dict[str, Any]) -> None:
    """Set ``path``'s ``keys...[tcm]`` to ``entry``, atomically, every other key kept."""
    from tcmd.atomic import replace_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if path.name == ".claude.json":  # Claude and tcmd rewrite it too: take their lock
            lock = stack.enter_context(open(path.with_name(path.name + ".lock"), "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        data: Any = {}
        mode = 0o644 if path.name == ".mcp.json" else 0o600  # .mcp.json is shared in a repo
        if path.exists():
            mode = path.stat().st_mode & 0o777
            raw = path.read_bytes()
            try:
                data = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise click.ClickException(
                    f"{path} is not valid JSON ({exc}); left alone"
                ) from None
        node = data
        for key in keys:
            if not isinstance(node, dict):
                break
            node = node.setdefault(key, {})
        if not isinstance(data, dict) or not isinstance(node, dict):
            raise click.ClickException(f"{path}: {'.'.join(keys)} is not a JSON object; left alone")
        node[SERVER_NAME] = entry
        replace_atomically(path, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n", mode)
