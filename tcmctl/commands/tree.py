"""The operator's view of the instance tree, printed once: ``tree``."""

from __future__ import annotations

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


COMMANDS = [tree]
