"""JsonFileStore: round trips, crash recovery, compaction, and what it refuses."""

from __future__ import annotations

import errno
import os
import stat
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import CapturingLogger

from tcmd.errors import Conflict, Unavailable
from tcmd.store import StateDamaged, StateStore, jsonfile
from tcmd.store.jsonfile import JsonFileStore


def reopen(directory: Path, **kwargs: Any) -> JsonFileStore:
    s = JsonFileStore(directory, **kwargs)
    s.open()
    return s


def contents(directory: Path, ns: str = "ns") -> dict[str, Any]:
    """What a store freshly opened on ``directory`` holds in ``ns``."""
    s = reopen(directory)
    try:
        return s.items(ns)
    finally:
        s.close()


def kill(s: JsonFileStore) -> None:
    """What SIGKILL does to the store: its fd goes, no final snapshot is written."""
    assert s._fd is not None
    os.close(s._fd)
    s._fd = None


def journal(directory: Path) -> list[dict[str, Any]]:
    """The journal's records, checking each line's format on the way."""
    records = []
    for line in (directory / "journal.log").read_bytes().splitlines():
        crc, body = line.split(b" ", 1)
        assert crc == b"%08x" % zlib.crc32(body)
        records.append(orjson.loads(body))
    return records


def record_line(seq: int, key: str) -> bytes:
    body = orjson.dumps({"seq": seq, "op": "put", "ns": "ns", "key": key, "value": seq})
    return b"%08x %b\n" % (zlib.crc32(body), body)


def crc_of(snapshot: bytes) -> str:
    """The checksum a snapshot's bytes should carry: of everything before its crc32 field."""
    head = snapshot[: snapshot.rindex(b',"crc32":')]
    return f"{zlib.crc32(head):08x}"


def test_satisfies_the_protocol(store: JsonFileStore) -> None:
    assert isinstance(store, StateStore)
    assert store.backend == "jsonfile"


def test_constructor_touches_nothing_and_open_makes_a_private_dir(directory: Path) -> None:
    s = JsonFileStore(directory)
    assert not directory.exists()
    s.open()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "journal.log").stat().st_mode) == 0o600
    s.close()
    assert stat.S_IMODE((directory / "state.json").stat().st_mode) == 0o600


def test_round_trip_across_close_and_reopen(store: JsonFileStore, directory: Path) -> None:
    store.put("instances", "a", {"state": "running", "n": 1})
    store.put("instances", "b", {"state": "idle"})
    store.put("jobs", "j1", [1, 2, 3])
    store.put("instances", "a", {"state": "stopped", "n": 2})
    store.delete("instances", "b")
    store.delete("instances", "never-there")
    store.delete("no-such-ns", "x")
    store.close()

    again = reopen(directory)
    assert again.get("instances", "a") == {"state": "stopped", "n": 2}
    assert again.get("instances", "b") is None
    assert again.get("missing", "a") is None
    assert again.items("instances") == {"a": {"state": "stopped", "n": 2}}
    assert again.items("jobs") == {"j1": [1, 2, 3]}
    assert again.items("missing") == {}
    again.close()


def test_reopen_after_a_crash_keeps_every_returned_write(directory: Path) -> None:
    s = reopen(directory)
    for i in range(20):
        s.put("ns", f"k{i}", {"i": i})
    s.delete("ns", "k3")
    kill(s)

    again = reopen(directory)
    expected = {f"k{i}": {"i": i} for i in range(20) if i != 3}
    assert again.items("ns") == expected
    assert again.health()["journalRecords"] == 21
    again.close()


def test_torn_last_record_is_dropped_and_seq_continues(directory: Path) -> None:
    s = reopen(directory)
    s.put("ns", "a", 1)
    s.put("ns", "b", 2)
    kill(s)
    with (directory / "journal.log").open("ab") as f:
        f.write(record_line(3, "torn")[:20])  # a crash in the middle of the write

    capture = CapturingLogger()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonfile, "log", capture)
        again = reopen(directory)
    assert again.items("ns") == {"a": 1, "b": 2}
    assert [call.method_name for call in capture.calls] == ["debug"]
    assert not list(directory.glob("journal.log.corrupt-*"))
    again.put("ns", "c", 3)
    assert [r["seq"] for r in journal(directory)] == [3]  # rewritten, then the new record
    kill(again)

    third = reopen(directory)
    assert third.items("ns") == {"a": 1, "b": 2, "c": 3}
    third.close()


def test_complete_last_record_failing_its_checksum_is_kept_aside(directory: Path) -> None:
    s = reopen(directory)
    s.put("ns", "a", 1)
    kill(s)
    path = directory / "journal.log"
    with path.open("ab") as f:
        f.write(b"00000000" + record_line(2, "bad")[8:])  # whole line, newline and all
    damaged = path.read_bytes()

    capture = CapturingLogger()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonfile, "log", capture)
        again = reopen(directory)
    assert again.items("ns") == {"a": 1}
    [copy] = directory.glob("journal.log.corrupt-*")
    assert copy.read_bytes() == damaged
    [warning] = [c for c in capture.calls if c.method_name == "warning"]
    assert warning.args == ("journal_corrupt",)
    assert warning.kwargs["line"] == 2
    assert copy.name in str(again.health()["lastError"])
    again.close()


def test_corrupt_middle_record_stops_replay_and_keeps_a_copy(directory: Path) -> None:
    s = reopen(directory)
    for i in range(6):
        s.put("ns", f"k{i}", i)
    kill(s)
    path = directory / "journal.log"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"k3"', b'"kX"')  # same length, checksum now wrong
    path.write_bytes(b"".join(lines))

    capture = CapturingLogger()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonfile, "log", capture)
        again = reopen(directory)
    assert again.items("ns") == {"k0": 0, "k1": 1, "k2": 2}
    [copy] = directory.glob("journal.log.corrupt-*")
    assert copy.read_bytes() == b"".join(lines)
    [warning] = [c for c in capture.calls if c.method_name == "warning"]
    assert warning.args == ("journal_corrupt",)
    assert warning.kwargs["line"] == 4
    assert str(copy.name) in str(again.health()["lastError"])
    assert again.health()["ok"] is True

    again.put("ns", "k9", 9)  # continues after the last record replayed
    assert [r["seq"] for r in journal(directory)] == [4]
    again.close()
    assert contents(directory) == {"k0": 0, "k1": 1, "k2": 2, "k9": 9}


@pytest.mark.parametrize("where", ["next", "later", "stale", "whole-journal"])
def test_duplicated_records_are_skipped_and_replay_goes_on(directory: Path, where: str) -> None:
    s = reopen(directory)
    s.put("ns", "old", 0)
    s.snapshot()
    for i in range(1, 9):
        s.put("ns", f"k{i}", i)
    kill(s)
    path = directory / "journal.log"
    lines = path.read_bytes().splitlines(keepends=True)  # seq 2..9
    at, copied = {
        "next": (3, [lines[2]]),
        "later": (len(lines), [lines[4]]),
        "stale": (5, [record_line(1, "old")]),  # older than the snapshot
        "whole-journal": (len(lines), list(lines)),  # cat journal.log >> journal.log
    }[where]
    lines[at:at] = copied
    path.write_bytes(b"".join(lines))

    capture = CapturingLogger()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonfile, "log", capture)
        again = reopen(directory)
    assert again.items("ns") == {"old": 0, **{f"k{i}": i for i in range(1, 9)}}
    [warning] = [c for c in capture.calls if c.method_name == "warning"]
    assert warning.args == ("journal_duplicates",)  # once, however many
    assert warning.kwargs["skipped"] == len(copied)
    assert warning.kwargs["line"] == at + 1
    [copy] = directory.glob("journal.log.corrupt-*")
    assert copy.read_bytes() == b"".join(lines)
    assert copy.name in str(again.health()["lastError"])
    again.put("ns", "k9", 9)
    assert [r["seq"] for r in journal(directory)] == [10]
    kill(again)
    assert contents(directory)["k9"] == 9


def test_duplicates_before_a_corrupt_record_are_both_reported(directory: Path) -> None:
    s = reopen(directory)
    for i in range(6):
        s.put("ns", f"k{i}", i)
    kill(s)
    path = directory / "journal.log"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"k4"', b'"kX"')  # seq 5
    lines.insert(1, lines[0])  # seq 1 twice
    path.write_bytes(b"".join(lines))

    capture = CapturingLogger()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jsonfile, "log", capture)
        again = reopen(directory)
    assert again.items("ns") == {"k0": 0, "k1": 1, "k2": 2, "k3": 3}
    warnings = [c.args[0] for c in capture.calls if c.method_name == "warning"]
    assert warnings == ["journal_duplicates", "journal_corrupt"]
    [copy] = directory.glob("journal.log.corrupt-*")
    last_error = str(again.health()["lastError"])
    assert "1 repeated record(s) skipped, the first at line 2" in last_error
    assert "corrupt at line 6: 2 line(s) from there not replayed" in last_error
    assert copy.name in last_error
    again.close()


def test_compaction_at_snapshot_every(directory: Path) -> None:
    s = reopen(directory, snapshot_every=10)
    for i in range(25):  # at 10: 10 documents, so the next one 2 × 10 records later
        s.put("ns", f"k{i}", i)
    assert orjson.loads((directory / "state.json").read_bytes())["seq"] == 10
    assert [r["seq"] for r in journal(directory)] == list(range(11, 26))
    assert s.health() == {
        "backend": "jsonfile",
        "ok": True,
        "failingSince": None,
        "path": str(directory),
        "journalRecords": 15,
        "snapshotSeq": 10,
        "lastError": None,
    }
    for i in range(5):
        s.put("ns", f"k{i}", -i)  # rewrites: the count of documents stays 25
    assert orjson.loads((directory / "state.json").read_bytes())["seq"] == 30
    assert journal(directory) == []
    for i in range(25):
        s.put("ns", f"k{i}", i)  # 25 documents: 50 records before the next snapshot
    assert [r["seq"] for r in journal(directory)] == list(range(31, 56))
    kill(s)

    again = reopen(directory, snapshot_every=10)
    assert again.items("ns") == {f"k{i}": i for i in range(25)}
    again.put("ns", "more", True)
    assert journal(directory)[-1]["seq"] == 56
    again.close()
    assert journal(directory) == []


@pytest.mark.parametrize("journal_left", ["whole", "older"])
def test_crash_between_snapshot_rename_and_journal_truncate(
    directory: Path, journal_left: str
) -> None:
    s = reopen(directory)
    s.put("ns", "a", "first")
    s.put("ns", "b", 1)
    older = (directory / "journal.log").read_bytes()  # "put a", "put b"
    s.delete("ns", "a")
    s.put("ns", "b", 2)
    whole = (directory / "journal.log").read_bytes()
    s.snapshot()
    kill(s)
    # The journal as it was before the truncate the crash prevented (or an older one).
    (directory / "journal.log").write_bytes(whole if journal_left == "whole" else older)

    again = reopen(directory)
    assert again.items("ns") == {"b": 2}  # the delete after the put stays deleted
    assert again.health()["snapshotSeq"] == 4
    again.put("ns", "c", 3)
    assert [r["seq"] for r in journal(directory)] == [5]
    kill(again)
    assert contents(directory) == {"b": 2, "c": 3}


def test_snapshot_can_be_called_any_time(store: JsonFileStore, directory: Path) -> None:
    store.snapshot()  # nothing written yet
    store.put("ns", "a", 1)
    store.snapshot()
    store.snapshot()
    assert journal(directory) == []
    raw = (directory / "state.json").read_bytes()
    assert orjson.loads(raw) == {
        "version": 1,
        "seq": 1,
        "data": {"ns": {"a": 1}},
        "crc32": crc_of(raw),
    }


@pytest.mark.parametrize(
    "value",
    [{1, 2}, object(), {"nested": {1: "non-str key"}}, 2**70, "\ud800"],
    ids=["set", "object", "int-key", "huge-int", "lone-surrogate"],
)
def test_unserialisable_value_raises_and_changes_nothing(
    store: JsonFileStore, directory: Path, value: Any
) -> None:
    store.put("ns", "k", "before")
    size = (directory / "journal.log").stat().st_size
    with pytest.raises(TypeError, match="'ns'/'k'"):
        store.put("ns", "k", value)
    assert store.get("ns", "k") == "before"
    assert (directory / "journal.log").stat().st_size == size
    assert store.health()["journalRecords"] == 1
    store.put("ns", "k2", "after")
    assert [r["seq"] for r in journal(directory)] == [1, 2]


def test_non_str_names_are_refused(store: JsonFileStore) -> None:
    with pytest.raises(TypeError, match="must be str"):
        store.put("ns", 7, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be str"):
        store.delete(None, "k")  # type: ignore[arg-type]


HOSTILE_KEYS = ["", "line\nbreak", 'quo"te', "back\\slash", "ключ 🔑", "\x00nul", " \t"]
HOSTILE_VALUES: list[Any] = [
    "x" * 1_000_000,
    '"\n' * 300_000 + "end",
    {"ünï": ["\u2028", "\r\n", "🔑" * 1000], "deep": [[[[{"a": None}]]]]},
    -(2**63),
    1.5e308,
    "",
]


@pytest.mark.parametrize("ending", ["close", "crash"])
def test_hostile_names_and_values_round_trip(directory: Path, ending: str) -> None:
    s = reopen(directory)
    for key in HOSTILE_KEYS:
        s.put(key, key, key)
    for i, value in enumerate(HOSTILE_VALUES):
        s.put("values\n", f"v{i}", value)
    if ending == "close":
        s.close()
    else:
        kill(s)

    again = reopen(directory)
    for key in HOSTILE_KEYS:
        assert again.get(key, key) == key
    assert again.items("values\n") == {f"v{i}": v for i, v in enumerate(HOSTILE_VALUES)}
    again.close()


def test_stored_values_are_independent_of_the_callers(store: JsonFileStore) -> None:
    value: dict[str, Any] = {"tags": ["a"], "pos": (1, 2)}
    store.put("ns", "k", value)
    value["tags"].append("b")
    assert store.get("ns", "k") == {"tags": ["a"], "pos": [1, 2]}  # what a reload gives
    got = store.get("ns", "k")
    got["tags"].append("c")
    copy = store.items("ns")
    copy["other"] = 1
    copy["k"]["pos"].append(3)
    del copy["k"]
    assert store.items("ns") == {"k": {"tags": ["a"], "pos": [1, 2]}}


def test_calls_on_a_store_that_is_not_open(directory: Path) -> None:
    s = JsonFileStore(directory)
    assert s.get("ns", "k") is None
    assert s.health()["ok"] is False
    with pytest.raises(Conflict):
        s.put("ns", "k", 1)
    s.open()
    with pytest.raises(Conflict):
        s.open()
    s.close()
    s.close()  # a second close does nothing
    with pytest.raises(Conflict):
        s.delete("ns", "k")


def saved_snapshot(directory: Path) -> bytes:
    """The bytes of a snapshot holding ``ns/a`` and ``ns/b``, written by the store."""
    s = reopen(directory)
    s.put("ns", "a", {"text": "abc"})
    s.put("ns", "b", [1, 2])
    s.close()
    return (directory / "state.json").read_bytes()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda raw: raw[: len(raw) // 2], "is not JSON"),
        (lambda raw: b"", "is not JSON"),
        (lambda raw: raw.replace(b'"abc"', b'"abd"'), "fails its checksum"),
        (lambda raw: raw.replace(b'"seq":2', b'"seq":7'), "fails its checksum"),
        (lambda raw: b"[1, 2]", "its top level is an array"),
        (lambda raw: b'{"version": 1, "seq": 3}', "has no 'data'"),
        (lambda raw: b'{"version": 1, "data": {}}', "has no 'seq'"),
        (lambda raw: b'{"seq": 3, "data": {}}', "has no 'version'"),
        (lambda raw: b'{"version": 2, "seq": 3, "data": {}}', "format version 2"),
        (lambda raw: b'{"version": 1, "seq": "3", "data": {}}', "'seq' is a string"),
        (lambda raw: b'{"version": 1, "seq": -1, "data": {}}', "'seq' is -1"),
        (lambda raw: b'{"version": 1, "seq": 3, "data": []}', "'data' is an array"),
        (
            lambda raw: b'{"version": 1, "seq": 3, "data": {"ns": [1]}}',
            "namespace 'ns' is an array",
        ),
        (lambda raw: b'{"version":1,"seq":3,"crc32":"00000000","data":{}}', "crc32 field"),
    ],
    ids=[
        "truncated",
        "empty",
        "bit-flip",
        "seq-changed",
        "array",
        "no-data",
        "no-seq",
        "no-version",
        "newer-version",
        "seq-string",
        "seq-negative",
        "data-array",
        "namespace-array",
        "crc-moved",
    ],
)
def test_damaged_snapshot_is_refused_in_one_line_naming_file_and_fault(
    directory: Path, damage: Any, says: str
) -> None:
    snapshot = directory / "state.json"
    snapshot.write_bytes(damage(saved_snapshot(directory)))
    s = JsonFileStore(directory)
    with pytest.raises(StateDamaged) as refused:
        s.open()
    message = refused.value.message
    assert says in message
    assert str(snapshot) in message
    assert "\n" not in message
    assert isinstance(refused.value, Unavailable)  # -32005, as before
    assert refused.value.data == {"path": str(snapshot)}
    assert s.health()["ok"] is False
    assert s.health()["lastError"] == message


def test_snapshot_without_a_checksum_still_loads(directory: Path) -> None:
    """State dirs written before snapshots had a checksum, or edited by hand without it."""
    directory.mkdir()
    (directory / "state.json").write_bytes(b'{"version": 1, "seq": 2, "data": {"ns": {"a": 1}}}\n')
    (directory / "journal.log").write_bytes(record_line(2, "stale") + record_line(3, "b"))
    assert contents(directory) == {"a": 1, "b": 3}
    raw = (directory / "state.json").read_bytes()  # close rewrote it: with a checksum now
    assert orjson.loads(raw)["crc32"] == crc_of(raw)

    (directory / "state.json").write_bytes(saved_snapshot(directory) + b"\n")  # an editor's
    assert contents(directory) == {"a": {"text": "abc"}, "b": [1, 2]}


def test_leftover_snapshot_temp_files_are_removed(directory: Path) -> None:
    directory.mkdir()
    (directory / ".state.json.abc123.tmp").write_bytes(b'{"half": ')  # replace_atomically's name
    reopen(directory).close()
    assert sorted(p.name for p in directory.iterdir()) == ["journal.log", "state.json"]


def test_failed_append_is_cut_off_and_the_store_goes_on(
    store: JsonFileStore, directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("ns", "old", 0)
    store.snapshot()  # the cut must go back to the journal's size since the snapshot
    store.put("ns", "a", 1)
    real_write = os.write

    def disk_full_halfway(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full_halfway)
    with pytest.raises(Unavailable, match="No space left"):
        store.put("ns", "b", 2)
    monkeypatch.undo()
    assert store.get("ns", "b") is None
    assert "No space left" in str(store.health()["lastError"])
    assert store.health()["ok"] is False
    store.put("ns", "c", 3)
    assert store.health()["ok"] is True
    assert [r["seq"] for r in journal(directory)] == [2, 3]
    kill(store)
    store.open()  # the fixture closes it
    assert store.items("ns") == {"old": 0, "a": 1, "c": 3}
    assert not list(directory.glob("journal.log.corrupt-*"))


def test_health_reports_failing_appends_until_a_write_succeeds(
    store: JsonFileStore, directory: Path
) -> None:
    """A real ENOSPC: the journal's fd is pointed at /dev/full, then back."""
    store.put("ns", "a", 1)
    assert store._fd is not None
    journal_fd = os.dup(store._fd)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, store._fd)
        before = time.time()
        with pytest.raises(Unavailable, match="No space left"):
            store.put("ns", "b", 2)
        health = store.health()
        assert health["ok"] is False
        assert before <= health["failingSince"] <= time.time()
        assert "No space left" in health["lastError"]
        with pytest.raises(Unavailable):  # still failing: the start of it is kept
            store.delete("ns", "a")
        assert store.health()["ok"] is False
        assert store.health()["failingSince"] == health["failingSince"]
        os.dup2(journal_fd, store._fd)
    finally:
        os.close(full)
        os.close(journal_fd)
    store.put("ns", "c", 3)
    health = store.health()
    assert health["ok"] is True
    assert health["failingSince"] is None
    assert store.items("ns") == {"a": 1, "c": 3}
    kill(store)
    store.open()  # the fixture closes it
    assert store.items("ns") == {"a": 1, "c": 3}
    assert not list(directory.glob("journal.log.corrupt-*"))


def test_failed_compaction_keeps_the_write_and_retries_later(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = reopen(directory, snapshot_every=3)

    def refuse(path: Path, body: bytes) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(jsonfile, "replace_atomically", refuse)
    for i in range(4):
        s.put("ns", f"k{i}", i)  # the third one's compaction fails, quietly
    assert s.health()["journalRecords"] == 4
    assert "Read-only" in str(s.health()["lastError"])
    assert s.health()["ok"] is True  # every write is safe in the journal
    monkeypatch.undo()
    for i in range(4, 6):
        s.put("ns", f"k{i}", i)  # a full period later: compacts
    assert s.health()["journalRecords"] == 0
    kill(s)
    assert contents(directory) == {f"k{i}": i for i in range(6)}


def test_fsync_mode_round_trips(directory: Path) -> None:
    s = reopen(directory, fsync=True)
    s.put("ns", "a", {"durable": True})
    s.delete("ns", "a")
    s.put("ns", "b", 1)
    kill(s)
    assert contents(directory) == {"b": 1}


def test_snapshot_every_must_be_positive(directory: Path) -> None:
    with pytest.raises(ValueError, match="snapshot_every"):
        JsonFileStore(directory, snapshot_every=0)
