"""One long-lived tmux control-mode client (``tmux -C``): a command channel, nothing more.

Why: a tmux client process per call costs tcm a process start (and the server an accept,
an identify exchange and a teardown) for every call, three a task. Over one control
connection a command is a line written to the client's stdin and its answer a block read
from its stdout. Pane deaths do not come this way: the kernel tells tcmd
(``instances/deaths.py``), so no hook, subscription or notification is listened to; every
notification line is read and dropped.

How it attaches: to a session of its own, ``_tcm_control`` (its pane runs ``cat``), made
with a per-call ``new-session -d`` first and then joined with
``attach-session -f no-output,ignore-size``: a reconnection never starts a server by
itself, tmux sends it no pane output and its size never matters. The driver hides that
session from every listing.

tmux 3.3a facts this module relies on (found by experiment, pinned by tests):

- Every command line gives exactly one ``%begin T N F`` … ``%end T N F`` (or
  ``%error``) block, in order, F = 1 for lines this client sent. Blocks with F = 0 come
  from commands tmux runs on the client's behalf (the attach itself): they are skipped.
  Commands that run other commands (``source-file``, ``if-shell``, ``run-shell -C``)
  give one F = 1 block *per inner command*, which would break the matching; commands
  that wait (``run-shell`` without ``-b``, ``if-shell``, ``wait-for``) would hold every
  call behind them. Only the commands in `ROUTED` go over the connection.
- A ``;`` anywhere on a line separates commands: every argument is sent double-quoted,
  with ``\\``, ``"``, ``$`` and ``~`` escaped (3.3a expands a ``~`` right after the
  opening quote), newline and tab as ``\\n``/``\\t`` and other
  control characters in octal. tmux's parser then hands the command the exact text (no
  ``~``, ``$VAR``, ``#{}`` or ``{}`` meaning inside double quotes). NUL cannot be sent
  (it would end the argument); such a call goes per call, which refuses it as before.
- Output lines come raw, and a block ends at the first ``%end``/``%error`` with the
  block's own time and number: ``capture-pane`` (whose text an agent writes, and could
  forge such a line with) stays on a client process per call.
- An empty line detaches the client: never sent (there is always a command name).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

CONTROL_SESSION = "_tcm_control"
# Commands that answer in one block at once and print nothing a pane's program chose.
ROUTED = frozenset({
    "new-session", "respawn-pane", "kill-session", "has-session", "list-panes",
    "list-sessions", "send-keys", "set-buffer", "paste-buffer", "delete-buffer",
    "display-message", "set-environment", "show-environment", "set-hook", "show-options",
    "set-option",
})  # fmt: skip
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:=@+,-]+")  # never "%": %if, %endif… are directives
_ESCAPES = {  # inside double quotes: what tmux would read otherwise, and control characters
    **{c: f"\\{c:03o}" for c in [*range(0x20), 0x7F]},
    **{ord(c): "\\" + c for c in '"\\$~'},
    ord("\n"): "\\n",
    ord("\t"): "\\t",
}


class ControlLost(Exception):
    """The control connection ended before this command's answer came."""


@dataclass(frozen=True, slots=True)
class Answer:
    ok: bool
    output: str  # what the command printed (its error message when not ok)


def routable(args: Sequence[str]) -> bool:
    """Whether this command may go over the control connection (see `ROUTED`)."""
    return bool(args) and args[0] in ROUTED and not any("\x00" in a for a in args)


def quote(arg: str) -> str:
    """``arg`` as one word for tmux's command parser, meaning exactly its text."""
    if _PLAIN_WORD.fullmatch(arg):
        return arg
    return '"' + arg.translate(_ESCAPES) + '"'


class _Reader(asyncio.Protocol):
    """Splits the client's stdout into lines and hands them to the client."""

    def __init__(self, client: ControlClient) -> None:
        self.client = client
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.client.line(line.decode(errors="replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class ControlClient:
    """A running ``tmux -C attach-session`` and the commands awaiting their answers."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.on_lost: Callable[[], None] = lambda: None
        self.on_answer: Callable[[], None] = lambda: None  # every answer, late ones too
        self.pending: deque[asyncio.Future[Answer]] = deque()
        self.alive = False
        self._ready: asyncio.Future[None] | None = None
        self._block: tuple[str, list[str]] | None = None  # "T N F" of the open block, lines
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._read: asyncio.ReadTransport | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, timeout_s: float) -> None:
        """Start the client; return once tmux says it is attached (or raise ControlLost)."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._proc = subprocess.Popen(  # noqa: ASYNC220  # vfork+exec: does not block the loop
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self.alive = True
        try:
            self._writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, self._proc.stdin)
            self._read, _ = await loop.connect_read_pipe(lambda: _Reader(self), self._proc.stdout)
            async with asyncio.timeout(timeout_s):
                await self._ready
        except BaseException:
            self.close()
            if self._ready.done() and not self._ready.cancelled():
                self._ready.exception()  # retrieved: it is what we raise (or a timeout)
            raise

    def submit(self, *commands: Sequence[str]) -> list[asyncio.Future[Answer]]:
        """Write a line per command, in one write; each answer resolves its future (answers
        come in order)."""
        if not self.alive or self._writer is None:
            raise ControlLost("control client not running")
        loop = asyncio.get_running_loop()
        lines = "".join(" ".join(quote(a) for a in args) + "\n" for args in commands)
        self._writer.write(lines.encode(errors="surrogateescape"))
        futures: list[asyncio.Future[Answer]] = [loop.create_future() for _ in commands]
        self.pending.extend(futures)
        return futures

    def line(self, text: str) -> None:
        """One line of the client's output: part of a block, or a notification (dropped)."""
        if self._block is not None:
            stamp, lines = self._block
            kind, _, rest = text.partition(" ")
            if kind in ("%end", "%error") and rest == stamp:
                self._block = None
                if rest.endswith(" 1"):  # F = 1: a line we wrote (F = 0: tmux's own)
                    self._answer(Answer(kind == "%end", "".join(f"{x}\n" for x in lines)))
            else:
                lines.append(text)
            return
        kind, _, rest = text.partition(" ")
        if kind == "%begin":
            self._block = (rest, [])
        elif kind == "%session-changed" and self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        elif kind == "%exit":
            self.close()

    def _answer(self, answer: Answer) -> None:
        self.on_answer()
        if not self.pending:
            log.warning("tmux control: an answer nobody asked for", ok=answer.ok)
            return
        future = self.pending.popleft()
        if not future.done():  # its caller may have given up (timeout): order still holds
            future.set_result(answer)

    def close(self) -> None:
        """Stop the client; fail what awaits an answer. Idempotent."""
        was_alive, self.alive = self.alive, False
        for transport in (self._writer, self._read):
            if transport is not None:
                transport.close()
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
            self._proc.wait()  # SIGKILLed or ended: reaped at once
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(ControlLost("tmux control connection lost"))
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ControlLost("tmux control client ended before attaching"))
        if was_alive:
            self.on_lost()
