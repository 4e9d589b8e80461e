"""The daemon's refusals in the words of the command line.

The daemon names JSON fields (``timeoutMs``, ``cascade``, ``tasks.1.extraField``); the
user typed flags and wrote a file. A refusal is reworded before it is printed: each field
the command filled from a flag is named by that flag, and a message about a value that
came from a tasks file starts with the file's name (a task named as the file checker
names it: ``tasks[1] (id 'b')``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any


def _word(name: str) -> str:
    return rf"(?<![\w.\-]){re.escape(name)}(?![\w\-])"


def reword(
    message: str,
    flags: Mapping[str, str],
    *,
    file: str | None = None,
    file_fields: Collection[str] = (),
    tasks: Sequence[dict[str, Any]] = (),
) -> str:
    """``message`` with each JSON field in ``flags`` named by its flag, and the file named
    first when the message is about one of ``file_fields`` (``tasks`` included)."""
    for field, flag in flags.items():
        message = re.sub(_word(field) + r"(?!\.)", flag, message)
    if file is None:
        return message
    about_file = any(re.search(_word(f), message) for f in file_fields)

    def task_ref(m: re.Match[str]) -> str:
        i = int(m.group(1))
        tid = tasks[i].get("id") if i < len(tasks) and isinstance(tasks[i], dict) else None
        named = f"tasks[{i}]" + (f" (id {tid!r})" if tid is not None else "")
        return named + (f": {m.group(2)}" if m.group(2) else "")

    message, n = re.subn(r"(?<![\w.])tasks\.(\d+)(?:\.(\w+(?:\.\w+)*))?", task_ref, message)
    if about_file or n:
        message = f"{file}: {message}"
    return message
