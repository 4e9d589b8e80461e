"""Instance state that must heal (issue 11): races with terminate, failed spawns, lost state,
hostile work directories. Real tcmd, real tmux; the registry in-process where a fault must
be placed exactly."""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tcmd.api import OPERATOR
from tcmd.config import Settings
from tcmd.errors import Conflict, Forbidden, NotFound, TcmError, Unavailable
from tcmd.instances.delivery import Delivery
from tcmd.instances.registry import Instances
from tcmd.instances.tools import InstanceTools, SpawnParams
from tcmd.model import State
from tcmd.store.jsonfile import JsonFileStore
from tcmd.tmux import PaneInfo, Tmux
from tcmd.tmux_control import CONTROL_SESSION
from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess, run_concurrently, wait_until


def sessions(agents: AgentDaemon) -> set[str]:
    """The sessions on tcm's tmux server but the control client's own (tcmd hides it)."""
    names = set(agents.daemon.tmux("list-sessions", "-F", "#{session_name}").split())
    return names - {CONTROL_SESSION}


def shell_spawn(agents: AgentDaemon, role: str, parent: str | None = None) -> dict[str, Any]:
    return agents.spawn(role, parent=parent, agent="shell", timeoutMs=60_000)


# -- 1. terminate {cascade} against concurrent spawns ---------------------------------------
def test_cascade_terminate_leaves_no_live_child_despite_concurrent_spawns(
    agents: AgentDaemon,
) -> None:
    shell_spawn(agents, "executive")
    shell_spawn(agents, "manager", "exec_1")
    run_concurrently(lambda: shell_spawn(agents, "specialist", "mgr_1_1"), 40, timeout_s=90)
    tokens = [agents.token(f"spec_1_1_{n}") for n in range(1, 41)]
    outcomes: list[dict[str, Any] | TcmError] = []
    done = threading.Event()

    def keep_spawning() -> None:  # before, during and after the cascade
        while not done.is_set():
            try:
                outcomes.append(
                    agents.spawn("specialist", parent="mgr_1_1", agent="shell", wait=False)
                )
            except TcmError as exc:
                outcomes.append(exc)

    spawners = [threading.Thread(target=keep_spawning) for _ in range(8)]
    for t in spawners:
        t.start()
    wait_until(lambda: len(outcomes) >= 8, 30, what="spawns under way")
    terminated = agents.call("terminate", {"instanceId": "mgr_1_1", "cascade": True})
    done.set()
    for t in spawners:
        t.join(60)
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert all(isinstance(e, Conflict) and "terminated" in e.message for e in refused), refused
    assert terminated["terminated"][-1] == "mgr_1_1"
    assert agents.call("list", {"parentId": "mgr_1_1"}) == []  # no live child, none later
    rows = agents.call("list", {"parentId": "mgr_1_1", "includeTerminated": True})
    assert {r["status"] for r in rows} == {"terminated"}
    spawned = {o["instanceId"] for o in outcomes if isinstance(o, dict)}
    assert {r["instanceId"] for r in rows} >= spawned | {f"spec_1_1_{n}" for n in range(1, 41)}
    wait_until(
        lambda: not {s for s in sessions(agents) if s.startswith("spec_")},
        10,
        what="every specialist's session to be gone",
    )
    for token in tokens:
        with pytest.raises(Forbidden, match="revoked"):
            agents.call("list", token=token)
    with pytest.raises(Conflict, match="mgr_1_1 has terminated"):
        agents.spawn("specialist", parent="mgr_1_1", agent="shell")


# -- 2. a failed spawn is rolled back -------------------------------------------------------
class FaultyTmux(Tmux):
    """A real Tmux; ``fault`` runs right after a session was really created."""

    fault: Callable[[], None] | None = None

    async def new_session(self, name: str, argv: Any, **kwargs: Any) -> PaneInfo:
        pane = await super().new_session(name, argv, **kwargs)
        if self.fault is not None:
            self.fault()
        return pane


class FaultyStore(JsonFileStore):
    """A real JsonFileStore that refuses writes while ``refusing``."""

    refusing = False

    def put(self, ns: str, key: str, value: Any) -> None:
        if self.refusing:
            raise Unavailable("cannot append to the state journal: disk full (test)")
        super().put(ns, key, value)


@dataclass
class Registry:
    instances: Instances
    tools: InstanceTools
    tmux: FaultyTmux
    store: FaultyStore
    work_dir: Path

    async def spawn(self) -> dict[str, Any]:
        params = SpawnParams(
            role="executive", workDir=str(self.work_dir), context="x", agent="shell", wait=False
        )
        return await self.tools.spawn(OPERATOR, params)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    """The instance registry in-process, on its own tmux server and state directory."""
    settings = Settings(
        socket_path=tmp_path / "none.sock",  # no daemon: hooks go nowhere, nothing gets ready
        state_dir=tmp_path / "state",
        tmux_socket=f"tcmtest-{uuid.uuid4().hex[:8]}",
    )
    store = FaultyStore(settings.state_dir / "store")
    store.open()
    tmux = FaultyTmux(settings.tmux_socket, settings.state_dir / "tmux.conf")
    instances = Instances(settings, store, tmux)
    await instances.start()
    try:
        yield Registry(instances, InstanceTools(instances, Delivery(instances)), tmux, store,
                       tmp_path)  # fmt: skip
    finally:
        await tmux.kill_server()
        Path(f"/tmp/tmux-{os.getuid()}/{settings.tmux_socket}").unlink(missing_ok=True)
        store.refusing = False
        store.close()


def tmux_times_out(reg: Registry) -> None:
    def fault() -> None:
        raise Unavailable("tmux did not answer within 5.0s", data={"command": "new-session"})

    reg.tmux.fault = fault


def store_refuses(reg: Registry) -> None:
    def fault() -> None:
        reg.store.refusing = True

    reg.tmux.fault = fault


@pytest.mark.parametrize("arm", [tmux_times_out, store_refuses])
async def test_failed_spawn_is_rolled_back_and_a_retry_makes_one_new_instance(
    registry: Registry, arm: Callable[[Registry], None]
) -> None:
    arm(registry)
    with pytest.raises(Unavailable) as refused:
        await registry.spawn()
    assert refused.value.data is not None and refused.value.data["instanceId"] == "exec_1"
    registry.tmux.fault = None
    inst = registry.instances.get("exec_1")
    assert inst.status == State.TERMINATED
    assert inst.last_error is not None and inst.last_error.startswith("spawn failed: ")
    assert registry.instances.tokens.owner(inst.token) is None
    assert not await registry.tmux.has_session("exec_1")
    registry.store.refusing = False
    await registry.instances.reconcile()  # a refused record is written once the store works
    assert registry.store.get("instances", "exec_1")["status"] == "terminated"  # type: ignore[index]
    again = await registry.spawn()
    assert again["instanceId"] == "exec_2"
    live = [i.id for i in registry.instances.by_id.values() if i.status != State.TERMINATED]
    assert live == ["exec_2"]
    assert {p.session for p in await registry.tmux.panes()} == {"exec_2"}


async def test_a_name_taken_behind_our_back_is_refused_and_that_session_left_alone(
    registry: Registry,
) -> None:
    theirs = await registry.tmux.new_session(
        "exec_1", ["sleep", "60"], cwd=registry.work_dir, env={}
    )  # made after the registry's last listing: it cannot know the name is taken
    with pytest.raises(Conflict, match="exec_1: a tmux session of that name exists") as refused:
        await registry.spawn()
    assert refused.value.data == {"instanceId": "exec_1"}
    inst = registry.instances.get("exec_1")
    assert inst.status == State.TERMINATED
    assert inst.last_error is not None and "duplicate session" in inst.last_error
    pane = await registry.tmux.pane("exec_1")
    assert pane is not None and (pane.pid, pane.dead) == (theirs.pid, False)
    assert (await registry.spawn())["instanceId"] == "exec_2"
    assert [o.session for o in await registry.instances.orphans()] == ["exec_1"]


def test_spawn_whose_tmux_call_times_out_is_rolled_back_end_to_end(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    """tmux creates the session but does not answer in time: the agent must not live on."""
    hang = tmp_path / "hang-new-session"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("tmux")
    assert real is not None
    wrapper = bin_dir / "tmux"
    wrapper.write_text(
        "#!/bin/sh\n"
        # no control client (tcmd falls back to a client per call, the path faked here)
        'case " $* " in *" -C attach-session "*) exit 1;; esac\n'
        f"'{real}' \"$@\" || exit $?\n"
        f'case " $* " in *" new-session "*) [ -e \'{hang}\' ] && exec sleep 60;; esac\n'
        "exit 0\n"
    )
    wrapper.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    agents = AgentDaemon.start_in(tmp_path, daemon_factory, FAKE_CLAUDE, {"PATH": path})
    hang.touch()
    with pytest.raises(Unavailable, match="did not answer") as refused:
        agents.spawn()
    hang.unlink()
    assert refused.value.data is not None and refused.value.data["instanceId"] == "exec_1"
    [row] = agents.call("list", {"includeTerminated": True})
    assert (row["instanceId"], row["status"]) == ("exec_1", "terminated")
    assert "did not answer" in row["lastError"]
    assert "exec_1" not in sessions(agents)
    assert agents.spawn()["instanceId"] == "exec_2"
    assert [(r["instanceId"], r["status"]) for r in agents.call("list")] == [("exec_2", "ready")]


# -- 3. lost state: orphan sessions ---------------------------------------------------------
def test_after_state_loss_orphans_are_listed_killable_and_never_reused(
    agents: AgentDaemon, tmp_path: Path
) -> None:
    shell_spawn(agents, "executive")
    agents.daemon.terminate()  # the agents' tmux server outlives the daemon
    agents.daemon.state_dir.rename(tmp_path / "state-moved-away")
    agents.daemon.start()
    new = shell_spawn(agents, "executive")
    assert (new["instanceId"], new["status"]) == ("exec_2", "ready")
    agents.call("send", {"instanceId": "exec_2", "text": 'printf %s "$TCM_INSTANCE_ID"'})
    agents.call("wait", {"instanceIds": ["exec_2"], "timeoutMs": 10_000})
    assert agents.call("read", {"instanceId": "exec_2"})["lastResult"] == "exec_2"
    with pytest.raises(NotFound):
        agents.call("read", {"instanceId": "exec_1"})
    listed = agents.call("orphans")
    assert [(o["session"], o["instanceStatus"]) for o in listed["orphans"]] == [("exec_1", None)]
    assert listed["killed"] == []
    with pytest.raises(Forbidden, match="operator"):
        agents.call("orphans", token=agents.token("exec_2"))
    with pytest.raises(Conflict, match=r"exec_2 is the session of a ready instance; use terminate"):
        agents.call("orphans", {"kill": ["exec_2"]})
    with pytest.raises(NotFound, match="no orphan session 'nope'"):
        agents.call("orphans", {"kill": ["exec_1", "nope"]})
    assert "exec_1" in sessions(agents)  # a refused call kills nothing
    out = agents.call("orphans", {"kill": ["exec_1"]})
    assert (out["orphans"], out["killed"]) == ([], ["exec_1"])
    assert sessions(agents) == {"exec_2"}


def test_ids_rolled_back_by_a_cut_journal_skip_the_sessions_that_survived(
    agents: AgentDaemon,
) -> None:
    shell_spawn(agents, "executive")
    shell_spawn(agents, "manager", "exec_1")
    shell_spawn(agents, "specialist", "mgr_1_1")
    shell_spawn(agents, "specialist", "mgr_1_1")
    agents.daemon.kill9()
    journal = agents.daemon.state_dir / "store" / "journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)

    def allocates_the_second_specialist(line: bytes) -> bool:
        record = json.loads(line.split(b" ", 1)[1])
        return record["key"] == "mgr_1_1" and record["value"]["next_child"] == 3

    cut = next(i for i, line in enumerate(lines) if allocates_the_second_specialist(line))
    journal.write_bytes(b"".join(lines[:cut]))  # spec_1_1_2 and its id were never written
    agents.daemon.start()
    orphans = agents.call("orphans")["orphans"]
    assert [o["session"] for o in orphans] == ["spec_1_1_2"]
    spec = shell_spawn(agents, "specialist", "mgr_1_1")
    assert (spec["instanceId"], spec["status"]) == ("spec_1_1_3", "ready")
    assert {"spec_1_1_2", "spec_1_1_3"} <= sessions(agents)


# -- 4. a work directory tmux would read as a format ---------------------------------------
@pytest.mark.parametrize("name", ["j #[fg=red]", "r#[#(touch${IFS}X)]", "t##[#{pane_pid}]"])
def test_hostile_work_dir_is_where_the_agent_runs(
    agents: AgentDaemon, tmp_path: Path, name: str
) -> None:
    work = agents.work_dir / name
    work.mkdir()
    places = [Path.cwd(), Path("/"), Path("/tmp"), tmp_path / "home", agents.work_dir, work]
    before = {p for p in places if (p / "X").exists()}
    agents.call(
        "spawn", {"role": "executive", "workDir": str(work), "context": "x", "agent": "shell"}
    )
    agents.call("send", {"instanceId": "exec_1", "text": "pwd"})
    agents.call("wait", {"instanceIds": ["exec_1"], "timeoutMs": 10_000})
    assert agents.call("read", {"instanceId": "exec_1"})["lastResult"] == str(work)
    assert {p for p in places if (p / "X").exists()} == before  # tmux ran nothing
