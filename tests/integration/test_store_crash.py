"""SIGKILL a real writer process mid-stream: every acknowledged write must survive.

Each round starts ``store_writer.py`` on the state the last round left, reads its acks,
kills it at a random moment (a random number of acks, then a random pause of up to 5 ms;
compactions run every 50 records and take much of the writer's time, so many kills land
in one), then opens the store here and compares it with the acknowledged history. The
seed is in every failure message.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def run_and_kill(directory: Path, acks: int, pause_s: float, stderr_path: Path) -> list[str]:
    """Start the writer, SIGKILL it ``pause_s`` after its ``acks``-th ack; its full lines."""
    pythonpath = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(directory)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
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
