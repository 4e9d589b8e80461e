"""Pre-accept Claude Code's trust dialog for a directory in ``~/.claude.json``.

Claude rewrites that file while it runs, so the edit is atomic (temp file + rename),
made under an ``flock`` on a sibling lock file, and keeps every other key as it was. A
file that is not valid JSON is left alone (we never destroy a person's settings).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
import structlog

log = structlog.get_logger(__name__)


def mark_trusted(claude_json: Path, work_dir: Path) -> bool:
    """Set ``projects[work_dir].hasTrustDialogAccepted``; True when the file changed."""
    key = str(work_dir.resolve())
    lock_path = claude_json.with_name(claude_json.name + ".lock")
    claude_json.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, Any] = {}
        mode = 0o600
        if claude_json.exists():
            raw = claude_json.read_bytes()
            mode = claude_json.stat().st_mode & 0o777
            try:
                loaded = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError:
                log.warning("not trusting: ~/.claude.json is not valid JSON", path=str(claude_json))
                return False
            if not isinstance(loaded, dict):
                return False
            data = loaded
        projects = data.setdefault("projects", {})
        if not isinstance(projects, dict):
            return False
        entry = projects.setdefault(key, {})
        if not isinstance(entry, dict) or entry.get("hasTrustDialogAccepted") is True:
            return False
        entry["hasTrustDialogAccepted"] = True
        _atomic_write(claude_json, orjson.dumps(data, option=orjson.OPT_INDENT_2), mode)
        return True


def _atomic_write(path: Path, content: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
