"""The per-request benchmark harness: contenders, scenarios, payloads, and one way to call a WSGI app.

Every contender is called the same way: a prepared environ (a dict copied from a
template per call, `wsgi.input` a fresh BytesIO), a start_response that records,
the body joined and closed, as a WSGI server would. A contender's overhead is its
time minus the same framework's own route without sessions: the bare WSGI app for
fastsess and Beaker; for Django, the same view with SessionMiddleware removed; for
Flask, the same app's route that never touches the session, requested without a
cookie (Flask opens a session on every request and cannot be switched off, so
that minimum stays in its baseline, in Flask's favour).

Scenarios (SPEC 9): `untouched` (middleware on, a returning visitor's cookie, the
app never touches the session), `new` (no cookie; one key set, saved), `read`
(an existing session, one key read), `modify` (one key read, changed and saved).
Existing sessions hold the ~300-byte payload, and for server-side stores also the
4 KB one; `new` and `untouched` do not depend on it and run once.

Network stores (fastsess memcached and redis, Beaker's ext:memcached and ext:redis)
run on a memcached and a redis-server started for the run on free loopback ports.
Next to them, the client library's bare GET (`pymemcache GET`, `redis-py GET`)
reads a value of the payload's size from the same server in a bare WSGI app: the
floor for a network store's read, which SPEC 9 allows fastsess to exceed by 5 us.
fastsess sql runs on an SQLite file.

Before anything is timed, each contender is checked once: read sees the stored
value, modify persists, new creates a session that a later request can read, and
untouched sets no cookie. A broken path is an error, never a fast number.

Profile one contender (the kernel follows FASTSESS_NO_EXTENSIONS, as in the app):
    python bench/harness.py fastsess-c-lmdb read -n 10000
Count its instructions per request, which noisy neighbours do not change:
    bench/instructions.sh fastsess-c-lmdb read
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import io
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.util import FileWrapper

from fastsess import SessionMiddleware, core

# ---------------------------------------------------------------- payloads

SECRET = "bench-secret-0123456789abcdefghijklmnopq"  # 40 characters
ENCRYPT_KEY = "bench-encrypt-0123456789abcdefghijklmnop"  # 40 characters, for Beaker's AES cookie
TIMEOUT = 1800
USER_ID = 1234  # what `read` returns and `new` sets

#: A typical session: ten-odd str, int and list entries, about 300 bytes as JSON.
PAYLOAD_300 = {
    "user_id": USER_ID,
    "username": "ada.lovelace",
    "email": "ada.lovelace@example.org",
    "roles": ["editor", "reviewer"],
    "locale": "en_GB",
    "timezone": "Europe/London",
    "cart": [1021, 1187, 2044, 3310],
    "last_page": "/account/settings/notifications",
    "csrf_seed": "q2Zf8xv1Lk3mTn0pWb7Rc5Hd9Ys4Ja6E",
    "visits": 0,
    "theme": "dark",
}
#: A heavy session for server-side stores only (it would not fit in a cookie).
PAYLOAD_4K = {
    **PAYLOAD_300,
    "recently_viewed": [f"/catalogue/item/{10000 + i * 37}/reviews?page={i % 7 + 1}" for i in range(80)],
    "preferences": {f"pref_{i:02d}": ("on" if i % 3 else "off") for i in range(40)},
}
PAYLOADS = {"300B": PAYLOAD_300, "4KB": PAYLOAD_4K}


def payload_bytes(name: str) -> int:
    """The payload's size as compact JSON."""
    return len(json.dumps(PAYLOADS[name], separators=(",", ":")))


# ---------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dist_version(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- calling an app

# What a server such as gunicorn passes for a browser's GET (with PATH_INFO, RAW_URI,
# HTTP_COOKIE and wsgi.input added per request): about thirty keys. A smaller environ
# changes what a middleware's own keys cost: at 19 to 21 keys the dict is one insert
# from growing, so the third key a middleware adds would pay for the resize.
ENVIRON_TEMPLATE = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "QUERY_STRING": "",
    "SERVER_NAME": "localhost",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "SERVER_SOFTWARE": "fastsess-bench",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "52814",
    "HTTP_HOST": "localhost",
    "HTTP_USER_AGENT": "fastsess-bench",
    "HTTP_ACCEPT": "text/html,*/*;q=0.8",
    "HTTP_ACCEPT_ENCODING": "gzip, deflate, br",
    "HTTP_ACCEPT_LANGUAGE": "en-US,en;q=0.9",
    "HTTP_CONNECTION": "keep-alive",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": io.StringIO(),
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
    "wsgi.file_wrapper": FileWrapper,
    "wsgi.input_terminated": True,
}


def prepare(app: Callable, path: str, cookie: str | None = None) -> tuple[Callable[[], bytes], list]:
    """A zero-argument call of `app` at `path`, and the list where it records [status, headers]."""
    template = dict(ENVIRON_TEMPLATE, PATH_INFO=path, RAW_URI=path)
    if cookie is not None:
        template["HTTP_COOKIE"] = cookie
    seen: list = [None, None]
    new_input = io.BytesIO

    def start_response(status: str, headers: list, exc_info=None) -> Callable:
        seen[0] = status
        seen[1] = headers
        return seen.append  # the legacy write callable; nothing here uses it

    def call() -> bytes:
        environ = template.copy()
        environ["wsgi.input"] = new_input()
        result = app(environ, start_response)
        try:
            return b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    return call, seen


@dataclass
class Response:
    status: str
    headers: list
    body: bytes

    def set_cookie(self) -> str | None:
        """The `name=value` of the first Set-Cookie, or None."""
        for name, value in self.headers:
            if name.lower() == "set-cookie":
                return value.split(";", 1)[0].strip()
        return None


def request(app: Callable, path: str, cookie: str | None = None) -> Response:
    call, seen = prepare(app, path, cookie)
    body = call()
    return Response(seen[0], list(seen[1]), body)


# ---------------------------------------------------------------- the apps
# Every framework serves the same routes with the same meaning:
#   /untouched   answers without touching the session
#   /new         sets one key (user_id) and saves
#   /read        answers with session["user_id"]
#   /modify      increments session["visits"], saves, answers with the new value
#   /seed/<p>    stores payload <p> (setup only, never timed)

_HEADERS = [("Content-Type", "text/plain; charset=utf-8")]


def _answer(start_response: Callable, body: bytes) -> list:
    start_response("200 OK", [*_HEADERS, ("Content-Length", str(len(body)))])
    return [body]


def _untouched(environ: dict, start_response: Callable) -> list:
    return _answer(start_response, b"ok")


def _new(environ: dict, start_response: Callable) -> list:
    session = environ["beaker.session"]
    session["user_id"] = USER_ID
    session.save()
    return _answer(start_response, b"ok")


def _read(environ: dict, start_response: Callable) -> list:
    return _answer(start_response, str(environ["beaker.session"]["user_id"]).encode())


def _modify(environ: dict, start_response: Callable) -> list:
    session = environ["beaker.session"]
    session["visits"] = visits = session["visits"] + 1
    session.save()
    return _answer(start_response, str(visits).encode())


def _seeder(payload: dict) -> Callable:
    def seed(environ: dict, start_response: Callable) -> list:
        session = environ["beaker.session"]
        session.update(payload)
        session.save()
        return _answer(start_response, b"seeded")

    return seed


_ROUTES = {
    "/untouched": _untouched,
    "/new": _new,
    "/read": _read,
    "/modify": _modify,
    **{f"/seed/{name}": _seeder(payload) for name, payload in PAYLOADS.items()},
}


def wsgi_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """The plain WSGI app that fastsess and Beaker wrap; unwrapped, it is their baseline."""
    return _ROUTES[environ["PATH_INFO"]](environ, start_response)


@dataclass
class Site:
    """A built contender: its WSGI app and how to release it."""

    app: Callable
    close: Callable[[], None] = lambda: None
    #: a bare-GET contender's GET of the 300-byte value alone, outside any request (bench/paired.py)
    client_get: Callable[[], object] | None = None


# ---------------------------------------------------------------- network servers
# memcached and redis-server for the network stores: one of each per process, started on
# first use on a free loopback port by the starters the store tests use (tests/server_*.py;
# a missing binary skips the contenders that need it), stopped by pid in Lab.close or at exit.

_TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
_servers: dict[str, Any] = {}


def _server_starters(module: str) -> ModuleType:
    if str(_TESTS_DIR) not in sys.path:
        sys.path.append(str(_TESTS_DIR))  # after bench/, so nothing here is shadowed
    return importlib.import_module(module)


def network_server(kind: str) -> str:
    """`host:port` of this run's `kind` server ("memcached" or "redis"), started on first use."""
    server = _servers.get(kind)
    if server is None or not server.running:
        if kind == "memcached":
            server = _server_starters("server_memcached").start_server("bench")
        elif kind == "redis":
            starters = _server_starters("server_redis")
            server = starters.RedisServer(starters.temp_dir("bench")).start()
            atexit.register(server.stop)
        else:
            raise ValueError(f"no server for {kind!r}")
        _servers[kind] = server
    return server.address


def stop_network_servers() -> None:
    while _servers:
        _servers.popitem()[1].stop()


def build_bare_get(client: str) -> Callable[[Path], Site]:
    """A bare WSGI app whose /read is one GET with the client library alone (pymemcache or redis-py).

    It is the floor under a network store's read (SPEC 9: fastsess's read costs at
    most the same library's bare GET plus 5 us). The value is the payload as compact
    JSON, about the size of a session record; the key is the request's Cookie header,
    as /seed/<payload> set it, so that no parsing is timed. A missing value is a 404.
    """

    def build(workdir: Path) -> Site:
        import pytest

        if client == "pymemcache":
            Client = pytest.importorskip("pymemcache.client.base").Client
            host, _, port = network_server("memcached").rpartition(":")
            connection = Client((host, int(port)), no_delay=True)
        elif client == "redis-py":
            redis = pytest.importorskip("redis")
            connection = redis.Redis.from_url(f"redis://{network_server('redis')}/0")
        else:
            raise ValueError(f"no bare GET for client {client!r}")
        get, found = connection.get, str(USER_ID).encode()

        def app(environ: dict, start_response: Callable) -> list:
            path = environ["PATH_INFO"]
            if path == "/read":
                if get(environ["HTTP_COOKIE"]) is None:
                    start_response("404 Not Found", [*_HEADERS, ("Content-Length", "0")])
                    return [b""]
                return _answer(start_response, found)
            name = path.removeprefix("/seed/")
            cookie = f"bare-get={name}"
            connection.set(cookie, json.dumps(PAYLOADS[name], separators=(",", ":")).encode())
            body = b"seeded"
            start_response("200 OK", [*_HEADERS, ("Content-Length", str(len(body))), ("Set-Cookie", cookie)])
            return [body]

        return Site(app, connection.close, client_get=lambda: get("bare-get=300B"))

    return build


def build_fastsess(store: str, app: Callable = wsgi_app) -> Callable[[Path], Site]:
    """fastsess on `store`; memcached and redis on this run's server, sql on an SQLite file."""

    def build(workdir: Path) -> Site:
        client = {"sql": "sqlalchemy", "memcached": "pymemcache", "redis": "redis"}.get(store)
        if client is not None:
            import pytest

            pytest.importorskip(client)
        options = {
            "session.type": "cookie" if store == "cookie-aes" else store,
            "session.secret": SECRET,
            "session.timeout": TIMEOUT,
            "session.secure": False,
        }
        if store == "cookie-aes":  # AES-256-GCM cookies, as Beaker's encrypt_key
            options["session.encrypt_key"] = SECRET[::-1]
        if store in ("file", "lmdb", "sql"):  # sql: sessions.sqlite in data_dir
            options["session.data_dir"] = str(workdir / "data")
        if store == "memcached":
            options["session.url"] = network_server("memcached")
        if store == "redis":
            options["session.url"] = f"redis://{network_server('redis')}/0"
        middleware = SessionMiddleware(app, options)
        return Site(middleware, middleware.close)

    return build


def build_beaker(store: str, app: Callable = wsgi_app) -> Callable[[Path], Site]:
    """Beaker 1.14 as its users run it: server-side stores with its default serializer."""

    def build(workdir: Path) -> Site:
        import pytest

        BeakerMiddleware = pytest.importorskip("beaker.middleware").SessionMiddleware
        options: dict = {"session.timeout": TIMEOUT, "session.key": "beaker.session.id"}
        if store == "ext:memcached":
            pytest.importorskip("memcache")  # python-memcached, the client Beaker's docs name
            options.update({
                "session.type": "ext:memcached",
                "session.secret": SECRET,
                "session.url": network_server("memcached"),
                "session.memcache_module": "memcache",
                "session.lock_dir": str(workdir / "lock"),
            })
        elif store == "ext:redis":
            pytest.importorskip("redis")
            options.update({
                "session.type": "ext:redis",
                "session.secret": SECRET,
                "session.url": f"redis://{network_server('redis')}/0",
            })
        elif store == "memory":
            options.update({"session.type": "memory", "session.secret": SECRET})
        elif store == "file":
            options.update({
                "session.type": "file",
                "session.secret": SECRET,
                "session.data_dir": str(workdir / "data"),
                "session.lock_dir": str(workdir / "lock"),
            })
        elif store in ("cookie", "cookie-aes"):
            options.update({
                "session.type": "cookie",
                "session.validate_key": SECRET,
                "session.data_serializer": "json",
            })
            if store == "cookie-aes":
                pytest.importorskip("cryptography")  # Beaker's crypto_type = cryptography backend
                options.update({"session.encrypt_key": ENCRYPT_KEY, "session.crypto_type": "cryptography"})
        else:
            raise ValueError(f"no Beaker contender for store {store!r}")
        return Site(BeakerMiddleware(app, options))

    return build


def make_flask_app() -> Callable:
    """Flask 3 with its default cookie session (SecureCookieSessionInterface)."""
    import pytest

    flask = pytest.importorskip("flask")
    app = flask.Flask("fastsess_bench")
    app.secret_key = SECRET
    session = flask.session

    @app.route("/untouched")
    def untouched() -> str:
        return "ok"

    @app.route("/new")
    def new() -> str:
        session["user_id"] = USER_ID
        return "ok"

    @app.route("/read")
    def read() -> str:
        return str(session["user_id"])

    @app.route("/modify")
    def modify() -> str:
        session["visits"] = visits = session["visits"] + 1
        return str(visits)

    @app.route("/seed/<name>")
    def seed(name: str) -> str:
        session.update(PAYLOADS[name])
        return "seeded"

    return app


def build_flask(workdir: Path) -> Site:
    return Site(make_flask_app())


class _DjangoUrls:
    """Django's ROOT_URLCONF: any object with `urlpatterns` will do."""

    urlpatterns: list = []


def _django_views() -> list:
    from django.http import HttpResponse
    from django.urls import path

    def untouched(request):
        return HttpResponse("ok")

    def new(request):
        request.session["user_id"] = USER_ID
        return HttpResponse("ok")

    def read(request):
        return HttpResponse(str(request.session["user_id"]))

    def modify(request):
        request.session["visits"] = visits = request.session["visits"] + 1
        return HttpResponse(str(visits))

    def seed(request, name):
        request.session.update(PAYLOADS[name])
        return HttpResponse("seeded")

    return [
        path("untouched", untouched),
        path("new", new),
        path("read", read),
        path("modify", modify),
        path("seed/<str:name>", seed),
    ]


def make_django_handler(workdir: Path, engine: str | None) -> Callable:
    """A Django WSGIHandler; with `engine`, SessionMiddleware on that session engine, else no middleware.

    Django is configured once per process; the middleware (and with it the
    engine) is read when the handler is built, so handlers on different engines
    can live side by side.
    """
    import pytest

    pytest.importorskip("django")
    import django
    from django.conf import settings

    if not settings.configured:
        files = workdir.parent / "django-files"
        files.mkdir(exist_ok=True)
        settings.configure(
            DEBUG=False,
            SECRET_KEY=SECRET,
            ALLOWED_HOSTS=["localhost"],
            ROOT_URLCONF=_DjangoUrls,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            USE_TZ=True,
            LOGGING_CONFIG=None,
            SESSION_COOKIE_AGE=TIMEOUT,
            SESSION_FILE_PATH=str(files),
            CACHES={"default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "OPTIONS": {"MAX_ENTRIES": 100_000},
            }},
        )
        django.setup()
        _DjangoUrls.urlpatterns = _django_views()
    from django.core.handlers.wsgi import WSGIHandler

    if engine is None:
        settings.MIDDLEWARE = []
    else:
        settings.SESSION_ENGINE = f"django.contrib.sessions.backends.{engine}"
        settings.MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
    return WSGIHandler()


def build_django(engine: str) -> Callable[[Path], Site]:
    def build(workdir: Path) -> Site:
        return Site(make_django_handler(workdir, engine))

    return build


# ---------------------------------------------------------------- contenders

KERNEL = core.IMPLEMENTATION  # "c" or "python", chosen at import by FASTSESS_NO_EXTENSIONS
_KERNEL_TAG = {"c": "c", "python": "py"}[KERNEL]


SCENARIOS = ("untouched", "new", "read", "modify")


@dataclass(frozen=True)
class Contender:
    family: str  # fastsess | beaker | flask | django | client (a client library's bare GET)
    store: str
    server_side: bool
    build: Callable[[Path], Site] = field(compare=False)
    baseline: str = "wsgi"  # whose bare route is subtracted: wsgi | flask | django
    scenarios: tuple[str, ...] = SCENARIOS

    @property
    def name(self) -> str:
        if self.family == "client":
            return self.store
        family = f"fastsess-{_KERNEL_TAG}" if self.family == "fastsess" else self.family
        return f"{family} {self.store}"

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")


CONTENDERS = [
    Contender("fastsess", "memory", True, build_fastsess("memory")),
    Contender("fastsess", "file", True, build_fastsess("file")),
    Contender("fastsess", "lmdb", True, build_fastsess("lmdb")),
    Contender("fastsess", "cookie", False, build_fastsess("cookie")),
    Contender("fastsess", "cookie-aes", False, build_fastsess("cookie-aes")),
    Contender("fastsess", "memcached", True, build_fastsess("memcached")),
    Contender("fastsess", "redis", True, build_fastsess("redis")),
    Contender("fastsess", "sql", True, build_fastsess("sql")),
    Contender("beaker", "memory", True, build_beaker("memory")),
    Contender("beaker", "file", True, build_beaker("file")),
    Contender("beaker", "cookie", False, build_beaker("cookie")),
    Contender("beaker", "cookie-aes", False, build_beaker("cookie-aes")),
    Contender("beaker", "ext:memcached", True, build_beaker("ext:memcached")),
    Contender("beaker", "ext:redis", True, build_beaker("ext:redis")),
    Contender("flask", "cookie", False, build_flask, baseline="flask"),
    Contender("django", "signed-cookies", False, build_django("signed_cookies"), baseline="django"),
    Contender("django", "file", True, build_django("file"), baseline="django"),
    Contender("django", "cache-locmem", True, build_django("cache"), baseline="django"),
    # The floor under the network stores' reads, on the same servers (SPEC 9, "Network stores").
    Contender("client", "pymemcache GET", True, build_bare_get("pymemcache"), scenarios=("read",)),
    Contender("client", "redis-py GET", True, build_bare_get("redis-py"), scenarios=("read",)),
]
FAMILIES = ("fastsess", "beaker", "flask", "django", "client")

BASELINES: dict[str, Callable[[Path], Site]] = {
    "wsgi": lambda workdir: Site(wsgi_app),
    "flask": build_flask,
    "django": lambda workdir: Site(make_django_handler(workdir, None)),
}
_BASELINE_LABELS = {"wsgi": "bare WSGI app", "flask": "Flask bare route", "django": "Django bare route"}


@dataclass(frozen=True)
class Case:
    """One timed benchmark: a contender in a scenario with a payload (None where it does not apply)."""

    contender: Contender
    scenario: str
    payload: str | None

    @property
    def id(self) -> str:
        return "-".join(p for p in (self.contender.slug, self.scenario, self.payload) if p)

    @property
    def group(self) -> str:
        return f"{self.scenario} {self.payload}" if self.payload else self.scenario

    def info(self) -> dict:
        c = self.contender
        return {
            "role": "session", "contender": c.name, "family": c.family, "store": c.store,
            "server_side": c.server_side, "scenario": self.scenario, "payload": self.payload,
            "payload_bytes": payload_bytes(self.payload) if self.payload else None,
            "baseline": c.baseline, "kernel": KERNEL,
        }


def cases(families: Iterable[str] = FAMILIES, quick: bool = False) -> list[Case]:
    """Every case, scenario-major, so that the contenders of one scenario run close together in time."""
    chosen = [c for c in CONTENDERS if c.family in set(families)]
    out = []
    for scenario in SCENARIOS:
        payloads: tuple = (None,) if scenario in ("untouched", "new") else ("300B",) if quick else ("300B", "4KB")
        for payload in payloads:
            out.extend(
                Case(c, scenario, payload) for c in chosen
                if scenario in c.scenarios and (payload in (None, "300B") or c.server_side)
            )
    return out


@dataclass(frozen=True)
class BaselineCase:
    """A framework's bare route, timed again just before each scenario group.

    Other tenants of a shared machine slow whole seconds of a run down; timing
    the baseline once per group and keeping the least disturbed measurement
    stops one bad second from shifting every overhead of a framework.
    """

    name: str  # wsgi | flask | django
    group: str  # the scenario group it is timed before

    @property
    def id(self) -> str:
        return f"{self.name}-before-{self.group.replace(' ', '-')}"

    def info(self) -> dict:
        return {
            "role": "baseline", "contender": _BASELINE_LABELS[self.name], "baseline": self.name,
            "before": self.group, "kernel": KERNEL,
        }


def baseline_cases(chosen: Iterable[Case]) -> list[BaselineCase]:
    """One BaselineCase per scenario group and framework that the chosen cases need."""
    out: list[BaselineCase] = []
    for case in chosen:
        baseline = BaselineCase(case.contender.baseline, case.group)
        if baseline not in out:
            out.append(baseline)
    return out


# ---------------------------------------------------------------- building and checking


class Lab:
    """Builds each contender once per process, checks it once, and prepares timed calls."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="fastsess-bench-")) if workdir is None else workdir
        self._sites: dict[str, Site] = {}
        self._cookies: dict[tuple[str, str], str] = {}

    def site(self, key: str, build: Callable[[Path], Site]) -> Site:
        if key not in self._sites:
            workdir = self.workdir / key.replace(" ", "-")
            workdir.mkdir(parents=True, exist_ok=True)
            self._sites[key] = build(workdir)
        return self._sites[key]

    def contender_site(self, contender: Contender) -> Site:
        fresh = contender.name not in self._sites
        site = self.site(contender.name, contender.build)
        if fresh and "new" in contender.scenarios:
            check_new_and_untouched(site.app, contender.name, self.cookie(contender, "300B"))
        return site

    def cookie(self, contender: Contender, payload: str) -> str:
        """The cookie of a live session holding `payload`, checked for read and modify.

        A session seeded earlier may be gone by now: the `new` scenario can push
        it out of a bounded store (fastsess memory keeps max_sessions, LRU). Then
        a fresh one is seeded, and checked again.
        """
        key = (contender.name, payload)
        app = self.site(contender.name, contender.build).app
        cookie = self._cookies.get(key)
        if cookie is not None and reads_back(app, cookie):
            return cookie
        self._cookies[key] = seed_and_check(app, contender.name, payload, "modify" in contender.scenarios)
        return self._cookies[key]

    def prepare(self, case: Case) -> tuple[Callable[[], bytes], list]:
        """The timed call of one case, checked and warmed up."""
        site = self.contender_site(case.contender)
        if case.scenario == "new":
            return warm_up(*prepare(site.app, "/new"))
        cookie = self.cookie(case.contender, case.payload or "300B")
        return warm_up(*prepare(site.app, f"/{case.scenario}", cookie))

    def prepare_baseline(self, name: str) -> tuple[Callable[[], bytes], list]:
        site = self.site(f"baseline {name}", BASELINES[name])
        check_status(request(site.app, "/untouched"), f"baseline {name}")
        return warm_up(*prepare(site.app, "/untouched"))

    def close(self) -> None:
        for site in self._sites.values():
            site.close()
        self._sites.clear()
        stop_network_servers()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def warm_up(call: Callable[[], bytes], seen: list, seconds: float = 0.02) -> tuple[Callable[[], bytes], list]:
    """Run `call` for a moment first: lazy imports, route caches and the store's first pages are not
    what a request costs once a site is up."""
    deadline = time.perf_counter() + seconds
    for _ in range(10_000):
        call()
        if time.perf_counter() > deadline:
            break
    return call, seen


class BrokenContender(AssertionError):
    """A contender's session path does not do what the scenario says; its numbers would mean nothing."""


def check_status(response: Response, what: str) -> None:
    if response.status != "200 OK":
        raise BrokenContender(f"{what}: status {response.status}, body {response.body[:200]!r}")


def reads_back(app: Callable, cookie: str) -> bool:
    """Whether the session behind `cookie` is still there (the read route raises or fails when not)."""
    try:
        read = request(app, "/read", cookie)
    except KeyError:
        return False
    return read.status == "200 OK" and read.body == str(USER_ID).encode()


def seed_and_check(app: Callable, name: str, payload: str, modify: bool = True) -> str:
    """Store `payload` in a new session; check read sees it and (with `modify`) that modify persists.
    Returns its cookie."""
    seeded = request(app, f"/seed/{payload}")
    check_status(seeded, f"{name}: seed {payload}")
    cookie = seeded.set_cookie()
    if cookie is None:
        raise BrokenContender(f"{name}: seeding a session set no cookie")
    read = request(app, "/read", cookie)
    check_status(read, f"{name}: read")
    if read.body != str(USER_ID).encode():
        raise BrokenContender(f"{name}: read saw {read.body!r}, expected {USER_ID}")
    if not modify:
        return cookie
    first = request(app, "/modify", cookie)
    check_status(first, f"{name}: modify")
    # A cookie session's new state travels in the new cookie; a server-side one keeps its cookie.
    second = request(app, "/modify", first.set_cookie() or cookie)
    check_status(second, f"{name}: modify again")
    if int(second.body) != int(first.body) + 1:
        raise BrokenContender(f"{name}: modify did not persist ({first.body!r} then {second.body!r})")
    return cookie


def check_new_and_untouched(app: Callable, name: str, cookie: str) -> None:
    """`new` creates a session a later request reads back; `untouched` sets no cookie."""
    created = request(app, "/new")
    check_status(created, f"{name}: new")
    new_cookie = created.set_cookie()
    if new_cookie is None:
        raise BrokenContender(f"{name}: new session set no cookie")
    if not reads_back(app, new_cookie):
        raise BrokenContender(f"{name}: the new session did not persist")
    untouched = request(app, "/untouched", cookie)
    check_status(untouched, f"{name}: untouched")
    if untouched.set_cookie() is not None:
        raise BrokenContender(f"{name}: untouched request set a cookie")


# ---------------------------------------------------------------- profiling


def profile(slug: str, scenario: str, payload: str = "300B", requests: int = 10_000, top: int = 15) -> None:
    """cProfile `requests` calls of one contender's scenario and print the top functions by tottime."""
    import cProfile
    import pstats

    contender = _contender(slug)
    lab = Lab()
    try:
        call, seen = lab.prepare(Case(contender, scenario, None if scenario in ("untouched", "new") else payload))
        for _ in range(1000):  # warm caches and the store before measuring
            call()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            call()
        profiler.disable()
        check_status(Response(seen[0], seen[1], b""), slug)
        print(f"{slug} {scenario} ({payload}), {requests} requests, {KERNEL} kernel")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)
    finally:
        lab.close()


def loop(slug: str, scenario: str, payload: str = "300B", requests: int = 10_000) -> None:
    """Only make `requests` calls, after a warm-up: for counting instructions (bench/instructions.sh).

    The slug `bare-wsgi` is the bare WSGI app that fastsess's overhead is measured over.
    """
    lab = Lab()
    try:
        if slug == "bare-wsgi":
            call, seen = lab.prepare_baseline("wsgi")
        else:
            contender = _contender(slug)
            call, seen = lab.prepare(Case(contender, scenario, None if scenario in ("untouched", "new") else payload))
        for _ in range(1000):
            call()
        for _ in range(requests):
            call()
        check_status(Response(seen[0], seen[1], b""), slug)
    finally:
        lab.close()


def _contender(slug: str) -> Contender:
    by_slug = {c.slug: c for c in CONTENDERS}
    if slug not in by_slug:
        raise SystemExit(f"unknown contender {slug!r} (this process runs the {KERNEL} kernel); "
                         f"choose from: {', '.join(by_slug)}")
    return by_slug[slug]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Profile one benchmark contender and scenario.")
    parser.add_argument("contender", help="e.g. fastsess-c-lmdb, beaker-file, django-cache-locmem")
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--payload", choices=tuple(PAYLOADS), default="300B")
    parser.add_argument("-n", "--requests", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--loop", action="store_true", help="make the calls without profiling them")
    args = parser.parse_args(argv)
    if args.loop:
        loop(args.contender, args.scenario, args.payload, args.requests)
    else:
        profile(args.contender, args.scenario, args.payload, args.requests, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
