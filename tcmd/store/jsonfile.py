"""The embedded StateStore: documents in memory, a snapshot file plus an append-only journal.

Files, in one directory (0700; files 0600):

``state.json``: ``{"version": 1, "seq": N, "data": {ns: {key: value}}}``, ``seq`` being the
last journal record it includes. Replaced atomically: temp file in the same directory,
write, fsync, ``os.replace``, fsync the directory.

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

Recovery on ``open``: a torn or checksum-failing *last* line (a crash mid-write) is
dropped (debug log). A bad line with lines after it stops replay there, the journal is
copied to ``journal.log.corrupt-<UTC time>`` and a warning logged. After either, or stale
records, the store snapshots at once so new records never follow damaged ones. An
unreadable snapshot is not guessed around: ``open`` raises ``Unavailable``.
"""

from __future__ import annotations

import os
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from orjson import Fragment

from tcmd.atomic import replace_atomically
from tcmd.errors import Conflict, Unavailable
from tcmd.store.base import JSON

log = structlog.get_logger(__name__)

SNAPSHOT_NAME = "state.json"
JOURNAL_NAME = "journal.log"
FORMAT_VERSION = 1

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
        self._fd: int | None = None
        self._seq = 0  # the last sequence number written (or loaded)
        self._snapshot_seq = 0
        self._journal_records = 0  # records in the journal newer than the snapshot
        self._journal_bytes = 0  # journal size after the last good record
        self._compact_at = snapshot_every
        self._broken = False  # a failed append could not be rolled back
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
        """Figures for ``status``: open and writable, sizes, the last I/O problem."""
        return {
            "backend": self.backend,
            "ok": self._fd is not None and not self._broken,
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
        body = orjson.dumps({"version": FORMAT_VERSION, "seq": self._seq, "data": data})
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
        if self._journal_records >= self._compact_at:
            self._compact()

    def _apply(self, ns: str, key: str, doc: bytes | None) -> None:
        if doc is not None:
            self._data.setdefault(ns, {})[key] = doc
        elif (docs := self._data.get(ns)) is not None:
            docs.pop(key, None)
            if not docs:
                del self._data[ns]

    def _append(self, seq: int, body: bytes) -> None:
        fd = self._require_open()
        if self._broken:
            raise Unavailable(f"state journal unusable: {self._last_error}", data=self._where)
        line = b"%08x %b\n" % (zlib.crc32(body), body)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(f"short write to {self._journal_path}")
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            # Cut a partial record off, or the next good one would follow garbage.
            try:
                os.ftruncate(fd, self._journal_bytes)
            except OSError:
                self._broken = True
            raise self._failure("append", exc) from exc
        self._seq = seq
        self._journal_records += 1
        self._journal_bytes += len(line)

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
            snap = orjson.loads(raw)
            data, seq = snap["data"], snap["seq"]
            valid = snap["version"] == FORMAT_VERSION and type(seq) is int
            if valid and all(isinstance(docs, dict) for docs in data.values()):
                encoded = {
                    ns: {k: orjson.dumps(v) for k, v in docs.items()} for ns, docs in data.items()
                }
                return encoded, seq
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
            pass
        self._last_error = f"unreadable snapshot {self._snapshot_path}; move it aside to start"
        raise Unavailable(self._last_error, data={"path": str(self._snapshot_path)})

    def _replay_journal(self) -> bool:
        """Apply records newer than the snapshot; True when the journal needs rewriting."""
        raw = self._journal_path.read_bytes()
        lines = raw.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        previous_seq = -1
        for index, line in enumerate(lines):
            record = _decode(line)
            if record is None or record["seq"] <= previous_seq:
                if index < len(lines) - 1:  # not a torn write: keep the evidence
                    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}"
                    copy = self.directory / f"{JOURNAL_NAME}.corrupt-{stamp}"
                    copy.write_bytes(raw)
                    self._last_error = f"journal corrupt at line {index + 1}; copy in {copy}"
                    log.warning("journal_corrupt", line=index + 1, seq=self._seq, copy=str(copy))
                else:
                    log.debug("journal_tail_dropped", path=str(self._journal_path), line=index + 1)
                return True
            previous_seq = record["seq"]
            if previous_seq > self._snapshot_seq:  # older ones: a compaction cut short
                doc = orjson.dumps(record["value"]) if record["op"] == "put" else None
                self._apply(record["ns"], record["key"], doc)
                self._seq = previous_seq
                self._journal_records += 1
        if torn:
            log.debug("journal_tail_dropped", path=str(self._journal_path), torn_bytes=len(torn))
        self._journal_bytes = len(raw)
        return bool(torn) or self._journal_records < len(lines)

    def _require_open(self) -> int:
        if self._fd is None:
            raise Conflict("state store is not open", data=self._where)
        return self._fd

    def _failure(self, action: str, exc: OSError) -> Unavailable:
        self._last_error = f"{action} failed: {exc}"
        log.warning("store_io_failed", action=action, path=str(self.directory), error=str(exc))
        return Unavailable(f"state store {self._last_error}", data=self._where)


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
