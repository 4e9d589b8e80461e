"""Read a tasks file for ``tcmctl``: TOML, JSON or JSON Lines, from a path or stdin.

The format follows the extension:

- ``.toml``: top-level keys are the run's options; each ``[[tasks]]`` table is a task.
- ``.json``: a list of tasks, or an object with ``"tasks"`` and the options beside it.
- ``.jsonl`` / ``.ndjson``: one task object per line; blank lines and lines starting
  with ``#`` are skipped; no options.

``-`` reads stdin, and any other extension (``/dev/fd/63`` from ``<(…)``, say) is
sniffed: JSON, then JSON Lines, then TOML — TOML can start with ``[`` too, so the first
character decides nothing. A sniffed JSON object without ``"tasks"`` that has an ``id``
or ``instruction`` is one task, as the same line in JSON Lines would be.

Top-level keys other than ``tasks`` must be run options (``OPTIONS``): an unknown one is
refused as the daemon refuses an unknown task key. Tasks are kept exactly as written
(camelCase keys, strings untouched); only the fields below are checked, and a
``TasksFileError`` names the file, the task and the field:

- ``id``, ``instruction``: required, non-empty strings; ids unique.
- ``name``, ``context``: strings; ``completionPattern``: a string that compiles as a regex.
- ``priority``: one of critical, high, medium, low; ``timeoutMs``: a positive integer.
- ``dependsOn``: a list of ids of tasks in the same file; ``runIfDependencyFails``: a
  boolean. Cycles are found by the daemon, which names one.

Imported by the CLI, which must start fast: stdlib and orjson only, tomllib on demand.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tcmd.errors import InvalidParams

PRIORITIES = ("critical", "high", "medium", "low")
FORMATS = {".toml": "toml", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STDIN = Path("-")

OPTIONS = (
    "agent",
    "isolation",
    "keepSpecialists",
    "managers",
    "maxConcurrent",
    "maxCostUsd",
    "maxTokens",
    "retry",
    "strategy",
    "timeoutMs",
    "workDir",
)
_REQUIRED = ("id", "instruction")
_CHECKED = (
    *_REQUIRED,
    "name",
    "context",
    "completionPattern",
    "priority",
    "timeoutMs",
    "dependsOn",
    "runIfDependencyFails",
)


class TasksFileError(InvalidParams, ValueError):
    """A tasks file cannot be read or is invalid; the message names file, task and field.

    ``where`` is ``tasks[2] (id 't03')`` for TOML and JSON, ``line 7`` for JSON Lines.
    """

    def __init__(
        self, source: str, message: str, *, where: str | None = None, field: str | None = None
    ) -> None:
        parts = [source, where, field, message]
        super().__init__(
            ": ".join(p for p in parts if p),
            data={"file": source, "where": where, "field": field},
        )
        self.source = source
        self.where = where
        self.field = field


@dataclass
class TasksFile:
    """The tasks of a run, as written, and the top-level options beside them."""

    tasks: list[dict[str, Any]]
    options: dict[str, Any]


@dataclass(slots=True)
class _Raw:
    """Parsed but unchecked: whatever the file holds where the tasks should be."""

    tasks: Any
    options: dict[str, Any]
    lines: list[int] | None = None  # JSON Lines: the line of each task, for errors


def load_tasks(path: Path) -> TasksFile:
    """Read and check a tasks file; ``-`` is stdin. Raises ``TasksFileError``."""
    if path == STDIN:
        source, data = "<stdin>", sys.stdin.buffer.read()
    else:
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TasksFileError(source, f"cannot read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TasksFileError(source, f"not UTF-8 (bad byte at offset {exc.start})") from exc
    fmt = None if path == STDIN else FORMATS.get(path.suffix.lower())
    return parse_tasks(text, fmt=fmt, source=source)


def parse_tasks(text: str, *, fmt: str | None, source: str) -> TasksFile:
    """Parse and check tasks text; ``fmt`` is toml, json or jsonl, or None to sniff."""
    if fmt == "toml":
        raw = _from_toml(text, source)
    elif fmt == "json":
        raw = _from_json(text, source)
    elif fmt == "jsonl":
        raw = _from_jsonl(text, source)
    elif fmt is None:
        raw = _sniff(text, source)
    else:
        raise ValueError(f"unknown tasks format {fmt!r}")
    return _check(raw, source)


# Parsing: text → _Raw. Each raises TasksFileError for syntax and shape, nothing else.


def _from_toml(text: str, source: str) -> _Raw:
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TasksFileError(source, f"invalid TOML: {exc}") from exc
    except RecursionError as exc:
        raise TasksFileError(source, "invalid TOML: nested too deeply") from exc
    if "tasks" not in data:
        raise TasksFileError(source, "no tasks: add [[tasks]] tables")
    tasks = data.pop("tasks")
    if not isinstance(tasks, list):
        raise TasksFileError(
            source, f"must be an array of tables ([[tasks]]), not {_kind(tasks)}", field="tasks"
        )
    return _Raw(tasks, data)


def _from_json(text: str, source: str) -> _Raw:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise TasksFileError(source, f"invalid JSON: {exc}") from exc
    return _json_shape(data, source)


def _json_shape(data: Any, source: str) -> _Raw:
    if isinstance(data, list):
        return _Raw(data, {})
    if not isinstance(data, dict):
        raise TasksFileError(
            source, f'expected a list of tasks or an object with "tasks", not {_kind(data)}'
        )
    if "tasks" not in data:
        raise TasksFileError(source, 'no tasks: the object needs a "tasks" list')
    tasks = data.pop("tasks")
    return _Raw(tasks, data)


def _from_jsonl(text: str, source: str) -> _Raw:
    tasks: list[Any] = []
    lines: list[int] = []
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends, which
    # JSON allows raw inside strings.
    for n, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            tasks.append(orjson.loads(stripped))
        except orjson.JSONDecodeError as exc:
            raise TasksFileError(source, f"invalid JSON: {exc.msg}", where=f"line {n}") from exc
        lines.append(n)
    return _Raw(tasks, {}, lines)


def _sniff(text: str, source: str) -> _Raw:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        json_error = str(exc)
    else:
        if isinstance(data, dict) and "tasks" not in data and {"id", "instruction"} & data.keys():
            return _Raw([data], {})
        return _json_shape(data, source)
    errors = [f"JSON: {json_error}"]
    for name, parse in (("JSON Lines", _from_jsonl), ("TOML", _from_toml)):
        try:
            return parse(text, source)
        except TasksFileError as exc:
            errors.append(f"{name}: {exc.message.removeprefix(source + ': ')}")
    raise TasksFileError(source, "not JSON, JSON Lines or TOML (" + "; ".join(errors) + ")")


# Checking: _Raw → TasksFile.


def _check(raw: _Raw, source: str) -> TasksFile:
    for key in raw.options:
        if key not in OPTIONS:
            raise TasksFileError(
                source, f"unexpected field (a run's options: {', '.join(OPTIONS)})", field=key
            )
    tasks = raw.tasks
    if not isinstance(tasks, list):
        raise TasksFileError(source, f"must be a list, not {_kind(tasks)}", field="tasks")
    if not tasks:
        raise TasksFileError(source, "no tasks: the list is empty", field="tasks")
    first_seen: dict[str, str] = {}
    for i, task in enumerate(tasks):
        where = f"line {raw.lines[i]}" if raw.lines is not None else f"tasks[{i}]"
        _check_task(task, source, where)
        task_id = task["id"]
        if task_id in first_seen:
            raise TasksFileError(
                source,
                f"duplicate {_show(task_id)} (first at {first_seen[task_id]})",
                where=where,
                field="id",
            )
        first_seen[task_id] = where
    for i, task in enumerate(tasks):
        for dep in task.get("dependsOn", ()):
            if dep not in first_seen:
                where = f"line {raw.lines[i]}" if raw.lines is not None else f"tasks[{i}]"
                raise TasksFileError(
                    source,
                    f"{_show(dep)} is no task of this file",
                    where=f"{where} (id {_show(task['id'])})",
                    field="dependsOn",
                )
    return TasksFile(tasks=tasks, options=raw.options)


def _check_task(task: Any, source: str, where: str) -> None:
    if not isinstance(task, dict):
        raise TasksFileError(source, f"a task must be an object, not {_kind(task)}", where=where)
    for field in _CHECKED:
        if field not in task:
            if field in _REQUIRED:
                raise TasksFileError(
                    source, "missing (a non-empty string)", where=where, field=field
                )
            continue
        problem = _problem(field, task[field])
        if problem:
            raise TasksFileError(source, problem, where=where, field=field)
        if field == "id":  # later errors name the task by its id too
            where = f"{where} (id {_show(task['id'])})"


def _problem(field: str, value: Any) -> str | None:
    """What is wrong with the value of a checked field, or None."""
    if field == "priority":
        if value in PRIORITIES:
            return None
        return f"must be one of {', '.join(PRIORITIES)}, not {_show(value)}"
    if field == "runIfDependencyFails":
        return None if type(value) is bool else f"must be true or false, not {_show(value)}"
    if field == "dependsOn":
        if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
            return None
        return f"must be a list of task ids, not {_show(value)}"
    if field == "timeoutMs":
        # type() rather than isinstance(): bool is an int subclass, and true is no timeout.
        if type(value) is int and value > 0:
            return None
        return f"must be a positive integer (milliseconds), not {_show(value)}"
    if not isinstance(value, str):
        return f"must be a string, not {_kind(value)}"
    if field in _REQUIRED and not value.strip():
        return "must not be empty"
    if field == "completionPattern":
        try:
            re.compile(value)
        except re.error as exc:
            return f"not a valid regex: {exc}"
    return None


def _kind(value: Any) -> str:
    """Name a parsed value's type in the file's terms."""
    kinds = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }
    return kinds.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` for error messages: control characters escaped, long values cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
