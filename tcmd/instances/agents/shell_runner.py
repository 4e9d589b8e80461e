"""The ``shell`` agent: a prompt in a tmux pane that runs each submitted text as a command.

    python -m tcmd.instances.agents.shell_runner [--shell PATH] [--session-id UUID] [--resume UUID]

It takes input the way Claude Code does, so tcmd drives it identically: a ``❯`` input
line, raw keys and bracketed pastes, Enter to submit, Escape or Ctrl-C to interrupt, text
entered while busy queued for after the running command, Ctrl-D on an empty line to quit.
Each submitted text runs as ``SHELL -c TEXT`` (stdin /dev/null, stdout and stderr merged,
its own process group); its output streams to the pane.

State is reported as Claude's hook events, all on one connection (``tcmctl.hook.HookLine``):
SessionStart once ready, UserPromptSubmit when a command starts, Stop when it ends (the
output, plus tcm's ``exit_status`` and ``interrupted``), SessionEnd on exit. A hook that cannot be
delivered is dropped; the runner goes on.

Every task of a parallel run starts one runner, so its start-up is most of what a no-op
task costs. tcmd starts it as ``command_line()`` (``python -I -S -c``: no site, no runpy,
cached bytecode), and it imports no more than it needs: no argparse, pathlib, uuid,
subprocess (``os.posix_spawnp``) or typing, each a few milliseconds.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import select
import signal
import sys
import termios
import time

from tcmctl.hook import HookLine

TYPE_CHECKING = False  # not `from typing import ...`: importing typing costs milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

PROMPT, ECHO, BUSY = "❯ ", "$ ", "⠿ running… (esc to interrupt)"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
ESC_SEQ = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|O.)")
ESC_PARTIAL = re.compile(r"\x1b(\[[0-?]*[ -/]*|O)?")
ESC_WAIT_S = 0.03  # how long a lone ESC may wait for the rest of a sequence before it is a key
KILL_AFTER_S = 2.0  # SIGINT first; SIGKILL the group if it outlives this
KEEP_BYTES = 64 * 1024


USAGE = "usage: shell_runner [--shell PATH] [--session-id UUID] [--resume SESSION_ID]\n"
_OPTIONS = ("--shell", "--session-id", "--resume")


def command_line(python: str) -> list[str]:
    """The fastest argv that starts this runner with ``python`` (options to be appended)."""
    root = os.path.abspath(__file__)
    for _ in range(4):  # tcmd/instances/agents/shell_runner.py -> the directory holding tcmd
        root = os.path.dirname(root)
    code = (
        f"import sys; sys.path.insert(0, {root!r}); "
        "from tcmd.instances.agents.shell_runner import main; sys.exit(main(sys.argv[1:]))"
    )
    return [python, "-I", "-S", "-c", code]


def pick_shell(env: Mapping[str, str]) -> str:
    """$SHELL when it is bash/sh/zsh, else /bin/bash when present, else /bin/sh."""
    if os.path.basename(env.get("SHELL", "")) in ("bash", "sh", "zsh"):
        return env["SHELL"]
    return "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


def new_uuid() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` gives."""
    b = bytearray(os.urandom(16))
    b[6], b[8] = b[6] & 0x0F | 0x40, b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def write(text: str | bytes) -> None:
    """Write everything to the terminal; a hung-up terminal is not our problem."""
    data = text.encode() if isinstance(text, str) else text
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(1, data) :]


class Job:
    """One running command: its process group, output pipe and the tail of its output."""

    def __init__(self, shell: str, text: str) -> None:
        read_fd, write_fd = os.pipe()
        try:
            self.pid = os.posix_spawnp(
                shell,
                [shell, "-c", text],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_fd, 1),
                    (os.POSIX_SPAWN_DUP2, write_fd, 2),
                ],
                setsid=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.fd: int | None = read_fd
        self.returncode: int | None = None  # -N: killed by signal N
        self.tail = bytearray()
        self.interrupted = False

    def poll(self) -> int | None:
        """The exit code once the command has ended (reaping it), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def pump(self, drain: bool = False) -> None:
        """Copy output to the terminal, closing the pipe at its end; with ``drain``, take
        what it holds without waiting (a background child may keep it open) and close it."""
        if self.fd is None:
            return
        os.set_blocking(self.fd, not drain)
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.fd, KEEP_BYTES):
                write(data)
                self.tail += data
                del self.tail[:-KEEP_BYTES]
                if not drain:
                    return
        os.close(self.fd)
        self.fd = None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class Runner:
    """The input line, the command queue and the hooks of one shell agent session."""

    def __init__(self, shell: str, session_id: str, source: str) -> None:
        self.shell, self.session_id, self.source = shell, session_id, source
        self.cwd = os.getcwd()
        self.text = ""  # the input line
        self.drawn = 0  # newlines in the input line as drawn, to redraw it from its start
        self.queue: list[str] = []
        self.job: Job | None = None
        self.kill_at: tuple[Job, float] | None = None
        self.pending = ""  # undecoded keys: an unfinished escape sequence or paste end
        self.in_paste = False
        self.esc_deadline: float | None = None
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.hooks = HookLine()

    def hook(self, event: str, **fields: Any) -> None:
        self.hooks.send(
            {
                "session_id": self.session_id,
                "transcript_path": "",
                "cwd": self.cwd,
                "hook_event_name": event,
                **fields,
            }
        )

    def draw(self, mark: str = PROMPT) -> None:
        """Redraw the input line (and its continuation lines) in place."""
        up = f"\x1b[{self.drawn}A" if self.drawn else ""
        write(f"\r{up}\x1b[J{mark}" + self.text.replace("\n", "\n  "))
        self.drawn = self.text.count("\n")

    def feed(self, data: str) -> int | None:
        """Handle decoded input; an exit status when the session should end."""
        buf, self.pending, self.esc_deadline = self.pending + data, "", None
        i = 0
        while i < len(buf):
            if self.in_paste:
                end = buf.find(PASTE_END, i)
                if end < 0:  # hold back what may be the start of the end marker
                    keep = max(
                        (k for k in range(1, len(PASTE_END)) if buf.endswith(PASTE_END[:k])),
                        default=0,
                    )
                    self.add(buf[i : len(buf) - keep].replace("\r", "\n"))
                    self.pending = buf[len(buf) - keep :]
                    return None
                self.add(buf[i:end].replace("\r", "\n"))
                self.in_paste, i = False, end + len(PASTE_END)
            elif buf[i] == "\x1b":
                if m := ESC_SEQ.match(buf, i):
                    self.in_paste, i = m.group() == PASTE_START, m.end()  # others: ignored
                elif ESC_PARTIAL.fullmatch(buf, i):  # may be a sequence cut by the read
                    self.pending, self.esc_deadline = buf[i:], time.monotonic() + ESC_WAIT_S
                    return None
                else:  # a lone ESC followed by something else: the Escape key
                    self.interrupt()
                    i += 1
            else:
                i += 1
                if (status := self.key(buf[i - 1])) is not None:
                    return status
        return None

    def key(self, ch: str) -> int | None:
        if ch in "\r\n":
            self.enter()
        elif ch in "\x7f\x08\x03":  # Backspace; Ctrl-C clears the line, or interrupts
            if self.job and ch == "\x03":
                self.interrupt()
            else:
                self.text = self.text[:-1] if ch != "\x03" else ""
                if not self.job:
                    self.draw()
        elif ch == "\x04" and not self.job and not self.text:
            return self.end("prompt_input_exit", 0)
        elif ch == "\t" or ch >= " ":
            self.add(ch)
        return None

    def add(self, text: str) -> None:
        self.text += text
        if not self.job:  # while busy the line is not shown: the output owns the screen
            write(text.replace("\n", "\n  "))
            self.drawn += text.count("\n")

    def enter(self) -> None:
        text = self.text.removesuffix("\n")
        if not text.strip():
            return
        if self.job:
            self.queue.append(text)  # run after the current command, as Claude queues
            self.text = ""
        else:
            self.start(text)

    def start(self, text: str, typed: str = "") -> None:
        """Run ``text``; ``typed`` is what the input line holds meanwhile."""
        self.hook("UserPromptSubmit", prompt=text, prompt_id=new_uuid(), permission_mode="default")
        self.text = text
        self.draw(ECHO)
        self.text, self.drawn = typed, 0
        write(f"\n{BUSY}\n")
        try:
            self.job = Job(self.shell, text)
        except OSError as exc:  # the shell itself cannot start: report it as a failed turn
            write(f"{exc}\n")
            self.report(exc.strerror or str(exc), 127, interrupted=False)

    def interrupt(self) -> None:
        """Escape or Ctrl-C while busy: SIGINT the command's group, SIGKILL it later."""
        if self.job and not self.job.interrupted:
            self.job.interrupted = True
            self.job.signal(signal.SIGINT)
            self.kill_at = (self.job, time.monotonic() + KILL_AFTER_S)

    def finish(self, job: Job) -> None:
        job.pump(drain=True)
        code = job.poll()
        assert code is not None
        status = 128 - code if code < 0 else code
        if job.tail and not job.tail.endswith(b"\n"):
            write("\n")
        text = bytes(job.tail).decode("utf-8", errors="replace").removesuffix("\n")
        self.job = None
        self.report(text, status, job.interrupted)

    def report(self, output: str, status: int, interrupted: bool) -> None:
        if status:
            write(f"[exit {status}]\n")
        self.hook(
            "Stop",
            last_assistant_message=output,
            stop_hook_active=False,
            background_tasks=[],
            exit_status=status,
            interrupted=interrupted,
        )
        self.drawn = 0
        if self.queue:
            self.start(self.queue.pop(0), self.text)
        else:
            self.draw()

    def end(self, reason: str, status: int) -> int:
        self.hook("SessionEnd", reason=reason)
        if self.job:
            self.job.signal(signal.SIGKILL)
        self.hooks.close()
        return status

    def run(self, wake: int) -> int:
        """Serve keys, command output and signals until the session ends."""
        write(f"tcm shell agent ({self.shell}) in {self.cwd}\n\n\x1b[?2004h")
        self.draw()
        self.hook("SessionStart", source=self.source, model="shell")
        while True:
            job = self.job
            if job and job.poll() is not None:  # SIGCHLD woke us, or the pipe ended
                self.finish(job)
                continue
            fds = [0, wake] + ([job.fd] if job and job.fd is not None else [])
            ready = select.select(fds, [], [], self.timeout())[0]
            if wake in ready:
                for signum in os.read(wake, 64):
                    if signum in (signal.SIGHUP, signal.SIGTERM):
                        return self.end("other", 128 + signum)
            if job and job.fd is not None and job.fd in ready:
                job.pump()
            if 0 in ready:
                status = self.read_keys()
                if status is not None:
                    return status
            elif self.esc_deadline and time.monotonic() >= self.esc_deadline:
                if self.pending == "\x1b":  # no sequence followed: it is the Escape key
                    self.interrupt()
                self.pending, self.esc_deadline = "", None  # a cut sequence is dropped

    def timeout(self) -> float | None:
        """How long the loop may wait; fires the SIGKILL of an interrupted group when due."""
        now = time.monotonic()
        if self.kill_at and self.kill_at[1] <= now:
            self.kill_at[0].signal(signal.SIGKILL)  # the group may outlive its leader
            self.kill_at = None
        deadlines = [d for d in (self.esc_deadline, self.kill_at and self.kill_at[1]) if d]
        if deadlines:
            return max(0.0, min(deadlines) - now)
        return 1.0 if self.job else None  # a check on the child in case a SIGCHLD was missed

    def read_keys(self) -> int | None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:  # the terminal is gone
            return self.end("other", 0)
        return self.feed(self.decoder.decode(data))


def raw_mode(fd: int) -> list[Any] | None:
    """Switch the tty to raw keys (OPOST kept, so "\\n" prints as CR LF); the old mode."""
    try:
        old = termios.tcgetattr(fd)
    except termios.error:
        return None  # not a terminal: read it as it comes
    new = termios.tcgetattr(fd)
    new[0] &= ~(termios.IXON | termios.ICRNL | termios.INLCR | termios.IGNCR)
    new[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
    new[6][termios.VMIN], new[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, new)
    return old


def main(argv: list[str] | None = None) -> int:
    opts: dict[str, str] = {}
    args = iter(sys.argv[1:] if argv is None else argv)
    for arg in args:  # argparse would cost more than the rest of the start-up
        if arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        name, eq, value = arg.partition("=")
        if not eq:
            value = next(args, "")
        if name not in _OPTIONS or not value:
            sys.stderr.write(f"{USAGE}shell_runner: bad argument {arg!r}\n")
            return 2
        opts[name] = value
    shell = opts.get("--shell") or pick_shell(os.environ)
    resume = opts.get("--resume")
    session_id = resume or opts.get("--session-id") or new_uuid()
    runner = Runner(shell, session_id, "resume" if resume else "startup")
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, lambda *_: None)  # the wakeup fd carries the signal to the loop
    old = raw_mode(0)
    try:
        return runner.run(wake_r)
    finally:
        write("\x1b[?2004l")
        if old is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(0, termios.TCSADRAIN, old)


if __name__ == "__main__":
    sys.exit(main())
