"""Hook events over HTTP (TCM_HOOKS=http, the default): the fake Claude POSTs them to tcmd."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess


def settings_of(agents: AgentDaemon, instance_id: str) -> dict[str, Any]:
    path = agents.daemon.state_dir / "instances" / instance_id / "claude-settings.json"
    settings: dict[str, Any] = json.loads(path.read_text())
    return settings


def hooks_of(agents: AgentDaemon, instance_id: str) -> list[dict[str, Any]]:
    settings = settings_of(agents, instance_id)
    return [h for groups in settings["hooks"].values() for g in groups for h in g["hooks"]]


def hook_url(agents: AgentDaemon, instance_id: str) -> str:
    [url] = {h["url"] for h in hooks_of(agents, instance_id) if h["type"] == "http"}
    return str(url)


def post(url: str, body: bytes, headers: dict[str, str], method: str = "POST") -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, parts.path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def raw_post(url: str, token: str, announced: int) -> bytes:
    """A POST announcing a body of ``announced`` bytes (none sent): the answer it gets."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=10) as sock:
        sock.sendall(
            f"POST {parts.path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {announced}\r\n\r\n".encode()
        )
        return sock.recv(4096)


def stop_event(result: str) -> bytes:
    return json.dumps(
        {"hook_event_name": "Stop", "session_id": "x", "last_assistant_message": result}
    ).encode()


def turn(agents: AgentDaemon, instance_id: str, text: str) -> dict[str, Any]:
    assert agents.call("send", {"instanceId": instance_id, "text": text})["delivered"] is True
    agents.call("wait", {"instanceIds": [instance_id], "timeoutMs": 10_000})
    result: dict[str, Any] = agents.call("read", {"instanceId": instance_id})
    return result


def test_state_follows_hooks_posted_to_the_loopback_listener(agents: AgentDaemon) -> None:
    exec_id = agents.spawn()["instanceId"]
    hooks = hooks_of(agents, exec_id)
    types = {event: {h["type"] for g in groups for h in g["hooks"]}
             for event, groups in settings_of(agents, exec_id)["hooks"].items()}  # fmt: skip
    # no process per event; Claude Code sends SessionStart (once per start) only to a command
    assert types.pop("SessionStart") == {"command"}
    assert all(kinds == {"http"} for kinds in types.values()), types
    hooks = [h for h in hooks if h["type"] == "http"]
    url = hook_url(agents, exec_id)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/hook/1")  # launch 1
    assert hooks[0]["headers"] == {"Authorization": "Bearer $TCM_INSTANCE_TOKEN"}
    assert agents.token(exec_id) not in json.dumps(hooks)  # the token stays in the env
    read = turn(agents, exec_id, "@work 0.5\n@reply posted")
    assert (read["status"], read["lastResult"]) == ("ready", "posted")


def test_requests_without_a_live_token_learn_nothing(agents: AgentDaemon) -> None:
    exec_id = agents.spawn()["instanceId"]
    other = agents.spawn()["instanceId"]
    url = hook_url(agents, exec_id)
    token = agents.token(exec_id)
    other_token = agents.token(other)
    agents.call("terminate", {"instanceId": other})
    forged = stop_event("forged")
    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer " + token[:-1] + ("A" if token[-1] != "A" else "B")},
        {"Authorization": token},  # no scheme
        {"Authorization": "Bearer " + other_token},  # revoked: its instance is terminated
    ):
        assert post(url, forged, headers) == (404, b""), headers
    bearer = {"Authorization": "Bearer " + token}
    assert post(url, b"", bearer, method="GET") == (404, b"")
    assert post(url.rsplit("/", 2)[0] + "/other", forged, bearer) == (404, b"")
    read = agents.call("read", {"instanceId": exec_id})
    assert read["lastResult"] != "forged"

    # too big for TCM_MAX_FRAME_BYTES (refused before it is read); not JSON
    assert raw_post(url, token, announced=5_000_000).startswith(b"HTTP/1.1 413 ")
    assert post(url, b"[1]", bearer)[0] == 400
    # the token is the whole proof (no peer pid over TCP): a holder may report a turn
    assert post(url, stop_event("from outside"), bearer) == (200, b"")
    assert agents.call("read", {"instanceId": exec_id})["lastResult"] == "from outside"


def test_a_stalled_connection_does_not_hold_up_hooks(agents: AgentDaemon) -> None:
    exec_id = agents.spawn()["instanceId"]
    url = urlsplit(hook_url(agents, exec_id))
    with socket.create_connection((url.hostname or "", url.port or 0)) as stalled:
        stalled.sendall(b"POST /hook/1 HTTP/1.1\r\nContent-Le")  # and never more
        read = turn(agents, exec_id, "@reply while one stalls")
    assert read["lastResult"] == "while one stalls"


def test_command_hooks_remain_as_the_fallback(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    agents = AgentDaemon.start_in(
        tmp_path, daemon_factory, FAKE_CLAUDE, extra_env={"TCM_HOOKS": "command"}
    )
    exec_id = agents.spawn()["instanceId"]
    assert {h["type"] for h in hooks_of(agents, exec_id)} == {"command"}
    assert not (agents.daemon.state_dir / "hook-port").exists()  # no listener at all
    assert turn(agents, exec_id, "@reply by command")["lastResult"] == "by command"


def test_agents_that_outlive_tcmd_still_reach_it_after_a_restart(agents: AgentDaemon) -> None:
    exec_id = agents.spawn()["instanceId"]
    url = hook_url(agents, exec_id)
    assert agents.daemon.terminate() == 0  # the agent keeps running in tmux
    agents.daemon.start()
    assert agents.status(exec_id) == "ready"
    assert hook_url(agents, exec_id) == url  # the same port: the agent's settings still hold
    assert turn(agents, exec_id, "@reply after the restart")["lastResult"] == "after the restart"
