"""tcmd as a process: its socket, its protocol, its lifecycle. Real daemon, real socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tcmctl.client import Client, DaemonUnreachable
from tcmd.errors import InvalidParams, MethodNotFound, NotFound, Stopping, from_json
from tcmd.server.daemon import SHUTDOWN_GRACE_S
from tests.support import DaemonProcess, run_concurrently, wait_until


def raw_exchange(path: Path, payload: bytes, answers: int, timeout_s: float = 10) -> list[dict]:
    """Send raw bytes, read ``answers`` lines back."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(payload)
        buf = b""
        while buf.count(b"\n") < answers:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def test_ping_and_status(module_daemon: DaemonProcess) -> None:
    assert module_daemon.call("ping")["pong"] is True
    st = module_daemon.call("status")
    assert st["pid"] == module_daemon.proc.pid  # type: ignore[union-attr]
    assert st["store"]["backend"] == "jsonfile"
    assert st["store"]["ok"] is True
    assert st["socket"] == str(module_daemon.socket)


def test_tools_catalogue_describes_schemas(module_daemon: DaemonProcess) -> None:
    tools = {t["name"]: t for t in module_daemon.call("tools")}
    assert {"ping", "status", "tools", "describe"} <= set(tools)
    schema = tools["describe"]["inputSchema"]
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    assert tools["status"]["annotations"]["readOnlyHint"] is True
    assert module_daemon.call("describe", {"name": "ping"})["name"] == "ping"
    with pytest.raises(NotFound, match="no tool named 'nope'"):
        module_daemon.call("describe", {"name": "nope"})


def test_pipelined_requests_each_answered_by_id(module_daemon: DaemonProcess) -> None:
    n = 2000
    frames = []
    for i in range(n):
        if i % 10 == 3:
            frames.append(
                {"jsonrpc": "2.0", "id": f"s{i}", "method": "describe", "params": {"name": 5}}
            )
        else:
            frames.append({"jsonrpc": "2.0", "id": i, "method": "ping"})
    payload = b"".join(json.dumps(f).encode() + b"\n" for f in frames)
    answers = raw_exchange(module_daemon.socket, payload, n)
    assert len(answers) == n
    by_id = {a["id"]: a for a in answers}
    assert len(by_id) == n
    for i in range(n):
        if i % 10 == 3:
            assert by_id[f"s{i}"]["error"]["code"] == -32602
        else:
            assert by_id[i]["result"]["pong"] is True


def test_notifications_get_no_answer(module_daemon: DaemonProcess) -> None:
    payload = (
        b'{"jsonrpc":"2.0","method":"ping"}\n'
        b'{"jsonrpc":"2.0","method":"nope"}\n'
        b'{"jsonrpc":"2.0","id":7,"method":"ping"}\n'
    )
    answers = raw_exchange(module_daemon.socket, payload, 1)
    assert [a["id"] for a in answers] == [7]


def test_fifty_concurrent_clients(module_daemon: DaemonProcess) -> None:
    def fifty_pings() -> int:
        with module_daemon.client() as c:
            return sum(c.call("ping")["pong"] is True for _ in range(50))

    assert sum(run_concurrently(fifty_pings, 50, timeout_s=30)) == 2500


@pytest.mark.parametrize(
    ("frame", "code", "needle"),
    [
        (b"{not json", -32700, "parse error"),
        (b"\xff\xfe garbage", -32700, "parse error"),
        (b"[1,2]", -32600, "batch"),
        (b"42", -32600, "JSON object"),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', -32600, "jsonrpc"),
        (b'{"jsonrpc":"2.0","id":1}', -32600, "method"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', -32600, "params"),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', -32600, "id"),
        (b'{"jsonrpc":"2.0","id":1,"method":"no_such_tool"}', -32601, "no_such_tool"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"describe","params":{}}',
            -32602,
            "name: Field required",
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"describe","params":{"name":7}}', -32602, "name:"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1}}',
            -32602,
            "x: unexpected field",
        ),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_connection_lives(
    module_daemon: DaemonProcess, frame: bytes, code: int, needle: str
) -> None:
    answers = raw_exchange(
        module_daemon.socket, frame + b'\n{"jsonrpc":"2.0","id":"after","method":"ping"}\n', 2
    )
    err = next(a for a in answers if a.get("id") != "after")
    assert err["error"]["code"] == code
    assert needle in err["error"]["message"]
    assert any(a.get("id") == "after" and a["result"]["pong"] for a in answers)


def test_invalid_request_keeps_its_id(module_daemon: DaemonProcess) -> None:
    [answer] = raw_exchange(module_daemon.socket, b'{"jsonrpc":"2.0","id":"q1","method":5}\n', 1)
    assert answer["id"] == "q1"
    assert answer["error"]["code"] == -32600


def test_typed_errors_reach_the_client(module_daemon: DaemonProcess) -> None:
    with module_daemon.client() as c:
        with pytest.raises(MethodNotFound):
            c.call("nope")
        with pytest.raises(InvalidParams) as info:
            c.call("describe", {"name": ["x"]})
        assert info.value.data["errors"][0]["field"] == "name"  # type: ignore[index]


def test_oversized_frame_refused_without_harming_others(module_daemon: DaemonProcess) -> None:
    other = module_daemon.client()
    assert other.call("ping")["pong"]
    big = b'{"jsonrpc":"2.0","id":1,"method":"describe","params":{"name":"' + b"x" * (5 << 20)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(module_daemon.socket))
        # the module_daemon may close before we finish writing; the answer is still there
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(big + b'"}}\n')
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    answer = json.loads(data.splitlines()[0])
    assert answer["error"]["code"] == -32600
    assert "exceeds the limit of 4194304 bytes" in answer["error"]["message"]
    assert other.call("ping")["pong"]  # the other connection never noticed
    other.close()


def test_client_vanishing_mid_request_harms_nobody(module_daemon: DaemonProcess) -> None:
    for _ in range(5):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(module_daemon.socket))
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n' * 5000)
            s.sendall(b'{"jsonrpc":"2.0","id":2,"meth')  # half a frame, then gone
    assert module_daemon.call("ping")["pong"]
    assert module_daemon.proc.poll() is None  # type: ignore[union-attr]


def test_socket_and_directory_permissions(module_daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(os.stat(module_daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(module_daemon.socket.parent).st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_peer_of_another_uid_is_refused(daemon: DaemonProcess) -> None:
    os.chmod(daemon.socket.parent, 0o755)  # noqa: S103  # let the other uid reach the socket at all,
    os.chmod(daemon.socket, 0o666)  # noqa: S103  # so that SO_PEERCRED is what refuses it
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, try to talk
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(daemon.socket))
                s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            os.write(write_fd, data or b"<closed>")
        except BaseException as exc:
            os.write(write_fd, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    _, _status = os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    answer = json.loads(data.splitlines()[0])
    assert answer["error"]["code"] == -32002
    assert "uid 65534" in answer["error"]["message"]
    assert '"result"' not in data.decode()


def test_sigterm_removes_socket_and_saves_state(daemon: DaemonProcess) -> None:
    boots = daemon.call("status")["boots"]
    assert daemon.terminate() == 0
    assert not daemon.socket.exists()
    snapshot = daemon.state_dir / "store" / "state.json"
    assert snapshot.exists()
    assert json.loads(snapshot.read_text())["data"]["meta"]["boots"] == boots
    assert "tcmd stopped" in daemon.log()


def test_stop_answers_long_polls_at_once(daemon: DaemonProcess) -> None:
    """A follower's long poll does not hold the stop up: it is answered -32005 at once,
    while a quick call on the same connection still gets its answer first."""
    last = daemon.call("events", {"since": 10**15})["lastSeq"]  # the newest: nothing after
    poll = {"follow": True, "since": last, "waitMs": 600_000}
    frames = [
        {"jsonrpc": "2.0", "id": 1, "method": "events", "params": poll},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    ]
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket))
        s.sendall(b"".join(json.dumps(f).encode() + b"\n" for f in frames))
        answers = s.makefile("rb")
        assert json.loads(answers.readline())["id"] == 2  # the poll is waiting
        with Client(daemon.socket) as follower:  # ...and one through the client
            follower.send("events", poll)
            assert follower.call("ping")["pong"]  # read: the poll waits
            began = time.monotonic()
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            stopped = from_json(follower.receive()["error"])
            assert isinstance(stopped, Stopping)
            assert (stopped.code, stopped.message) == (-32005, "tcmd is stopping")
        answer = json.loads(answers.readline())
    assert answer["id"] == 1
    stopping = {"code": -32005, "message": "tcmd is stopping", "data": {"reason": "stopping"}}
    assert answer.get("error") == stopping, answer
    assert daemon.proc.wait(10) == 0
    assert time.monotonic() - began < SHUTDOWN_GRACE_S  # the grace is for the other calls


def test_kill9_then_restart_keeps_state_and_handles_stale_socket(
    daemon_factory: type[DaemonProcess], tmp_path: Path
) -> None:
    first = daemon_factory().start()
    boots = first.call("status")["boots"]
    first.kill9()
    assert first.socket.exists()  # stale socket left behind
    with pytest.raises(DaemonUnreachable):
        Client(first.socket, timeout_s=2).connect()
    second = DaemonProcess(first.state_dir)
    second.socket, second.env["TCM_SOCKET"] = first.socket, str(first.socket)
    try:
        second.start()
        assert second.call("status")["boots"] == boots + 1
    finally:
        second.cleanup()


def test_second_daemon_on_same_socket_is_refused(daemon: DaemonProcess, tmp_path: Path) -> None:
    env = dict(daemon.env, TCM_STATE_DIR=str(tmp_path / "other"))
    out = subprocess.run(
        [sys.executable, "-m", "tcmd"], env=env, capture_output=True, timeout=20, check=False
    )
    assert out.returncode == 1
    assert b"already serving" in out.stderr
    assert daemon.call("ping")["pong"]  # the first one is untouched


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MAX_MANAGER_CONCURRENCY", "lots"),
        ("PHASE", "4"),
        ("HEALTH_CHECK_INTERVAL", "-5"),
        ("REDIS_URL", "http://nope"),
        ("TCM_LOG_LEVEL", "chatty"),
        ("TCM_TMUX_SOCKET", "a b"),
    ],
)
def test_invalid_config_refused_naming_the_variable(tmp_path: Path, var: str, value: str) -> None:
    env = dict(
        os.environ, TCM_SOCKET=str(tmp_path / "s.sock"), TCM_STATE_DIR=str(tmp_path), **{var: value}
    )
    out = subprocess.run(
        [sys.executable, "-m", "tcmd"], env=env, capture_output=True, timeout=20, check=False
    )
    assert out.returncode == 2
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert var in lines[0]
    assert repr(value) in lines[0]
    assert not (tmp_path / "s.sock").exists()


def test_state_survives_restart_cycles(daemon_factory: type[DaemonProcess]) -> None:
    d = daemon_factory().start()
    first = d.call("status")["boots"]
    for expected in range(first + 1, first + 4):
        d.terminate()
        d.start()
        assert d.call("status")["boots"] == expected
    wait_until(d.answers, 5)


def test_systemd_notify_ready_watchdog_stopping(daemon_factory: type[DaemonProcess]) -> None:
    sock_path = Path(tempfile.mkdtemp(prefix="tcm-notify-", dir="/tmp")) / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(sock_path))
        listener.settimeout(10)
        d = daemon_factory(
            extra_env={
                "NOTIFY_SOCKET": str(sock_path),
                "WATCHDOG_USEC": "400000",
                "HEALTH_CHECK_INTERVAL": "60000",
            }
        )
        d.start()
        got = [listener.recv(256).decode() for _ in range(4)]
        assert got.count("READY=1") == 1
        # pings every 0.2 s (half of WatchdogSec), although health sweeps are 60 s apart
        assert got.count("WATCHDOG=1") == 3
        assert d.terminate() == 0
        rest = []
        while (msg := listener.recv(256).decode()) != "STOPPING=1":
            rest.append(msg)
        assert set(rest) <= {"WATCHDOG=1"}
