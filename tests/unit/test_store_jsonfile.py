"""JsonFileStore: round trips, crash recovery, compaction, and what it refuses."""

from __future__ import annotations

import errno
import os
import stat
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import CapturingLogger

from tcmd.errors import Conflict, Unavailable
from tcmd.store import StateStore, jsonfile
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


def test_last_record_failing_its_checksum_is_dropped(directory: Path) -> None:
    s = reopen(directory)
    s.put("ns", "a", 1)
    kill(s)
    with (directory / "journal.log").open("ab") as f:
        f.write(b"00000000" + record_line(2, "bad")[8:])

    again = reopen(directory)
    assert again.items("ns") == {"a": 1}
    assert not list(directory.glob("journal.log.corrupt-*"))
    assert again.health()["lastError"] is None
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


def test_compaction_at_snapshot_every(directory: Path) -> None:
    s = reopen(directory, snapshot_every=10)
    for i in range(25):  # at 10: 10 documents, so the next one 2 × 10 records later
        s.put("ns", f"k{i}", i)
    assert orjson.loads((directory / "state.json").read_bytes())["seq"] == 10
    assert [r["seq"] for r in journal(directory)] == list(range(11, 26))
    assert s.health() == {
        "backend": "jsonfile",
        "ok": True,
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
    assert orjson.loads((directory / "state.json").read_bytes()) == {
        "version": 1,
        "seq": 1,
        "data": {"ns": {"a": 1}},
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


def test_unreadable_snapshot_refuses_to_open(directory: Path) -> None:
    directory.mkdir()
    (directory / "state.json").write_bytes(b'{"seq": 3, "data": ')
    s = JsonFileStore(directory)
    with pytest.raises(Unavailable, match="unreadable snapshot"):
        s.open()
    assert s.health()["ok"] is False


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
    store.put("ns", "c", 3)
    assert [r["seq"] for r in journal(directory)] == [2, 3]
    kill(store)
    store.open()  # the fixture closes it
    assert store.items("ns") == {"old": 0, "a": 1, "c": 3}
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
