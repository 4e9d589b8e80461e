"""The hook command of an instance's settings (``tcmctl.hook.command_line``) as a process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tcmctl.hook import command_line

PAYLOADS = [
    (b'{"hook_event_name":"Stop","last_assistant_message":"\\u00e9 \xc3\xa9 \\"q\\""}\n', []),
    (b'{\n  "hook_event_name": "Notification"\n}\n', []),  # several lines: rebuilt by json
    (b"[1, 2]", []),
    (b"not json", []),
    (b"", ["TmuxPaneDied"]),
    (b'{"hook_event_name":"Stop"}', ["SessionStart"]),  # a payload's own name wins
]


def _frame(argv: list[str], data: bytes, sock_path: Path) -> tuple[int, bytes]:
    """Run ``argv`` as a hook with ``data`` on stdin; its exit status and the frame it sent."""
    env = dict(
        os.environ, TCM_SOCKET=str(sock_path), TCM_INSTANCE_TOKEN="tok-_=", TCM_INSTANCE_LAUNCH="3"
    )
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(sock_path))
        srv.listen(1)
        proc = subprocess.run(
            argv, input=data, env=env, capture_output=True, timeout=10, check=False
        )
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as f:
            frame = f.readline()
    sock_path.unlink()
    return proc.returncode, frame


@pytest.mark.parametrize(("data", "args"), PAYLOADS)
def test_settings_command_sends_what_tcmctl_hook_sends(
    tmp_path: Path, data: bytes, args: list[str]
) -> None:
    sock = tmp_path / "s"
    code, fast = _frame([*command_line(sys.executable), *args], data, sock)
    _, full = _frame([sys.executable, "-m", "tcmctl", "hook", *args], data, sock)
    assert code == 0
    assert fast.endswith(b"\n")
    assert fast.count(b"\n") == 1
    msg = json.loads(fast)
    assert msg == json.loads(full)
    assert msg["token"] == "tok-_="
    assert msg["params"]["launch"] == 3
    assert isinstance(msg["params"]["payload"], dict)


def test_settings_command_exits_zero_when_daemon_is_down(tmp_path: Path) -> None:
    env = dict(os.environ, TCM_SOCKET=str(tmp_path / "absent.sock"))
    out = subprocess.run(
        command_line(sys.executable),
        input=b'{"hook_event_name":"Stop"}',
        env=env,
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")


def test_one_line_payload_is_forwarded_without_json_or_typing(tmp_path: Path) -> None:
    python, *flags, code = command_line(sys.executable)
    code = code.replace(
        "sys.exit(main(sys.argv[1:]))",
        "main([]); print(sorted({'json', 'typing', 'socket'} & set(sys.modules)))",
    )
    env = dict(os.environ, TCM_SOCKET=str(tmp_path / "absent.sock"))
    out = subprocess.run(
        [python, *flags, code],
        input=b'{"hook_event_name":"Stop"}',
        env=env,
        capture_output=True,
        check=True,
    )
    assert out.stdout == b"[]\n"
