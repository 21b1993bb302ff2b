"""Real memcached servers for tests, on free loopback ports, each in a temporary directory, stopped by pid.

`shared_server()` starts one server on first use and keeps it for the whole
test process (the contract suite builds stores without fixtures, so it uses
this); the session-scoped fixtures below stop what they started. Servers run
as `memcached -u nobody -l 127.0.0.1 -p PORT -U 0`. A missing binary skips
the test with the reason; with FASTSESS_REQUIRE_SERVERS=1 it fails instead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from loopback import LoopbackServer, free_port

START_TIMEOUT = 10.0


def require_binary(name: str = "memcached") -> str:
    """The path of the memcached binary; skips (or fails, with FASTSESS_REQUIRE_SERVERS=1) when it is missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (apt-get install memcached)"
        if os.environ.get("FASTSESS_REQUIRE_SERVERS", "") not in ("", "0"):
            pytest.fail(reason + "; FASTSESS_REQUIRE_SERVERS=1 requires it")
        pytest.skip(reason)
    return path


def command(port: int, line: str, timeout: float = 2.0) -> bytes:
    """Send one text-protocol command over a fresh socket; the reply up to END, or its single line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(line.encode() + b"\r\n")
        reply = b""
        while True:
            chunk = sock.recv(65536)
            reply += chunk
            if not chunk or reply.endswith(b"END\r\n") or (b"\r\n" in reply and not reply.startswith(b"STAT")):
                return reply


class MemcachedServer(LoopbackServer):
    """One memcached process on 127.0.0.1; restart() brings it back, empty, on the same port."""

    name = "memcached"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.binary = require_binary()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()

    def argv(self) -> list[str]:
        return [self.binary, "-u", "nobody", "-l", "127.0.0.1", "-p", str(self.port), "-U", "0"]

    def ready(self) -> bool:
        return command(self.port, "version", timeout=0.5).startswith(b"VERSION")

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server).

        The signal is delivered asynchronously: wait until every thread of the
        server is stopped, or a request sent right after could still be served.
        """
        os.kill(self.process.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _all_threads_stopped(self.process.pid):
            time.sleep(0.005)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stats(self) -> dict[str, int]:
        """The numeric counters of `stats`."""
        text = command(self.port, "stats").decode()
        pairs = (line.split(" ", 2)[1:] for line in text.splitlines() if line.startswith("STAT "))
        return {name: int(value) for name, value in pairs if value.isdigit()}

    def has_key(self, key: bytes) -> bool:
        """Whether this server holds `key` (a full memcached key), without bumping it."""
        return command(self.port, f"mg {key.decode()} u").startswith(b"HD")

    def flush(self) -> None:
        command(self.port, "flush_all")


# -- servers that live for the test process: started on first use, stopped at exit

_base_dir: Path | None = None
_shared: dict[str, MemcachedServer] = {}


def temp_dir(name: str) -> Path:
    global _base_dir
    if _base_dir is None:
        _base_dir = Path(tempfile.mkdtemp(prefix="memcached-tests-"))
        atexit.register(shutil.rmtree, _base_dir, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=name + "-", dir=_base_dir))


def start_server(name: str = "memcached") -> MemcachedServer:
    """A new server that is also stopped at exit, should its test forget to."""
    server = MemcachedServer(temp_dir(name)).start()
    atexit.register(server.stop)
    return server


def shared_server() -> MemcachedServer:
    """The one server shared by the contract suite and the fixtures (tests isolate by key prefix)."""
    server = _shared.get("single")
    if server is None or not server.running:
        server = _shared["single"] = start_server("shared")
    return server


def stop_shared() -> None:
    server = _shared.pop("single", None)
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def memcached_server():
    """The shared memcached server; stopped when the test session ends."""
    yield shared_server()
    stop_shared()


@pytest.fixture(scope="session")
def memcached_servers():
    """Two memcached servers of their own, for the multi-node tests."""
    servers = [start_server("node-a"), start_server("node-b")]
    yield servers
    for server in servers:
        server.stop()


def _all_threads_stopped(pid: int) -> bool:
    """True when every thread of pid is in state T (stopped), per /proc."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        states = []
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
    except OSError:
        return True  # no /proc here: nothing better to wait for
    return all(state in ("T", "t") for state in states)
