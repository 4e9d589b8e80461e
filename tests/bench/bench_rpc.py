"""Benchmark: the daemon's socket round trip and tcmctl's start-up. Prints its figures.

    .venv/bin/python -m tests.bench.bench_rpc

Targets (issue 2): ping p50 <= 0.15 ms and >= 8,000 req/s on one client; >= 25,000
req/s with 8 pipelining clients on 2 cores; `tcmctl status --json` median <= 120 ms.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import DaemonProcess

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'


def one_client(path: Path, n: int) -> list[float]:
    """Sequential round trips on one connection; each latency in seconds."""
    lat = []
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        f = s.makefile("rb")
        for _ in range(n):
            t = time.perf_counter()
            s.sendall(PING)
            f.readline()
            lat.append(time.perf_counter() - t)
    return lat


def pipelining_client(path: str, total: int, depth: int, q: mp.Queue[int]) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        f = s.makefile("rb")
        batch = PING * depth
        done = 0
        while done < total:
            s.sendall(batch)
            for _ in range(depth):
                f.readline()
            done += depth
    q.put(done)


def pipelined(path: Path, clients: int, per_client: int, depth: int) -> float:
    q: mp.Queue[int] = mp.Queue()
    procs = [
        mp.Process(target=pipelining_client, args=(str(path), per_client, depth, q))
        for _ in range(clients)
    ]
    t = time.perf_counter()
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join()
    return total / elapsed


def process_median(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp) / "state").start()
        try:
            one_client(d.socket, 2000)  # warm-up
            lat = sorted(one_client(d.socket, 20_000))
            p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
            rps1 = len(lat) / sum(lat)
            print(
                f"ping, 1 client sequential:   p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
                f"{rps1:,.0f} req/s   (target p50 <= 0.15 ms, >= 8,000 req/s)"
            )
            rps8 = pipelined(d.socket, clients=8, per_client=25_000, depth=100)
            print(
                f"ping, 8 pipelining clients:  {rps8:,.0f} req/s on {os.cpu_count()} cores"
                f"   (target >= 25,000 req/s)"
            )
            env = d.env
            py = process_median([sys.executable, "-c", "pass"], env, 20)
            ctl = process_median([sys.executable, "-m", "tcmctl", "status", "--json"], env, 20)
            print(
                f"tcmctl status --json:        median {ctl * 1e3:.1f} ms; python -c pass "
                f"{py * 1e3:.1f} ms; ratio {ctl / py:.1f}x   (target <= 120 ms)"
            )
        finally:
            d.cleanup()


if __name__ == "__main__":
    main()
