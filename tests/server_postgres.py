"""A throwaway PostgreSQL server for tests, on a free loopback port in a temporary directory.

Binaries come from `pg_config --bindir` (else the newest /usr/lib/postgresql/*/bin).
PostgreSQL refuses to run as root, so as root `initdb` and `postgres` run as
the `postgres` user through `runuser`, in a directory that user owns. One
server serves the whole test session (`postgres_server` fixture, or
get_server() where no fixture reaches, as in contract kinds); it is stopped
by its pid (SIGINT: fast shutdown) at the end of the session.

When a binary is missing the tests skip with the reason; with
FASTSESS_REQUIRE_SERVERS=1 they fail instead.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from loopback import free_port

try:
    import psycopg
except ImportError:  # get_server() skips with the reason
    psycopg = None

DATABASE = "fastsess"
_START_TIMEOUT = 30.0


def _require(reason: str):
    if os.environ.get("FASTSESS_REQUIRE_SERVERS", "") not in ("", "0"):
        pytest.fail(f"{reason} (FASTSESS_REQUIRE_SERVERS=1)", pytrace=False)
    pytest.skip(reason)


def _bindir() -> str | None:
    candidates = []
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    except OSError:
        pass

    def version(path: str) -> tuple:
        return tuple(int(p) if p.isdigit() else 0 for p in path.split("/")[-2].split("."))

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for path in candidates:
        if all(os.access(os.path.join(path, name), os.X_OK) for name in ("initdb", "postgres")):
            return path
    return None


class PostgresServer:
    """initdb'd once; start() and stop() may be repeated (tests stop it mid-run)."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="fastsess-pg-")
        self.data = os.path.join(self.root, "data")
        self.log_path = os.path.join(self.root, "postgres.log")
        self._as_user: list[str] = []
        self._owner = os.getpid()
        self.process: subprocess.Popen | None = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                self.remove()
                _require("PostgreSQL tests run as root need a postgres user to run the server")
            if shutil.which("runuser") is None:
                self.remove()
                _require("PostgreSQL tests run as root need runuser (util-linux)")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            [os.path.join(bindir, "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync", "--no-instructions"]
        )

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            self._as_user + argv, capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def url(self, database: str = DATABASE, user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = DATABASE):
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database,
                               autocommit=True, connect_timeout=2)

    def start(self) -> None:
        argv = [
            os.path.join(self.bindir, "postgres"), "-D", self.data, "-p", str(self.port), "-k", self.root,
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
            # a test database: durability buys nothing and costs seconds
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self._as_user + argv, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}):\n{self.log()}")
            try:
                conn = self.connect("postgres")
                break
            except psycopg.OperationalError:  # not up yet; the deadline bounds the wait
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"postgres did not accept connections in {_START_TIMEOUT} s:\n{self.log()}"
                    ) from None
                time.sleep(0.05)
        with conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
                conn.execute(f"CREATE DATABASE {DATABASE}")

    def _server_pid(self) -> int | None:
        # runuser stays as the parent; the postmaster's own pid is in its pid file.
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Fast shutdown by pid (SIGINT), then wait; SIGKILL if it will not go."""
        process, self.process = self.process, None
        if process is None or os.getpid() != self._owner:
            return
        pid = self._server_pid() or process.pid
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        deadline = time.monotonic() + 10
        while os.path.exists(os.path.join(self.data, "postmaster.pid")) and time.monotonic() < deadline:
            time.sleep(0.02)

    def remove(self) -> None:
        self.stop()
        if os.getpid() == self._owner:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""


_server: PostgresServer | None = None
_failure: str | None = None


def get_server() -> PostgresServer:
    """The session's server, started on first use; skips (or fails) when PostgreSQL is missing."""
    global _server, _failure
    if _failure is not None:
        _require(_failure)
    if _server is None:
        if psycopg is None:
            _failure = "psycopg is not installed (pip install 'fastsess[sql]')"
            _require(_failure)
        bindir = _bindir()
        if bindir is None:
            _failure = "PostgreSQL binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin)"
            _require(_failure)
        server = PostgresServer(bindir)
        atexit.register(server.remove)
        server.start()
        _server = server
    elif _server.process is None:  # a test stopped it and failed before restarting it
        _server.start()
    return _server


def stop_server() -> None:
    global _server
    if _server is not None:
        _server.remove()
        _server = None


@pytest.fixture(scope="session")
def postgres_server():
    """The running PostgreSQL server (see get_server)."""
    yield get_server()
    stop_server()
