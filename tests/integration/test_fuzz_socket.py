"""Socket fuzzing: whatever arrives on the socket, tcmd stays up, answers and stays small.

Hypothesis sends arbitrary frames (random bytes, invalid UTF-8, nested junk, huge
strings) and valid methods with hostile params: every tool of the catalogue, its params
generated from the JSON Schema the `tools` method publishes, then mutated (wrong types,
extra fields, huge values, unicode, `$()`, tmux key names, newlines). Every well-formed
request must get a result or a JSON-RPC error, never silence and never an internal error
(-32603: each one is a bug). Destructive tools run too, against a daemon whose state the
test does not care about (its instances run the fake Claude Code).

TCM_FUZZ_EXAMPLES sets the examples per test (default 50, the same ones each run, which
keeps the module around 5 s on 2 cores); a longer hunt, exploring anew each time:
`TCM_FUZZ_EXAMPLES=5000 pytest tests/integration/test_fuzz_socket.py --timeout 0`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fakes import FAKE_CLAUDE
from tests.support import AgentDaemon, DaemonProcess, wait_until

DEFAULT_EXAMPLES = 50
EXAMPLES = int(os.environ.get("TCM_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES
    <= DEFAULT_EXAMPLES,  # the suite's run is reproducible; a long hunt explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ANSWER_S = 10.0  # a well-formed request unanswered this long counts as silence
SLOW_KEYS = ("timeoutMs", "waitMs")  # clamped: a legitimate long wait is not silence
RSS_GROWTH_MAX_KB = 96 * 1024
HOSTILE = [
    "$(touch /tmp/tcm-fuzz-pwned)",
    "`id`",
    "; rm -rf /nonexistent-tcm-fuzz",
    "C-c",
    "Enter",
    "Escape",
    "C-d",
    "-t",
    "=exec_1:",
    "#{pane_pid}",
    "%begin 1 2 3",
    "\n\n\n",
    "\r\n",
    "\x00",
    "\x1b[2J",
    "\u202e\u200b",
    "🚀" * 50,
    "中文テキスト",
    "../../../../etc/passwd",
    "/",
    "exec_1",
    "mgr_1_1",
    "spec_1_1_1",
    "(a+)+$",
    "[",
    "@hang",
    "@crash",
]


# -- the daemon under fire ----------------------------------------------------------------
@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentDaemon]:
    tmp = tmp_path_factory.mktemp("fuzz")
    made: list[DaemonProcess] = []

    class Factory(DaemonProcess):
        def __init__(self, state_dir: Path, extra_env: dict[str, str] | None = None) -> None:
            super().__init__(state_dir, extra_env)
            made.append(self)

    try:
        agents = AgentDaemon.start_in(tmp, Factory, FAKE_CLAUDE, {"TCM_LOG_LEVEL": "warning"})
        WORK_DIRS.append(str(agents.work_dir))
        agents.spawn()  # something for the destructive tools to hit: exec_1 > mgr_1_1
        agents.spawn("manager", parent="exec_1")
        agents.baseline_kb = rss_kb(agents)  # type: ignore[attr-defined]
        yield agents
    finally:
        for d in made:
            d.cleanup()


def rss_kb(agents: AgentDaemon) -> int:
    proc = agents.daemon.proc
    assert proc is not None
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def still_well(agents: AgentDaemon) -> None:
    proc = agents.daemon.proc
    assert proc is not None
    assert proc.poll() is None, f"tcmd died ({proc.returncode}):\n{agents.daemon.log()[-4000:]}"
    assert not Path("/tmp/tcm-fuzz-pwned").exists(), "a $() in a param was run by a shell"
    log = agents.daemon.log()
    for crash in ("handler crashed", "background task failed", "worker failed", "Traceback"):
        assert crash not in log, f"tcmd logged {crash!r}:\n{log[-4000:]}"
    grown = rss_kb(agents) - agents.baseline_kb  # type: ignore[attr-defined]
    assert grown < RSS_GROWTH_MAX_KB, f"tcmd's RSS grew by {grown} kB"


def exchange(path: Path, payload: bytes, want_id: Any) -> list[dict[str, Any]]:
    """Send ``payload``, then a ping with id ``want_id``; every answer up to the ping's."""
    probe = json.dumps({"jsonrpc": "2.0", "method": "ping", "id": want_id}).encode() + b"\n"
    answers = []
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(ANSWER_S)
        s.connect(str(path))
        # an oversized frame closes the connection: its error is still there to read
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(payload)
            s.sendall(probe)
        buf = b""
        deadline = time.monotonic() + ANSWER_S
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                answers.append(json.loads(line))
                if answers[-1].get("id") == want_id and "result" in answers[-1]:
                    return answers
    return answers


def call_raw(path: Path, frame: dict[str, Any]) -> dict[str, Any]:
    """One request on its own connection; its answer (the test fails on silence)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(ANSWER_S)
        s.connect(str(path))
        s.sendall(json.dumps(frame, ensure_ascii=False).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            assert chunk, f"connection closed without an answer to {frame['method']}"
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer


def assert_not_internal(answer: dict[str, Any], what: Any) -> None:
    err = answer.get("error")
    if err is not None:
        assert err["code"] != -32603, f"internal error for {what!r}: {err}"
        assert "internal error" not in err["message"], f"{what!r}: {err}"
    else:
        assert "result" in answer, answer


# -- strategies ---------------------------------------------------------------------------
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
HOSTILE_TEXT = (
    st.sampled_from(HOSTILE)
    | st.text(max_size=40)
    | st.builds("".join, st.lists(st.sampled_from(HOSTILE) | st.text(max_size=5), max_size=5))
)
HUGE = st.sampled_from([2**63, -(2**63) - 1, 10**30, 1e308, -1e308]) | st.builds(
    lambda n, c: c * n, st.integers(10_000, 900_000), st.sampled_from(["x", "é", "\n", "🚀"])
)


def from_schema(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for ``node`` (the subset of JSON Schema pydantic emits)."""
    if "$ref" in node:
        return from_schema(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in node:
        return st.one_of([from_schema(n, defs) for n in node["anyOf"]])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "string":
        lo, hi = node.get("minLength", 0), min(node.get("maxLength", 60), 60)
        if "pattern" in node:
            plain = st.from_regex(node["pattern"], fullmatch=True)
            return (plain | st.sampled_from(HOSTILE)).filter(lambda s: lo <= len(s) <= hi)
        return (HOSTILE_TEXT | st.text(min_size=lo, max_size=hi)).filter(
            lambda s: lo <= len(s) <= node.get("maxLength", 10**9)
        )
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "number":
        return st.floats(
            node.get("minimum"), node.get("maximum"), allow_nan=False, allow_infinity=False
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        item = from_schema(node.get("items", {}), defs)
        return st.lists(
            item, min_size=node.get("minItems", 0), max_size=min(node.get("maxItems", 4), 4)
        )
    if kind == "object" and "properties" in node and node["properties"]:
        props = {k: real(k, from_schema(v, defs)) for k, v in node["properties"].items()}
        required = set(node.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    return st.dictionaries(st.text(max_size=10), JSON, max_size=4)  # free-form (hook payload)


WORK_DIRS: list[str] = []
IDS = st.sampled_from(["exec_1", "mgr_1_1", "exec_2", "spec_1_1_1", "mgr_1_2"])
REAL: dict[str, st.SearchStrategy[Any]] = {  # values that pass validation and reach handlers
    "instanceId": IDS,
    "parentId": IDS,
    "managerId": IDS,
    "instanceIds": st.lists(IDS, min_size=1, max_size=3),
    "managers": st.lists(IDS, min_size=1, max_size=3),
    "workDir": st.deferred(lambda: st.sampled_from(WORK_DIRS)),  # filled by the fixture
    "agent": st.just("claude"),  # never "shell": it would run the hostile text as commands
    "role": st.sampled_from(["executive", "manager", "specialist"]),
    "name": st.sampled_from(["spawn", "send", "ping"]),
}


def real(key: str, generated: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Half the time a value that names something real (so handlers run), else any."""
    return REAL[key] | generated if key in REAL else generated


@st.composite
def hostile_params(draw: st.DrawFn, schema: dict[str, Any]) -> dict[str, Any]:
    """Params valid for ``schema``, then given one hostile change (or none)."""
    params = dict(draw(from_schema(schema, schema.get("$defs", {}))))
    how = draw(st.sampled_from(["none", "wrong-type", "extra", "huge", "hostile", "drop"]))
    keys = sorted(params)
    if how == "extra":
        params[draw(st.text(min_size=1, max_size=12))] = draw(JSON)
    elif how == "drop" and keys:
        del params[draw(st.sampled_from(keys))]
    elif keys and how != "none":
        key = draw(st.sampled_from(keys))
        pick = {"wrong-type": JSON, "huge": HUGE, "hostile": HOSTILE_TEXT}[how]
        params[key] = draw(pick)
    if params.get("wait") is True and "tasks" in params:  # a run's wait has no time limit
        params["wait"] = False
    for key in SLOW_KEYS:  # keep every call short; the types stay as generated
        if type(params.get(key)) is int and params[key] > 1500:
            params[key] %= 1500
    return params


# -- the tests ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalogue(target: AgentDaemon) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = target.call("tools")
    return tools


@FUZZ
@given(data=st.data())
def test_every_tool_with_hostile_params(
    target: AgentDaemon, catalogue: list[dict[str, Any]], data: st.DataObject
) -> None:
    tool = data.draw(st.sampled_from(catalogue), label="tool")
    params = data.draw(hostile_params(tool["inputSchema"]), label="params")
    frame = {"jsonrpc": "2.0", "method": tool["name"], "params": params, "id": 7}
    answer = call_raw(target.daemon.socket, frame)
    if len(json.dumps(frame, ensure_ascii=False).encode()) >= 4 << 20:
        assert answer["error"]["code"] == -32600  # over the frame limit: refused, not read
    else:
        assert answer["id"] == 7, answer
    event(f"{tool['name']}: {answer['error']['code'] if 'error' in answer else 'result'}")
    assert_not_internal(answer, {"method": tool["name"], "params": params})
    still_well(target)


ENVELOPE = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0, None]) | JSON,
        "method": st.sampled_from(["ping", "list", "status", "nope", "", "tools"]) | JSON,
        "params": JSON,
        "id": st.integers() | st.text(max_size=20) | JSON,
        "token": st.text(max_size=50) | JSON,
    },
)


@FUZZ
@given(
    junk=st.one_of(
        st.binary(max_size=2000),  # random bytes, invalid UTF-8 among them
        st.text(max_size=500).map(str.encode),
        JSON.map(lambda v: json.dumps(v).encode()),
        ENVELOPE.map(lambda v: json.dumps(v).encode()),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),  # nested junk
        st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(1, 3_000_000).map(lambda n: b'{"jsonrpc":"2.0","method":"' + b"m" * n + b'"}'),
        st.just(b"\xff\xfe\x00\x00\xc0\xaf"),
    )
)
def test_arbitrary_frames(target: AgentDaemon, junk: bytes) -> None:
    answers = exchange(target.daemon.socket, junk + b"\n", want_id="probe")
    assert answers, "no answer at all"
    last = answers[-1]
    if last.get("id") != "probe":  # only a frame over the limit may end the talk early
        assert last["error"]["code"] == -32600 and "limit" in last["error"]["message"]
    for answer in answers:
        assert_not_internal(answer, junk[:200])
    still_well(target)


def test_huge_frame_over_the_limit_is_refused_and_the_daemon_goes_on(target: AgentDaemon) -> None:
    frame = b'{"jsonrpc":"2.0","method":"ping","id":1,"params":{"x":"' + b"x" * (5 << 20) + b'"}}\n'
    answers = exchange(target.daemon.socket, frame, want_id="after")
    assert answers[0]["error"]["code"] == -32600
    assert target.call("ping")["pong"] is True
    still_well(target)


def test_idle_half_open_connections_do_not_starve_a_client(target: AgentDaemon) -> None:
    path = str(target.daemon.socket)
    idle: list[socket.socket] = []
    try:
        for i in range(500):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(path)
                if i % 2:
                    s.send(b'{"jsonrpc":"2.0","method":"pi')  # a frame that never ends
            except OSError:  # a connection limit may refuse some: then the rest must hold
                s.close()
                continue
            idle.append(s)

        def accepted() -> bool:
            return bool(target.call("status")["counts"]["connections"] > len(idle))

        # let tcmd accept them all first (a connection limit may hold it below)
        with contextlib.suppress(AssertionError):
            wait_until(accepted, 5, what="the idle connections to be accepted")
        with target.daemon.client(timeout_s=5) as c:
            c.call("ping")  # connected, warmed
            latencies = []
            for _ in range(20):
                t0 = time.perf_counter()
                assert c.call("ping")["pong"] is True
                latencies.append(time.perf_counter() - t0)
        assert max(latencies) < 0.1, f"ping took {max(latencies) * 1000:.0f} ms"
        fresh = time.perf_counter()
        assert target.call("ping")["pong"] is True  # a new connection is accepted and served
        assert time.perf_counter() - fresh < 0.1
    finally:
        for s in idle:
            s.close()
    still_well(target)
    wait_until(
        lambda: target.call("status")["counts"]["connections"] <= 2,
        10,
        what="idle connections closed",
    )
