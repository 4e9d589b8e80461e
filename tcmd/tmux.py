"""Async driver for tcm's private tmux server: every call goes through `Tmux.run`.

tmux 3.3a facts this module relies on (found by experiment; most pinned by its tests):

- An argument ending in ``;`` separates commands even inside an argv list (``\\;`` at
  the end is a literal ``;``): `run` escapes every argument.
- new-session/respawn-pane exec two or more arguments directly (no shell) but give a
  lone argument to ``sh -c``: every argv runs as ``env -C DIR -- ARGV`` (never alone).
- ``-c DIR`` is format-expanded (``#{…}``, even ``#(cmd)``; ``##[`` stays as written, so
  no escaping makes ``#[`` safe) and a missing DIR silently falls back to another one:
  the pane starts in ``/`` and ``env -C`` changes into the checked cwd, which tmux never
  reads. ``-e K=V`` values are not expanded.
- new-session with a name in use fails with "duplicate session: NAME" (SessionExists).
- ``-t NAME`` matches session names by prefix (``exec_1`` finds ``exec_10``): bare names
  become ``=NAME:`` targets. display-message ignores a bad target: lookups use list-panes.
  With no session at all, any target fails with "no current target".
- ``-F`` output passes control bytes through raw: fields are split on ``\\x1f`` with
  pane_current_command (any bytes but a newline) last.
- A pane killed by a signal has pane_dead_signal set and pane_dead_status empty. There
  is no pane_activity: ``activity`` is window_activity (whole seconds).
- A child exiting while tmux runs its utmp helper can stay an unreaped zombie (pane_dead
  1, no status) until tmux sees another SIGCHLD: listing nudges it with a finished job.
- With ``exit-empty off`` the server outlives its last session: no keepalive session.
- A client sends dups of its stdin/stdout to the server (a hung one keeps them unread),
  and under uvloop a server it forks inherits more: a pipe to a client might never see
  EOF, so clients write to temporary files instead.
- paste-buffer turns LF into CR and adds the bracketed-paste markers only if the program
  switched bracketed paste on; an ``ESC [201~`` in the text would end a paste early.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import structlog

from tcmd.children import run_child
from tcmd.errors import InvalidParams, Unavailable
from tcmd.tmux_control import CONTROL_SESSION, ControlClient, ControlLost, routable

log = structlog.get_logger(__name__)

TMUX_BIN = "tmux"
SEP = "\x1f"
# pane_current_command goes last: split with a max count, it may hold anything but "\n".
_FIELDS = ("pane_id", "session_name", "pane_pid", "pane_dead", "pane_dead_status",
           "pane_dead_signal", "window_activity", "pane_current_command")  # fmt: skip
PANE_FORMAT = SEP.join(f"#{{{name}}}" for name in _FIELDS)
CONFIG = """\
# Written by tcmd (tcmd/tmux.py); read when the private server starts.
set -s exit-empty off
set -s escape-time 0
set -g remain-on-exit on
set -g history-limit 50000
set -g status off
set -g default-terminal screen-256color
"""
_SESSION_NAME = re.compile(r"[A-Za-z0-9_-]+")
# C0 controls except \t and \n, plus DEL (CR is normalised to LF before this runs).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_GONE = ("can't find", "no current target")
_DUPLICATE = "duplicate session"
_NO_SERVER = ("no server running", "error connecting to", "server exited unexpectedly")


class TmuxError(Unavailable):
    """tmux answered with an error; ``stderr`` holds what it said."""

    def __init__(self, command: str, stderr: str) -> None:
        super().__init__(f"{stderr} (tmux {command})", data={"command": command, "stderr": stderr})
        self.stderr = stderr

    @property
    def gone(self) -> bool:
        """The target (session, pane, or the whole server) does not exist."""
        # "no current target" is what 3.3a says for any target when no session exists.
        return isinstance(self, NoServer) or self.stderr.startswith(_GONE)


class NoServer(TmuxError):
    """No tmux server is listening on our socket."""


class SessionExists(TmuxError):
    """new-session was refused: a session of that name exists (nothing was created)."""


@dataclass(frozen=True, slots=True)
class PaneInfo:
    """One pane as tmux reports it."""

    pane_id: str
    session: str
    pid: int
    dead: bool
    dead_status: int | None
    dead_signal: int | None
    command: str
    activity: float  # window_activity: unix time, whole seconds (3.3a has no pane_activity)


def sanitize(text: str) -> str:
    """Normalise CRLF/CR to LF and drop ESC, other C0 controls (but \\t, \\n) and DEL."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


THEN = "\x00then"
"""An argument to `Tmux.run` that separates two tmux commands run by one client."""


def _escape(arg: str) -> str:
    """Keep tmux from reading a trailing ``;`` as a command separator (THEN is one)."""
    if arg == THEN:
        return ";"
    return arg[:-1] + "\\;" if arg.endswith(";") else arg


def _target(target: str) -> str:
    """Pane target: a bare session name becomes an exact-match target."""
    if target.startswith(("%", "$", "@", "=")) or ":" in target or "." in target:
        return target
    return f"={target}:"


def _spawn_args(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> list[str]:
    """``-c / -e K=V … -- env -C CWD -- ARGV`` for new-session/respawn-pane.

    ARGV never meets a shell, and CWD never meets tmux's format expansion: ``env`` changes
    into it (and fails loudly, status 125, if it vanished meanwhile).
    """
    if not argv:
        raise InvalidParams("argv must not be empty", data={"field": "argv"})
    if not cwd.is_dir():
        raise InvalidParams(f"cwd {cwd} is not a directory", data={"field": "cwd"})
    out = ["-c", "/"]
    for key, value in env.items():
        if not key or "=" in key:
            raise InvalidParams(f"bad environment variable name {key!r}", data={"field": "env"})
        out += ["-e", f"{key}={value}"]
    return [*out, "--", "env", "-C", str(cwd), "--", *argv]


def _parse_pane(line: str) -> PaneInfo:
    fields = line.split(SEP, 7)
    if len(fields) != 8:
        raise TmuxError("list-panes", f"unparseable pane line {line!r}")
    pane_id, session, pid, dead, status, signal, activity, command = fields
    return PaneInfo(
        pane_id, session, int(pid or 0), dead == "1",
        dead_status=int(status) if status else None,
        dead_signal=int(signal) if signal and signal != "0" else None,
        command=command, activity=float(activity or 0),
    )  # fmt: skip


_READ_ONLY = frozenset({"list-panes", "list-sessions", "has-session", "display-message",
                        "show-options", "show-environment"})  # fmt: skip
# A paste's text travels as one argument of one line over the control connection; a
# longer one goes by load-buffer from a client's stdin.
PASTE_OVER_CONTROL_MAX = 16384
ATTACH_RETRY_S = 30.0
# Calls that make or end panes: tmux forks (and waits for its utmp helper) on each. Per
# call, the start of each client process spaced them out; on the connection nothing
# would, and a burst of them (200 launches at once) keeps the server from every other
# client for seconds. So at most this many are in flight on the connection at once.
_HEAVY = frozenset({"new-session", "respawn-pane", "kill-session"})
HEAVY_IN_FLIGHT = 2


def _split(args: Sequence[str]) -> list[list[str]]:
    """The commands of one call, split at THEN."""
    commands: list[list[str]] = [[]]
    for arg in args:
        if arg == THEN:
            commands.append([])
        else:
            commands[-1].append(arg)
    return commands


def _raise(command: str, message: str) -> NoReturn:
    """The error tmux's message means (same texts from a client's stderr or a %error)."""
    kind = (
        NoServer if message.startswith(_NO_SERVER)
        else SessionExists if message.startswith(_DUPLICATE)
        else TmuxError
    )  # fmt: skip
    raise kind(command, message)


def _decode(data: bytes) -> str:
    return data.decode(errors="replace")


def _summary(args: Sequence[str]) -> str:
    """The command for messages; private buffer names (random, long) are shortened."""
    text = " ".join(";" if a == THEN else a[:12] if a.startswith("tcm-") else a for a in args)
    return text if len(text) <= 160 else text[:157] + "..."


class _Breaker:
    """Fail fast after `threshold` consecutive timeouts of a server that showed no life.

    A timeout counts only when tmux answered nothing, to anyone, while the call waited: a
    server that answers slowly (starved of CPU, a queue of calls ahead) is alive, and
    failing every call for `cooldown_s` would turn one stall into many failed tasks. Any
    answer, a late one to a call that gave up included, closes the circuit.
    """

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.timeouts = 0
        self.open_until = 0.0
        self.last_answer = float("-inf")  # monotonic time of the last answer from tmux

    def check(self) -> None:
        left = self.open_until - time.monotonic()
        if self.timeouts >= self.threshold and left > 0:
            raise Unavailable(
                f"tmux circuit open after {self.timeouts} timeouts; retry in {left:.1f}s",
                data={"retry_in_s": round(left, 1)},
            )

    def timed_out(self, started: float) -> bool:
        """A call that began at `started` (monotonic) timed out; whether it counted."""
        if self.last_answer >= started:
            return False  # slow, not dead: someone's call was answered meanwhile
        self.timeouts += 1
        if self.timeouts >= self.threshold:
            self.open_until = time.monotonic() + self.cooldown_s
        return True

    def answered(self) -> None:
        self.timeouts = 0
        self.last_answer = time.monotonic()


class Tmux:
    """One private tmux server, addressed by socket name (`tmux -L`)."""

    def __init__(
        self, socket_name: str, config_path: Path, *, timeout_s: float = 5.0,
        breaker_threshold: int = 3, breaker_cooldown_s: float = 5.0, use_control: bool = True,
    ) -> None:  # fmt: skip
        self.socket_name = socket_name
        self.config_path = config_path
        self.timeout_s = timeout_s
        self._breaker = _Breaker(breaker_threshold, breaker_cooldown_s)
        self.use_control = use_control
        self._control: ControlClient | None = None
        self._attach_after = 0.0  # no attach before this (monotonic) after a failed one
        self._heavy = asyncio.Semaphore(HEAVY_IN_FLIGHT)

    @property
    def connected(self) -> bool:
        """Whether commands go over the control connection (else: a client per call)."""
        return self._control is not None and self._control.alive

    async def run(self, *args: str, stdin: bytes | None = None) -> str:
        """Run one tmux command; return stdout, raise TmuxError/NoServer/Unavailable."""
        self._breaker.check()
        command = _summary(args)
        commands = _split(args)
        if self.connected and stdin is None and all(routable(c) for c in commands):
            heavy = any(c[0] in _HEAVY for c in commands)
            async with self._heavy if heavy else contextlib.nullcontext():
                try:
                    if self.connected:  # still, after the wait for a heavy call's turn
                        return await self._run_control(command, commands)
                except ControlLost:
                    if not all(c[0] in _READ_ONLY for c in commands):
                        raise Unavailable(
                            "tmux control connection lost during the call",
                            data={"command": command},
                        ) from None
        return await self._run_client(command, args, stdin)

    async def _run_control(self, command: str, commands: list[list[str]]) -> str:
        """Each command a line on the control connection, all written at once."""
        control = self._control
        assert control is not None
        started = time.monotonic()
        futures = control.submit(*commands)
        try:
            async with asyncio.timeout(self.timeout_s):
                answers = await asyncio.gather(*futures)
        except TimeoutError:
            counted = self._breaker.timed_out(started)
            # the connection stays: the answer still comes, in order (dropping it would lose
            # the commands queued behind this one and cost a reconnection under load), and
            # closes the circuit when it does (`control.on_answer`)
            log.warning("tmux_timeout", command=command, timeout_s=self.timeout_s, control=True,
                        counted=counted)  # fmt: skip
            raise Unavailable(
                f"tmux did not answer within {self.timeout_s}s", data={"command": command}
            ) from None
        ms = round((time.monotonic() - started) * 1e3, 1)
        log.debug("tmux", command=command, ms=ms, control=True)
        for answer in answers:
            if not answer.ok:
                _raise(command, answer.output.strip() or "error")
        return "".join(a.output for a in answers)

    async def _run_client(self, command: str, args: Sequence[str], stdin: bytes | None) -> str:
        argv = [TMUX_BIN, "-L", self.socket_name, "-f", str(self.config_path)]
        argv += [_escape(a) for a in args]
        started = time.monotonic()
        try:
            done = await run_child(argv, stdin=stdin or b"", timeout_s=self.timeout_s)
        except TimeoutError:
            counted = self._breaker.timed_out(started)
            log.warning("tmux_timeout", command=command, timeout_s=self.timeout_s, counted=counted)
            raise Unavailable(
                f"tmux did not answer within {self.timeout_s}s", data={"command": command}
            ) from None
        except OSError as exc:  # after TimeoutError, one of its subclasses
            raise Unavailable(f"cannot run tmux: {exc}") from exc
        self._breaker.answered()
        rc = done.returncode
        stdout, stderr = _decode(done.stdout), _decode(done.stderr).strip()
        log.debug("tmux", command=command, rc=rc, ms=round((time.monotonic() - started) * 1e3, 1))
        if rc != 0 or stderr:
            _raise(command, stderr or f"exit status {rc}")
        return stdout

    async def connect(self) -> bool:
        """Attach the control client if the server runs and it is not attached; whether it is.

        Never starts a server: the control session is made by a client call first, which
        fails with NoServer when none runs.
        """
        if self.connected:
            return True
        if not self.use_control or time.monotonic() < self._attach_after:
            return False
        try:
            await self._control_session()
        except TmuxError as exc:  # NoServer among them
            log.info("tmux control client not attached", error=exc.stderr)
            return False
        except Unavailable as exc:  # timed out, or the circuit is open
            log.info("tmux control client not attached", error=exc.message)
            return False
        argv = [TMUX_BIN, "-L", self.socket_name, "-f", str(self.config_path), "-C",
                "attach-session", "-f", "no-output,ignore-size",
                "-t", f"={CONTROL_SESSION}"]  # fmt: skip
        control = ControlClient(argv)
        try:
            await control.start(self.timeout_s)
        except (ControlLost, TimeoutError, OSError) as exc:
            # e.g. a tmux older than 3.2 (no attach-session -f): per call, asked again later
            self._attach_after = time.monotonic() + ATTACH_RETRY_S
            log.warning("tmux control client failed to attach", error=str(exc) or "timeout")
            return False
        control.on_lost = self._lost
        control.on_answer = self._breaker.answered
        self._control = control
        log.info("tmux control client attached", socket=self.socket_name, pid=control.pid)
        return True

    async def _control_session(self) -> None:
        """Make the control client's session unless it exists; NoServer if none runs (asked
        first: new-session would start a server)."""
        try:
            target = f"={CONTROL_SESSION}"
            await self._run_client("has-session", ["has-session", "-t", target], None)
        except TmuxError as exc:
            if isinstance(exc, NoServer) or not exc.gone:
                raise
            with contextlib.suppress(SessionExists):  # made meanwhile by another tcmd
                await self._run_client(
                    "new-session",
                    ["new-session", "-d", "-s", CONTROL_SESSION, "-x", "80", "-y", "24", "--",
                     "cat"],
                    None,
                )  # fmt: skip

    def disconnect(self) -> None:
        """Stop the control client (calls go back to a client process each)."""
        control, self._control = self._control, None
        if control is not None:
            control.on_lost = lambda: None
            control.close()

    def _lost(self) -> None:
        log.warning("tmux control client lost", socket=self.socket_name)
        self._control = None

    async def ensure_server(self) -> None:
        """Write the config and start the server (no-op start if it already runs)."""
        await asyncio.to_thread(self._write_config)
        await self.run("start-server")
        # Re-applies the options when the server was already running (daemon restart);
        # on a fresh server it also proves that exit-empty kept it alive.
        await self.run("source-file", str(self.config_path))
        await self.connect()

    def _write_config(self) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(CONFIG)

    async def new_session(
        self, name: str, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
        width: int = 200, height: int = 50,
    ) -> PaneInfo:  # fmt: skip
        """Start a detached session whose only pane execs `argv` (no shell)."""
        if not _SESSION_NAME.fullmatch(name):
            raise InvalidParams(f"bad session name {name!r}", data={"field": "name"})
        size = ["-x", str(width), "-y", str(height)]
        out = await self.run(
            "new-session", "-d", "-s", name, *size, "-P", "-F", PANE_FORMAT,
            *_spawn_args(argv, cwd, env),
        )  # fmt: skip
        return _parse_pane(out.rstrip("\n"))

    async def respawn(
        self, target: str, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]
    ) -> PaneInfo:
        """Kill whatever runs in the pane and exec `argv` in its place."""
        tgt = _target(target)
        await self.run("respawn-pane", "-k", "-t", tgt, *_spawn_args(argv, cwd, env))
        info = await self.pane(target)
        if info is None:
            raise TmuxError(f"respawn-pane -t {tgt}", "pane vanished after respawn")
        return info

    async def panes(self) -> list[PaneInfo]:
        """Every pane of the server in one list-panes call; [] when no server runs."""
        return await self._list("-a")

    async def pane(self, target: str) -> PaneInfo | None:
        """The pane `target` names (pane id or session name), or None."""
        found = await self._list("-t", _target(target))
        if target.startswith("%"):  # list-panes -t %N lists the whole window
            return next((p for p in found if p.pane_id == target), None)
        return found[0] if found else None

    async def _list(self, *scope: str) -> list[PaneInfo]:
        found = await self._list_once(scope)
        if any(p.dead and p.dead_status is None and p.dead_signal is None for p in found):
            # A child that exits while tmux runs its utmp helper stays an unreaped zombie
            # (no status) until tmux sees another SIGCHLD: a finished job provides one.
            await self.run("run-shell", "true")
            found = await self._list_once(scope)
        return found

    async def _list_once(self, scope: Sequence[str]) -> list[PaneInfo]:
        try:
            out = await self.run("list-panes", *scope, "-F", PANE_FORMAT)
        except TmuxError as exc:
            if exc.gone:  # no server, no such target, or (3.3a) no session at all
                return []
            raise
        panes = (_parse_pane(line) for line in out.splitlines() if line)
        return [p for p in panes if p.session != CONTROL_SESSION]

    async def capture(self, target: str, lines: int = 50, *, escapes: bool = False) -> str:
        """The last `lines` lines (history + screen), trailing blank lines dropped."""
        lines = max(lines, 1)
        args = ["capture-pane", "-p", "-J", "-S", f"-{lines}", "-t", _target(target)]
        out = await self.run(*args, *(["-e"] if escapes else []))
        rows = [row.rstrip() for row in out.split("\n")]
        while rows and not rows[-1]:
            rows.pop()
        return "\n".join(rows[-lines:])

    async def paste(self, target: str, text: str, *, enter: bool = False) -> None:
        """Paste `text` (sanitised) as one bracketed paste through a private buffer.

        With ``enter``, a separate Enter key follows in the same tmux client call (one
        process instead of three: load-buffer; paste-buffer; send-keys).
        """
        data = sanitize(text).encode()
        if not data:
            return
        buffer = f"tcm-{uuid.uuid4().hex}"
        pane = _target(target)
        then_enter = [THEN, "send-keys", "-t", pane, "Enter"] if enter else []
        paste = [THEN, "paste-buffer", "-p", "-d", "-b", buffer, "-t", pane, *then_enter]
        try:
            if self.connected and len(data) <= PASTE_OVER_CONTROL_MAX:
                # no stdin there: the (sanitised) text goes as one quoted argument
                await self.run("set-buffer", "-b", buffer, "--", data.decode(), *paste)
            else:
                await self.run("load-buffer", "-b", buffer, "-", *paste, stdin=data)
        except TmuxError:
            with contextlib.suppress(TmuxError):
                await self.run("delete-buffer", "-b", buffer)
            raise

    async def send_keys(self, target: str, *keys: str) -> None:
        """Send key names ("Enter", "Escape", "C-c")."""
        if keys:
            await self.run("send-keys", "-t", _target(target), "--", *keys)

    async def send_text(self, target: str, text: str) -> None:
        """Type `text` literally (send-keys -l)."""
        if text:
            await self.run("send-keys", "-t", _target(target), "-l", "--", text)

    async def kill_session(self, name: str) -> None:
        """Kill session `name`; no error if it is already gone."""
        try:
            await self.run("kill-session", "-t", f"={name}")
        except TmuxError as exc:
            if not exc.gone:
                raise

    async def has_session(self, name: str) -> bool:
        """Whether session `name` exists (exact name, no prefix match)."""
        try:
            await self.run("has-session", "-t", f"={name}")
        except TmuxError as exc:
            if exc.gone:
                return False
            raise
        return True

    async def kill_server(self) -> None:
        """Kill the server and every pane in it; no error if it is not running."""
        self.disconnect()
        with contextlib.suppress(NoServer):
            await self.run("kill-server")

    def attach_argv(self, target: str, *, read_only: bool) -> list[str]:
        """argv that attaches a terminal to `target` (the CLI execs it)."""
        tgt = target if target.startswith(("%", "$", "@", "=")) else f"={target}"
        argv = [TMUX_BIN, "-L", self.socket_name, "attach-session", "-t", tgt]
        return [*argv, "-r"] if read_only else argv
