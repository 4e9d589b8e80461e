"""REDIS_URL's other forms against real redis-servers: a Unix socket with a Redis ACL user
and a db number, and TLS (rediss://) with the server's CA. The daemon's state lands in
that db, through that user, and nowhere else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from tests.fakes import FAKE_CLAUDE
from tests.redis_server import RedisServer, free_port
from tests.support import AgentDaemon, DaemonProcess, wait_until

USER, PASSWORD = "tcm-node", "s3cret-Ω"


def mirrored_daemon(tmp_path: Path, factory: type[DaemonProcess], url: str) -> None:
    """A daemon on ``url`` with one instance, once it reports Redis healthy and has
    written everything through."""
    agents = AgentDaemon.start_in(tmp_path, factory, FAKE_CLAUDE, {"REDIS_URL": url})
    agents.spawn("executive", agent="shell")
    wait_until(
        lambda: (s := agents.call("status")["store"])["backend"] == "redis" and s["pending"] == 0,
        15,
        what="the mirror to reach Redis",
    )


def test_a_unix_socket_an_acl_user_and_a_db_number(
    tmp_path: Path, daemon_factory: type[DaemonProcess]
) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisServer(
        "--unixsocket", str(sock), "--unixsocketperm", "700",
        # the default user may only PING (the fixture's own liveness check): tcm must log in
        "--user", "default", "on", "nopass", "-@all", "+ping",
        "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
    ).start()  # fmt: skip
    try:
        mirrored_daemon(tmp_path, daemon_factory, f"unix://{USER}:{PASSWORD}@{sock}?db=3")

        def db(n: int) -> redis.Redis:
            return redis.Redis(unix_socket_path=str(sock), username=USER, password=PASSWORD, db=n)

        with db(3) as db3, db(0) as db0:
            assert db3.keys("tcm:*"), "nothing written to db 3"
            assert db0.keys("*") == []
    finally:
        server.cleanup()


def test_tls_with_the_servers_ca(tmp_path: Path, daemon_factory: type[DaemonProcess]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    tls = RedisServer(  # plain on its own port (the fixture's liveness check), TLS on port
        "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    ).start()  # fmt: skip
    try:
        mirrored_daemon(
            tmp_path, daemon_factory, f"rediss://127.0.0.1:{port}/2?ssl_ca_certs={cert}"
        )
        with redis.Redis(port=tls.port, db=2) as plain:  # the same server, without TLS
            assert plain.keys("tcm:*"), "nothing written to db 2 over TLS"
    finally:
        tls.cleanup()
