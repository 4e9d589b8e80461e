"""The MCP shim against a real tcmd: in-process (the SDK's client ↔ our Server object over
in-memory streams), over stdio (the real `tcmctl mcp` subprocess), and `tcmctl mcp
install` into a throwaway HOME.

The SDK's client checks every structured result against the tool's output schema, so
calling each tool here also checks the daemon's catalogue against what it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, types
from mcp.client.stdio import StdioServerParameters
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tcmctl.mcp import HANDSHAKE_VERSIONS, DaemonLink, Forwarder, StdioFront, build_server
from tests.support import AgentDaemon, DaemonProcess

ORIGINAL = {
    "spawn",
    "send",
    "read",
    "list",
    "terminate",
    "restart",
    "executeParallel",
    "getParallelStatus",
    "distributeWork",
}
SHIM = [sys.executable, "-m", "tcmctl", "mcp"]


@contextlib.asynccontextmanager
async def connected(env: Mapping[str, str], mode: str = "legacy") -> AsyncIterator[Client]:
    """The SDK's client on our Server object, over in-memory streams (legacy: a handshake)."""
    server = build_server(Forwarder(DaemonLink(env, autostart=False)))
    async with Client(server, mode=mode) as client:
        yield client


def text(result: types.CallToolResult) -> str:
    [block] = result.content
    assert isinstance(block, types.TextContent)
    return block.text


async def call_ok(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, args)
    assert not result.is_error, text(result)
    assert isinstance(result.structured_content, dict)
    shown = text(result)
    if shown.endswith("; structured content has all]"):  # a long result: its text is cut
        assert len(shown) < 20_100 and shown.startswith('{"')
    else:
        assert json.loads(shown) == result.structured_content
    return result.structured_content


async def test_lists_every_catalogue_tool_but_hook(daemon: DaemonProcess) -> None:
    catalogue = {t["name"]: t for t in daemon.call("tools")}
    async with connected(daemon.env) as client:
        assert client.server_info is not None and client.server_info.name == "tcm"
        listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == set(catalogue) - {"hook"}
    assert set(listed) >= ORIGINAL | {"wait", "jobs", "queueStats", "cancel", "ping", "tools"}
    for name, tool in listed.items():
        entry, hints = catalogue[name], catalogue[name]["annotations"]
        assert tool.description == entry["description"]
        assert tool.input_schema == entry["inputSchema"]
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
        assert tool.annotations is not None
        assert (
            tool.annotations.read_only_hint,
            tool.annotations.destructive_hint,
            tool.annotations.idempotent_hint,
        ) == (hints["readOnlyHint"], hints["destructiveHint"], hints["idempotentHint"])
    assert listed["spawn"].output_schema == catalogue["spawn"]["outputSchema"]
    assert catalogue["list"]["outputSchema"]["type"] == "array"
    assert listed["list"].output_schema == {
        "type": "object",
        "properties": {"result": catalogue["list"]["outputSchema"]},
        "required": ["result"],
    }
    assert listed["terminate"].annotations.destructive_hint is True  # type: ignore[union-attr]


async def test_calls_reach_the_daemon_concurrently(agents: AgentDaemon) -> None:
    work = str(agents.work_dir)
    async with connected(agents.daemon.env) as client:
        assert (await call_ok(client, "ping", {}))["pong"] is True
        assert (await call_ok(client, "status", {}))["pid"] == agents.daemon.proc.pid  # type: ignore[union-attr]
        assert await call_ok(client, "list", {}) == {"result": []}
        spawned = await call_ok(
            client,
            "spawn",
            {"role": "executive", "workDir": work, "context": "via mcp", "agent": "shell"},
        )
        assert (spawned["instanceId"], spawned["status"]) == ("exec_1", "ready")
        rows = (await call_ok(client, "list", {}))["result"]
        assert [(r["instanceId"], r["agent"]) for r in rows] == [("exec_1", "shell")]
        sent = await call_ok(
            client, "send", {"instanceId": "exec_1", "text": "sleep 2; printf 'via %s' mcp"}
        )
        assert sent["delivered"] is True
        waited: dict[str, Any] = {}

        async def wait_idle() -> None:
            args = {"instanceIds": ["exec_1"], "timeoutMs": 20_000}
            waited.update(await call_ok(client, "wait", args))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_idle)
            # the agent works for 2 s: a blocked `wait` must not hold up other calls
            assert (await call_ok(client, "ping", {}))["pong"] is True
            assert not waited
        assert (waited["done"], waited["timedOut"]) == (True, False)
        read = await call_ok(client, "read", {"instanceId": "exec_1"})
        assert (read["lastResult"], read["status"]) == ("via mcp", "ready")


async def test_every_tool_answers_within_its_schema(agents: AgentDaemon) -> None:
    work = str(agents.work_dir)
    shell = {"workDir": work, "agent": "shell"}
    async with connected(agents.daemon.env) as client:
        await call_ok(client, "spawn", {"role": "executive", "context": "e", **shell})
        mgr = await call_ok(
            client, "spawn", {"role": "manager", "context": "m", "parentId": "exec_1", **shell}
        )
        run = await call_ok(
            client,
            "executeParallel",
            {
                "managerId": mgr["instanceId"],
                "tasks": [{"id": "t1", "instruction": "echo 1"}],
                **shell,
            },
        )
        assert run["completed"] == 1
        progress = await call_ok(client, "getParallelStatus", {"runId": run["runId"]})
        assert progress["done"] is True
        spread = await call_ok(
            client,
            "distributeWork",
            {"tasks": [{"id": "t2", "instruction": "echo 2"}], "wait": True, **shell},
        )
        assert spread["completed"] == 1
        await call_ok(client, "cancel", {"runId": run["runId"]})
        # jobs returns an array (its catalogue entry says object): wrapped all the same
        assert len((await call_ok(client, "jobs", {}))["result"]) == 2
        for name, args in [
            ("queueStats", {}),
            ("health", {}),
            ("worktrees", {}),
            ("describe", {"name": "send"}),
        ]:
            await call_ok(client, name, args)
        catalogue = (await call_ok(client, "tools", {}))["result"]
        assert {t["name"] for t in catalogue} >= ORIGINAL
        assert (await call_ok(client, "restart", {"instanceId": "exec_1"}))["status"] == "ready"
        ended = await call_ok(client, "terminate", {"instanceId": "exec_1", "cascade": True})
        assert set(ended["terminated"]) == {"exec_1", mgr["instanceId"]}


async def test_daemon_errors_become_tool_errors(agents: AgentDaemon) -> None:
    base = {"workDir": str(agents.work_dir), "context": "x", "agent": "shell"}
    async with connected(agents.daemon.env, mode="auto") as client:  # the 2026 era as well
        bad = await client.call_tool("spawn", {**base, "role": "boss"})
        assert bad.is_error
        assert "role" in text(bad) and "[-32602]" in text(bad)
        missing = await client.call_tool("read", {"instanceId": "exec_99"})
        assert missing.is_error and "[-32001]" in text(missing)
        hidden = await client.call_tool("hook", {})
        assert hidden.is_error and "unknown tool" in text(hidden)
    agents.spawn("executive", agent="shell")
    agents.spawn("manager", parent="exec_1", agent="shell")
    agents.spawn("specialist", parent="mgr_1_1", agent="shell")
    as_specialist = {**agents.daemon.env, "TCM_INSTANCE_TOKEN": agents.token("spec_1_1_1")}
    async with connected(as_specialist) as client:
        refused = await client.call_tool("spawn", {**base, "role": "specialist"})
        assert refused.is_error and "[-32002]" in text(refused)
        rows = (await call_ok(client, "list", {}))["result"]
        assert [r["instanceId"] for r in rows] == ["spec_1_1_1"]  # itself, no descendants


def test_front_negotiates_like_the_sdk() -> None:
    assert HANDSHAKE_PROTOCOL_VERSIONS == HANDSHAKE_VERSIONS


async def test_front_answers_the_opening_without_the_sdk(
    daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    frames = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2099-01-01",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "ping"}},
    ]
    lines = [json.dumps(f).encode() + b"\n" for f in frames]
    os.write(in_w, b"".join(lines))
    link = DaemonLink(daemon.env, autostart=False)
    with os.fdopen(in_r, "rb") as stdin, os.fdopen(out_r, "rb") as wire:
        front = StdioFront(Forwarder(link), stdin=stdin, wire_fd=out_w)
        monkeypatch.setattr(front, "_serve_sdk", asyncio.Event().wait)  # the SDK never loads
        served = asyncio.create_task(front.run())
        init = json.loads(await asyncio.to_thread(wire.readline))
        listed = json.loads(await asyncio.to_thread(wire.readline))
        os.close(in_w)  # EOF: the client left before the SDK was up
        await served
    os.close(out_w)
    await link.aclose()
    assert init["result"]["protocolVersion"] == HANDSHAKE_VERSIONS[-1]  # unknown: the latest
    assert listed["id"] == 2 and "spawn" in {t["name"] for t in listed["result"]["tools"]}
    assert front.held == [lines[1], lines[3]]  # kept, in order, for the SDK


# -- over stdio: the real `tcmctl mcp` process --------------------------------------------


def stdio(env: Mapping[str, str]) -> StdioServerParameters:
    return StdioServerParameters(command=SHIM[0], args=SHIM[1:], env=dict(env))


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # the front answers legacy's opening
async def test_stdio_shim(daemon: DaemonProcess, mode: str) -> None:
    async with Client(stdio(daemon.env), mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names >= ORIGINAL and "hook" not in names
        assert (await call_ok(client, "ping", {}))["pong"] is True
        assert await call_ok(client, "list", {}) == {"result": []}
        assert (await client.list_tools()).tools  # the SDK answers it too, after the front


def raw_session(env: Mapping[str, str], frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Frames in, every stdout line out (each must be JSON: nothing else goes to stdout)."""
    lines = "".join(json.dumps(f) + "\n" for f in frames)
    answers = []
    with subprocess.Popen(
        SHIM, env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(lines.encode())
        proc.stdin.flush()
        while len(answers) < sum("id" in f for f in frames):
            line = proc.stdout.readline()
            assert line, proc.communicate(timeout=10)[1].decode()
            answers.append(json.loads(line))
        _, err = proc.communicate(timeout=10)  # stdin closed: the shim ends
        assert proc.returncode == 0, err.decode()
    return sorted(answers, key=lambda a: a["id"])


def test_front_answers_initialize_as_the_sdk_does(daemon: DaemonProcess) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    front = raw_session(daemon.env, [init])[0]
    # a ping first: the front steps aside, the SDK answers the initialize itself
    sdk = raw_session(daemon.env, [{"jsonrpc": "2.0", "id": 0, "method": "ping"}, init])[1]
    assert front == sdk
    assert front["result"]["protocolVersion"] == "2025-06-18"


STATUS_CALL = [  # a whole session: initialize, then call the status tool
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "status", "arguments": {}},
    },
]


def test_stdio_shim_starts_the_daemon(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "state")  # not started: the shim must start it
    try:
        answers = raw_session(d.env, STATUS_CALL)
        status = answers[1]["result"]["structuredContent"]
        assert status["socket"] == str(d.socket)
    finally:
        subprocess.run(
            [*SHIM[:-1], "daemon", "stop"], env=d.env, capture_output=True, check=False, timeout=30
        )
        d.cleanup()


def test_stdio_shim_of_an_instance_does_not_start_the_daemon(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "state")  # stopped, as by the operator
    try:
        env = dict(d.env, TCM_INSTANCE_TOKEN="tok-of-a-live-instance")
        answers = raw_session(env, STATUS_CALL)
        assert answers[1]["result"]["isError"] is True
        assert "cannot reach tcmd" in answers[1]["result"]["content"][0]["text"]
        assert not d.socket.exists()
    finally:
        d.cleanup()


# -- tcmctl mcp install ---------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """An environment with a throwaway HOME, no claude CLI on PATH, no TCM_* set; and cwd."""
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TCM_", "XDG_CONFIG_HOME"))}
    env |= {"HOME": str(home), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return env, home, project.resolve()


def install(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHIM, "install", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


ENTRY = {"command": sys.executable, "args": ["-m", "tcmctl", "mcp"]}
STDIO_ENTRY = {"type": "stdio", **ENTRY}


def test_install_project_user_local_keep_every_other_key(
    home: tuple[dict[str, str], Path, Path],
) -> None:
    env, home_dir, project = home
    other = {"command": "other-server", "args": []}
    (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"other": other}, "x": 1}))
    claude_json = home_dir / ".claude.json"
    claude_json.write_text(
        json.dumps(
            {
                "numStartups": 7,
                "mcpServers": {"other": other},
                "projects": {
                    str(project): {"hasTrustDialogAccepted": True},
                    "/elsewhere": {"a": 1},
                },
            }
        )
    )
    for scope in ["project", "user", "local"]:
        out = install(env, project, "--file", "--scope", scope)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("registered tcm")
    assert json.loads((project / ".mcp.json").read_text()) == {
        "mcpServers": {"other": other, "tcm": STDIO_ENTRY},
        "x": 1,
    }
    assert json.loads(claude_json.read_text()) == {
        "numStartups": 7,
        "mcpServers": {"other": other, "tcm": STDIO_ENTRY},
        "projects": {
            str(project): {"hasTrustDialogAccepted": True, "mcpServers": {"tcm": STDIO_ENTRY}},
            "/elsewhere": {"a": 1},
        },
    }
    assert claude_json.stat().st_mode & 0o777 == 0o644  # the file's own mode is kept
    again = install(env, project, "--file", "--scope", "user", "--json")  # idempotent
    assert json.loads(again.stdout)["path"] == str(claude_json)
    assert json.loads(claude_json.read_text())["mcpServers"]["tcm"] == STDIO_ENTRY


def test_install_desktop_and_passed_socket(home: tuple[dict[str, str], Path, Path]) -> None:
    env, home_dir, project = home
    config = home_dir / ".config" / "Claude" / "claude_desktop_config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"globalShortcut": "Ctrl+Space"}))
    sock = "/tmp/tcm-test/tcmd.sock"
    out = install({**env, "TCM_SOCKET": sock}, project, "--desktop")
    assert out.returncode == 0, out.stderr
    assert json.loads(config.read_text()) == {
        "globalShortcut": "Ctrl+Space",
        "mcpServers": {"tcm": {**ENTRY, "env": {"TCM_SOCKET": sock}}},  # no "type"
    }
    assert Path(ENTRY["command"]).is_absolute()


def test_install_print_changes_nothing(home: tuple[dict[str, str], Path, Path]) -> None:
    env, home_dir, project = home
    claude_json = home_dir / ".claude.json"
    claude_json.write_text('{"numStartups": 1}')
    for args, fragment in [
        (["--scope", "user"], {"mcpServers": {"tcm": STDIO_ENTRY}}),
        (["--scope", "local"], {"projects": {str(project): {"mcpServers": {"tcm": STDIO_ENTRY}}}}),
        (["--scope", "project"], {"mcpServers": {"tcm": STDIO_ENTRY}}),
        (["--desktop"], {"mcpServers": {"tcm": ENTRY}}),
    ]:
        out = install(env, project, "--print", *args)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == fragment
        assert "would merge into" in out.stderr
    assert claude_json.read_text() == '{"numStartups": 1}'
    assert sorted(p.name for p in project.iterdir()) == []
    assert sorted(p.name for p in home_dir.iterdir()) == [".claude.json"]


def test_install_refuses_a_broken_file(home: tuple[dict[str, str], Path, Path]) -> None:
    env, _, project = home
    (project / ".mcp.json").write_text("{not json")
    out = install(env, project, "--scope", "project")
    assert out.returncode == 1
    assert "not valid JSON" in out.stderr
    assert (project / ".mcp.json").read_text() == "{not json"


def test_install_through_the_claude_cli(
    home: tuple[dict[str, str], Path, Path], tmp_path: Path
) -> None:
    env, home_dir, project = home
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    out = install({**env, "PATH": f"{bin_dir}:{env['PATH']}"}, project, "--scope", "local")
    assert out.returncode == 0, out.stderr
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argvs == [
        ["mcp", "remove", "tcm", "-s", "local"],
        ["mcp", "add", "tcm", "-s", "local", "--", sys.executable, "-m", "tcmctl", "mcp"],
    ]
    assert not (home_dir / ".claude.json").exists()
