"""Real Redis servers for tests: a single server, a 3-node Cluster and a Sentinel, on free loopback ports.

Each server runs in a temporary directory and is stopped by its pid. The
shared ones start on first use and stop when the test process exits, so the
contract suite (which builds stores without fixtures) and the Redis tests use
the same servers. A missing binary skips the test with the reason; with
FASTSESS_REQUIRE_SERVERS=1 it fails instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from loopback import LoopbackServer, die_with_parent, free_port

START_TIMEOUT = 10.0


def require_binary(name: str) -> str:
    """The path of a server binary; skips (or fails, with FASTSESS_REQUIRE_SERVERS=1) when it is missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (apt-get install redis-server redis-tools)"
        if os.environ.get("FASTSESS_REQUIRE_SERVERS", "") not in ("", "0"):
            pytest.fail(reason + "; FASTSESS_REQUIRE_SERVERS=1 requires it")
        pytest.skip(reason)
    return path


def command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command over a raw socket and return the raw reply; independent of the client under test."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while True:
            chunk = sock.recv(65536)
            reply += chunk
            if not chunk or _complete(reply):
                return reply


def _complete(reply: bytes) -> bool:
    if reply[:1] in (b"+", b"-", b":"):
        return reply.endswith(b"\r\n")
    if reply[:1] == b"$":
        header, _, rest = reply.partition(b"\r\n")
        size = int(header[1:])
        return size < 0 or len(rest) >= size + 2
    if reply[:1] == b"*":
        return reply.endswith(b"\r\n") and reply.count(b"\r\n") >= 1 + 2 * int(reply.split(b"\r\n", 1)[0][1:])
    return False


class RedisServer(LoopbackServer):
    """One redis-server process (plain, cluster node or sentinel) in its own directory."""

    name = "redis-server"
    preexec = staticmethod(die_with_parent)

    def __init__(
        self, directory: Path, extra: tuple[str, ...] = (), sentinel_conf: str | None = None,
    ) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(directory / "redis.sock")
        self.extra = extra
        self.sentinel_conf = sentinel_conf

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        if self.sentinel_conf is not None:
            conf = self.directory / "sentinel.conf"
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n{self.sentinel_conf}")
            return [self.binary, str(conf), "--sentinel"]
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--unixsocket", self.socket_path, "--unixsocketperm", "700",
            *self.extra,
        ]

    def ready(self) -> bool:
        return command(self.port, "PING", timeout=0.5).startswith((b"+PONG", b"-NOAUTH"))

    def info(self, section: str) -> dict[str, str]:
        text = command(self.port, "INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)


class RedisCluster:
    """Three master nodes, no replicas, made with `redis-cli --cluster create`."""

    def __init__(self, directory: Path) -> None:
        self.cli = require_binary("redis-cli")
        self.nodes = []
        for i in range(3):
            bus = free_port()
            node_dir = directory / f"node{i}"
            self.nodes.append(RedisServer(node_dir, (
                "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-port", str(bus), "--cluster-node-timeout", "2000",
            )))

    @property
    def urls(self) -> list[str]:
        return [node.address for node in self.nodes]

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *self.urls, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + START_TIMEOUT * 2
        while not all(b"cluster_state:ok" in command(node.port, "CLUSTER", "INFO") for node in self.nodes):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master, optionally one replica, and one Sentinel (quorum 1) watching them as service `mymaster`.

    With a replica and a short down_after_ms, stopping the master makes the
    Sentinel promote the replica: a failover a test can wait for.
    """

    SERVICE = "mymaster"

    def __init__(self, directory: Path, replica: bool = False, down_after_ms: int = 5000) -> None:
        # No 5-second wait before the replica's first full sync (Redis 7's default).
        self.master = RedisServer(directory / "master", ("--repl-diskless-sync-delay", "0") if replica else ())
        self.replica = (
            RedisServer(directory / "replica", ("--replicaof", "127.0.0.1", str(self.master.port)))
            if replica else None
        )
        self.sentinel = RedisServer(
            directory / "sentinel",
            sentinel_conf=f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {self.SERVICE} {max(3 * down_after_ms, 3000)}\n",
        )

    def master_port(self) -> int | None:
        """The master's port as the Sentinel reports it now."""
        reply = command(self.sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        ports = [int(part) for part in reply.split(b"\r\n") if part.isdigit()]
        return ports[-1] if ports else None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.SERVICE}/0"

    def start(self) -> RedisSentinel:
        self.master.start()
        if self.replica is not None:
            self.replica.start()
        self.sentinel.start()
        deadline = time.monotonic() + START_TIMEOUT
        while str(self.master.port).encode() not in command(
            self.sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE
        ):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Sentinel did not learn its master")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.sentinel.stop()
        if self.replica is not None:
            self.replica.stop()
        self.master.stop()


# -- shared servers: started on first use, stopped at exit

_base_dir: Path | None = None
_shared: dict[str, object] = {}


def temp_dir(name: str) -> Path:
    global _base_dir
    if _base_dir is None:
        _base_dir = Path(tempfile.mkdtemp(prefix="redis-tests-"))
        atexit.register(shutil.rmtree, _base_dir, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=name + "-", dir=_base_dir))
    return path


def _shared_one(name: str, factory):
    if name not in _shared:
        server = factory(temp_dir(name)).start()
        atexit.register(server.stop)
        _shared[name] = server
    return _shared[name]


def shared_server() -> RedisServer:
    return _shared_one("single", RedisServer)


def shared_cluster() -> RedisCluster:
    return _shared_one("cluster", RedisCluster)


def shared_sentinel() -> RedisSentinel:
    return _shared_one("sentinel", RedisSentinel)
