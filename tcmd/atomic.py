"""Replace a file's content all or nothing, even across a power loss."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_atomically(path: Path, body: bytes, mode: int = 0o600) -> None:
    """Write ``body`` to a temp file beside ``path``, fsync, rename over it, fsync the dir."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(body)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself durable
    finally:
        os.close(dir_fd)
