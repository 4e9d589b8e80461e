"""The store under real crashes, real failing writes and damaged files.

SIGKILL a real writer process mid-stream: every acknowledged write must survive. Each round
starts ``store_writer.py`` on the state the last round left, reads its acks, kills it at a
random moment (a random number of acks, then a random pause of up to 5 ms; compactions run
every 50 records and take much of the writer's time, so many kills land in one), then opens
the store here and compares it with the acknowledged history. The seed is in every failure
message.

A journal that cannot grow (``RLIMIT_FSIZE``) shows in ``health()`` until writes work again,
and a real ``tcmd`` refuses damaged state with one line and exit status 3.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tcmd.model import Instance, Role
from tcmd.server.pidlock import tmux_lock_path
from tcmd.store.jsonfile import JsonFileStore
from tests.integration.store_writer import DELETE_EVERY, NS, SNAPSHOT_EVERY, key_index, value_for

WRITER = Path(__file__).with_name("store_writer.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 8
ROUND_TIMEOUT_S = 10.0

Docs = dict[str, Any]


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    directory = tmp_path / "state"
    state: Docs = {}  # what the store held after the previous round
    total_acks = 0
    for round_no in range(ROUNDS):
        acks, pause_s = rng.randint(SNAPSHOT_EVERY // 2, 3 * SNAPSHOT_EVERY), rng.uniform(0, 0.005)
        lines = run_and_kill(directory, acks, pause_s, tmp_path / f"writer-{round_no}.err")
        acked, maybe = replay_acks(state, lines)
        total_acks += sum(line.startswith("ack ") for line in lines)

        store = JsonFileStore(directory, snapshot_every=SNAPSHOT_EVERY)
        store.open()
        try:
            found = store.items(NS)
            assert store.health()["ok"]
        finally:
            store.close()
        context = f"seed={seed} round={round_no} last lines={lines[-3:]}"
        assert found in (acked, maybe), f"{context}: {difference(found, acked)}"
        if lines:  # the writer resumed right after the highest key it found
            assert lines[0] == f"ready {max(map(key_index, state), default=-1) + 1}", context
        state = found
    assert total_acks > 2 * SNAPSHOT_EVERY  # compaction really ran under the kills


def test_health_follows_a_journal_that_cannot_grow(tmp_path: Path) -> None:
    """Writes past ``RLIMIT_FSIZE`` really fail (EFBIG, after a short write), in a child."""
    directory = tmp_path / "state"
    out = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, str(directory)],
        env=child_env(),
        capture_output=True,
        timeout=ROUND_TIMEOUT_S,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    failed, still_failing, recovered = json.loads(out.stdout)
    assert "File too large" in failed["error"]
    assert failed["health"]["ok"] is False
    assert failed["health"]["failingSince"] >= failed["before"]
    assert "File too large" in failed["health"]["lastError"]
    assert still_failing["health"]["ok"] is False
    assert still_failing["health"]["failingSince"] == failed["health"]["failingSince"]
    assert recovered["health"]["ok"] is True
    assert recovered["health"]["failingSince"] is None

    store = JsonFileStore(directory)
    store.open()
    try:  # the record cut short by the limit was cut off, not left before the good one
        assert store.items("ns") == {"before": 1, "after": 2}
        assert store.health()["lastError"] is None
    finally:
        store.close()
    assert not list(directory.glob("journal.log.corrupt-*"))


FSIZE_CHILD = """
import json, resource, signal, sys, time
from pathlib import Path
from tcmd.errors import Unavailable
from tcmd.observe.logs import configure
from tcmd.store.jsonfile import JsonFileStore

configure("info", "json")  # to stderr: stdout carries the report
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
store = JsonFileStore(Path(sys.argv[1]))
store.open()
store.put("ns", "before", 1)
size = (Path(sys.argv[1]) / "journal.log").stat().st_size
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, hard))  # the next record crosses it
report = []
for key in ("big", "bigger"):
    before = time.time()
    try:
        store.put("ns", key, "x" * 200)
        error = None
    except Unavailable as exc:
        error = exc.message
    report.append({"before": before, "error": error, "health": store.health()})
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
store.put("ns", "after", 2)
report.append({"health": store.health()})
store.close()
print(json.dumps(report))
"""


def _snapshot_half_written(store: Path) -> None:
    raw = (store / "state.json").read_bytes()
    (store / "state.json").write_bytes(raw[: len(raw) // 2])


def _snapshot_bit_flipped(store: Path) -> None:
    raw = (store / "state.json").read_bytes()
    (store / "state.json").write_bytes(raw.replace(b'"boots":1', b'"boots":7'))


def _instance_without_role(store: Path) -> None:
    s = JsonFileStore(store)
    s.open()
    record = Instance("exec_1", Role.EXECUTIVE, None, "/tmp", "shell", "", "t", "s").to_json()
    del record["role"]
    s.put("instances", "exec_1", record)
    s.close()


def _instance_with_a_bad_status(store: Path) -> None:
    s = JsonFileStore(store)
    s.open()
    record = Instance("exec_1", Role.EXECUTIVE, None, "/tmp", "shell", "", "t", "s").to_json()
    s.put("instances", "exec_1", record | {"status": "zombie"})
    s.close()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_snapshot_half_written, ["state.json", "is not JSON"]),
        (_snapshot_bit_flipped, ["state.json", "fails its checksum"]),
        (_instance_without_role, ["instances/exec_1", "missing field 'role'"]),
        (_instance_with_a_bad_status, ["instances/exec_1", "'status'", "'zombie'"]),
    ],
    ids=["half-written", "bit-flip", "no-role", "bad-status"],
)
def test_daemon_refuses_damaged_state_in_one_line(
    tmp_path: Path, damage: Any, says: list[str]
) -> None:
    store = tmp_path / "state" / "store"
    seed = JsonFileStore(store)
    seed.open()
    seed.put("meta", "boots", 1)
    seed.close()
    damage(store)
    env = child_env() | {
        "TCM_SOCKET": str(tmp_path / "s.sock"),
        "TCM_STATE_DIR": str(tmp_path / "state"),
        "TCM_TMUX_SOCKET": f"tcmtest-refuse-{os.getpid()}",
        "TCM_LOG_FORMAT": "json",
    }
    env.pop("TCM_INSTANCE_TOKEN", None)
    out = subprocess.run(
        [sys.executable, "-m", "tcmd"], env=env, capture_output=True, timeout=20, check=False
    )
    stderr = out.stderr.decode()
    assert out.returncode == 3, stderr
    assert "Traceback" not in stderr
    errors = [line for line in map(json.loads, stderr.splitlines()) if line["level"] == "error"]
    assert [e["event"] for e in errors] == ["refusing to start"], stderr
    for words in says:
        assert words in errors[0]["reason"], errors[0]
    assert errors[0]["store"] == str(store)
    assert not (tmp_path / "s.sock").exists()
    assert not tmux_lock_path(env["TCM_TMUX_SOCKET"]).exists()  # it leaves no lock behind


def child_env() -> dict[str, str]:
    """The environment for a child python that imports tcmd from this checkout."""
    pythonpath = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}


def run_and_kill(directory: Path, acks: int, pause_s: float, stderr_path: Path) -> list[str]:
    """Start the writer, SIGKILL it ``pause_s`` after its ``acks``-th ack; its full lines."""
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(directory)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(),
        )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    try:
        output = read_output(fd, b"", time.monotonic() + ROUND_TIMEOUT_S, acks)
        assert count_acks(output) >= acks, f"writer stalled or died: {stderr_path.read_text()}"
        # The pause puts the kill at a random moment in time, not just between two calls:
        # a compaction's fsyncs take much of the writer's time, so many kills land in one.
        output = read_output(fd, output, time.monotonic() + pause_s)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=ROUND_TIMEOUT_S) == -signal.SIGKILL, stderr_path.read_text()
        output += proc.stdout.read()  # the dead writer's pipe: EOF follows at once
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    complete, _, _torn = output.decode().rpartition("\n")
    return complete.splitlines()


def read_output(fd: int, output: bytes, deadline: float, acks: int | None = None) -> bytes:
    """``output`` plus what the writer prints until ``deadline``, EOF or its ``acks``-th ack."""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while acks is None or count_acks(output) < acks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if selector.select(remaining):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # EOF: the writer exited
                output += chunk
    return output


def count_acks(output: bytes) -> int:
    return (b"\n" + output).count(b"\nack ")


def replay_acks(state: Docs, lines: list[str]) -> tuple[Docs, Docs]:
    """The documents the acks promise, and the same plus the one call still in flight."""
    acked = dict(state)
    next_call: tuple[str, int] | None = None
    for line in lines:
        word, number = line.split()
        i = int(number)
        if word == "ready":
            next_call = ("put", i)
        elif word == "ack":
            acked[f"k{i}"] = value_for(i)
            next_call = ("del", i - 2) if i % DELETE_EVERY == 0 else ("put", i + 1)
        else:
            assert word == "del", line
            acked.pop(f"k{i}", None)
            next_call = ("put", i + 3)  # "del i-2" follows "ack i"; next comes put i+1
    maybe = dict(acked)
    if next_call is not None:  # killed after the call returned, before its line went out
        op, i = next_call
        if op == "put":
            maybe[f"k{i}"] = value_for(i)
        else:
            maybe.pop(f"k{i}", None)
    return acked, maybe


def difference(found: Docs, expected: Docs) -> str:
    """A short account of how ``found`` differs from ``expected``."""
    keys = sorted(
        found.keys() ^ expected.keys()
        | {key for key in found.keys() & expected.keys() if found[key] != expected[key]},
        key=key_index,
    )
    return ", ".join(f"{k}: found {found.get(k)} expected {expected.get(k)}" for k in keys[:10])
