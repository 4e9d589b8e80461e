"""The first process of every instance's pane: it keeps the agent's whole tree inside.

tcmd decides who calls it from the kernel: a caller that descends from an instance's pane
process is that instance (docs/operations.md). This launcher makes that ancestry hard to
leave. It marks itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so a process of the
agent that double-forks to shed its parent is re-parented here, not to init; it starts the
agent, reaps every orphan, and when the agent ends it ends what the agent left running, then
exits the way the agent did (tmux shows the agent's exit status or signal), after writing
that status into the HANDOFF pipe for tcmd (instances/deaths.py).

The agent starts only after tcmd has recorded the pane's pid, so the agent's first hook is
never mistaken for a stranger's. Before it creates the pane, tcmd makes a pipe (never a file:
making a file or a FIFO per spawn cost tcmd more CPU than the rest of a task) and names it
to the launcher as HANDOFF, ``/proc/<tcmd's pid>/fd/<its read end>:<the pipe's inode>``.
Once it knows the pane's pid, tcmd writes ``KEY=VALUE`` lines and an empty line into it and
closes its write end. The launcher opens the pipe through /proc (the inode proves it is
still the same pipe, not an fd number reused meanwhile), reads those lines (the instance's
token) into the agent's environment only: the token is never in argv, never in tmux, never
in a file. The launcher then opens the pipe's write end and, when the agent has ended,
writes ``exit <wait status>`` into it: tcmd keeps its read end for the pane's life and reads
how the agent ended the moment the kernel says the pane process is gone
(instances/deaths.py), before tmux may have noticed. Usage::

    python -I -S -c "<command_line()>" HANDOFF [--nice N] -- AGENT_ARGV...

``--nice N`` lowers the CPU priority of the pane's whole tree (the launcher, the agent, its
hooks and tools) to niceness N before the agent starts (``TCM_AGENT_NICE``): hundreds of
agents starting on a few cores must not starve tcmd, which answers them all.

Start-up matters (one per spawn): it imports little (os, sys, signal, select, ctypes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
from collections.abc import Mapping

PR_SET_CHILD_SUBREAPER = 36
HANDOFF_TIMEOUT_S = 60.0  # tcmd hands over within milliseconds; this is for a dead tcmd
EXIT_LINE = b"exit "  # + the agent's raw wait status: the launcher's last words to tcmd
AUTOGROUP_TRIES, AUTOGROUP_RETRY_S = 6, 0.05  # (kernel/sched/autogroup.c: HZ / 10 apart)
LEFTOVER_GRACE_S = 1.0  # SIGTERM, then this long, then SIGKILL for what the agent left behind
_FORWARD = (signal.SIGHUP, signal.SIGTERM)  # tmux's kill: pass it on to the agent
_IGNORE = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP)  # keys on the pane: the agent's


def command_line(python: str) -> list[str]:
    """The argv prefix that starts this launcher with ``python`` (HANDOFF, --, ARGV follow)."""
    root = os.path.abspath(__file__)
    for _ in range(3):  # tcmd/instances/launcher.py -> the directory holding tcmd
        root = os.path.dirname(root)
    code = (
        f"import sys; sys.path.insert(0, {root!r}); "
        "from tcmd.instances.launcher import main; sys.exit(main(sys.argv[1:]))"
    )
    return [python, "-I", "-S", "-c", code]


class Handoff:
    """tcmd's side of one launch: the pipe it hands the launcher its environment through,
    and through which the launcher tells how the agent ended. tcmd holds the read end
    until the pane is done with (``close``)."""

    def __init__(self) -> None:
        self.read_fd, write_fd = os.pipe()  # close-on-exec: no tmux client inherits it
        self._write_fd: int | None = write_fd
        os.set_blocking(self.read_fd, False)
        inode = os.fstat(self.read_fd).st_ino
        self.address = f"/proc/{os.getpid()}/fd/{self.read_fd}:{inode}"

    def hand_over(self, env: Mapping[str, str]) -> None:
        """Give the launcher its environment (``KEY=VALUE`` lines, an empty line). The lines
        wait in the pipe, held by the read end, until the launcher reads them."""
        if self._write_fd is None:  # closed: the pane process is gone already
            return
        try:
            os.write(self._write_fd, "".join(f"{k}={v}\n" for k, v in env.items()).encode() + b"\n")
        finally:
            os.close(self._write_fd)
            self._write_fd = None

    def exit_status(self) -> int | None:
        """The raw wait status the launcher wrote when its agent ended; None if none came
        (the launcher was killed, or never read its handoff)."""
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                data += chunk
        for line in reversed(data.split(b"\n")):
            said = line.removeprefix(EXIT_LINE)
            if said != line and said.isdigit():
                return int(said)
        return None

    def close(self) -> None:
        """Idempotent. Closed before ``hand_over``, the launcher gets nothing and does not
        start the agent."""
        for fd in (self._write_fd, self.read_fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._write_fd, self.read_fd = None, -1


def _open_pipe(address: str, flags: int) -> int | None:
    """The launcher's side: an fd on the pipe ``address`` names, None if it is gone (or an
    fd number that now names something else)."""
    path, _, inode = address.rpartition(":")
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError:
        return None
    info = os.fstat(fd)
    if not inode.isdigit() or info.st_ino != int(inode) or not stat.S_ISFIFO(info.st_mode):
        os.close(fd)
        return None
    return fd


def read_handoff(address: str, timeout_s: float = HANDOFF_TIMEOUT_S) -> dict[str, str] | None:
    """The launcher's side: the ``KEY=VALUE`` lines tcmd hands over; None if none came."""
    import select
    import time

    fd = _open_pipe(address, os.O_RDONLY)
    if fd is None:
        return None
    data = b""
    deadline = time.monotonic() + timeout_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                return None
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:  # every writer gone before the empty line: tcmd gave up on us
                return None
            data += chunk
            if data == b"\n" or data.endswith(b"\n\n"):
                lines = data.decode("utf-8", "replace").splitlines()
                return dict(line.split("=", 1) for line in lines if "=" in line)
    finally:
        os.close(fd)
    return None


def main(argv: list[str]) -> int:
    nice: int | None = None
    if len(argv) >= 3 and argv[1] == "--nice" and argv[2].isdigit():
        nice, argv = int(argv[2]), [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: launcher HANDOFF [--nice N] -- ARGV...\n")
        return 2
    handed = read_handoff(argv[0])
    if handed is None:  # tcmd never confirmed this pane (it failed, or this is no pane of ours)
        sys.stderr.write("tcm: the daemon did not hand this pane over; not starting the agent\n")
        return 1
    env = {**os.environ, **handed}
    tell = _open_pipe(argv[0], os.O_WRONLY)  # for our last words; none: tcmd asks tmux
    if nice is not None:
        _lower_priority(nice)
    _become_subreaper()
    child = os.fork()
    if child == 0:  # the agent: default signal handling, then exec
        try:
            os.execvpe(argv[2], argv[2:], env)  # noqa: S606 (an argv, never a shell)
        except OSError as exc:
            sys.stderr.write(f"tcm: cannot start {argv[2]}: {exc.strerror}\n")
        os._exit(127)
    for sig in _FORWARD:
        signal.signal(sig, lambda signum, frame: _kill(child, signum))
    for sig in _IGNORE:  # caught, not ignored: an ignored signal would stay so in the child
        signal.signal(sig, lambda signum, frame: None)
    status = _wait_for(child)
    _end_leftovers()
    if tell is not None:  # how the agent ended, for tcmd, which sees this process end
        with contextlib.suppress(OSError):  # (instances/deaths.py) before tmux may notice
            os.write(tell, EXIT_LINE + str(status).encode() + b"\n")
    return _exit_like(status)


def niceness_for(agent_nice: int) -> int | None:
    """tcmd's side: the niceness its agents get, ``agent_nice`` above its own (None: as is)."""
    if agent_nice <= 0:
        return None
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + agent_nice)


def _lower_priority(nice: int) -> None:
    """Niceness ``nice`` for this process and all it starts; never raised (that needs root)."""
    with contextlib.suppress(OSError):
        if nice > os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    _lower_autogroup(nice)


def _lower_autogroup(nice: int) -> None:
    """The same niceness for the pane's autogroup, where the kernel has them.

    With autogroups (``kernel.sched_autogroup_enabled``, the default of many distributions)
    the scheduler shares the CPU between sessions first, and a process's own niceness ranks
    it only within its session. tmux starts every pane as a session of its own, so without
    this each agent would weigh as much as tcmd however nice it is. The kernel lets an
    unprivileged process lower its autogroup's priority, at most one such change per 100 ms
    on the whole machine (EAGAIN): a few tries, then the agent starts anyway.
    """
    import time

    for _ in range(AUTOGROUP_TRIES):
        try:
            with open("/proc/self/autogroup", "r+", encoding="ascii") as fh:
                _, _, current = fh.read().rpartition(" ")
                if current.strip().lstrip("-").isdigit() and int(current) >= nice:
                    return
                fh.write(str(nice))
            return
        except BlockingIOError:  # EAGAIN: another change within the last 100 ms
            time.sleep(AUTOGROUP_RETRY_S)  # a kernel rate limit, not a condition to poll
        except OSError:  # no autogroups here (or not allowed): the process niceness stands
            return


def _become_subreaper() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the ancestry check still holds without it
        return


def _wait_for(child: int) -> int:
    """Reap children (orphans included) until ``child`` ends; its wait status."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == child:
            return status


def _children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _end_leftovers() -> None:
    """SIGTERM what the agent left running (re-parented here), SIGKILL it after a grace."""
    if not (kids := _children()):
        return
    import time

    for pid in kids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.02)  # a bounded grace before SIGKILL, not a wait for a condition
        except ChildProcessError:
            return
    while kids := _children():  # orphans of orphans keep arriving until the tree is gone
        for pid in kids:
            _kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):  # it ended meanwhile
        os.kill(pid, sig)


def _exit_like(status: int) -> int:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128
