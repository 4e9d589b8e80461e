"""Claude Code's transcript: the token usage of each assistant message, read incrementally.

A transcript (the ``transcript_path`` of every hook payload) is JSON Lines, one entry per
line, appended to as the session goes on. The entries that cost money are the assistant
ones::

    {"type": "assistant", "requestId": "req_…", "uuid": "…",
     "message": {"id": "msg_…", "model": "claude-sonnet-4-5", "content": [...],
                 "usage": {"input_tokens": 4, "output_tokens": 120,
                           "cache_creation_input_tokens": 2000,
                           "cache_read_input_tokens": 15000,
                           "cache_creation": {"ephemeral_5m_input_tokens": 2000,
                                              "ephemeral_1h_input_tokens": 0}}}}

Claude Code writes one line per content block (thinking, text, tool_use), each with the
same message id, request id and usage; a usage may also grow between the lines of one
message. So a message is one *identity* (message id + request id), and what it cost is
the field-wise maximum of its lines (``Tally.add`` counts only the growth). Entries of the
model ``<synthetic>`` (API errors Claude Code writes itself) cost nothing and are skipped,
as are lines of any other type.

``read_new`` reads from a byte offset to the last complete line (a line still being
written is read next time), opening the file without blocking and only if it is a regular
file: the path comes from the agent.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

SYNTHETIC = "<synthetic>"
# input, output, cache creation (all), cache read, cache creation at the 1-hour rate
KINDS = ("input", "output", "cacheCreation", "cacheRead")
WIDTH = 5  # a count vector: the four kinds, then the 1-hour part of cacheCreation
MAX_READ = 64 * 1024 * 1024  # per call; the rest is read at the next hook
WINDOW = 4096  # of a long line's start and end that say whether it is an assistant one
ASSISTANT, USAGE = b'"assistant"', b'"usage"'
_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
Counts = list[int]
Buffer = bytes | mmap.mmap


class NotATranscript(Exception):
    """The path names no regular file (a FIFO, a directory, nothing): not read."""


@dataclass(frozen=True, slots=True)
class Message:
    """One assistant line's usage: its identity, model and count vector."""

    key: str
    model: str
    counts: tuple[int, ...]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def message_of(entry: Any) -> Message | None:
    """The usage an entry reports, or None (not an assistant message with usage)."""
    if not isinstance(entry, dict) or entry.get("type") != "assistant":
        return None
    message = entry.get("message")
    if not isinstance(message, dict):
        return None
    usage, model = message.get("usage"), message.get("model")
    if not isinstance(usage, dict) or not isinstance(model, str) or model == SYNTHETIC:
        return None
    ids = [x for x in (message.get("id"), entry.get("requestId")) if isinstance(x, str) and x]
    if not ids:  # nothing to recognise its other lines by: each line is its own
        uuid = entry.get("uuid")
        ids = [uuid if isinstance(uuid, str) and uuid else f"anon:{id(entry)}"]
    breakdown = usage.get("cache_creation")
    hour = _count(breakdown.get("ephemeral_1h_input_tokens")) if isinstance(breakdown, dict) else 0
    counts = tuple(_count(usage.get(f)) for f in _FIELDS)
    return Message(":".join(ids), model, (*counts, min(hour, counts[2])))


def messages(buf: Buffer, start: int, stop: int) -> Iterator[Message]:
    """The usage-bearing assistant entries among the complete lines of ``buf[start:stop]``.

    Most of a transcript's bytes are tool results and file snapshots in user lines, so
    lines are found with a one-byte search (memchr) and only the assistant ones parsed.
    A long line is judged by its two ends: Claude Code writes ``"role":"assistant"``
    near the start of an assistant line and ``"type":"assistant"`` after its message,
    at the end; a long user line is skipped without reading its middle.
    """
    while start < stop:
        end = buf.find(b"\n", start, stop)
        if end == -1:
            end = stop
        if end - start > 2 * WINDOW:
            head, tail = buf[start : start + WINDOW], buf[end - WINDOW : end]
            line = buf[start:end] if ASSISTANT in head or ASSISTANT in tail else b""
        else:
            line = buf[start:end]
        if ASSISTANT in line and USAGE in line:
            try:
                found = message_of(orjson.loads(line))
            except orjson.JSONDecodeError:
                found = None
            if found is not None:
                yield found
        start = end + 1


def read_new(path: str, offset: int) -> tuple[list[Message], int]:
    """The messages in the complete lines of ``path`` after ``offset``; the offset after
    them (a line still being written is read next time).

    The file is mapped, not copied: only the lines that are parsed are ever copied. A
    file shorter than ``offset`` was replaced or cut: it is read again from the start
    (identities already counted are not counted twice, see ``Tally``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise NotATranscript(f"{path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotATranscript(f"{path}: not a regular file")
        if info.st_size < offset:
            offset = 0
        if info.st_size == offset:
            return [], offset
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        length = min(info.st_size - base, MAX_READ)
        with mmap.mmap(fd, length, prot=mmap.PROT_READ, offset=base) as view:
            last = view.rfind(b"\n", offset - base)
            if last == -1:
                return [], offset
            found = list(messages(view, offset - base, last + 1))
        return found, base + last + 1
    finally:
        os.close(fd)


class Tally:
    """What was counted per message identity, so a repeated line adds only its growth.

    Keeps the ``keep`` most recent identities: a message's lines are written together, so
    this is only a guard against re-reads (a replaced file) and copied history.
    """

    def __init__(self, seen: dict[str, Counts] | None = None, keep: int = 64) -> None:
        self.seen: dict[str, Counts] = dict(seen or {})
        self.keep = keep

    def add(self, msg: Message) -> Counts | None:
        """The growth ``msg`` brings over what its identity already counted (None: none)."""
        before = self.seen.get(msg.key)
        if before is None:
            grown = list(msg.counts)
            self.seen[msg.key] = grown
        else:
            grown = [max(0, new - old) for new, old in zip(msg.counts, before, strict=True)]
            if not any(grown):
                return None
            self.seen[msg.key] = [max(n, o) for n, o in zip(msg.counts, before, strict=True)]
            self.seen[msg.key] = self.seen.pop(msg.key)  # most recent last
        while len(self.seen) > self.keep:
            del self.seen[next(iter(self.seen))]
        return grown if any(grown) else None
