"""Pre-accept Claude Code's trust dialog for a directory in ``~/.claude.json``.

Claude rewrites that file while it runs, so the edit is atomic (temp file + rename),
made under an ``flock`` on a sibling lock file, and keeps every other key as it was. A
file that is not valid JSON is left alone (we never destroy a person's settings).
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import orjson
import structlog

from tcmd.atomic import replace_atomically

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
        replace_atomically(claude_json, orjson.dumps(data, option=orjson.OPT_INDENT_2), mode)
        return True
