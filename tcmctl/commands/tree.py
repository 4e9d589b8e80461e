"""The operator's views: ``tree`` (the instance tree printed once) and ``top`` (live)."""

from __future__ import annotations

import os
import shutil
import time

import click

from tcmctl import overview
from tcmctl.context import Ctx, json_option, pass_ctx


@click.command()
@json_option
@pass_ctx
def tree(obj: Ctx) -> None:
    """The instance tree: state, time in state, health and task of each instance."""
    rows, health, active = overview.fetch_rows(obj.call)
    roots = overview.build(rows, health, active)
    now = time.time()
    if obj.json:
        obj.emit([r.to_json(now) for r in roots])
        return
    width = shutil.get_terminal_size((100, 24)).columns
    click.echo(overview.render(roots, now, width=max(width, 40)))


@click.command()
@pass_ctx
def top(obj: Ctx) -> None:
    """A live full-screen view: the tree, a screen, the queue, runs, health (q quits)."""
    path = obj.client().path  # reach (or autostart) tcmd before the screen is taken
    settings = obj.call("status").get("settings", {})
    from tcmctl.top.app import run_top  # Textual loads here only: other commands stay fast

    run_top(
        path, tmux_socket=settings.get("tmux_socket") or os.environ.get("TCM_TMUX_SOCKET", "tcm")
    )


COMMANDS = [tree, top]
