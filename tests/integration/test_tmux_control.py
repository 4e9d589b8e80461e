"""The control-mode connection (tcmd/tmux_control.py) against a real tmux 3.3a: each test
owns one private `-L` server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tcmd.tmux
from tcmd.config import Settings
from tcmd.instances import registry
from tcmd.instances.registry import Instances
from tcmd.model import Role, State
from tcmd.store.jsonfile import JsonFileStore
from tcmd.tmux import Tmux
from tcmd.tmux_control import CONTROL_SESSION, routable
from tests.integration.test_tmux import file_text, socket_file, until

HOSTILE = (
    'it\'s "q" $HOME ${X} `id` $(id) \\ \\\\ \\n ; ;; #{pane_id} #(id) #[fg=red] ## ~ ~/x '
    "{a} } %if 'x' é 日本 🎉 \t tab\nline2\n\nline4 -- -d end;"
)


@pytest.fixture
async def tmux(tmp_path: Path) -> AsyncIterator[Tmux]:
    t = Tmux(f"tcmtest-{uuid.uuid4().hex[:12]}", tmp_path / "tmux.conf")
    await t.ensure_server()
    yield t
    await t.kill_server()
    socket_file(t.socket_name).unlink(missing_ok=True)


def count_clients(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every tmux client process tcmd.tmux starts from now on (their argv)."""
    started: list[list[str]] = []
    real = tcmd.tmux.run_child

    async def counting(argv: Any, **kwargs: Any) -> Any:
        started.append(list(argv))
        return await real(argv, **kwargs)

    monkeypatch.setattr(tcmd.tmux, "run_child", counting)
    return started


async def test_a_task_s_tmux_calls_start_no_client_process(
    tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tmux.connected
    started = count_clients(monkeypatch)
    out = tmp_path / "out"
    await tmux.new_session("spec_1_1_1", ["sh", "-c", f"cat > {out}"], cwd=tmp_path, env={})
    await tmux.paste("spec_1_1_1", "hello", enter=True)
    await until(lambda: file_text(out), "the paste")
    assert [p.session for p in await tmux.panes()] == ["spec_1_1_1"]  # control session hidden
    await tmux.kill_session("spec_1_1_1")
    assert started == []


async def test_every_character_arrives_exactly_over_the_control_connection(
    tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [HOSTILE, "".join(chr(c) for c in range(1, 128)), "-", " lead and trail "]
    started = count_clients(monkeypatch)
    for i, text in enumerate(texts):
        await tmux.run("set-buffer", "-b", f"b{i}", "--", text)
        await tmux.run("save-buffer", "-b", f"b{i}", str(tmp_path / f"b{i}"))  # per call
        assert (tmp_path / f"b{i}").read_bytes() == text.encode()
    assert all(argv[5] == "save-buffer" for argv in started)  # set-buffer went over control
    await tmux.run("set-environment", "-g", "TCM_X", HOSTILE)
    assert await tmux.run("show-environment", "-g", "TCM_X") == f"TCM_X={HOSTILE}\n"


async def test_new_session_leaves_the_control_client_in_its_own_session(
    tmux: Tmux, tmp_path: Path
) -> None:
    await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={"A": "b c;d"})
    await tmux.new_session("exec_2", ["sleep", "30"], cwd=tmp_path, env={})
    who = await tmux.run("display-message", "-p", "#{client_session}")
    assert who == f"{CONTROL_SESSION}\n"
    assert "A=b c;d\n" in await tmux.run("show-environment", "-t", "=exec_1")


async def test_a_pane_death_is_pushed_with_nothing_else_talking_to_tmux(
    tmux: Tmux, tmp_path: Path
) -> None:
    await tmux.run("set-hook", "-gw", "pane-died", registry.PANE_DIED_HOOK)
    pane = await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={})

    async def grown() -> bool:  # past its birth: a death then is reaped at once (see below)
        now = await tmux.pane("exec_1")
        return now is not None and now.command == "sleep"

    await until(grown, "sleep running")
    heard: asyncio.Queue[str] = asyncio.Queue()
    tmux.listeners.append(heard.put_nowait)
    os.kill(pane.pid, signal.SIGKILL)
    # the pane-died hook's notification, or (if tmux 3.3a has not reaped the process) the
    # dead-panes subscription's, within a second
    hook, listed = f"%pane-mode-changed {pane.pane_id}", f"{pane.pane_id} "
    async with asyncio.timeout(5):
        while not ((line := await heard.get()) == hook or line.endswith(listed)):
            pass
    after = await tmux.pane("exec_1")  # nudges tmux to reap it if it has not
    assert after is not None
    assert (after.dead, after.dead_signal) == (True, 9)
    assert await tmux.run("display-message", "-p", "-t", pane.pane_id, "#{pane_in_mode}") == "0\n"


async def test_a_lost_client_falls_back_to_client_processes_and_reattaches(
    tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: list[str] = []
    tmux.listeners.append(heard.append)
    control = tmux._control
    assert control is not None
    assert control._proc is not None
    os.kill(control._proc.pid, signal.SIGKILL)

    async def lost() -> bool:
        return not tmux.connected

    await until(lost, "the control client seen gone")
    assert heard == ["lost"]
    started = count_clients(monkeypatch)
    await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={})
    await tmux.paste("exec_1", HOSTILE)  # load-buffer from stdin again
    assert len(started) == 2
    assert await tmux.connect()
    assert [p.session for p in await tmux.panes()] == ["exec_1"]
    assert len(started) == 3  # connect's has-session; the listing went over control


async def test_reconnecting_never_starts_a_server(tmux: Tmux) -> None:
    await tmux.kill_server()
    assert not await tmux.connect()
    with pytest.raises(tcmd.tmux.NoServer):
        await tmux.run("list-sessions")


def test_only_single_block_commands_are_routed() -> None:
    assert routable(["list-panes", "-a"])
    assert routable(["run-shell", "true"])
    refused = [
        ["source-file", "x"],
        ["capture-pane", "-p"],
        ["run-shell", "-C", "x"],
        ["run-shell", "-bC", "x"],
        ["if-shell", "true", "x"],
        ["kill-server"],
        [],
    ]
    for args in refused:
        assert not routable(args), args


# -- the registry: a death reaches it at once, not at the next reconcile ---------------------
@pytest.fixture
async def instances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Instances]:
    # no poll at all: only a notification can make the registry look at tmux
    monkeypatch.setattr(registry, "SAFETY_INTERVAL_S", 3600.0)
    monkeypatch.setattr(registry, "RECONCILE_INTERVAL_S", 3600.0)
    settings = Settings(
        socket_path=tmp_path / "none.sock",  # no daemon: a hook command would go nowhere
        state_dir=tmp_path / "state",
        tmux_socket=f"tcmtest-{uuid.uuid4().hex[:8]}",
    )
    store = JsonFileStore(settings.state_dir / "store")
    store.open()
    tmux = Tmux(settings.tmux_socket, settings.state_dir / "tmux.conf")
    inst = Instances(settings, store, tmux)
    await inst.start()
    watch = asyncio.get_running_loop().create_task(inst.watch())
    try:
        yield inst
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await tmux.kill_server()
        socket_file(settings.tmux_socket).unlink(missing_ok=True)
        store.close()


async def test_a_dead_pane_shows_exited_without_any_poll(
    instances: Instances, tmp_path: Path
) -> None:
    inst = instances.create(Role.EXECUTIVE, None, agent="shell", work_dir=str(tmp_path), context="")
    await instances.launch(inst, resume=False)
    pane = await instances.tmux.pane(inst.id)
    assert pane is not None
    os.kill(pane.pid, signal.SIGKILL)  # at birth: tmux 3.3a may leave it unreaped (a nudge)

    async def exited() -> bool:
        return inst.status == State.EXITED

    await until(exited, "the instance marked exited", timeout_s=5)
    assert inst.exit_signal == 9


async def test_the_registry_reattaches_a_lost_client_and_reconciles(
    instances: Instances, tmp_path: Path
) -> None:
    control = instances.tmux._control
    assert control is not None
    assert control._proc is not None
    os.kill(control._proc.pid, signal.SIGKILL)

    async def back() -> bool:
        return instances.tmux.connected and instances.tmux._control is not control

    await until(back, "the control client attached again")
    inst = instances.create(Role.EXECUTIVE, None, agent="shell", work_dir=str(tmp_path), context="")
    await instances.launch(inst, resume=False)
    pane = await instances.tmux.pane(inst.id)
    assert pane is not None
    os.kill(pane.pid, signal.SIGKILL)

    async def exited() -> bool:
        return inst.status == State.EXITED

    await until(exited, "the instance marked exited", timeout_s=5)
