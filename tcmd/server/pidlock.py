"""One daemon per socket, per state directory and per tmux server: flock'd pid files.

Each lock is a file holding its owner's pid and socket path. ``flock`` is released by the
kernel when the owner dies, so a lock left by a dead pid is simply taken over; the file
stays readable for the next daemon's error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from tcmd.errors import TcmError


class AlreadyRunning(TcmError):
    """Another tcmd holds one of this daemon's locks."""


def tmux_lock_path(socket_name: str) -> Path:
    """The lock of the tmux server ``tmux -L socket_name``: beside its socket, in tmux's
    own directory (``$TMUX_TMPDIR/tmux-UID``), so every daemon that would drive that
    server sees it, whatever its own socket and state directory."""
    base = Path(os.environ.get("TMUX_TMPDIR") or "/tmp")  # noqa: S108 (tmux's own default)
    return base / f"tmux-{os.getuid()}" / f"{socket_name}.tcmd.lock"


class PidLocks:
    """The locks this daemon holds, released together at exit."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._held: list[tuple[int, Path, bool]] = []  # fd, path, unlink at release

    def acquire(self, path: Path, what: str, *, unlink: bool = False) -> None:
        """Take ``path`` or raise AlreadyRunning naming its owner and ``what`` it does.

        ``unlink``: remove the file at release (for a shared directory such as tmux's);
        a daemon that opened it just before is then holding a deleted file, so every
        acquisition checks the path still names the file it locked.
        """
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
                os.close(fd)
                pid = holder[0].strip() or "?"
                sock = holder[1].strip() if len(holder) > 1 else ""
                owner = f"pid {pid}" + (f", socket {sock}" if sock else "")
                raise AlreadyRunning(f"another tcmd ({owner}) is already {what}") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its owner removed it as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{self.socket_path}\n".encode(), 0)
        self._held.append((fd, path, unlink))

    def release(self) -> None:
        while self._held:
            fd, path, unlink = self._held.pop()
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            os.close(fd)
