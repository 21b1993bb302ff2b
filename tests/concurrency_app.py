"""Many concurrent requests on one session: the WSGI app, the servers that run it, and the client that fires.

The concurrency tests (tests/test_concurrency.py) and the Beaker comparison
(bench/concurrency_beaker.py) share this module, so both run the same
scenario. gunicorn workers import it and build `app` from the environment:

    FASTSESS_CONCURRENCY_STORE     session.type: memory, file, lmdb, memcached, redis, sql;
                                   or beaker-file, Beaker 1.14's file store, for comparison
    FASTSESS_CONCURRENCY_DATA_DIR  session.data_dir
    FASTSESS_CONCURRENCY_URL       session.url (memcached, redis, sql)
    FASTSESS_CONCURRENCY_SECRET    session.secret
    FASTSESS_CONCURRENCY_NAMESPACE key prefix (memcached, redis) or table name (sql), so runs never meet
    FASTSESS_CONCURRENCY_WARM      set: the importing process (gunicorn's master, with --preload)
                                   serves one request first, so the store is in use before the fork

Routes (the session work happens before start_response, as Beaker needs):

    /set?k=K&v=V    session[K] = V (V defaults to "1"); save
    /del?k=K        del session[K]; save
    /get?k=K        read session[K]: a read-only request
    /append?v=V     session["shared"] = session["shared"] + [V]; save
    /flash?v=V      session.flash(V)
    /pop            session.pop_flash(): the messages shown, as JSON
    /login          session.regenerate_id()
    /logout         session.delete()
    /data           the session's data as JSON (Beaker's own "_..." keys left out)
    /stats          no session: this worker's pid and fastsess event counts, as JSON
    /raise/...      the same routes under a middleware with on_conflict = raise

Session routes take `hold=SECONDS`: load the session, sleep, then act.

Every response names the worker that served it (X-Worker-Pid). A ConflictError
from the middleware becomes 409 Conflict, as an application would report it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import fastsess
from fastsess import SessionMiddleware
from fastsess.errors import ConflictError
from loopback import die_with_parent, free_port

COOKIE_NAME = "concurrency"
SHARED_LIST = "shared"
TESTS_DIR = Path(__file__).resolve().parent
#: where this process imported fastsess from: gunicorn workers import the same code
FASTSESS_PATH = Path(fastsess.__file__).resolve().parent.parent
START_TIMEOUT = 30.0

# ---------------------------------------------------------------- the application


def _reply(start_response: Callable, status: str, body: object) -> list[bytes]:
    payload = json.dumps(body, sort_keys=True).encode()
    start_response(status, [
        ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
        ("X-Worker-Pid", str(os.getpid())),
    ])
    return [payload]


def session_routes(environ: dict, start_response: Callable) -> list[bytes]:
    """The routes that use the session (module docstring); works under fastsess and Beaker alike."""
    session = environ["beaker.session"]
    query = {name: values[0] for name, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "")
    key = query.get("k", "")
    hold = float(query.get("hold", "0"))
    if hold:
        # Load now, write later: other requests load the same version meanwhile. Real handlers do
        # I/O here; a thread server needs it to race at all, since requests are otherwise GIL-short.
        session.get(key)
        time.sleep(hold)
    if path == "/set":
        session[key] = query.get("v", "1")
        session.save()
        body: object = "ok"
    elif path == "/del":
        del session[key]
        session.save()
        body = "ok"
    elif path == "/get":
        body = session.get(key)
    elif path == "/append":
        session[SHARED_LIST] = list(session.get(SHARED_LIST, [])) + [query["v"]]
        session.save()
        body = "ok"
    elif path == "/flash":
        session.flash(query["v"])
        body = "ok"
    elif path == "/pop":
        body = session.pop_flash()
    elif path == "/login":
        session.regenerate_id()
        body = "ok"
    elif path == "/logout":
        session.delete()
        body = "ok"
    elif path == "/data":
        body = {name: session[name] for name in list(session.keys()) if not name.startswith("_")}
    else:
        return _reply(start_response, "404 Not Found", "no such route")
    return _reply(start_response, "200 OK", body)


def _conflict_as_409(middleware: Callable, environ: dict, start_response: Callable) -> Iterable[bytes]:
    try:
        return middleware(environ, start_response)
    except ConflictError:
        # The middleware writes before it forwards start_response: no header has gone out yet.
        start_response("409 Conflict", [("Content-Type", "text/plain"), ("X-Worker-Pid", str(os.getpid()))],
                       sys.exc_info())
        return [b"conflict\n"]


def fastsess_settings(kind: str, data_dir: str | None, url: str | None, secret: str, namespace: str) -> dict:
    """session.* settings for a fastsess store of this kind."""
    settings = {
        "session.type": kind, "session.secret": secret, "session.key": COOKIE_NAME,
        "session.timeout": 600, "session.secure": "false",
    }
    if data_dir:
        settings["session.data_dir"] = data_dir
    if url:
        settings["session.url"] = url
    if kind in ("memcached", "redis"):
        settings["session.key_prefix"] = namespace + ":"
    if kind == "sql":
        settings["session.table_name"] = namespace
    return settings


def make_app(
    kind: str, data_dir: str | None = None, url: str | None = None,
    secret: str = "concurrency-secret-0123456789abcdefghij", namespace: str = "fastsess_concurrency",
) -> Callable:
    """The application for one store kind (module docstring); beaker-file uses Beaker's middleware."""
    if kind == "beaker-file":
        from beaker.middleware import SessionMiddleware as BeakerMiddleware

        merging = BeakerMiddleware(session_routes, {
            "session.type": "file", "session.data_dir": os.path.join(data_dir, "data"),
            "session.lock_dir": os.path.join(data_dir, "lock"), "session.key": COOKIE_NAME,
            "session.secret": secret, "session.timeout": 600, "session.auto": False,
        })
        raising = None
        events: list = []
    else:
        settings = fastsess_settings(kind, data_dir, url, secret, namespace)
        merging = SessionMiddleware(session_routes, settings)
        raising = SessionMiddleware(session_routes, {**settings, "session.on_conflict": "raise"})
        events = [merging.service.events, raising.service.events]

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/stats":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            time.sleep(float(query.get("sleep", ["0"])[0]))  # holds this worker so a burst reaches the others
            counts: dict = {}
            for log in events:
                for name, count in log.counts.items():
                    counts[name] = counts.get(name, 0) + count
            return _reply(start_response, "200 OK", {"pid": os.getpid(), "events": counts})
        if path.startswith("/raise/") and raising is not None:
            environ["PATH_INFO"] = path[len("/raise"):]
            return _conflict_as_409(raising, environ, start_response)
        return _conflict_as_409(merging, environ, start_response)

    return app


def app_from_environment() -> Callable:
    env = os.environ
    return make_app(
        env["FASTSESS_CONCURRENCY_STORE"],
        data_dir=env.get("FASTSESS_CONCURRENCY_DATA_DIR") or None,
        url=env.get("FASTSESS_CONCURRENCY_URL") or None,
        secret=env.get("FASTSESS_CONCURRENCY_SECRET") or "concurrency-secret-0123456789abcdefghij",
        namespace=env.get("FASTSESS_CONCURRENCY_NAMESPACE") or "fastsess_concurrency",
    )


def serve_one_request(app: Callable, path: str) -> None:
    """One GET through app in this process, its body read and closed."""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    body = app(environ, lambda status, headers, exc_info=None: None)
    try:
        b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()


if os.environ.get("FASTSESS_CONCURRENCY_STORE"):
    # `concurrency_app:app` for gunicorn: each worker imports this module and builds its own,
    # or with --preload the master builds it once and forks the workers.
    app = app_from_environment()
    if os.environ.get("FASTSESS_CONCURRENCY_WARM"):
        serve_one_request(app, "/set?k=master&v=1")


# ---------------------------------------------------------------- servers


class GunicornServer:
    """`python -m gunicorn -w WORKERS` on 127.0.0.1 serving one store's app; stopped by pid.

    Sync workers, or with threads > 1 gthread workers of that many threads each;
    with preload, the master imports the app (and uses the store) before it forks them.
    """

    def __init__(
        self, env: dict[str, str], workers: int = 4, directory: str | None = None, label: str = "gunicorn",
        threads: int = 1, preload: bool = False,
    ) -> None:
        self.label = label
        self.workers = workers
        self.worker_class = ["-k", "gthread", "--threads", str(threads)] if threads > 1 else ["-k", "sync"]
        self.preload = ["--preload"] if preload else []
        self.directory = directory or tempfile.mkdtemp(prefix="fastsess-gunicorn-")
        self.port = free_port()
        self.env = {
            **os.environ, **env,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(FASTSESS_PATH), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        self.process: subprocess.Popen | None = None
        self.log_path = os.path.join(self.directory, "gunicorn.log")

    def start(self) -> GunicornServer:
        argv = [
            sys.executable, "-m", "gunicorn", "-w", str(self.workers), *self.worker_class, *self.preload,
            "-b", f"127.0.0.1:{self.port}", "--timeout", "60", "--graceful-timeout", "5",
            "--log-level", "warning", "--error-logfile", "-", "concurrency_app:app",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, env=self.env, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        try:
            self.pids = wait_for_workers(self.port, self.workers, lambda: self.process.poll() is None)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{self.log()}") from None
        return self

    def stop(self) -> None:
        """SIGTERM to the master (it stops its workers), SIGKILL if it will not go."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        # Workers outlive a SIGKILLed master only briefly: they notice the new parent and exit.

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 256  # the client's whole burst waits in the backlog, none is refused


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class ThreadedServer:
    """The app in this process, a thread per request (wsgiref): for the memory store, which lives in one."""

    workers = 1

    def __init__(self, app: Callable, label: str = "threaded") -> None:
        self.label = label
        self.server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer,
                                  handler_class=_QuietHandler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="concurrency", daemon=True)

    def start(self) -> ThreadedServer:
        self.thread.start()
        self.pids = wait_for_workers(self.port, 1, self.thread.is_alive)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def log(self) -> str:
        return ""


# ---------------------------------------------------------------- the client


@dataclass
class Reply:
    status: int  # 0 when the request itself failed (refused, reset, timed out)
    body: bytes
    pid: int | None
    cookie: str | None  # "name=value" of a Set-Cookie for the session cookie
    error: str | None = None

    def json(self):
        return json.loads(self.body)


def request(port: int, path: str, cookie: str | None = None, timeout: float = 30.0) -> Reply:
    """One GET on a fresh connection (sync workers close it after each response anyway)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return Reply(0, b"", None, None, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    pid = response.getheader("X-Worker-Pid")
    set_cookie = None
    for name, value in response.getheaders():
        if name.lower() == "set-cookie" and value.startswith(COOKIE_NAME + "="):
            set_cookie = value.split(";", 1)[0]
    return Reply(response.status, body, int(pid) if pid else None, set_cookie)


def fire(port: int, paths: list[str], cookie: str | None, concurrency: int = 32) -> list[Reply]:
    """All paths at once through a bounded pool of client threads; replies in the order of paths."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda path: request(port, path, cookie), paths))


def new_session(port: int, prefix: str = "") -> str:
    """A fresh session (one key `seed` set) and its cookie."""
    reply = request(port, prefix + "/set?k=seed&v=0")
    if reply.status != 200 or reply.cookie is None:
        raise RuntimeError(f"no session cookie from {prefix}/set: {reply.status} {reply.error}")
    return reply.cookie


def wait_for_workers(
    port: int, workers: int, alive: Callable[[], bool], timeout: float = START_TIMEOUT
) -> set:
    """Wait until `workers` distinct pids answer /stats (every worker is up); their pids."""
    deadline = time.monotonic() + timeout
    pids: set = set()
    while len(pids) < workers:
        if not alive():
            raise RuntimeError("the server exited while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(pids)} of {workers} workers answered within {timeout} s")
        replies = fire(port, ["/stats?sleep=0.05"] * (2 * workers), None, concurrency=2 * workers)
        pids |= {r.pid for r in replies if r.status == 200}
        if not pids:
            time.sleep(0.05)
    return pids


def worker_events(port: int, pids: set, timeout: float = 10.0) -> dict[str, int]:
    """fastsess event counts summed over the workers in pids (each is asked until it has answered)."""
    per_worker: dict = {}
    deadline = time.monotonic() + timeout
    while set(per_worker) < pids and time.monotonic() < deadline:
        for reply in fire(port, ["/stats?sleep=0.05"] * (2 * len(pids)), None, concurrency=2 * len(pids)):
            if reply.status == 200:
                per_worker[reply.pid] = reply.json()["events"]
    if set(per_worker) < pids:
        raise RuntimeError(f"workers {sorted(pids - set(per_worker))} did not answer /stats")
    total: dict[str, int] = {}
    for counts in per_worker.values():
        for name, count in counts.items():
            total[name] = total.get(name, 0) + count
    return total
