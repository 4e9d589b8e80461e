"""The control-mode command channel (tcmd/tmux_control.py) against a real tmux 3.3a: each
test owns one private `-L` server. No tmux is faked: client processes are counted by
wrapping the function that starts them."""

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
from tcmd.errors import Unavailable
from tcmd.instances.registry import Instances
from tcmd.model import Role, State
from tcmd.store.jsonfile import JsonFileStore
from tcmd.tmux import Tmux
from tcmd.tmux_control import CONTROL_SESSION, quote, routable
from tests.integration.test_tmux import file_text, socket_file, until

HOSTILE = (
    'it\'s "q" $HOME ${X} `id` $(id) \\ \\\\ \\n ; ;; #{pane_id} #(id) #[fg=red] ## ~ ~/x '
    "{a} } %if 'x' é 日本 🎉 \t tab\nline2\n\nline4 -- -d end;"
)
# each alone is an argument that tmux's parser would read as something else unquoted
HOSTILE_WORDS = [
    ";", "\\;", "a;", "{", "}", "~", "~root", "$HOME", "#{pid}", "#", "%if 1", "%endif",
    "\\", "'", '"', "", " ", "-", "--", "\r", "\x1b[201~", "\x7f", "\x01x", "é",
]  # fmt: skip


@pytest.fixture
async def tmux(tmp_path: Path) -> AsyncIterator[Tmux]:
    t = Tmux(f"tcmtest-{uuid.uuid4().hex[:12]}", tmp_path / "tmux.conf")
    await t.ensure_server()
    yield t
    await t.kill_server()
    socket_file(t.socket_name).unlink(missing_ok=True)


def per_call(tmux: Tmux) -> Tmux:
    """The same server, driven with a client process per call (no control client)."""
    return Tmux(tmux.socket_name, tmux.config_path, use_control=False)


def count_clients(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every tmux client process tcmd.tmux starts from now on (their argv)."""
    started: list[list[str]] = []
    real = tcmd.tmux.run_child

    async def counting(argv: Any, **kwargs: Any) -> Any:
        started.append(list(argv))
        return await real(argv, **kwargs)

    monkeypatch.setattr(tcmd.tmux, "run_child", counting)
    return started


def kill_control(tmux: Tmux) -> None:
    control = tmux._control
    assert control is not None
    assert control.pid is not None
    os.kill(control.pid, signal.SIGKILL)


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
    assert await tmux.has_session("spec_1_1_1")
    await tmux.kill_session("spec_1_1_1")
    assert not await tmux.has_session("spec_1_1_1")
    assert started == []


async def test_commands_are_answered_in_order_with_their_errors(tmux: Tmux, tmp_path: Path) -> None:
    await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={})
    calls = [tmux.run("display-message", "-p", "-t", "=exec_1:", f"n{i}") for i in range(50)]
    calls.append(tmux.run("has-session", "-t", "=nope"))
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert answers[:50] == [f"n{i}\n" for i in range(50)]
    error = answers[50]
    assert isinstance(error, tcmd.tmux.TmuxError)
    assert error.gone
    assert error.stderr == "can't find session: nope"
    with pytest.raises(tcmd.tmux.SessionExists):
        await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={})


async def test_calls_that_make_panes_are_not_sent_in_a_burst(
    tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = tmux._control
    assert control is not None
    in_flight: list[int] = []
    real = control.submit

    def submit(*commands: Any) -> Any:
        in_flight.append(len(control.pending) + len(commands))
        return real(*commands)

    monkeypatch.setattr(control, "submit", submit)
    names = [f"exec_{i}" for i in range(12)]
    await asyncio.gather(
        *(tmux.new_session(n, ["sleep", "30"], cwd=tmp_path, env={}) for n in names)
    )
    await asyncio.gather(*(tmux.kill_session(n) for n in names))
    assert len(in_flight) == 24
    assert max(in_flight) <= tcmd.tmux.HEAVY_IN_FLIGHT
    assert await tmux.panes() == []


async def test_hostile_arguments_mean_what_they_mean_per_call(
    tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = per_call(tmux)
    started = count_clients(monkeypatch)
    for i, text in enumerate([HOSTILE, "".join(chr(c) for c in range(1, 128)), *HOSTILE_WORDS]):
        over, alone = f"over{i}", f"alone{i}"
        await tmux.run("set-buffer", "-b", over, "--", text or "x")  # "": no buffer at all
        await plain.run("set-buffer", "-b", alone, "--", text or "x")
        assert await plain.run("show-buffer", "-b", over) == (text or "x"), repr(text)
        assert await plain.run("show-buffer", "-b", alone) == (text or "x"), repr(text)
        await tmux.run("set-environment", "-g", "TCM_X", text)
        assert await plain.run("show-environment", "-g", "TCM_X") == f"TCM_X={text}\n"
        # as a target: never a second command, never a format; the same error both ways
        answers = []
        for t in (tmux, plain):
            with pytest.raises(tcmd.tmux.TmuxError) as caught:
                await t.run("has-session", "-t", f"={text}x")
            answers.append(caught.value.stderr)
        assert answers[0] == answers[1], repr(text)
    # what went per call: the plain Tmux's calls and the show-buffer checks only
    assert not any(argv[5] == "set-buffer" and argv[7].startswith("over") for argv in started)
    assert not any(argv[5] == "set-environment" for argv in started)
    assert await tmux.run("list-sessions", "-F", "#{session_name}") == f"{CONTROL_SESSION}\n"


async def test_typed_text_reaches_the_pane_byte_for_byte(tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "out"
    await tmux.new_session("exec_1", ["sh", "-c", f"stty raw -echo; cat > {out}"],
                           cwd=tmp_path, env={"A": "b c;d $X"})  # fmt: skip
    text = HOSTILE.replace("\n", " ").replace("\t", " ") + " ;"
    await until(lambda: tmux.pane("exec_1"), "the pane")
    await tmux.send_text("exec_1", text)
    assert await until(lambda: file_text(out), "the text") is not None

    async def whole() -> bool:
        return await file_text(out) == text

    await until(whole, "every character")
    assert "A=b c;d $X\n" in await tmux.run("show-environment", "-t", "=exec_1")


async def test_nul_never_goes_over_the_connection() -> None:
    assert routable(["set-buffer", "--", "plain"])
    assert not routable(["set-buffer", "--", "a\x00b"])
    assert quote("a b") == '"a b"'
    assert quote("plain-word_1.x") == "plain-word_1.x"
    refused = [["source-file", "x"], ["capture-pane", "-p"], ["run-shell", "true"],
               ["run-shell", "-b", "true"], ["if-shell", "true", "x"], ["wait-for", "x"],
               ["kill-server"], []]  # fmt: skip
    for args in refused:
        assert not routable(args), args


async def test_a_killed_client_falls_back_per_call_then_reconnects(
    tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kill_control(tmux)

    async def lost() -> bool:
        return not tmux.connected

    await until(lost, "the control client seen gone")
    started = count_clients(monkeypatch)
    await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={})
    await tmux.paste("exec_1", HOSTILE)  # load-buffer from stdin again
    assert [argv[5] for argv in started] == ["new-session", "load-buffer"]
    assert await tmux.connect()
    assert [p.session for p in await tmux.panes()] == ["exec_1"]
    assert [argv[5] for argv in started[2:]] == ["has-session"]  # the listing went over it


async def test_a_call_in_flight_when_the_client_dies_fails_or_falls_back(
    tmux: Tmux, tmp_path: Path
) -> None:
    await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={})
    control = tmux._control
    assert control is not None
    read = asyncio.ensure_future(tmux.run("list-panes", "-a", "-F", "#{session_name}"))
    write = asyncio.ensure_future(tmux.run("set-environment", "-g", "X", "1"))
    control.close()  # before either answer is read: the read retries per call
    assert "exec_1\n" in await read
    # a write may have happened: the caller is told, never a silent retry
    (outcome,) = await asyncio.gather(write, return_exceptions=True)
    assert outcome == "" or (
        isinstance(outcome, Unavailable) and "control connection lost" in outcome.message
    )
    assert not tmux.connected


async def test_reconnecting_never_starts_a_server(tmux: Tmux) -> None:
    await tmux.kill_server()
    assert not tmux.connected
    assert not await tmux.connect()
    with pytest.raises(tcmd.tmux.NoServer):
        await tmux.run("list-sessions")


async def test_a_server_killed_under_the_client_is_survived(tmux: Tmux, tmp_path: Path) -> None:
    await per_call(tmux).run("kill-server")

    async def lost() -> bool:
        return not tmux.connected

    await until(lost, "the control client seen gone")
    await tmux.ensure_server()  # a new server: attached again
    assert tmux.connected
    await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={})
    assert [p.session for p in await tmux.panes()] == ["exec_1"]


# -- the registry keeps the connection: reattached at the next reconcile ----------------------
@pytest.fixture
async def instances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Instances]:
    monkeypatch.setattr("tcmd.instances.registry.RECONCILE_INTERVAL_S", 0.1)
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


async def test_the_registry_reattaches_a_lost_client(instances: Instances, tmp_path: Path) -> None:
    tmux = instances.tmux
    control = tmux._control
    assert control is not None
    kill_control(tmux)

    async def back() -> bool:
        return tmux.connected and tmux._control is not control

    await until(back, "the control client attached again")
    inst = instances.create(Role.EXECUTIVE, None, agent="shell", work_dir=str(tmp_path), context="")
    await instances.launch(inst, resume=False)
    pane = await tmux.pane(inst.id)
    assert pane is not None
    os.kill(pane.pid, signal.SIGKILL)  # deaths still come from the kernel

    async def exited() -> bool:
        return inst.status == State.EXITED

    await until(exited, "the instance marked exited", timeout_s=5)


async def test_a_stopped_server_opens_the_circuit_and_its_late_answers_close_it(
    tmux: Tmux,
) -> None:
    # Timeouts of a server that answers nothing open the circuit; when the server goes on,
    # the answers of the calls that gave up still come over the connection, and the first
    # closes the circuit at once instead of after the cool-down (60 s here).
    pid = int(await tmux.run("display-message", "-p", "#{pid}"))
    fast = Tmux(tmux.socket_name, tmux.config_path, timeout_s=0.3, breaker_cooldown_s=60)
    assert await fast.connect()
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            with pytest.raises(Unavailable, match=r"did not answer within 0\.3s"):
                await fast.run("has-session", "-t", f"={CONTROL_SESSION}")
        with pytest.raises(Unavailable, match="circuit open"):
            await fast.run("has-session", "-t", f"={CONTROL_SESSION}")
    finally:
        os.kill(pid, signal.SIGCONT)

    async def answered() -> bool:
        try:
            await fast.run("has-session", "-t", f"={CONTROL_SESSION}")
        except Unavailable:
            return False
        return True

    await until(answered, "the late answers to close the circuit", timeout_s=5.0)
    fast.disconnect()
