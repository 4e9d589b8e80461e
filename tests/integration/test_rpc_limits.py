"""Bounded memory under hostile clients: a real daemon, raw sockets, its RSS from /proc.

Each scenario was measured against the daemon before the limits (issue 11): a client that
writes and never reads grew it by ~280 MB over 5 connections, a flood of slow calls by
~1 GB on one, 60 unfinished 4 MiB frames by ~240 MB. The bounds asserted here are loose
(tens of MB) next to those, and tight next to what the limits allow.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcmd.errors import Capacity
from tests.support import AgentDaemon, DaemonProcess, wait_until

MB = 1 << 20


def memory_mb(daemon: DaemonProcess, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the peak so far) of the daemon, in MB."""
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{daemon.proc.pid}/status")


def frames(method: str, n: int, params: dict[str, Any] | None = None, first: int = 0) -> bytes:
    """``n`` requests of ``method``, ids from ``first``."""
    extra = {"params": params} if params else {}
    return b"".join(
        json.dumps({"jsonrpc": "2.0", "id": i, "method": method, **extra}).encode() + b"\n"
        for i in range(first, first + n)
    )


def connect(daemon: DaemonProcess, timeout_s: float = 10) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout_s)
    s.connect(str(daemon.socket))
    return s


def read_answers(s: socket.socket, n: int) -> list[dict[str, Any]]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def first_answer(s: socket.socket) -> dict[str, Any]:
    """The first frame the daemon sent, then insist it closed the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    return dict(json.loads(data.splitlines()[0]))


def served_quickly(daemon: DaemonProcess, within_s: float = 1.0) -> None:
    """A fresh client gets ping, list and status answered, each well within ``within_s``."""
    for method in ("ping", "list", "status"):
        started = time.monotonic()
        with daemon.client(timeout_s=within_s) as c:
            c.call(method)
        assert time.monotonic() - started < within_s, f"{method} took too long"


def settled(daemon: DaemonProcess, at_least: int) -> bool:
    """True once the daemon handled ``at_least`` requests and then no more for a moment."""
    seen = daemon.call("status")["counts"]["requests"]
    if seen < at_least:
        return False
    time.sleep(0.3)  # a window in which more reads would show; the deadline is wait_until's
    return bool(daemon.call("status")["counts"]["requests"] == seen + 1)


@contextlib.contextmanager
def pipelining(daemon: DaemonProcess, payload: bytes, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections each writing ``payload`` from a thread, none reading (yet)."""
    socks = [connect(daemon, timeout_s=60) for _ in range(n)]

    def write(s: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed under it at the end of the test
            s.sendall(payload)

    threads = [threading.Thread(target=write, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    try:
        yield socks
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # unblocks the writer; close alone would not
            s.close()
        for t in threads:
            t.join(10)


def test_a_client_that_never_reads_is_no_longer_read(daemon: DaemonProcess) -> None:
    """5 connections pipeline `tools` (20 KB answers) and never read: was +280 MB."""
    before = memory_mb(daemon, "VmRSS")
    n, per_conn = 5, 6000
    with pipelining(daemon, frames("tools", per_conn), n):
        wait_until(lambda: settled(daemon, n), 20, interval_s=0, what="the daemon to settle")
        grew = memory_mb(daemon, "VmHWM") - before
        assert grew < 40, f"daemon grew {grew:.0f} MB for 5 clients that do not read"
        served_quickly(daemon)
        handled = daemon.call("status")["counts"]["requests"]
        assert handled < n * per_conn / 10  # most requests still wait, unread, in the kernel


@pytest.mark.parametrize("extra_env", [{"TCM_MAX_FRAME_BYTES": "1024"}])
def test_held_requests_are_all_answered_once_the_client_reads(
    daemon_factory: type[DaemonProcess], extra_env: dict[str, str]
) -> None:
    """Held, the buffer holds many whole frames: more than the frame limit, and fine."""
    daemon = daemon_factory(extra_env=extra_env).start()
    # 300 of 20 KB (held many times over), then 5000 small ones (a read's worth held)
    payload = frames("tools", 300) + frames("list", 2500, first=1000)
    payload += frames("describe", 2500, {"name": "ping"}, first=4000)
    with pipelining(daemon, payload, 1) as [s]:
        wait_until(lambda: settled(daemon, 1), 20, interval_s=0, what="the daemon to settle")
        answers = read_answers(s, 5300)
    assert all("result" in a for a in answers)
    ids = sorted(a["id"] for a in answers)
    assert ids == [*range(300), *range(1000, 3500), *range(4000, 6500)]


def test_a_flood_of_slow_calls_is_bounded_per_connection(daemon: DaemonProcess) -> None:
    """20000 long-polling `events` calls on one connection: each was a task (+70 MB)."""
    before = memory_mb(daemon, "VmRSS")
    since = daemon.call("events")["lastSeq"]
    # long enough to outlast the checks below, short enough not to hold up the teardown
    slow = frames("events", 20_000, {"since": since, "follow": True, "waitMs": 2_000})
    with pipelining(daemon, slow, 1):
        wait_until(lambda: settled(daemon, 64), 20, interval_s=0, what="the daemon to settle")
        assert daemon.call("status")["counts"]["requests"] < 1000  # 64 calls, then held
        grew = memory_mb(daemon, "VmHWM") - before
        assert grew < 20, f"daemon grew {grew:.0f} MB for one connection of slow calls"
        served_quickly(daemon)


@pytest.mark.parametrize("extra_env", [{"TCM_MAX_CALLS_PER_CONNECTION": "4"}])
def test_calls_past_the_limit_start_when_earlier_ones_finish(
    daemon_factory: type[DaemonProcess], extra_env: dict[str, str]
) -> None:
    d = daemon_factory(extra_env=extra_env).start()
    since = d.call("events")["lastSeq"]
    slow = {"since": since, "follow": True, "waitMs": 1500}
    quick = {**slow, "waitMs": 0}
    payload = frames("events", 4, slow) + frames("events", 2, quick, first=100)
    with connect(d) as s:
        s.sendall(payload)
        order = [a["id"] for a in read_answers(s, 6)]
    assert sorted(order) == [0, 1, 2, 3, 100, 101]
    assert order[0] in (0, 1, 2, 3), f"the quick calls ran before a slot was free: {order}"


def test_unfinished_frames_share_one_budget(daemon: DaemonProcess) -> None:
    """60 connections each hold a 4 MiB frame with no newline: was +240 MB."""
    before = memory_mb(daemon, "VmRSS")
    head = b'{"jsonrpc":"2.0","id":1,"method":"describe","params":{"name":"'
    partial = head + b"x" * (4 * MB - len(head) - 100)
    socks = [connect(daemon) for _ in range(60)]
    refused: dict[int, dict[str, Any]] = {}

    def refusals() -> int:
        for i, s in enumerate(socks):
            with contextlib.suppress(BlockingIOError):
                if i not in refused and (data := s.recv(65536)):
                    refused[i] = json.loads(data.splitlines()[0])
        return len(refused)

    try:
        for s in socks:
            s.sendall(partial)  # a refused one lingers, reading and dropping: this returns
            s.setblocking(False)
        wait_until(lambda: refusals() >= 60 - 16, 10, what="refusals")  # 64 MiB holds 16
        served_quickly(daemon)
        grew = memory_mb(daemon, "VmHWM") - before
        assert grew < 64 + 24, f"daemon grew {grew:.0f} MB for 60 unfinished frames"
        for answer in refused.values():
            assert answer["error"]["code"] == -32004
            assert "TCM_MAX_PENDING_BYTES" in answer["error"]["message"]
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: daemon.call("status")["counts"]["connections"] == 1, 10, what="closes")
    # once they are gone their bytes are free again: a frame as big goes through whole
    with connect(daemon) as s:
        s.sendall(partial + b'"}}\n')
        [answer] = read_answers(s, 1)
    assert answer["error"]["code"] == -32001  # NotFound: it was read, decoded and run
    assert wait_until(lambda: memory_mb(daemon, "VmRSS") - before < 30, 10, what="memory freed")


@pytest.mark.parametrize("extra_env", [{"TCM_MAX_CONNECTIONS": "8"}])
def test_connections_past_the_limit_get_an_error_and_are_closed(
    daemon_factory: type[DaemonProcess], extra_env: dict[str, str]
) -> None:
    d = daemon_factory(extra_env=extra_env).start()
    wait_until(lambda: d.call("status")["counts"]["connections"] == 1, 5, what="start-up's gone")
    held = [connect(d) for _ in range(8)]
    with pytest.raises(Capacity, match="already serves 8 connections") as info:
        d.call("ping")
    assert info.value.data == {"limit": 8, "setting": "TCM_MAX_CONNECTIONS"}
    with connect(d) as s:  # one that already sent its request still reads the error
        s.sendall(frames("ping", 1))
        answer = first_answer(s)
    assert answer["error"]["code"] == -32004
    held.pop().close()
    wait_until(lambda: _pings(d), 5, what="a freed slot to take a new connection")
    for s in held:
        s.close()


def _pings(d: DaemonProcess) -> bool:
    try:
        return bool(d.call("ping")["pong"])
    except Capacity:
        return False


def test_500_idle_connections_do_not_starve_others(daemon: DaemonProcess) -> None:
    socks = [connect(daemon) for _ in range(500)]
    try:
        for s in socks[::2]:
            s.sendall(b'{"jsonrpc":"2.0","id":1,"meth')  # half a frame, never finished
        for s in socks[1::4]:
            s.shutdown(socket.SHUT_WR)  # half-closed: the daemon sees EOF, nothing else
        for _ in range(10):
            served_quickly(daemon, within_s=0.5)
        assert daemon.call("status")["counts"]["connections"] >= 375
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize(
    "extra_env", [{"TCM_MAX_QUEUED_PROMPTS": "3", "TCM_MAX_QUEUED_PROMPT_BYTES": "4096"}]
)
def test_the_outbox_of_a_busy_instance_is_bounded(
    tmp_path: Path, daemon_factory: type[DaemonProcess], extra_env: dict[str, str]
) -> None:
    from tests.fakes import FAKE_CLAUDE

    agents = AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE, extra_env)
    busy = agents.spawn()["instanceId"]
    idle = agents.spawn()["instanceId"]
    assert agents.call("send", {"instanceId": busy, "text": "@hang"})["delivered"] is True

    def send(text: str) -> dict[str, Any]:
        return dict(agents.call("send", {"instanceId": busy, "text": text}))

    assert send("a" * 1500)["position"] == 1
    assert send("b" * 1500)["position"] == 2
    with pytest.raises(Capacity, match=r"TCM_MAX_QUEUED_PROMPT_BYTES=4096") as info:
        send("c" * 1500)
    assert info.value.data == {
        "instanceId": busy,
        "setting": "TCM_MAX_QUEUED_PROMPT_BYTES",
        "limit": 4096,
    }
    assert send("d")["position"] == 3  # the refused one took no place
    with pytest.raises(Capacity, match=r"holds 3 prompts.*TCM_MAX_QUEUED_PROMPTS=3"):
        send("e")
    # an empty outbox takes any prompt, however long: the limits bound the waiting ones
    sent = agents.call("send", {"instanceId": idle, "text": "@reply long\n" + "f" * 5000})
    assert sent["delivered"] is True
