"""Benchmark: what the Redis mirror adds to `ping`, `spawn` and `send`. Prints its figures.

    .venv/bin/python -m tests.bench.bench_mirror

Target (issue 12): the mirror adds <= 10 % to spawn and send latency and nothing to ping.
Two daemons run side by side, one with REDIS_URL (a real redis-server of its own) and one
without, and the calls alternate between them, so load on the machine hits both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from tests.bench.common import agent_daemon
from tests.redis_server import RedisServer
from tests.support import AgentDaemon

PINGS, SPAWNS, SENDS = 2_000, 20, 40


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def compare(
    name: str,
    plain: AgentDaemon,
    mirrored: AgentDaemon,
    op: Callable[[AgentDaemon], object],
    n: int,
    settle: Callable[[AgentDaemon], object] = lambda d: None,
) -> None:
    """Median latency of ``op`` on each daemon, alternating; ``settle`` runs untimed after."""
    a, b = [], []
    for _ in range(n):
        a.append(timed(lambda: op(plain)))
        settle(plain)
        b.append(timed(lambda: op(mirrored)))
        settle(mirrored)
    pa, pb = statistics.median(a), statistics.median(b)
    print(
        f"{name:6} p50 without Redis {pa:8.3f} ms, with the mirror {pb:8.3f} ms "
        f"({(pb - pa) / pa * 100:+.1f} %)"
    )


def main() -> None:
    server = RedisServer().start()
    try:
        with agent_daemon() as (plain, _), agent_daemon({"REDIS_URL": server.url}) as (
            mirrored,
            _,
        ):
            for d in (plain, mirrored):
                d.spawn("executive", agent="shell")
            with plain.daemon.client() as cp, mirrored.daemon.client() as cm:
                clients = {id(plain): cp, id(mirrored): cm}
                compare("ping", plain, mirrored, lambda d: clients[id(d)].call("ping"), PINGS)
                compare(
                    "spawn",
                    plain,
                    mirrored,
                    lambda d: d.spawn("manager", parent="exec_1", agent="shell"),
                    SPAWNS,
                )
                compare(
                    "send",
                    plain,
                    mirrored,
                    lambda d: clients[id(d)].call(
                        "send", {"instanceId": "exec_1", "text": "true"}
                    ),
                    SENDS,
                    settle=lambda d: d.call("wait", {"instanceIds": ["exec_1"]}),
                )
            store = mirrored.call("status")["store"]
            print(f"mirror: {store['sent']} documents sent, {store['pending']} pending")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
