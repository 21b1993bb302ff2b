"""What the tests' own servers share: free loopback ports, and children that die with the test run."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now, for a server this run starts.

    Not one the kernel would pick: a port from its ephemeral range can be taken
    by any outgoing connection between this check and the server's bind. And
    never the same one twice in a process, since a cluster picks all its ports
    before its first node binds one.
    """
    low, high = _ephemeral_range()
    choices = range(max(1024, low - 12000), low) if low > 2048 else range(high + 1, 65536)
    for _ in range(500):
        port = random.choice(choices)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {choices.start}-{choices.stop - 1}")


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux says; elsewhere the IANA range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(part) for part in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so no server outlives a killed run."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LoopbackServer:
    """A server process of the tests' own: started, probed until it answers, stopped by pid.

    Subclasses give `name`, `argv()` and `ready()` (one probe of the running server);
    `port` and `directory` are set by their constructors.
    """

    name = "server"
    start_timeout = 10.0
    port: int
    directory: Path
    process: subprocess.Popen | None = None
    preexec = None  # a callable run in the child before exec, e.g. die_with_parent

    def argv(self) -> list[str]:
        raise TypeError(f"{type(self).__name__} must define argv()")

    def ready(self) -> bool:
        raise TypeError(f"{type(self).__name__} must define ready()")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self):
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.process = subprocess.Popen(
                self.argv(), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.preexec,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                if self.ready():
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {(self.directory / 'server.log').read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the process by its pid and reap it; the port is free afterwards."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
