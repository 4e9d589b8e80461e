"""Benchmark: `tcmctl mcp` start-up, as Claude Code sees it. Prints its figures.

    .venv/bin/python -m tests.bench.bench_mcp

With the daemon already running, each run starts the shim, sends `initialize`, waits for
the answer, sends `notifications/initialized` + `tools/list` (as Claude Code does) and
stops the clock at the tools/list answer. Target (issue 4): median <= 400 ms. Also shown:
the first `tools/call` answer (served once the MCP SDK has loaded in the background), and
what the SDK import alone costs in a fresh interpreter.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from tests.support import DaemonProcess

RUNS = 10
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    },
}


def send(pipe: IO[bytes], *frames: dict[str, Any]) -> None:
    pipe.write(b"".join(json.dumps(f).encode() + b"\n" for f in frames))
    pipe.flush()


def answer(pipe: IO[bytes], req_id: int) -> dict[str, Any]:
    while True:
        msg: dict[str, Any] = json.loads(pipe.readline())
        if msg.get("id") == req_id:
            return msg


def one_run(env: dict[str, str]) -> tuple[float, float, float]:
    """Seconds from process start to: initialize answered, tools/list, first tools/call."""
    t0 = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-m", "tcmctl", "mcp"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        send(proc.stdin, INITIALIZE)
        answer(proc.stdout, 1)
        t_init = time.perf_counter() - t0
        send(
            proc.stdin,
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        )
        tools = answer(proc.stdout, 2)["result"]["tools"]
        t_list = time.perf_counter() - t0
        assert any(t["name"] == "spawn" for t in tools)
        call = {"name": "ping", "arguments": {}}
        send(proc.stdin, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call})
        assert answer(proc.stdout, 3)["result"]["isError"] is False
        t_call = time.perf_counter() - t0
        proc.stdin.close()
        proc.wait(30)
    return t_init, t_list, t_call


def process_median(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        d = DaemonProcess(Path(tmp) / "state", {"TCM_LOG_LEVEL": "info"}).start()
        try:
            one_run(d.env)  # warm-up: page cache
            runs = [one_run(d.env) for _ in range(RUNS)]
        finally:
            d.cleanup()
    init, listed, called = (statistics.median(col) * 1e3 for col in zip(*runs, strict=True))
    worst = max(r[1] for r in runs) * 1e3
    print(
        f"tcmctl mcp, start -> tools/list answered: median {listed:.0f} ms, worst {worst:.0f} ms"
        f" over {RUNS} runs   (target <= 400 ms)"
    )
    print(f"  start -> initialize answered:          median {init:.0f} ms")
    print(f"  start -> first tools/call answered:    median {called:.0f} ms (MCP SDK loaded)")
    py = process_median([sys.executable, "-c", "pass"], 5)
    sdk = process_median([sys.executable, "-c", "import mcp.server.lowlevel"], 5)
    print(
        f"  for scale: python -c pass {py * 1e3:.0f} ms; importing the MCP SDK {sdk * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
