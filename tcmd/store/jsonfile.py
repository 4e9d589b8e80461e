"""The embedded StateStore: documents in memory, a snapshot file plus an append-only journal.

Files, in one directory (0700; files 0600):

``state.json``: ``{"version": 1, "seq": N, "data": {ns: {key: value}}, "crc32": "<8 hex>"}``,
``seq`` being the last journal record it includes and ``crc32`` the checksum of every byte
before ``,"crc32":`` (so it is always the last field). A snapshot without ``crc32`` (written
before it existed, or edited by hand and the field deleted) loads unchecked; older tcmds
ignore the field. Replaced atomically: temp file in the same directory, write, fsync,
``os.replace``, fsync the directory.

``journal.log``: the changes since the snapshot, one record per line, ``seq`` +1 per record
and never restarting (orjson escapes control characters: no raw newline inside a record)::

    <crc32 of the json, 8 lowercase hex digits> <json>\\n
    {"seq": N, "op": "put", "ns": ..., "key": ..., "value": ...}
    {"seq": N, "op": "del", "ns": ..., "key": ...}

In memory each document is kept as the JSON bytes its record carries: a ``put`` encodes
the value once (no private decoded copy), a snapshot splices those bytes in unchanged
(``orjson.Fragment``), and ``get``/``items`` decode afresh, so what they return is what a
reload gives and is the caller's to mutate.

Durability: ``put``/``delete`` return after one ``os.write`` of the record on an
``O_APPEND`` fd, so a returned call survives SIGKILL (the bytes are in the kernel) but not
a power loss. ``fsync=True`` adds an ``os.fsync`` per record to survive that too, at the
price of a disk flush per write: ~150 µs instead of ~5 on an idle ext4 SSD, far more on a
busy disk, and the event loop is blocked for all of it.

Compaction: after ``snapshot_every`` records (or twice as many records as there are
documents, if that is more), snapshot then truncate the journal. A crash
in between leaves records the snapshot holds; replay skips ``seq <= snapshot seq``.

Recovery on ``open``: a torn last line (no newline: a crash mid-write) is dropped (debug
log). A complete line that fails its checksum or does not parse is damage: replay stops
there. A record whose ``seq`` is not above the last one met (a duplicated or misplaced
line) is skipped and replay goes on. Damage of either kind copies the journal to
``journal.log.corrupt-<UTC time>`` and logs one warning per kind, also in ``lastError``.
After any of these, or stale records, the store snapshots at once so new records never
follow damaged ones. A damaged snapshot is not guessed around: ``open`` raises
``StateDamaged``, one line naming the file and the fault.

Health: ``ok`` is false from the first failed write (``failingSince``, unix time) until a
write succeeds again. A failed compaction leaves it true: every write is in the journal.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from orjson import Fragment

from tcmd.atomic import replace_atomically
from tcmd.errors import Conflict, Unavailable
from tcmd.store.base import JSON, StateDamaged

log = structlog.get_logger(__name__)

SNAPSHOT_NAME = "state.json"
JOURNAL_NAME = "journal.log"
FORMAT_VERSION = 1
SEAL = b',"crc32":"%08x"}'  # a snapshot's last bytes (then optional whitespace)
SEAL_SIZE = len(SEAL % 0)
SEAL_START = SEAL[:10]

Data = dict[str, dict[str, bytes]]  # ns → key → the document's JSON


class JsonFileStore:
    """StateStore kept in memory, persisted to ``state.json`` + ``journal.log``."""

    backend = "jsonfile"

    def __init__(self, directory: Path, *, snapshot_every: int = 1000, fsync: bool = False) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.directory = Path(directory)
        self.snapshot_every = snapshot_every
        self.fsync = fsync
        self._snapshot_path = self.directory / SNAPSHOT_NAME
        self._journal_path = self.directory / JOURNAL_NAME
        self._where = {"path": str(self.directory)}
        self._data: Data = {}
        # called with (ns, key) after each change is durable (the Redis mirror listens)
        self.listeners: list[Callable[[str, str], None]] = []
        self._fd: int | None = None
        self._seq = 0  # the last sequence number written (or loaded)
        self._snapshot_seq = 0
        self._journal_records = 0  # records in the journal newer than the snapshot
        self._journal_bytes = 0  # journal size after the last good record
        self._compact_at = snapshot_every
        self._broken = False  # a failed append could not be rolled back
        self._failing_since: float | None = None  # unix time of the first of failed writes
        self._last_error: str | None = None

    def open(self) -> None:
        """Load the snapshot, replay the journal on top of it, and open it for appends."""
        if self._fd is not None:
            raise Conflict("state store is already open", data=self._where)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for leftover in self.directory.glob(f".{SNAPSHOT_NAME}.*.tmp"):
                leftover.unlink(missing_ok=True)  # replace_atomically cut short by a crash
            self._data, self._snapshot_seq = self._read_snapshot()
            self._seq = self._snapshot_seq
            self._journal_records = self._journal_bytes = 0
            self._broken = False
            self._failing_since = None
            self._fd = os.open(self._journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if self._replay_journal():
                self.snapshot()
            else:
                self._compact_at = self._compaction_period()
        except BaseException as exc:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._data = {}
            if isinstance(exc, OSError):
                raise self._failure("open", exc) from exc
            raise

    def close(self) -> None:
        """Write a final snapshot and close the journal; a second call does nothing."""
        if self._fd is None:
            return
        try:
            self.snapshot()
        finally:
            os.close(self._fd)
            self._fd = None

    def get(self, ns: str, key: str) -> JSON | None:
        """The document at ``ns/key`` (decoded afresh: the caller's to mutate), or None."""
        doc = self._data.get(ns, {}).get(key)
        return None if doc is None else orjson.loads(doc)

    def items(self, ns: str) -> dict[str, JSON]:
        """Every document in ``ns``, decoded afresh."""
        return {key: orjson.loads(doc) for key, doc in self._data.get(ns, {}).items()}

    def health(self) -> dict[str, JSON]:
        """Figures for ``status``: open and writable (since when not), sizes, the last problem."""
        return {
            "backend": self.backend,
            "ok": self._fd is not None and self._failing_since is None,
            "failingSince": self._failing_since,
            "path": str(self.directory),
            "journalRecords": self._journal_records,
            "snapshotSeq": self._snapshot_seq,
            "lastError": self._last_error,
        }

    def put(self, ns: str, key: str, value: JSON) -> None:
        """Store ``value`` at ``ns/key`` as JSON; in the kernel when this returns."""
        try:
            doc = orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            raise TypeError(f"cannot store {ns!r}/{key!r}: not JSON-serialisable: {exc}") from exc
        self._write("put", ns, key, doc)

    def delete(self, ns: str, key: str) -> None:
        """Remove ``ns/key`` (no error when absent); in the kernel when this returns."""
        self._write("del", ns, key, None)

    def snapshot(self) -> None:
        """Write ``state.json`` atomically, empty the journal; ``Unavailable`` on I/O errors."""
        fd = self._require_open()
        data = {
            ns: {k: Fragment(doc) for k, doc in docs.items()} for ns, docs in self._data.items()
        }
        body = orjson.dumps({"version": FORMAT_VERSION, "seq": self._seq, "data": data})[:-1]
        body += SEAL % zlib.crc32(body)
        try:
            replace_atomically(self._snapshot_path, body)
            self._snapshot_seq = self._seq
            # A crash here leaves records <= snapshot seq in the journal: replay skips them.
            os.ftruncate(fd, 0)
        except OSError as exc:
            raise self._failure("snapshot", exc) from exc
        self._journal_records = self._journal_bytes = 0
        self._compact_at = self._compaction_period()
        self._broken = False  # the journal is empty again, whatever a failed append left

    def _compaction_period(self) -> int:
        """Journal records to allow before the next snapshot. A snapshot costs O(documents):
        waiting for twice as many records keeps it at most half a document's write per
        record however big the state, and bounds the journal replayed on open."""
        return max(self.snapshot_every, 2 * sum(len(docs) for docs in self._data.values()))

    def _write(self, op: str, ns: str, key: str, doc: bytes | None) -> None:
        """Journal one change, then apply it: ``doc`` is the new document, None deletes."""
        if not (isinstance(ns, str) and isinstance(key, str)):  # the snapshot needs str keys
            raise TypeError(f"ns and key must be str, not {type(ns).__name__}/{type(key).__name__}")
        seq = self._seq + 1
        record = {"seq": seq, "op": op, "ns": ns, "key": key}
        if doc is not None:
            record["value"] = Fragment(doc)
        self._append(seq, orjson.dumps(record))
        self._apply(ns, key, doc)
        for changed in self.listeners:
            changed(ns, key)
        if self._journal_records >= self._compact_at:
            self._compact()

    def raw(self, ns: str, key: str) -> bytes | None:
        """The JSON bytes of ``ns/key`` as stored (no decoding), or None."""
        return self._data.get(ns, {}).get(key)

    def raw_items(self) -> dict[str, dict[str, bytes]]:
        """Every document as stored, by namespace (a shallow copy: for a full resync)."""
        return {ns: dict(docs) for ns, docs in self._data.items()}

    def _apply(self, ns: str, key: str, doc: bytes | None) -> None:
        if doc is not None:
            self._data.setdefault(ns, {})[key] = doc
        elif (docs := self._data.get(ns)) is not None:
            docs.pop(key, None)
            if not docs:
                del self._data[ns]

    def _append(self, seq: int, body: bytes) -> None:
        fd = self._require_open()
        line = b"%08x %b\n" % (zlib.crc32(body), body)
        try:
            if self._broken:  # a partial record may sit at the end: start the journal afresh
                self.snapshot()
            self._write_line(fd, line)
        except Unavailable:
            if self._failing_since is None:
                self._failing_since = time.time()
            raise
        self._failing_since = None
        self._seq = seq
        self._journal_records += 1
        self._journal_bytes += len(line)

    def _write_line(self, fd: int, line: bytes) -> None:
        """Append ``line`` whole, or cut off what got out of it and raise ``Unavailable``."""
        try:
            written = os.write(fd, line)
            while written < len(line):  # a short write: the rest says why (ENOSPC, EFBIG)
                if not (more := os.write(fd, line[written:])):
                    raise OSError(f"no progress writing to {self._journal_path}")
                written += more
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            # Cut a partial record off, or the next good one would follow garbage.
            try:
                os.ftruncate(fd, self._journal_bytes)
            except OSError:
                self._broken = True
            raise self._failure("append", exc) from exc

    def _compact(self) -> None:
        try:
            self.snapshot()
        except Unavailable:  # the write is safe in the journal; retry a full period later
            self._compact_at = self._journal_records + self.snapshot_every

    def _read_snapshot(self) -> tuple[Data, int]:
        try:
            raw = self._snapshot_path.read_bytes()
        except FileNotFoundError:
            return {}, 0
        try:
            return _decode_snapshot(raw)
        except ValueError as exc:
            self._last_error = (
                f"state snapshot {self._snapshot_path} {exc}; restore it from a backup, or move"
                f" {self.directory} aside to start with no state"
            )
        raise StateDamaged(self._last_error, data={"path": str(self._snapshot_path)})

    def _replay_journal(self) -> bool:
        """Apply records newer than the snapshot; True when the journal needs rewriting."""
        raw = self._journal_path.read_bytes()
        lines = raw.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        last_seq = -1  # the highest seq met so far
        repeated: list[int] = []  # line numbers of records at or below it: skipped
        damaged = 0  # the line number of the first undecodable line
        for number, line in enumerate(lines, 1):
            record = _decode(line)
            if record is None:
                damaged = number
                break
            if record["seq"] <= last_seq:
                repeated.append(number)
                continue
            last_seq = record["seq"]
            if last_seq > self._snapshot_seq:  # older ones: a compaction cut short
                doc = orjson.dumps(record["value"]) if record["op"] == "put" else None
                self._apply(record["ns"], record["key"], doc)
                self._seq = last_seq
                self._journal_records += 1
        if repeated or damaged:
            self._report_damage(raw, repeated, damaged, len(lines) - damaged + 1 if damaged else 0)
        if torn:
            log.debug("journal_tail_dropped", path=str(self._journal_path), torn_bytes=len(torn))
        self._journal_bytes = len(raw)
        return bool(torn) or self._journal_records < len(lines)

    def _report_damage(self, raw: bytes, repeated: list[int], damaged: int, lost: int) -> None:
        """Copy the journal aside (the rewrite after replay empties it), warn, set lastError."""
        copy = self.directory / f"{JOURNAL_NAME}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}"
        copy.write_bytes(raw)
        problems = []
        if repeated:
            first, skipped = repeated[0], len(repeated)
            log.warning("journal_duplicates", line=first, skipped=skipped, copy=str(copy))
            problems.append(f"{skipped} repeated record(s) skipped, the first at line {first}")
        if damaged:
            log.warning("journal_corrupt", line=damaged, seq=self._seq, lost=lost, copy=str(copy))
            problems.append(f"corrupt at line {damaged}: {lost} line(s) from there not replayed")
        self._last_error = f"journal {'; '.join(problems)}; copy in {copy}"

    def _require_open(self) -> int:
        if self._fd is None:
            raise Conflict("state store is not open", data=self._where)
        return self._fd

    def _failure(self, action: str, exc: OSError) -> Unavailable:
        self._last_error = f"{action} failed: {exc}"
        log.warning("store_io_failed", action=action, path=str(self.directory), error=str(exc))
        return Unavailable(f"state store {self._last_error}", data=self._where)


def _decode_snapshot(raw: bytes) -> tuple[Data, int]:
    """The documents and seq a snapshot file holds; ValueError says what is wrong with it."""
    body = raw.rstrip()
    head, seal = body[:-SEAL_SIZE], body[-SEAL_SIZE:]
    sealed = seal.startswith(SEAL_START)
    if sealed and seal != SEAL % (crc := zlib.crc32(head)):
        stored = seal[len(SEAL_START) : -2].decode(errors="replace")
        raise ValueError(f"fails its checksum (crc32 {stored} stored, {crc:08x} computed)")
    try:
        snap = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"is not JSON ({exc})") from None
    if not isinstance(snap, dict):
        raise ValueError(f"is malformed: its top level is {_kind(snap)}, not an object")
    for field in ("version", "seq", "data"):
        if field not in snap:
            raise ValueError(f"is malformed: it has no {field!r} field")
    version, seq, data = snap["version"], snap["seq"], snap["data"]
    if "crc32" in snap and not sealed:
        raise ValueError("has a crc32 field that is not its last: delete it to load it unchecked")
    if version != FORMAT_VERSION:
        raise ValueError(f"has format version {version!r:.20}; this tcmd reads {FORMAT_VERSION}")
    if type(seq) is not int or seq < 0:
        what = repr(seq) if type(seq) is int else _kind(seq)
        raise ValueError(f"is malformed: 'seq' is {what}, not a record count")
    if not isinstance(data, dict):
        raise ValueError(f"is malformed: 'data' is {_kind(data)}, not an object")
    for ns, docs in data.items():
        if not isinstance(docs, dict):
            raise ValueError(f"is malformed: namespace {ns!r} is {_kind(docs)}, not an object")
    return {ns: {k: orjson.dumps(v) for k, v in docs.items()} for ns, docs in data.items()}, seq


def _kind(value: object) -> str:
    """A JSON value's kind as JSON names it, with its article: "an array", "null"."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else kinds.get(type(value), "a number")


def _decode(line: bytes) -> dict[str, Any] | None:
    """The record on a journal line, or None when the line is damaged."""
    body = line[9:]
    if line[8:9] != b" " or line[:8] != b"%08x" % zlib.crc32(body):
        return None
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    valid = (
        isinstance(record, dict)
        and type(record.get("seq")) is int
        and isinstance(record.get("ns"), str)
        and isinstance(record.get("key"), str)
        and (record.get("op") == "del" or (record.get("op") == "put" and "value" in record))
    )
    return record if valid else None
