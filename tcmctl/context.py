"""What every tcmctl command shares: the context object, --json, and the exit codes.

Exit codes: 0 ok, 1 the command ran but did not succeed, 2 usage, 3 daemon unreachable,
4 refused by the daemon (its error code and message go to stderr), 5 `wait` timed out,
130 interrupted (Ctrl-C) while following a run, which goes on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from tcmctl.client import Client, connect
from tcmd.errors import TcmError

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_TIMEOUT = 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    """What every command shares: where the daemon is, and how to print."""

    def __init__(self, socket_path: Path | None, autostart: bool) -> None:
        self.socket_path = socket_path
        self.autostart = autostart
        self.json = False
        self._client: Client | None = None

    def client(self, *, autostart: bool | None = None, timeout_s: float | None = 30.0) -> Client:
        if self._client is None:
            self._client = connect(
                socket_path=self.socket_path,
                autostart=self.autostart if autostart is None else autostart,
                timeout_s=timeout_s,
            )
        return self._client

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        flags: Mapping[str, str] | None = None,
        file: Any = None,
        **kw: Any,
    ) -> Any:
        """Call the daemon, dropping params that were not given. A refusal is reworded:
        ``flags`` maps the JSON fields set from flags to those flags, ``file`` is the
        tasks file (a ``Loaded``) the other fields came from."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            return self.client(**kw).call(method, clean)
        except TcmError as exc:
            if flags or file is not None:
                from tcmctl.wording import reword

                exc.message = reword(
                    exc.message,
                    flags or {},
                    file=file.source if file is not None else None,
                    file_fields=file.fields if file is not None else (),
                    tasks=file.tasks if file is not None else (),
                )
                exc.args = (exc.message,)
            raise

    def emit(self, result: Any, human: Callable[[Any], str] | None = None) -> None:
        """Print ``result`` as JSON (with --json) or through ``human``."""
        if self.json or human is None:
            out = orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
            click.echo(out.decode())
        else:
            click.echo(human(result))


def json_option(fn: F) -> F:
    """Add --json to a command (stable keys, for programs)."""

    @click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        if as_json:
            click.get_current_context().find_object(Ctx).json = True  # type: ignore[union-attr]
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


pass_ctx = click.make_pass_decorator(Ctx)
