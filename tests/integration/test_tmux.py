"""tcmd.tmux against a real tmux (3.3a): each test owns one private `-L` server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tcmd.errors import InvalidParams, Unavailable
from tcmd.tmux import SEP, PaneInfo, Tmux, TmuxError, sanitize

T = TypeVar("T")
PY = sys.executable


async def until(probe: Callable[[], Awaitable[T]], what: str, timeout_s: float = 5.0) -> T:
    """Await `probe` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


async def file_text(path: Path) -> str:
    return await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")


def socket_file(name: str) -> Path:
    base = Path(os.environ.get("TMUX_TMPDIR") or "/tmp")
    return base / f"tmux-{os.getuid()}" / name


@pytest.fixture
async def tmux_off(tmp_path: Path) -> AsyncIterator[Tmux]:
    """A Tmux on a fresh socket name, server not started; that server is killed after."""
    t = Tmux(f"tcmtest-{uuid.uuid4().hex[:12]}", tmp_path / "tmux.conf")
    yield t
    await t.kill_server()
    socket_file(t.socket_name).unlink(missing_ok=True)  # kill-server leaves it behind


@pytest.fixture
async def tmux(tmux_off: Tmux) -> Tmux:
    """A Tmux whose private server is running."""
    await tmux_off.ensure_server()
    return tmux_off


async def dead_pane(tmux: Tmux, name: str) -> PaneInfo:
    async def probe() -> PaneInfo | None:
        pane = await tmux.pane(name)
        reaped = pane is not None and (pane.dead_status, pane.dead_signal) != (None, None)
        return pane if pane is not None and pane.dead and reaped else None

    return await until(probe, f"pane {name} dead")


async def test_server_runs_with_no_sessions_and_config_applied(tmux: Tmux) -> None:
    assert await tmux.panes() == []
    assert int(await tmux.run("display-message", "-p", "#{pid}")) > 0
    await tmux.ensure_server()  # idempotent on a running server
    for option, want in [("remain-on-exit", "on"), ("history-limit", "50000")]:
        assert (await tmux.run("show-options", "-gv", option)).strip() == want
    assert (await tmux.run("show-options", "-sv", "exit-empty")).strip() == "off"


async def test_fast_exits_are_kept_as_dead_panes_with_status(tmux: Tmux, tmp_path: Path) -> None:
    # Several at once: now and then tmux 3.3a misses a SIGCHLD and leaves the status empty
    # until it is nudged (Tmux._list does that); this makes that path likely to run.
    infos = await asyncio.gather(*(
        tmux.new_session(f"exec_{i}", ["sh", "-c", f"exit {i}"], cwd=tmp_path, env={})
        for i in range(8)
    ))  # fmt: skip
    assert [p.session for p in infos] == [f"exec_{i}" for i in range(8)]
    assert all(p.pane_id.startswith("%") and p.pid > 0 for p in infos)

    async def all_dead() -> list[PaneInfo]:
        panes = await tmux.panes()
        return panes if all(p.dead for p in panes) else []

    panes = await until(all_dead, "8 dead panes")
    assert sorted((p.session, p.dead_status, p.dead_signal) for p in panes) == [
        (f"exec_{i}", i, None) for i in range(8)
    ]


async def test_dead_pane_without_status_gets_reaped_by_a_nudge(
    tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race (a child exiting during tmux's utmp helper) is rare; replay its symptom.
    await tmux.new_session("exec_1", ["sh", "-c", "exit 4"], cwd=tmp_path, env={})
    await dead_pane(tmux, "exec_1")
    calls: list[str] = []
    real_run = tmux.run

    async def run(*args: str, stdin: bytes | None = None) -> str:
        calls.append(args[0])
        out = await real_run(*args, stdin=stdin)
        if calls == ["list-panes"]:  # as tmux shows a pane it has not reaped yet
            out = out.replace(f"{SEP}1{SEP}4{SEP}", f"{SEP}1{SEP}{SEP}")
        return out

    monkeypatch.setattr(tmux, "run", run)
    [pane] = await tmux.panes()
    assert calls == ["list-panes", "run-shell", "list-panes"]
    assert (pane.dead, pane.dead_status) == (True, 4)


async def test_argv_env_cwd_arrive_verbatim_without_shell(tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    cwd = tmp_path / "dir #{pid} #(id)"  # tmux format-expands -c; must arrive as is
    cwd.mkdir()
    hostile = ['a b; echo $(id) "q"', "x;", ";", "a\\;", "#{pid}", "`id`", "'s'", "", "-e"]
    env = {"TCM_A": "v a l;$(id)", "TCM_B": "ü 😀;", "TCM_EMPTY": ""}
    code = (
        "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps("
        "[sys.argv[2:], os.getcwd(), {k: v for k, v in os.environ.items() if k.startswith('TCM_')}]"
        "))"
    )
    await tmux.new_session("exec_2", [PY, "-c", code, str(out), *hostile], cwd=cwd, env=env)
    text = await until(lambda: file_text(out), "argv file")
    assert json.loads(text) == [hostile, str(cwd), env]


@pytest.mark.parametrize("name", ["j #[fg=red]", "r#[#(touch${IFS}X)]", "t##[#{pane_pid}]"])
async def test_cwd_tmux_would_read_as_a_format_or_style_arrives_as_is(
    tmux: Tmux, tmp_path: Path, name: str
) -> None:
    # tmux 3.3a keeps "##[" as written: no escaping of -c makes these safe, env -C does
    cwd = tmp_path / name
    cwd.mkdir()
    code = "import os, sys; open(sys.argv[1], 'w').write(os.getcwd())"
    first, again = tmp_path / "first.txt", tmp_path / "again.txt"
    await tmux.new_session("exec_11", [PY, "-c", code, str(first)], cwd=cwd, env={})
    assert await until(lambda: file_text(first), "cwd of new-session") == str(cwd)
    await tmux.respawn("exec_11", [PY, "-c", code, str(again)], cwd=cwd, env={})
    assert await until(lambda: file_text(again), "cwd of respawn-pane") == str(cwd)
    assert not list(tmp_path.rglob("X")) and not (Path.cwd() / "X").exists()


async def test_single_argument_is_not_given_to_a_shell(tmux: Tmux, tmp_path: Path) -> None:
    # tmux 3.3a runs a lone argument with `sh -c`; we exec it, so this is "no such program".
    await tmux.new_session("exec_3", ["echo hi; exit 5"], cwd=tmp_path, env={})
    assert (await dead_pane(tmux, "exec_3")).dead_status == 127


async def test_bad_inputs_are_refused_before_tmux(tmux: Tmux, tmp_path: Path) -> None:
    with pytest.raises(InvalidParams, match="session name"):
        await tmux.new_session("a:b", ["true", "x"], cwd=tmp_path, env={})
    with pytest.raises(InvalidParams, match="cwd"):
        await tmux.new_session("s", ["true", "x"], cwd=tmp_path / "missing", env={})
    with pytest.raises(InvalidParams, match="argv"):
        await tmux.new_session("s", [], cwd=tmp_path, env={})


async def test_panes_lists_twenty_sessions_in_one_call(
    tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {f"spec_1_{i}" for i in range(20)}
    await asyncio.gather(
        *(tmux.new_session(n, ["sleep", "30"], cwd=tmp_path, env={}) for n in names)
    )
    calls: list[tuple[str, ...]] = []
    real_run = tmux.run

    async def counting_run(*args: str, stdin: bytes | None = None) -> str:
        calls.append(args)
        return await real_run(*args, stdin=stdin)

    async def execed() -> bool:  # `env -C DIR --` has exec'd sleep in every pane
        return sum(p.command == "sleep" for p in await tmux.panes()) == len(names)

    await until(execed, "sleep running in every pane")
    monkeypatch.setattr(tmux, "run", counting_run)
    panes = await tmux.panes()
    assert len(calls) == 1
    assert {p.session for p in panes} == names
    assert all(not p.dead and p.pid > 0 and p.command == "sleep" for p in panes)
    assert all(p.activity > time.time() - 60 for p in panes)


async def test_sigkill_shows_dead_signal_9(tmux: Tmux, tmp_path: Path) -> None:
    info = await tmux.new_session("exec_4", ["sleep", "30"], cwd=tmp_path, env={})
    os.kill(info.pid, signal.SIGKILL)
    dead = await dead_pane(tmux, "exec_4")
    assert (dead.dead_signal, dead.dead_status) == (9, None)  # tmux 3.3a: status stays empty


async def test_control_chars_in_command_name_do_not_break_parsing(
    tmux: Tmux, tmp_path: Path
) -> None:
    weird = tmp_path / "we\x1fi\trd;x"
    weird.symlink_to("/bin/sleep")  # tmux prints this name raw, separator included
    await tmux.new_session("exec_5", [str(weird), "30"], cwd=tmp_path, env={})
    await tmux.new_session("exec_6", ["sleep", "30"], cwd=tmp_path, env={})
    wanted = {"exec_5": "we\x1fi\trd;x", "exec_6": "sleep"}

    async def commands() -> dict[str, str] | None:  # each pane runs `env` until it execs
        seen = {p.session: p.command for p in await tmux.panes()}
        return seen if seen == wanted else None

    await until(commands, "both commands parsed whole")


async def test_respawn_replaces_a_dead_process_in_place(tmux: Tmux, tmp_path: Path) -> None:
    first = await tmux.new_session("exec_7", ["sh", "-c", "exit 3"], cwd=tmp_path, env={})
    await dead_pane(tmux, "exec_7")
    out = tmp_path / "env.txt"
    code = "import os, sys; open(sys.argv[1], 'w').write(os.environ['TCM_X']); input()"
    again = await tmux.respawn("exec_7", [PY, "-c", code, str(out)], cwd=tmp_path,
                               env={"TCM_X": "second;"})  # fmt: skip
    assert (again.pane_id, again.dead) == (first.pane_id, False)
    assert again.pid != first.pid
    assert await until(lambda: file_text(out), "respawned program") == "second;"


async def test_capture_returns_last_lines_printed(tmux: Tmux, tmp_path: Path) -> None:
    code = "for i in range(300): print(f'line-{i}')\nprint('\\x1b[31mred\\x1b[0m'); input()"
    await tmux.new_session("exec_8", [PY, "-c", code], cwd=tmp_path, env={}, height=20)

    async def printed() -> str:
        text = await tmux.capture("exec_8", 10)
        return text if text.endswith("red") else ""

    text = await until(printed, "output in pane")
    assert text.split("\n") == [f"line-{i}" for i in range(291, 300)] + ["red"]
    assert "\x1b[31mred" in await tmux.capture("exec_8", 3, escapes=True)


async def test_send_text_and_keys(tmux: Tmux, tmp_path: Path) -> None:
    out = tmp_path / "line.txt"
    code = "import sys; line = input(); open(sys.argv[1], 'w').write(line)"
    await tmux.new_session("exec_9", [PY, "-c", code, str(out)], cwd=tmp_path, env={})
    await tmux.send_text("exec_9", "Enter $(id) `x` 'q' ü;")
    await tmux.send_keys("exec_9", "Enter")
    assert await until(lambda: file_text(out), "typed line") == "Enter $(id) `x` 'q' ü;"


READER = r"""
import os, sys, tty
tty.setraw(0)
os.write(1, b"\x1b[?2004hREADY\r\n")
buf = bytearray()
while b"\x1b[201~" not in buf[-4096:]:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    buf += chunk
start = buf.index(b"\x1b[200~") + len(b"\x1b[200~")
tmp = sys.argv[1] + ".tmp"
with open(tmp, "wb") as f:
    f.write(buf[start:buf.index(b"\x1b[201~")])
os.rename(tmp, sys.argv[1])
os.write(1, b"DONE\r\n")
input()
"""


async def paste_into_reader(
    tmux: Tmux, tmp_path: Path, name: str, text: str
) -> tuple[bytes, float]:
    """Paste `text` into a raw-mode program; return the bytes inside the markers, seconds."""
    out = tmp_path / f"{name}.bin"
    await tmux.new_session(name, [PY, "-c", READER, str(out)], cwd=tmp_path, env={})

    async def ready() -> bool:  # READY on screen => tmux has seen the 2004h before it
        return "READY" in await tmux.capture(name, 5)

    await until(ready, "reader switching bracketed paste on")
    started = time.monotonic()
    await tmux.paste(name, text)
    pasted_s = time.monotonic() - started
    await until(lambda: asyncio.to_thread(out.exists), "pasted bytes in file")
    return out.read_bytes(), pasted_s


async def test_paste_is_byte_exact_after_sanitising(tmux: Tmux, tmp_path: Path) -> None:
    text = (
        "quotes \"double\" 'single' $(id) `id` \\back\\slash\\ \\n\n"
        "Enter C-c Escape ; x;\n"
        "tab\there 😀 漢字 ü\r\n"
        "cr\rend \x1b[201~ after \x00nul \x03etx \x7fdel \x0bvt\n"
    )
    data, _ = await paste_into_reader(tmux, tmp_path, "exec_10", text)
    want = (
        "quotes \"double\" 'single' $(id) `id` \\back\\slash\\ \\n\r"
        "Enter C-c Escape ; x;\r"
        "tab\there 😀 漢字 ü\r"
        "cr\rend [201~ after nul etx del vt\r"
    )
    assert sanitize(text).replace("\n", "\r") == want  # tmux turns LF into CR, nothing else
    assert data == want.encode()
    assert await tmux.run("list-buffers") == ""  # paste-buffer -d removed the buffer


async def test_paste_100kb(tmux: Tmux, tmp_path: Path) -> None:
    line = "line {:05d}: αβγ 😀 $(x) `y` \\ \"q\" 'r'\tend\n"
    text = "".join(line.format(i) for i in range(2400))
    assert len(text.encode()) > 100_000
    started = time.monotonic()
    data, pasted_s = await paste_into_reader(tmux, tmp_path, "exec_11", text)
    total_s = time.monotonic() - started
    print(f"paste of {len(text.encode())} bytes: paste() {pasted_s:.3f}s, "
          f"session start to bytes in file {total_s:.3f}s")  # fmt: skip
    assert data == text.replace("\n", "\r").encode()


async def test_sessions_are_matched_exactly_and_killed_idempotently(
    tmux: Tmux, tmp_path: Path
) -> None:
    await tmux.new_session("exec_10", ["sleep", "30"], cwd=tmp_path, env={})
    assert not await tmux.has_session("exec_1")  # tmux alone would prefix-match exec_10
    assert await tmux.pane("exec_1") is None
    await tmux.kill_session("exec_1")
    assert await tmux.has_session("exec_10")
    await tmux.kill_session("exec_10")
    await tmux.kill_session("exec_10")
    assert not await tmux.has_session("exec_10")


async def test_missing_target_raises_clear_tmux_error(tmux: Tmux, tmp_path: Path) -> None:
    # tmux 3.3a says "no current target" when no session exists at all; the control
    # client's own session (hidden from listings) always exists now
    await check_missing_target(tmux, "can't find session: nope")
    await tmux.new_session("other", ["sleep", "30"], cwd=tmp_path, env={})
    await check_missing_target(tmux, "can't find session: nope")
    assert await tmux.pane("%999") is None


async def check_missing_target(tmux: Tmux, error: str) -> None:
    ops: list[Callable[[], Awaitable[Any]]] = [
        lambda: tmux.send_keys("nope", "Enter"),
        lambda: tmux.send_text("nope", "hi"),
        lambda: tmux.capture("nope"),
        lambda: tmux.paste("nope", "hi"),
    ]
    for op in ops:
        with pytest.raises(TmuxError, match=rf"^{error} \(tmux .*-t =nope:.*\)$") as caught:
            await op()
        assert caught.value.gone
    assert await tmux.run("list-buffers") == ""  # the failed paste dropped its buffer


async def test_no_server(tmux_off: Tmux) -> None:
    assert await tmux_off.panes() == []
    assert await tmux_off.pane("exec_1") is None
    assert not await tmux_off.has_session("exec_1")
    await tmux_off.kill_session("exec_1")
    await tmux_off.kill_server()
    with pytest.raises(TmuxError, match=r"^(no server running|error connecting)") as caught:
        await tmux_off.run("list-sessions")
    assert type(caught.value).__name__ == "NoServer"


def test_attach_argv(tmp_path: Path) -> None:
    t = Tmux("tcmtest-x", tmp_path / "tmux.conf")
    assert t.attach_argv("exec_1", read_only=True) == [
        "tmux", "-L", "tcmtest-x", "attach-session", "-t", "=exec_1", "-r",
    ]  # fmt: skip
    assert t.attach_argv("%3", read_only=False)[-2:] == ["-t", "%3"]


async def test_circuit_breaker_with_a_stopped_server(
    tmux: Tmux, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = Tmux(tmux.socket_name, tmux.config_path, timeout_s=0.3, breaker_cooldown_s=0.5)
    pid = int(await tmux.run("display-message", "-p", "#{pid}"))
    spawned: list[int] = []
    real_popen = subprocess.Popen

    def counting_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        spawned.append(1)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            with pytest.raises(Unavailable, match=r"did not answer within 0\.3s"):
                await fast.panes()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="circuit open"):
            await fast.panes()
        assert time.monotonic() - started < 0.05
        assert len(spawned) == 3  # no tmux client while open

        async def half_open() -> bool:  # after the cool-down one call goes through...
            try:
                await fast.panes()
            except Unavailable as exc:
                return "did not answer" in exc.message
            return False

        await until(half_open, "cool-down to pass")
        with pytest.raises(Unavailable, match="circuit open"):  # ...and re-opens at once
            await fast.panes()
    finally:
        os.kill(pid, signal.SIGCONT)

    async def answers() -> bool:
        try:
            await fast.panes()
        except Unavailable:
            return False
        return True

    await until(answers, "breaker to close after SIGCONT")
    await fast.panes()  # closed: a success reset the count
    assert fast._breaker.timeouts == 0


def test_server_start_and_calls_under_uvloop(tmp_path: Path) -> None:
    # uvloop hands children extra inheritable dups of their stdio; the server the client
    # forks keeps them, so run() must not wait for EOF on anything the client was given.
    import uvloop

    tmux = Tmux(f"tcmtest-{uuid.uuid4().hex[:12]}", tmp_path / "tmux.conf", timeout_s=2)

    async def scenario() -> list[PaneInfo]:
        try:
            await tmux.ensure_server()
            await tmux.new_session("exec_1", ["sleep", "30"], cwd=tmp_path, env={})
            return await tmux.panes()
        finally:
            await tmux.kill_server()
            socket_file(tmux.socket_name).unlink(missing_ok=True)

    assert [p.session for p in uvloop.run(scenario())] == ["exec_1"]
