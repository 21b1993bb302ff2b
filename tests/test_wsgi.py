"""SessionMiddleware end to end: the environ, cookies, cache headers, when the write happens, failures, logs.

Flows with a cookie jar go through WebTest; anything about the order of
start_response, the first body byte and close() uses a hand-written server
loop (`call`), so the test sees exactly what a WSGI server would.
"""

from __future__ import annotations

import datetime as dt
import http.cookies
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from email.utils import formatdate
from wsgiref.util import FileWrapper

import pytest
import webtest

import fastsess.session
import fastsess.wsgi
from fastsess import ConfigError, SessionMiddleware, StoreError, core
from fastsess.events import RATE_LIMIT_PER_SECOND, EventLog
from fastsess.stores.base import TOMBSTONE, StoredRecord
from fastsess.stores.memory import MemoryStore
from fastsess.wsgi import filter_app_factory, filter_factory

SECRET = "wsgi-test-secret-" + "x" * 20
OTHER_SECRET = "another-secret-entirely-" + "y" * 16
HTTPS = {"wsgi.url_scheme": "https", "HTTP_HOST": "example.com"}
EPOCH_EXPIRES = "expires=Thu, 01 Jan 1970 00:00:00 GMT"
FAR_FUTURE_EXPIRES = "expires=Tue, 19 Jan 2038 03:14:07 GMT"


# ---------------------------------------------------------------- helpers


class App:
    """A WSGI app whose next response the test scripts: action(session) gives the body."""

    def __init__(self, action=None, status="200 OK", headers=(), environ_key="beaker.session"):
        self.action = action
        self.status = status
        self.headers = list(headers)
        self.environ_key = environ_key
        self.sessions: list = []
        self.environs: list = []

    def __call__(self, environ, start_response):
        self.environs.append(environ)
        session = environ.get(self.environ_key)
        self.sessions.append(session)
        body = self.action(session) if self.action is not None else None
        start_response(self.status, [("Content-Type", "text/plain"), *self.headers])
        return [b"" if body is None else str(body).encode()]


def inc(session):
    session["n"] = session.get("n", 0) + 1
    session.save()
    return session["n"]


def read(session):
    return session.get("n")


class Clock:
    """A settable stand-in for time.time, shared by the session service and the store."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_mw(app, **options) -> SessionMiddleware:
    return SessionMiddleware(app, **{"type": "memory", "secret": SECRET, "timeout": 600, **options})


def freeze(mw: SessionMiddleware) -> Clock:
    clock = Clock()
    mw.service.clock = clock
    mw.store.clock = clock
    return clock


def use_store(mw: SessionMiddleware, store) -> None:
    store.clock = mw.store.clock
    mw.service.store = store
    mw.store = store


def webtest_app(mw, **extra) -> webtest.TestApp:
    return webtest.TestApp(mw, extra_environ={**HTTPS, **extra})


def environ_for(cookie=None, **extra) -> dict:
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "example.com",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    environ.update(extra)
    return environ


class Served:
    """What the server saw of one response."""

    def __init__(self) -> None:
        self.status = None
        self.headers: list = []
        self.chunks: list = []
        self.start_calls = 0

    def start_response(self, status, headers, exc_info=None):
        self.start_calls += 1
        self.status, self.headers = status, list(headers)
        return self.chunks.append

    def header(self, name: str) -> list:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def set_cookies(self, name: str = "session") -> list:
        return [v for v in self.header("Set-Cookie") if v.split("=", 1)[0] == name]

    def cookie_value(self, name: str = "session") -> str:
        [header] = self.set_cookies(name)
        return header.split(";", 1)[0].split("=", 1)[1]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def call(mw, cookie=None, **extra) -> Served:
    """Serve one request as a WSGI server does: start_response, iterate, close."""
    served = Served()
    result = mw(environ_for(cookie, **extra), served.start_response)
    try:
        for chunk in result:
            served.chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return served


def stored(mw, session_id: str):
    return mw.store.load(core.store_key(session_id))


def events(caplog, name: str) -> list:
    return [r for r in caplog.records if getattr(r, "fastsess_event", None) == name]


# ---------------------------------------------------------------- the environ


def test_counter_survives_across_requests_with_a_cookie_jar():
    t = webtest_app(make_mw(App(inc)))
    first = t.get("/")
    assert first.text == "1"
    assert len(first.headers.getall("Set-Cookie")) == 1
    second, third = t.get("/"), t.get("/")
    assert (second.text, third.text) == ("2", "3")
    assert second.headers.getall("Set-Cookie") == [] and third.headers.getall("Set-Cookie") == []


def test_fastsess_session_and_beaker_session_are_the_same_object():
    app = App(inc)
    call(make_mw(app))
    environ = app.environs[0]
    assert environ["fastsess.session"] is environ["beaker.session"]


def test_custom_environ_key_is_set_and_beaker_session_is_not():
    app = App(inc, environ_key="myapp.session")
    mw = SessionMiddleware(app, environ_key="myapp.session", type="memory", secret=SECRET, timeout=600)
    first = call(mw)
    environ = app.environs[0]
    assert environ["myapp.session"] is environ["fastsess.session"]
    assert "beaker.session" not in environ
    assert call(mw, cookie=f"session={first.cookie_value()}").body == b"2"


def test_get_session_without_an_id_returns_a_new_unsaved_session():
    found = []

    def action(session):
        other = app.environs[-1]["beaker.get_session"]()
        found.append(other)
        assert other is not session
        return len(other)

    app = App(action)
    mw = make_mw(app)
    served = call(mw)
    [other] = found
    assert other.is_new
    assert not other.dirty()
    assert served.set_cookies() == []
    assert len(mw.store) == 0


def test_get_session_with_an_existing_id_returns_the_stored_session():
    ids, found = [], []
    app = App(lambda s: (inc(s), ids.append(s.id)))
    mw = make_mw(app)
    call(mw)
    app.action = lambda s: found.append(app.environs[-1]["beaker.get_session"](session_id=ids[0]))
    served = call(mw)  # no cookie: a different request finds the session by id
    [other] = found
    assert not other.is_new
    assert other.id == ids[0]
    assert other["n"] == 1
    assert served.set_cookies() == []


def test_get_session_with_an_unknown_id_returns_a_new_session():
    found = []
    app = App(lambda s: found.append(app.environs[-1]["beaker.get_session"](session_id=core.new_session_id())))
    call(make_mw(app))
    assert found[0].is_new
    assert len(found[0]) == 0


def test_no_touch_environ_key_makes_the_request_write_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"
    served = call(mw, cookie=cookie, **{"fastsess.no_touch": True})
    assert served.set_cookies() == []
    assert events(caplog, "write_dropped")
    app.action = read
    assert call(mw, cookie=cookie).body == b"1"


def test_no_touch_set_by_the_application_itself_makes_the_request_write_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"

    def flag_then_write(session):
        app.environs[-1]["fastsess.no_touch"] = True  # a health-check view, after the session loaded
        return inc(session)

    app.action = flag_then_write
    served = call(mw, cookie=cookie)
    assert served.set_cookies() == []
    assert events(caplog, "write_dropped")
    app.action = read
    assert call(mw, cookie=cookie).body == b"1"


def test_domain_set_without_save_is_kept_and_sent_on_this_response():
    def set_domain(session):
        session.domain = ".example.com"

    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"
    app.action = set_domain
    [header] = call(mw, cookie=cookie).set_cookies()
    assert "Domain=.example.com" in header
    app.action = lambda session: session.domain  # kept with the session
    assert call(mw, cookie=cookie).body == b".example.com"


def test_setting_the_domain_it_already_has_sends_nothing():
    def same_domain(session):
        session.domain = session.domain

    app = App(inc)
    mw = make_mw(app, cookie_expires=True)  # a browser-session cookie: no sliding re-send
    cookie = f"session={call(mw).cookie_value()}"
    app.action = same_domain
    assert call(mw, cookie=cookie).set_cookies() == []


# ---------------------------------------------------------------- cache headers


def test_untouched_session_gets_no_cookie_no_vary_and_no_cache_control():
    mw = make_mw(App())
    served = call(mw)
    assert served.header("Set-Cookie") == []
    assert served.header("Vary") == []
    assert served.header("Cache-Control") == []
    assert len(mw.store) == 0


def test_the_request_session_starts_as_one_the_constructor_makes():
    # Compiled, the middleware makes its session without calling __init__: every field
    # must still start as __init__ sets it, and `_sess` must sit in the instance dict.
    app = App()
    mw = make_mw(app)
    call(mw, cookie="session=abc")
    made = app.sessions[0]
    built = fastsess.session.Session(mw.service, "session=abc")
    fields = ("_service", "_cookie_header", "_requested_id", "_detached", "_read_only", "_dirty", "_suppressed", "_was_loaded")
    assert type(made) is type(built)
    assert {f: getattr(made, f) for f in fields} == {f: getattr(built, f) for f in fields}
    assert made.__dict__ == built.__dict__ and made.__dict__["_sess"] is None
    assert not made.accessed()
    assert made.get("n") is None and made.accessed()  # and it loads as the constructed one does


def test_code_reading_the_instance_dict_sees_the_state_as_beakers_session_object_keeps_it():
    # Beaker's SessionObject keeps `_sess` in __dict__ from the start; compiled, a
    # middleware session makes its dict only when used, and must look the same.
    app = App(read)
    mw = make_mw(app)
    call(mw)
    session = app.sessions[0]
    assert session.__dict__["_sess"] is not None and vars(session)["_sess"] is session.__dict__["_sess"]
    app.action = None
    call(mw)
    untouched = app.sessions[1]
    assert vars(untouched)["_sess"] is None and untouched.__dict__["_sess"] is None
    assert not untouched.accessed()
    assert untouched.get("n") is None and untouched.__dict__["_sess"] is not None


def test_untouched_session_with_a_cookie_gets_no_headers_added():
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"
    app.action = None
    served = call(mw, cookie=cookie)
    assert served.header("Set-Cookie") == [] and served.header("Vary") == []


def _existing(mw, app) -> str:
    """Create a session through app (then switched to read) and return its Cookie header."""
    app.action = inc
    cookie = f"session={call(mw).cookie_value()}"
    app.action = read
    return cookie


def test_read_only_request_gets_vary_cookie_and_cache_control_private():
    app = App()
    mw = make_mw(app)
    served = call(mw, cookie=_existing(mw, app))
    assert served.body == b"1"
    assert served.header("Set-Cookie") == []
    assert served.header("Vary") == ["Cookie"]
    assert served.header("Cache-Control") == ["private"]


def test_read_only_request_merges_cookie_into_an_existing_vary_header():
    app = App(headers=[("Vary", "Accept-Encoding")])
    mw = make_mw(app)
    served = call(mw, cookie=_existing(mw, app))
    assert served.header("Vary") == ["Accept-Encoding, Cookie"]


@pytest.mark.parametrize("vary", ["*", "Cookie", "cookie", "Accept-Encoding, Cookie", "Accept, *"])
def test_vary_that_already_covers_cookie_is_left_alone(vary):
    app = App(headers=[("Vary", vary)])
    mw = make_mw(app)
    served = call(mw, cookie=_existing(mw, app))
    assert served.header("Vary") == [vary]


def test_read_only_request_keeps_the_applications_cache_control():
    app = App(headers=[("Cache-Control", "max-age=60")])
    mw = make_mw(app)
    served = call(mw, cookie=_existing(mw, app))
    assert served.header("Cache-Control") == ["max-age=60"]


def test_response_setting_a_cookie_gets_private_no_store():
    served = call(make_mw(App(inc)))
    assert len(served.set_cookies()) == 1
    assert served.header("Cache-Control") == ["private, no-store"]
    assert served.header("Vary") == ["Cookie"]


@pytest.mark.parametrize("cache_control", ["public, max-age=3600", "s-maxage=600", "max-age=60, s-maxage=600"])
def test_response_setting_a_cookie_overrides_shared_caching_and_logs_it(cache_control, caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    served = call(make_mw(App(inc, headers=[("Cache-Control", cache_control)])))
    assert served.header("Cache-Control") == ["private, no-store"]
    [record] = events(caplog, "cache_control_overridden")
    assert record.levelno >= logging.WARNING


def test_every_cache_control_the_application_sent_goes_when_a_cookie_is_set(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    headers = [("Cache-Control", "public"), ("X-Other", "1"), ("cache-control", "max-age=600")]
    served = call(make_mw(App(inc, headers=headers)))
    assert served.header("Cache-Control") == ["private, no-store"]
    assert served.header("X-Other") == ["1"]
    [record] = events(caplog, "cache_control_overridden")


def test_a_second_vary_header_that_names_cookie_is_respected():
    app = App(headers=[("Vary", "Accept-Encoding"), ("Vary", "Cookie")])
    mw = make_mw(app)
    served = call(mw, cookie=_existing(mw, app))
    assert served.header("Vary") == ["Accept-Encoding", "Cookie"]


def test_cookie_joins_the_last_of_several_vary_headers():
    app = App(headers=[("Vary", "Accept-Encoding"), ("Vary", "Accept-Language")])
    mw = make_mw(app)
    served = call(mw, cookie=_existing(mw, app))
    assert served.header("Vary") == ["Accept-Encoding", "Accept-Language, Cookie"]


# ---------------------------------------------------------------- cookie attributes


def _morsel(value, **attributes) -> str:
    cookie = http.cookies.SimpleCookie()
    cookie["session"] = value
    morsel = cookie["session"]
    for key, attr in attributes.items():
        morsel[key.replace("_", "-")] = attr
    return morsel.OutputString()


def test_cookie_attributes_are_spelled_as_http_cookies_morsel_spells_them():
    mw = make_mw(App(inc), cookie_domain=".example.com", cookie_expires=3600)
    clock = freeze(mw)
    served = call(mw)
    [header] = served.set_cookies()
    expected = _morsel(
        served.cookie_value(),
        domain=".example.com",
        path="/",
        expires=formatdate(clock.now + 3600, usegmt=True),
        httponly=True,
        secure=True,
        samesite="Lax",
    )
    assert header == expected


def test_max_age_is_spelled_as_morsel_spells_it():
    mw = make_mw(App(inc), max_age="120")
    clock = freeze(mw)
    served = call(mw)
    [header] = served.set_cookies()
    expected = _morsel(
        served.cookie_value(),
        path="/",
        expires=formatdate(clock.now + 120, usegmt=True),
        max_age=120,
        httponly=True,
        secure=True,
        samesite="Lax",
    )
    assert header == expected


def test_cookie_defaults_are_secure_httponly_lax_root_path_browser_session():
    served = call(make_mw(App(inc)))
    [header] = served.set_cookies()
    attributes = header.split("; ")[1:]
    assert attributes == ["HttpOnly", "Path=/", "SameSite=Lax", "Secure"]


def test_secure_and_httponly_can_be_switched_off():
    served = call(make_mw(App(inc), secure="false", httponly="false", samesite="Strict"))
    [header] = served.set_cookies()
    assert header.split("; ")[1:] == ["Path=/", "SameSite=Strict"]


@pytest.mark.parametrize("scheme, secure", [("https", True), ("http", False)])
def test_secure_auto_follows_the_url_scheme(scheme, secure):
    served = call(make_mw(App(inc), secure="auto"), **{"wsgi.url_scheme": scheme})
    [header] = served.set_cookies()
    assert ("; Secure" in header) is secure


@pytest.fixture
def unwarned(monkeypatch):
    """A process that has not yet logged the plain-HTTP warning (it is logged once per process)."""
    monkeypatch.setattr(fastsess.wsgi, "_insecure_warned", False)


def test_secure_cookie_over_plain_http_to_a_public_host_warns_once(unwarned, caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    mw = make_mw(App(inc))
    for _ in range(3):
        served = call(mw, **{"wsgi.url_scheme": "http", "HTTP_HOST": "www.example.com:8080"})
        assert "; Secure" in served.set_cookies()[0]
    [record] = events(caplog, "insecure_cookie")
    assert record.levelno == logging.WARNING


@pytest.mark.parametrize(
    "host",
    [
        "localhost", "localhost:8080", "127.0.0.1", "127.0.0.1:8000", "[::1]:8000", "[::1]",
        # Browsers keep Secure cookies from these too (Secure Contexts: localhost names, 127.0.0.0/8)
        "app.localhost:8000", "LOCALHOST", "localhost.:8000", "127.0.0.2:8000",
    ],
)
def test_secure_cookie_over_plain_http_to_loopback_does_not_warn(host, unwarned, caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    mw = make_mw(App(inc))
    call(mw, **{"wsgi.url_scheme": "http", "HTTP_HOST": host})
    assert events(caplog, "insecure_cookie") == []
    # ... and the one warning a process gives is still there for a host that needs it
    call(mw, **{"wsgi.url_scheme": "http", "HTTP_HOST": "www.example.com"})
    assert len(events(caplog, "insecure_cookie")) == 1


def test_secure_cookie_over_https_does_not_warn(unwarned, caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    call(make_mw(App(inc)))
    assert events(caplog, "insecure_cookie") == []


def test_per_session_domain_and_path_are_emitted_and_kept():
    def set_scope(session):
        session.domain = ".example.com"
        session.path = "/app"
        return inc(session)

    app = App(set_scope)
    mw = make_mw(app)
    served = call(mw)
    [header] = served.set_cookies()
    assert "; Domain=.example.com;" in header and "; Path=/app;" in header
    app.action = lambda s: f"{s.domain} {s.path} {s['n']}"
    later = call(mw, cookie=f"session={served.cookie_value()}")
    assert later.body == b".example.com /app 1"
    assert later.set_cookies() == []


def test_changing_the_per_session_domain_re_emits_the_cookie():
    app = App(inc)
    mw = make_mw(app)
    first = call(mw)

    def move(session):
        session.domain = ".other.example.com"
        session.save()

    app.action = move
    served = call(mw, cookie=f"session={first.cookie_value()}")
    [header] = served.set_cookies()
    assert "; Domain=.other.example.com;" in header
    assert served.cookie_value() == first.cookie_value()


def test_delete_sends_an_expiring_cookie_even_without_a_client_cookie():
    served = call(make_mw(App(lambda s: s.delete())))
    [header] = served.set_cookies()
    assert header.startswith("session=;")
    assert EPOCH_EXPIRES in header and "Max-Age=0" in header


def test_delete_removes_the_record_and_the_old_cookie_loads_nothing():
    ids = []
    app = App(lambda s: (inc(s), ids.append(s.id)))
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"
    app.action = lambda s: s.delete()
    assert EPOCH_EXPIRES in call(mw, cookie=cookie).set_cookies()[0]
    assert stored(mw, ids[0]) is None
    app.action = read
    assert call(mw, cookie=cookie).body == b""


def test_invalidate_without_a_write_expires_the_clients_cookie():
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"
    app.action = lambda s: s.invalidate()
    [header] = call(mw, cookie=cookie).set_cookies()
    assert header.startswith("session=;") and EPOCH_EXPIRES in header
    app.action = read
    assert call(mw, cookie=cookie).body == b""


def test_cookie_tagged_with_an_old_secret_is_accepted_and_re_tagged_once(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    before = make_mw(App(inc))
    app = App(read)
    after = make_mw(app, secret=f"{OTHER_SECRET}\n{SECRET}")
    use_store(after, before.store)
    old = call(before).cookie_value()
    served = call(after, cookie=f"session={old}")
    assert served.body == b"1"
    new = served.cookie_value()
    assert new != old
    assert events(caplog, "old_key_used")
    again = call(after, cookie=f"session={new}")
    assert again.body == b"1" and again.set_cookies() == []


def test_replaying_an_old_key_cookie_cannot_flood_the_logs(caplog):
    # A client may send the same old-key cookie again and again, as it may a bad one:
    # every replay is counted, but the log lines are rate-limited.
    caplog.set_level(logging.DEBUG, logger="fastsess")
    before = make_mw(App(inc))
    after = make_mw(App(read), secret=f"{OTHER_SECRET}\n{SECRET}")
    use_store(after, before.store)
    old = call(before).cookie_value()
    for _ in range(50):
        assert call(after, cookie=f"session={old}").body == b"1"
    assert after.service.events.counts["old_key_used"] == 50
    assert len(events(caplog, "old_key_used")) <= 2 * RATE_LIMIT_PER_SECOND  # the replays may span two seconds


def test_replaying_a_cookie_whose_record_is_damaged_cannot_flood_the_logs(caplog, tmp_path):
    # The damage is the server's (logged as an error), but the client may replay
    # the cookie at will: every replay is counted, the log lines are rate-limited.
    from test_store_contract import STORE_KINDS

    caplog.set_level(logging.DEBUG, logger="fastsess")
    mw = make_mw(App(inc), type="file", data_dir=str(tmp_path / "sessions"))
    try:
        cookie = call(mw).cookie_value()
        STORE_KINDS["file"].damage(mw.store, mw.service.open_cookie(cookie)[1])
        mw.app.action = read
        for _ in range(50):
            assert call(mw, cookie=f"session={cookie}").body == b""
        assert mw.service.events.counts["corrupt_record"] == 50
        records = events(caplog, "corrupt_record")
        assert 1 <= len(records) <= 2 * RATE_LIMIT_PER_SECOND
        assert all(record.levelno >= logging.WARNING for record in records)
    finally:
        mw.close()


@pytest.fixture
def eastern_time(monkeypatch):
    """Run in a timezone five hours west of UTC, so naive and aware datetimes differ."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(2040, 1, 2, 3, 4, 5),
        dt.datetime(2040, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        dt.datetime(2040, 1, 1, 22, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    ],
    ids=["naive-is-utc-as-in-beaker", "aware-utc", "aware-offset"],
)
def test_cookie_expires_datetime_is_emitted_as_that_moment_in_gmt(when, eastern_time):
    served = call(make_mw(App(inc), cookie_expires=when))
    [header] = served.set_cookies()
    assert "expires=Mon, 02 Jan 2040 03:04:05 GMT" in header


# ---------------------------------------------------------------- persistent cookies slide


@pytest.mark.parametrize(
    "options, expires_after, max_age",
    [
        ({"cookie_expires": "3600"}, 3600, None),
        ({"cookie_expires": 3600}, 3600, None),
        ({"cookie_expires": "false"}, None, None),
        ({"max_age": "3600"}, 3600, 3600),
        ({"max_age": 3600, "cookie_expires": "false"}, 3600, 3600),
    ],
)
def test_persistent_cookie_is_re_sent_with_a_new_expiry_whenever_the_session_is_touched(
    options, expires_after, max_age
):
    app = App(inc)
    mw = make_mw(app, timeout=600, **options)
    clock = freeze(mw)

    def expected_attributes(header):
        if expires_after is None:
            assert FAR_FUTURE_EXPIRES in header
        else:
            assert "expires=" + formatdate(clock.now + expires_after, usegmt=True) in header
        assert (f"Max-Age={max_age}" in header) if max_age else ("Max-Age" not in header)

    first = call(mw)
    expected_attributes(first.set_cookies()[0])
    cookie = f"session={first.cookie_value()}"
    app.action = read
    clock.advance(30)  # within touch_interval (timeout / 10): no touch, no cookie
    assert call(mw, cookie=cookie).set_cookies() == []
    for _ in range(3):  # 3 x 500 s > timeout: only the sliding expiry keeps the session alive
        clock.advance(500)
        served = call(mw, cookie=cookie)
        assert served.body == b"1"
        [header] = served.set_cookies()
        assert served.cookie_value() == first.cookie_value()
        expected_attributes(header)


def test_browser_session_cookie_is_not_re_sent_on_touch():
    app = App(inc)
    mw = make_mw(app, timeout=600)
    clock = freeze(mw)
    cookie = f"session={call(mw).cookie_value()}"
    app.action = read
    clock.advance(500)
    served = call(mw, cookie=cookie)
    assert served.body == b"1"
    assert served.set_cookies() == []


def test_idle_session_expires_after_timeout():
    app = App(inc)
    mw = make_mw(app, timeout=600)
    clock = freeze(mw)
    cookie = f"session={call(mw).cookie_value()}"
    app.action = read
    clock.advance(601)
    served = call(mw, cookie=cookie)
    assert served.body == b""
    assert served.set_cookies() == []


# ---------------------------------------------------------------- one cookie per response


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(inc, id="write"),
        pytest.param(lambda s: (s.delete(), s.__setitem__("bye", "flash"), s.save()), id="delete-then-write"),
        pytest.param(lambda s: (s.regenerate_id(), s.regenerate_id()), id="regenerate-twice"),
        pytest.param(lambda s: (s.invalidate(), inc(s)), id="invalidate-then-write"),
        pytest.param(lambda s: (inc(s), s.delete()), id="write-then-delete"),
        pytest.param(lambda s: s.delete(), id="delete"),
        pytest.param(lambda s: (s.regenerate_id(), s.delete(), inc(s)), id="regenerate-delete-write"),
    ],
)
def test_a_response_carries_at_most_one_session_cookie(action):
    app = App(inc)
    mw = make_mw(app, cookie_expires="false")
    good = call(mw).cookie_value()
    app.action = action
    app.headers = [("Set-Cookie", "theme=dark; Path=/")]
    served = call(mw, cookie=f"session=garbage; theme=light; session={good}")
    assert len(served.set_cookies()) == 1
    assert served.set_cookies("theme") == ["theme=dark; Path=/"]


# ---------------------------------------------------------------- bad cookies


def _valid_cookie() -> tuple[SessionMiddleware, App, str]:
    app = App(inc)
    mw = make_mw(app)
    return mw, app, call(mw).cookie_value()


def _flip(value: str, index: int) -> str:
    return value[:index] + ("A" if value[index] != "A" else "B") + value[index + 1 :]


def _from_other_middleware(**options) -> str:
    """A valid cookie value, but issued by a middleware with other options."""
    return call(make_mw(App(inc), **options)).cookie_value(options.get("key", "session"))


BAD_COOKIES = {
    "tampered-id": lambda v: _flip(v, 10),
    "tampered-tag": lambda v: _flip(v, 55),
    "tampered-version": lambda v: _flip(v, 0),
    "truncated-by-one": lambda v: v[:-1],
    "truncated-half": lambda v: v[:33],
    "garbage": lambda v: "this is not a session cookie",
    "empty": lambda v: "",
    "base64-padding": lambda v: v + "=",
    "standard-base64": lambda v: "+" + v[1:],
    "non-ascii": lambda v: v[:-1] + "\xe9",
    "non-ascii-only": lambda v: "\xe9" * 67,
    "utf8-as-latin1": lambda v: "Ã©" + v[2:],
    "oversized": lambda v: v + "A" * 4100,
    "oversized-garbage": lambda v: "x" * 5000,
    "half-quoted": lambda v: '"' + v,
    "double-quoted": lambda v: '""' + v + '""',
    "quoted-garbage": lambda v: '"garbage"',
    "other-secret": lambda v: _from_other_middleware(secret=OTHER_SECRET),
    "other-cookie-name": lambda v: _from_other_middleware(key="othername"),
    "forged-id": lambda v: v[:2] + core.new_session_id() + v[45:],
}


@pytest.mark.parametrize("kind", sorted(BAD_COOKIES))
def test_a_bad_cookie_gives_a_fresh_session_and_no_cookie_when_nothing_is_written(kind):
    mw, app, good = _valid_cookie()
    app.action = lambda s: (s.is_new, s.get("n"))
    served = call(mw, cookie="session=" + BAD_COOKIES[kind](good))
    assert served.status.startswith("200")
    assert served.body == b"(True, None)"
    assert served.set_cookies() == []


@pytest.mark.parametrize("kind", sorted(BAD_COOKIES))
def test_a_bad_cookie_is_replaced_by_one_new_cookie_when_the_request_writes(kind):
    mw, app, good = _valid_cookie()
    served = call(mw, cookie="session=" + BAD_COOKIES[kind](good))
    assert served.body == b"1"
    assert len(served.set_cookies()) == 1
    assert served.cookie_value() != good


def test_bad_cookies_never_cause_a_server_error_through_webtest():
    mw, app, good = _valid_cookie()
    t = webtest.TestApp(mw, extra_environ=HTTPS)
    for kind, make in sorted(BAD_COOKIES.items()):
        if any(ord(c) > 127 for c in make(good)):
            continue  # WebTest wants ASCII header values; call() covers those
        response = t.get("/", headers={"Cookie": "session=" + make(good)})
        assert response.status_int == 200, kind
        assert response.text == "1", kind


def test_a_quoted_cookie_value_is_unquoted_once():
    mw, app, good = _valid_cookie()
    app.action = read
    assert call(mw, cookie=f'session="{good}"').body == b"1"


def test_a_cookie_whose_name_differs_in_case_is_not_read():
    mw, app, good = _valid_cookie()
    app.action = read
    assert call(mw, cookie=f"Session={good}").body == b""


def test_cookie_parsing_splits_on_semicolons_only_and_trims_spaces_and_tabs():
    mw, app, good = _valid_cookie()
    app.action = read
    assert call(mw, cookie=f"a=1,b=2;\t session={good} \t; c=3").body == b"1"


def test_when_several_cookies_share_the_name_the_first_that_verifies_is_used():
    mw, app, good = _valid_cookie()
    app.action = read
    assert call(mw, cookie=f"session=garbage; theme=dark; session={good}").body == b"1"
    assert call(mw, cookie=f"session={_flip(good, 50)}; session={good}").body == b"1"


def test_only_three_candidate_cookies_are_verified():
    mw, app, good = _valid_cookie()
    app.action = lambda s: (s.is_new, s.get("n"))
    cookie = f"session=garbage; session={_flip(good, 50)}; session={good[:-1]}; session={good}"
    assert call(mw, cookie=cookie).body == b"(True, None)"
    assert call(mw, cookie=f"session=x; session=y; session={good}").body == b"(False, 1)"


def test_several_cookies_make_at_most_one_store_lookup(monkeypatch):
    mw, app, good = _valid_cookie()
    loads = []
    real_load = mw.store.load
    monkeypatch.setattr(mw.store, "load", lambda key: (loads.append(key), real_load(key))[1])
    unknown = mw.service.sign(core.new_session_id())  # verifies, but has no record
    app.action = lambda s: (s.is_new, s.get("n"))
    served = call(mw, cookie=f"session={unknown}; session={good}")
    assert served.body == b"(True, None)"  # the first that verifies is used
    assert len(loads) == 1


def test_an_unknown_but_signed_id_is_never_adopted():
    mw, app, good = _valid_cookie()
    unknown = mw.service.sign(core.new_session_id())
    served = call(mw, cookie=f"session={unknown}")
    assert served.body == b"1"
    assert served.cookie_value() != unknown


def test_bad_cookies_are_logged_as_invalid_cookie_at_debug_or_info(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    mw, app, good = _valid_cookie()
    app.action = read
    call(mw, cookie="session=garbage")
    [record] = events(caplog, "invalid_cookie")
    assert record.levelno <= logging.INFO


# ---------------------------------------------------------------- regenerate and tombstones


def test_request_with_a_tombstoned_id_gets_an_empty_session_and_no_cookie_even_when_it_writes(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    ids = []
    app = App(lambda s: (inc(s), ids.append(s.id)))
    mw = make_mw(app)
    old = call(mw).cookie_value()
    app.action = lambda s: (s.regenerate_id(), ids.append(s.id))
    new = call(mw, cookie=f"session={old}").cookie_value()
    assert new != old
    assert stored(mw, ids[0]) is TOMBSTONE

    seen = []

    def late_parallel_request(session):
        seen.append(dict(session))
        session["n"] = 99
        session.save()

    app.action = late_parallel_request
    served = call(mw, cookie=f"session={old}")
    assert seen == [{}]
    assert served.status.startswith("200")
    assert served.set_cookies() == []
    assert events(caplog, "write_dropped")
    app.action = read
    assert call(mw, cookie=f"session={new}").body == b"1"


@pytest.mark.parametrize("end", ["regenerate_id", "invalidate", "delete"])
def test_a_parallel_login_or_logout_with_a_tombstoned_id_changes_nothing_and_never_fails(end, caplog):
    # The user double-clicked "log in": the second request carries the id the first just rotated away.
    caplog.set_level(logging.DEBUG, logger="fastsess")
    app = App(inc)
    mw = make_mw(app)
    old = call(mw).cookie_value()
    app.action = lambda s: s.regenerate_id()
    new = call(mw, cookie=f"session={old}").cookie_value()

    app.action = lambda s: (s.get("n"), getattr(s, end)(), s.__setitem__("user", "ann"), s.save())
    served = call(mw, cookie=f"session={old}")
    assert served.status.startswith("200")
    assert served.set_cookies() == []
    assert events(caplog, "write_dropped")
    app.action = lambda s: sorted(dict(s).items())
    assert call(mw, cookie=f"session={new}").body == b"[('n', 1)]"


def test_replaying_a_tombstoned_cookie_on_a_writing_page_cannot_flood_the_logs(caplog):
    # Any client can send its pre-login cookie again for 60 s: the writes it drops are
    # counted, but logged as a client-triggered event (INFO at most, rate-limited).
    caplog.set_level(logging.DEBUG, logger="fastsess")
    app = App(inc)
    mw = make_mw(app)
    old = call(mw).cookie_value()
    app.action = lambda s: s.regenerate_id()
    call(mw, cookie=f"session={old}")
    app.action = inc
    for _ in range(50):
        assert call(mw, cookie=f"session={old}").set_cookies() == []
    assert mw.service.events.counts["write_dropped"] == 50
    dropped = events(caplog, "write_dropped")
    assert dropped and len(dropped) <= 2 * RATE_LIMIT_PER_SECOND  # the replays may span two seconds
    assert all(r.levelno <= logging.INFO for r in dropped)


def test_a_write_the_application_makes_to_a_read_only_session_is_a_warning(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    mw = make_mw(App(lambda s: (s.read_only(), inc(s))))
    call(mw)
    [dropped] = events(caplog, "write_dropped")
    assert dropped.levelno == logging.WARNING


# ---------------------------------------------------------------- when the write happens


def _generator_app(ids, lazy: bool):
    def app(environ, start_response):
        def body():
            session = environ["beaker.session"]
            session["n"] = 1
            session.save()
            ids.append(session.id)
            if lazy:
                start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"first"
            yield b"second"

        if not lazy:
            start_response("200 OK", [("Content-Type", "text/plain")])
        return body()

    return app


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy-start-response", "eager-start-response"])
def test_session_is_stored_before_the_first_body_byte_reaches_the_server(lazy):
    ids = []
    mw = make_mw(_generator_app(ids, lazy))
    served = Served()
    result = mw(environ_for(), served.start_response)
    try:
        iterator = iter(result)
        first = next(iterator)  # the server is about to send this chunk: the record must be stored
        assert first == b"first"
        assert served.start_calls == 1
        assert len(served.set_cookies()) == 1
        record = stored(mw, ids[0])
        assert isinstance(record, StoredRecord)
        assert list(iterator) == [b"second"]
    finally:
        result.close()


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy-start-response", "eager-start-response"])
def test_generator_apps_work_through_webtest(lazy):
    t = webtest_app(make_mw(_generator_app([], lazy)))
    response = t.get("/")
    assert response.text == "firstsecond"
    assert len(response.headers.getall("Set-Cookie")) == 1


def test_generator_that_yields_nothing_still_sends_its_headers():
    def app(environ, start_response):
        environ["beaker.session"]["n"] = 1
        environ["beaker.session"].save()
        start_response("204 No Content", [])
        return
        yield  # pragma: no cover - makes this a generator

    served = call(make_mw(app))
    assert served.status == "204 No Content"
    assert len(served.set_cookies()) == 1


@pytest.mark.parametrize("action", [None, read, inc], ids=["untouched", "read", "write"])
def test_list_response_is_returned_unwrapped(action):
    body = [b"hello"]

    def app(environ, start_response):
        if action is not None:
            action(environ["beaker.session"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    served = Served()
    assert make_mw(app)(environ_for(), served.start_response) is body
    assert served.status == "200 OK"


def test_file_wrapper_response_is_returned_unwrapped():
    def app(environ, start_response):
        inc(environ["beaker.session"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"data"))

    served = Served()
    result = make_mw(app)(environ_for(**{"wsgi.file_wrapper": FileWrapper}), served.start_response)
    assert isinstance(result, FileWrapper)
    assert len(served.set_cookies()) == 1


def _streaming_writer(environ, start_response):
    session = environ["beaker.session"]
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        yield b"a"
        session["n"] = session.get("n", 0) + 10
        session.save()
        yield b"b"

    return body()


def test_change_made_while_streaming_is_written_at_close_for_an_existing_session():
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"
    streaming = make_mw(_streaming_writer)
    use_store(streaming, mw.store)
    served = Served()
    result = streaming(environ_for(cookie), served.start_response)
    assert list(result) == [b"a", b"b"]
    app.action = read
    assert call(mw, cookie=cookie).body == b"1"  # not yet: the write happens at close()
    result.close()
    assert call(mw, cookie=cookie).body == b"11"
    assert served.set_cookies() == []


def test_change_made_while_streaming_is_dropped_and_logged_for_a_new_session(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    mw = make_mw(_streaming_writer)
    served = call(mw)
    assert served.body == b"ab"
    assert served.set_cookies() == []
    assert len(mw.store) == 0
    [record] = events(caplog, "write_dropped")
    assert record.levelno >= logging.INFO


def test_change_made_while_streaming_is_not_saved_when_the_body_then_raises():
    # A body that fails part way is a failed request, as an exception before the
    # first byte is: the changes it made are not written at close().
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"

    def failing(environ, start_response):
        session = environ["beaker.session"]
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"a"
            session["n"] = 99
            session.save()
            raise RuntimeError("the body failed")

        return body()

    streaming = make_mw(failing)
    use_store(streaming, mw.store)
    with pytest.raises(RuntimeError):
        call(streaming, cookie=cookie)
    app.action = read
    assert call(mw, cookie=cookie).body == b"1"


@pytest.mark.parametrize("attribute", ["domain", "path"])
def test_a_domain_or_path_change_made_while_streaming_is_dropped_and_logged(attribute, caplog):
    # The new scope needs a new cookie, and the headers are out: storing it would
    # leave the record naming a scope the client's cookie does not have (a later
    # delete() would then expire a cookie the browser does not hold).
    caplog.set_level(logging.DEBUG, logger="fastsess")
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"

    def rescoping(environ, start_response):
        session = environ["beaker.session"]
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"a"
            setattr(session, attribute, "example.com" if attribute == "domain" else "/sub")
            yield b"b"

        return body()

    streaming = make_mw(rescoping)
    use_store(streaming, mw.store)
    served = call(streaming, cookie=cookie)
    assert served.set_cookies() == []
    assert events(caplog, "write_dropped")
    app.action = lambda session: (session.domain, session.path)
    assert call(mw, cookie=cookie).body == b"(None, '/')"


def test_legacy_write_callable_persists_the_session_before_the_first_write():
    ids, records_at_write = [], []

    def app(environ, start_response):
        session = environ["beaker.session"]
        inc(session)
        ids.append(session.id)
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"legacy ")
        return [b"body"]

    mw = make_mw(app)
    headers_at_write = []

    def server_start_response(status, headers, exc_info=None):
        def write(data):
            headers_at_write.append(list(headers))
            records_at_write.append(stored(mw, ids[0]))

        return write

    result = mw(environ_for(), server_start_response)
    assert list(result) == [b"body"]
    [record] = records_at_write
    assert isinstance(record, StoredRecord)
    assert [v for k, v in headers_at_write[0] if k == "Set-Cookie"]


def test_a_change_made_after_the_first_write_is_saved_for_an_existing_session():
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"

    def writer(environ, start_response):
        session = environ["beaker.session"]
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"hello ")
        inc(session)  # after the headers went out: written best effort, as for a stream
        return [b"world"]

    writing = make_mw(writer)
    use_store(writing, mw.store)
    served = call(writing, cookie=cookie)
    assert served.body == b"hello world"
    assert served.set_cookies() == []
    app.action = read
    assert call(mw, cookie=cookie).body == b"2"


def test_a_new_session_made_after_the_first_write_is_dropped_and_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")

    def writer(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"hello")
        inc(environ["beaker.session"])  # needs a cookie, and the headers are out
        return []

    mw = make_mw(writer)
    served = call(mw)
    assert served.set_cookies() == []
    assert len(mw.store) == 0
    [record] = events(caplog, "write_dropped")


# ---------------------------------------------------------------- error responses and failures


@pytest.mark.parametrize("status", ["500 Internal Server Error", "502 Bad Gateway", "503 Service Unavailable"])
def test_nothing_is_saved_for_a_5xx_response(status):
    mw = make_mw(App(inc, status=status))
    served = call(mw)
    assert served.status == status
    assert served.set_cookies() == []
    assert len(mw.store) == 0


def test_changes_to_an_existing_session_are_not_saved_on_a_5xx_response():
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"
    app.status = "500 Internal Server Error"
    call(mw, cookie=cookie)
    app.status, app.action = "200 OK", read
    assert call(mw, cookie=cookie).body == b"1"


def test_5xx_response_is_saved_with_save_on_error():
    mw = make_mw(App(inc, status="500 Internal Server Error"), save_on_error="true")
    served = call(mw)
    assert len(served.set_cookies()) == 1
    assert len(mw.store) == 1


@pytest.mark.parametrize("status", [b"200 OK", ""], ids=["bytes", "empty"])
def test_a_status_that_is_not_a_str_saves_nothing_and_reaches_the_server_as_given(status):
    # PEP 3333 wants a native string; anything else is the server's to refuse, and
    # the session is handled as on an error response.
    mw = make_mw(App(inc, status=status))
    served = call(mw)
    assert served.status == status
    assert served.set_cookies() == [] and len(mw.store) == 0


@pytest.mark.parametrize("status", ["404 Not Found", "302 Found", "400 Bad Request"])
def test_non_5xx_responses_are_saved(status):
    mw = make_mw(App(inc, status=status))
    assert len(call(mw).set_cookies()) == 1


def test_start_response_with_exc_info_and_500_saves_nothing():
    def app(environ, start_response):
        inc(environ["beaker.session"])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"error"]

    mw = make_mw(app)
    served = call(mw)
    assert served.set_cookies() == [] and len(mw.store) == 0


def test_exception_from_the_app_propagates_and_nothing_is_written():
    def app(environ, start_response):
        inc(environ["beaker.session"])
        raise RuntimeError("application bug")

    mw = make_mw(app)
    with pytest.raises(RuntimeError, match="application bug"):
        call(mw)
    assert len(mw.store) == 0


def test_exception_from_a_generator_before_its_first_chunk_propagates_and_nothing_is_written():
    closed = []

    def app(environ, start_response):
        def body():
            try:
                inc(environ["beaker.session"])
                start_response("200 OK", [])
                raise RuntimeError("failed while rendering")
                yield b"never"  # pragma: no cover
            finally:
                closed.append(True)

        return body()

    mw = make_mw(app)
    with pytest.raises(RuntimeError, match="failed while rendering"):
        call(mw)
    assert len(mw.store) == 0
    assert closed == [True]


def test_exception_from_the_app_leaves_an_existing_session_unchanged():
    app = App(inc)
    mw = make_mw(app)
    cookie = f"session={call(mw).cookie_value()}"

    def fail(session):
        inc(session)
        raise RuntimeError("application bug")

    app.action = fail
    with pytest.raises(RuntimeError):
        call(mw, cookie=cookie)
    app.action = read
    assert call(mw, cookie=cookie).body == b"1"


class FlakyStore(MemoryStore):
    """A memory store whose writes (and optionally loads) raise StoreError while `failing` is set."""

    failing = False
    fail_loads = False

    def _check(self):
        if self.failing:
            raise StoreError("store unavailable")

    def create(self, key, blob, expires_at):
        self._check()
        return super().create(key, blob, expires_at)

    def cas(self, key, blob, expected_version, expires_at):
        self._check()
        return super().cas(key, blob, expected_version, expires_at)

    def delete(self, key):
        self._check()
        return super().delete(key)

    def load(self, key):
        if self.fail_loads:
            self._check()
        return super().load(key)


def _flaky(app, **options) -> tuple[SessionMiddleware, FlakyStore]:
    mw = make_mw(app, **options)
    store = FlakyStore()
    use_store(mw, store)
    return mw, store


def test_store_error_on_create_fails_the_request_by_default(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    mw, store = _flaky(App(inc))
    store.failing = True
    with pytest.raises(StoreError):
        call(mw)
    assert events(caplog, "store_error")


def test_store_error_on_compare_and_set_fails_the_request_by_default():
    app = App(inc)
    mw, store = _flaky(app)
    cookie = f"session={call(mw).cookie_value()}"
    store.failing = True
    with pytest.raises(StoreError):
        call(mw, cookie=cookie)


def test_store_error_with_on_store_error_anonymous_gives_an_unsaved_session(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    mw, store = _flaky(App(inc), on_store_error="anonymous")
    store.failing = True
    served = call(mw)
    assert served.status.startswith("200")
    assert served.body == b"1"
    assert served.set_cookies() == []
    assert len(store) == 0
    assert events(caplog, "store_error")


def test_store_error_on_write_of_an_existing_session_with_anonymous_keeps_the_old_record():
    app = App(inc)
    mw, store = _flaky(app, on_store_error="anonymous")
    cookie = f"session={call(mw).cookie_value()}"
    store.failing = True
    served = call(mw, cookie=cookie)
    assert served.status.startswith("200") and served.set_cookies() == []
    store.failing = False
    app.action = read
    assert call(mw, cookie=cookie).body == b"1"


def test_store_error_on_load_with_anonymous_serves_an_empty_session():
    app = App(inc)
    mw, store = _flaky(app, on_store_error="anonymous")
    cookie = f"session={call(mw).cookie_value()}"
    store.failing = store.fail_loads = True
    app.action = lambda s: (s.get("n"), inc(s))
    served = call(mw, cookie=cookie)
    assert served.body == b"(None, 1)"
    assert served.set_cookies() == []


def test_a_failed_load_is_logged_with_the_sid_of_the_session_it_could_not_load(caplog):
    app = App(inc)
    mw, store = _flaky(app, on_store_error="anonymous")
    served = call(mw)
    cookie = f"session={served.cookie_value()}"
    session_id, _, _ = mw.service.open_cookie(served.cookie_value())
    store.failing = store.fail_loads = True
    caplog.set_level(logging.DEBUG, logger="fastsess")
    call(mw, cookie=cookie)
    [record] = [r for r in caplog.records if getattr(r, "fastsess_event", None) == "store_error"]
    assert record.sid == mw.service.sid(session_id) is not None
    assert session_id not in caplog.text


@pytest.mark.parametrize("fail_loads", [False, True], ids=["delete-fails", "load-fails"])
@pytest.mark.parametrize("logout", ["delete", "invalidate", "delete-then-flash"])
def test_logout_with_anonymous_policy_still_expires_the_cookie_while_the_store_is_down(logout, fail_loads):
    # SPEC 3: delete() always sends an expiring cookie, and after delete() or
    # invalidate() the old cookie loads nothing. The record outlives the outage
    # until its TTL, but the browser forgets it: a logout is not silently lost.
    app = App(inc)
    mw, store = _flaky(app, on_store_error="anonymous")
    cookie = f"session={call(mw).cookie_value()}"
    store.failing, store.fail_loads = True, fail_loads
    app.action = {
        "delete": lambda s: s.delete(),
        "invalidate": lambda s: s.invalidate(),
        "delete-then-flash": lambda s: (s.delete(), s.flash("bye")),
    }[logout]
    served = call(mw, cookie=cookie)
    assert served.status.startswith("200")
    [header] = served.set_cookies()
    assert header.startswith("session=;") and EPOCH_EXPIRES in header


def test_store_error_on_load_fails_the_request_by_default():
    app = App(inc)
    mw, store = _flaky(app)
    cookie = f"session={call(mw).cookie_value()}"
    store.failing = store.fail_loads = True
    app.action = read
    with pytest.raises(StoreError):
        call(mw, cookie=cookie)


# ---------------------------------------------------------------- hooks and integrations


def test_on_event_hook_receives_events_with_a_hashed_sid():
    received = []
    app = App(inc)
    mw = make_mw(app, on_event=lambda name, **fields: received.append((name, fields)))
    good = call(mw).cookie_value()
    call(mw, cookie="session=garbage")
    names = [name for name, _ in received]
    assert "created" in names and "invalid_cookie" in names
    created = dict(received)["created"]
    assert re.fullmatch(r"[0-9a-f]{16}", created["sid"])
    assert good not in repr(received)


def test_on_event_hook_receives_what_the_store_notices_itself(tmp_path, caplog):
    # A damaged LMDB environment is moved aside, losing every session: the
    # operator's on_event hook (metrics, alerts) must hear of it, not only the log.
    caplog.set_level(logging.DEBUG, logger="fastsess")
    data_dir = tmp_path / "sessions"
    data_dir.mkdir()
    (data_dir / "data.mdb").write_bytes(b"this is not an lmdb file " * 1000)
    received = []
    mw = make_mw(App(inc), type="lmdb", data_dir=str(data_dir),
                 on_event=lambda name, **fields: received.append((name, fields)))
    try:
        assert call(mw).body == b"1"
    finally:
        mw.close()
    [store_error] = [fields for name, fields in received if name == "store_error"]
    assert store_error == {"sid": None, "store": "lmdb"}
    assert mw.service.events.counts["store_error"] == 1
    assert len(events(caplog, "store_error")) == 1  # logged once, not once more by the store


def test_a_failing_on_event_hook_does_not_break_requests():
    def hook(name, **fields):
        raise RuntimeError("metrics are down")

    assert call(make_mw(App(inc), on_event=hook)).body == b"1"


def _paste_settings():
    global_conf = {"__file__": "/etc/myapp/production.ini", "here": "/etc/myapp", "debug": "false"}
    local_conf = {
        "session.type": "memory",
        "session.secret": SECRET,
        "session.timeout": "600",
        "session.httponly": "false",
        "session.cookie_expires": "3600",
        "key": "myapp_session",
    }
    return global_conf, local_conf


def _check_paste_middleware(mw) -> None:
    assert isinstance(mw, SessionMiddleware)
    assert mw.config.timeout == 600.0
    first = call(mw)
    [header] = first.set_cookies("myapp_session")
    assert "HttpOnly" not in header and "expires=" in header
    second = call(mw, cookie=f"myapp_session={first.cookie_value('myapp_session')}")
    assert second.body == b"2"


def test_paste_filter_factory_builds_middleware_from_ini_strings():
    global_conf, local_conf = _paste_settings()
    make_filter = filter_factory(global_conf, **local_conf)
    _check_paste_middleware(make_filter(App(inc)))


def test_paste_filter_app_factory_builds_middleware_from_ini_strings():
    global_conf, local_conf = _paste_settings()
    _check_paste_middleware(filter_app_factory(App(inc), global_conf, **local_conf))


def test_paste_filter_factory_reads_session_options_from_global_conf():
    global_conf = {"here": "/srv", "session.secret": SECRET, "session.timeout": "60", "session.type": "memory"}
    mw = filter_factory(global_conf)(App(inc))
    assert mw.config.secrets == [SECRET] and mw.config.timeout == 60.0


def test_webtest_varname_puts_the_session_in_paste_testing_variables():
    t = webtest_app(make_mw(App(inc), webtest_varname="sess"))
    response = t.get("/")
    assert response.sess["n"] == 1
    assert response.sess is response.request.environ["beaker.session"]


def test_use_cookies_false_sends_and_reads_no_cookie():
    ids, found = [], []
    app = App(lambda s: (inc(s), ids.append(s.id)))
    mw = make_mw(app, use_cookies="false")
    first = call(mw)
    assert first.header("Set-Cookie") == []
    cookie_mw = make_mw(App(inc))  # a valid cookie for the same secret must still be ignored
    use_store(cookie_mw, mw.store)
    app.action = lambda s: (s.is_new, found.append(app.environs[-1]["beaker.get_session"](session_id=ids[0])))
    served = call(mw, cookie=f"session={call(cookie_mw).cookie_value()}")
    assert served.body.startswith(b"(True,")
    assert served.header("Set-Cookie") == []
    assert found[0]["n"] == 1  # sessions by explicit id still work


def test_enabled_is_left_to_the_turbogears_integration():
    # TurboGears sets session.enabled = false to turn its own Beaker wrapper off;
    # the middleware must still serve sessions when given that configuration.
    app = App()
    call(make_mw(app, enabled="false"))
    assert "beaker.session" in app.environs[0]


# ---------------------------------------------------------------- logs never carry ids


def test_no_raw_id_or_cookie_value_appears_in_any_log_record(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    secrets: set = set()

    def remember(session):
        secrets.add(session.id)

    app = App(lambda s: (inc(s), remember(s)))
    mw = make_mw(app)

    def request(cookie=None, **extra):
        served = call(mw, cookie=cookie, **extra)
        secrets.update(v for v in (h.split(";")[0].split("=", 1)[1] for h in served.set_cookies()) if v)
        return served

    good = request().cookie_value()
    for make in BAD_COOKIES.values():
        bad = make(good)
        if len(bad) >= 8:
            secrets.add(bad)
        request(cookie=f"session={bad}")
    app.action = lambda s: (remember(s), s.regenerate_id(), remember(s))
    new = request(cookie=f"session={good}").cookie_value()
    app.action = lambda s: (s.__setitem__("late", 1), s.save())
    request(cookie=f"session={good}")  # tombstoned
    app.action = lambda s: (remember(s), s.invalidate(), inc(s), remember(s))
    newer = request(cookie=f"session={new}").cookie_value()
    app.action = lambda s: (remember(s), s.delete())
    request(cookie=f"session={newer}")
    request(cookie=f"session={newer}")  # deleted: unknown id
    request(**{"wsgi.url_scheme": "http", "HTTP_HOST": "www.example.com"})

    records = [r for r in caplog.records if r.name.startswith("fastsess")]
    names = {getattr(r, "fastsess_event", None) for r in records}
    assert {"created", "invalid_cookie", "regenerated", "tombstone_hit", "write_dropped"} <= names
    secrets.discard(None)
    assert len(secrets) > 10
    for record in records:
        text = record.getMessage() + repr(vars(record))
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{record.getMessage()!r} leaks a raw id or cookie value"
        sid = getattr(record, "sid", None)
        assert sid is None or re.fullmatch(r"[0-9a-f]{16}", sid)


class Capture(logging.Handler):
    """Every record the fastsess logger emits, whatever the configured levels."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Capture:
        logger = logging.getLogger("fastsess")
        self.level_before = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("fastsess")
        logger.removeHandler(self)
        logger.setLevel(self.level_before)


def damage_record(kind: str, store, key: bytes) -> None:
    from test_store_contract import STORE_KINDS

    STORE_KINDS["sql-sqlite-file" if kind == "sql" else kind].damage(store, key)


def break_store(kind: str, mw, cookie: str) -> None:
    """Make the store fail for this session: what a broken disk or database looks like to it."""
    if kind == "file":
        name = mw.service.open_cookie(cookie)[1].hex()
        shard = os.path.join(mw.store.data_dir, name[:2])
        shutil.rmtree(shard)
        with open(shard, "wb") as f:
            f.write(b"a file where the store wants a directory")
    elif kind == "sql":
        mw.store.table.drop(mw.store.engine)
    else:
        mw.store.close()


def _leak_app(secrets: set, leaked_exceptions: list):
    """An app whose PATH_INFO picks what the request does; it remembers every id, token and value it sees."""

    def app(environ, start_response):
        session = environ["beaker.session"]
        action = environ["PATH_INFO"].strip("/")
        marker = f"DATA-{action}-{core.new_session_id()[:12]}"
        secrets.add(marker)
        if action == "write":
            session["card"] = marker
            session.flash(f"{marker}-flash")
            secrets.update({session.get_csrf_token(), session.csrf_token_for_form(), session.new_csrf_token()})
        elif action == "conflict":
            # Another request writes the same session while this one runs: merged, or raised.
            other = environ["beaker.get_session"](session.id)
            other["card"] = marker + "-other"
            other.save()
            session["card"] = marker
            session.save()
        elif action == "regenerate":
            session["user"] = marker
            session.regenerate_id()
        elif action == "big":
            session["big"] = marker * 2000
            session.save()
        elif action == "nested":
            session["cart"] = [marker]
            session["cart"].append(float("nan"))
            session.save()
        elif action == "delete":
            session.delete()
        if session.id is not None:
            secrets.add(session.id)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


@pytest.mark.parametrize("kind", ["file", "lmdb", "sql"])
def test_no_log_record_or_exception_carries_an_id_cookie_token_or_session_data(kind, tmp_path):
    secrets: set = set()
    raised: list = []
    with Capture() as capture:
        app = _leak_app(secrets, raised)
        mw = make_mw(app, type=kind, data_dir=str(tmp_path / "sessions"), max_record_size=4096)
        strict = make_mw(app, type=kind, data_dir=str(tmp_path / "strict"), on_conflict="raise",
                         invalidate_corrupt="false")
        clock = freeze(mw)

        def request(path, cookie=None, target=mw):
            environ = environ_for(f"session={cookie}" if cookie is not None else None)
            environ["PATH_INFO"] = path
            served = Served()
            try:
                result = target(environ, served.start_response)
                served.chunks.extend(result)
            except Exception as exc:  # noqa: BLE001 - every error's text is checked below
                raised.append(exc)
            for header in served.set_cookies():
                value = header.split(";")[0].split("=", 1)[1]
                if value:
                    secrets.add(value)
            return served.cookie_value() if served.set_cookies() and served.cookie_value() else cookie

        try:
            good = request("/write")
            request("/", good)
            for name, make in BAD_COOKIES.items():
                bad = make(good)
                if len(bad) >= 12 and name != "garbage":
                    secrets.add(bad)
                request("/write", bad)
            request("/conflict", good)
            strict_cookie = request("/write", target=strict)
            request("/conflict", strict_cookie, target=strict)  # ConflictError
            request("/big", good)  # SessionTooLarge
            request("/nested", good)  # TypeError from the codec
            new = request("/regenerate", good)
            request("/write", good)  # tombstoned: write_dropped
            clock.advance(601)
            request("/write", new)  # expired
            request("/delete", request("/write"))
            # A damaged record, under both invalidate_corrupt settings.
            damaged = request("/write")
            other = request("/write", target=strict)
            for target, cookie in ((mw, damaged), (strict, other)):
                key = target.service.open_cookie(cookie)[1]
                damage_record(kind, target.store, key)
                request("/write", cookie, target=target)
            # The store failing.
            cookie = request("/write")
            break_store(kind, mw, cookie)
            request("/write", cookie)
            # Configuration errors, and a configuration warning.
            base = {"session.type": "memory", "session.timeout": 60, "session.secret": SECRET}
            for options in ({"session.secret": "DATA-short-secret"}, {"session.validate_key": "DATA-short-key"},
                            {"session.encrypt_key": "DATA-short-encrypt-key"}, {"session_secret": "DATA-session-"}):
                secrets.update(options.values())
                try:
                    SessionMiddleware(app, {**base, **options})
                except Exception as exc:  # noqa: BLE001
                    raised.append(exc)
        finally:
            mw.close()
            strict.close()

    kinds = {type(exc).__name__ for exc in raised}
    assert {"ConflictError", "SessionTooLarge", "TypeError", "CorruptRecord", "StoreError", "ConfigError"} <= kinds
    events = {getattr(r, "fastsess_event", None) for r in capture.records}
    assert {"created", "invalid_cookie", "expired", "regenerated", "tombstone_hit", "write_dropped",
            "conflict_merged", "conflict_raised", "corrupt_record", "store_error", "config_warning"} <= events
    secrets = {s for s in secrets if s}
    assert len(secrets) > 30
    texts = [r.getMessage() + repr(vars(r)) for r in capture.records]
    texts += ["".join(traceback.format_exception(exc)) + repr(exc.args) for exc in raised]
    for text in texts:
        leaked = sorted(s for s in secrets if s in text)
        assert not leaked, f"{text[:300]!r} leaks {leaked}"
        assert "DATA-" not in text, text[:300]
    for record in capture.records:
        assert hasattr(record, "fastsess_event") and hasattr(record, "sid"), record.getMessage()
        assert record.sid is None or re.fullmatch(r"[0-9a-f]{16}", record.sid)


# ---------------------------------------------------------------- every store of this release


@pytest.mark.parametrize("kind", ["memory", "file", "lmdb"])
def test_counter_regenerate_and_delete_work_on_every_store(kind, tmp_path):
    if kind != "memory":
        pytest.importorskip(f"fastsess.stores.{kind}", reason=f"fastsess.stores.{kind} does not import yet")
    app = App(inc)
    mw = make_mw(app, type=kind, data_dir=str(tmp_path / "not" / "yet" / "there"))
    try:
        t = webtest_app(mw)
        assert [t.get("/").text for _ in range(3)] == ["1", "2", "3"]
        app.action = lambda s: (s.regenerate_id(), s["n"])[1]
        response = t.get("/")
        assert response.text == "3" and len(response.headers.getall("Set-Cookie")) == 1
        app.action = inc
        assert t.get("/").text == "4"
        app.action = lambda s: s.delete()
        t.get("/")
        app.action = read
        assert t.get("/").text == ""
    finally:
        mw.close()


def test_a_session_read_then_reset_like_turbogears_still_varies_on_cookie():
    # TurboGears' i18n.no_session_touch reads the language from the session, then
    # sets __dict__["_sess"] = None so nothing is written: the page still depends
    # on the cookie, so caches must still key on it.
    def app(environ, start_response):
        session = environ["beaker.session"]
        session.get("lang")
        session.__dict__["_sess"] = None
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    mw = SessionMiddleware(app, {"session.type": "memory", "session.secret": "s" * 40, "session.timeout": 60})
    headers = {}
    mw({"REQUEST_METHOD": "GET", "wsgi.url_scheme": "https"}, lambda s, h, e=None: headers.update(h))
    assert headers["Vary"] == "Cookie"
    assert headers["Cache-Control"] == "private"
    assert "Set-Cookie" not in headers


# ---------------------------------------------------------------- a full filesystem

# One process per scenario: a store that mishandles a full disk may kill its
# process (SIGBUS through a shared mapping), and must not take pytest with it.
FULL_DISK = r"""
import json, os, sys
from fastsess import SessionMiddleware

mount, kind, policy, scenario = sys.argv[1:]
filler = os.path.join(mount, "filler")


def fill():
    os.makedirs(filler, exist_ok=True)
    for chunk in (1 << 16, 512, 1):
        try:
            n = 0
            while True:
                with open(os.path.join(filler, f"{chunk}-{n}"), "wb") as f:
                    while True:
                        f.write(b"\0" * chunk)
                        f.flush()
                n += 1
        except OSError:
            pass


def free():
    for name in os.listdir(filler):
        os.unlink(os.path.join(filler, name))


def app(environ, start_response):
    session = environ["beaker.session"]
    if environ["QUERY_STRING"]:
        session["v"] = environ["QUERY_STRING"]
        session.save()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [session.get("v", "-").encode()]


def build():
    return SessionMiddleware(app, {
        "session.type": kind, "session.data_dir": os.path.join(mount, "sessions"), "session.secret": "d" * 40,
        "session.timeout": 600, "session.on_store_error": policy,
    })


def call(mw, query="", cookie=None):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": query, "SERVER_NAME": "localhost",
               "SERVER_PORT": "443", "HTTP_HOST": "localhost", "wsgi.url_scheme": "https"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    out = {}

    def start_response(status, headers, exc_info=None):
        out["status"] = status
        out["cookie"] = next((v.split(";")[0] for k, v in headers if k == "Set-Cookie"), None)

    try:
        out["body"] = b"".join(mw(environ, start_response)).decode()
    except Exception as exc:
        out = {"error": type(exc).__name__}
    return out


result = {}
if scenario == "boot":
    fill()
    mw = build()
    result["full"] = call(mw, "new")
else:
    mw = build()
    cookie = call(mw, "before")["cookie"]
    fill()
    result["read"] = call(mw, cookie=cookie)
    result["full"] = call(mw, "during", cookie)
    result["new"] = call(mw, "new")
free()
result["kept"] = call(mw, cookie=cookie)["body"] if scenario == "run" else None
result["after"] = call(mw, "after")
print(json.dumps(result))
"""


def _tmpfs(tmp_path, options: str):
    """A tmpfs mounted for one test (needs root), unmounted after it."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs: a filesystem the test can fill."""
    yield from _tmpfs(tmp_path, "size=1m")


@pytest.fixture
def read_only_tmpfs(tmp_path):
    """A read-only filesystem, which even root cannot write."""
    yield from _tmpfs(tmp_path, "size=1m,ro")


@pytest.mark.parametrize("below", ["", "sessions"])
@pytest.mark.parametrize("kind", ["file", "lmdb", "sql"])
def test_a_data_dir_on_a_read_only_filesystem_is_a_config_error(read_only_tmpfs, kind, below):
    data_dir = str(read_only_tmpfs / below)
    with pytest.raises(ConfigError, match="data_dir .*(not writable|cannot be created).*Read-only file system"):
        make_mw(App(), type=kind, data_dir=data_dir, on_store_error="anonymous")


def run_on_a_full_disk(mount, kind: str, policy: str, scenario: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    ran = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(mount), kind, policy, scenario],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert ran.returncode == 0, f"exit status {ran.returncode}: {ran.stderr[-2000:]}"
    return json.loads(ran.stdout.splitlines()[-1])


def failed_write(policy: str) -> dict:
    """What a request that writes gets while the disk is full."""
    return {"error": "StoreError"} if policy == "raise" else {"status": "200 OK", "cookie": None, "body": ANY}


ANY = object()


def matches(got: dict, expected: dict) -> bool:
    return got.keys() == expected.keys() and all(v is ANY or got[k] == v for k, v in expected.items())


@pytest.mark.parametrize("policy", ["raise", "anonymous"])
@pytest.mark.parametrize("kind", ["file", "lmdb", "sql"])
def test_a_full_disk_fails_writes_cleanly_and_loses_no_stored_session(small_tmpfs, kind, policy):
    result = run_on_a_full_disk(small_tmpfs, kind, policy, "run")
    assert result["read"]["body"] == "before"  # reading needs no space
    assert matches(result["full"], failed_write(policy)), result["full"]
    assert matches(result["new"], failed_write(policy)), result["new"]
    assert result["kept"] == "before"  # the failed write left the record as it was
    assert result["after"]["cookie"] and result["after"]["body"] == "after"


@pytest.mark.parametrize(("kind", "policy"), [
    ("file", "raise"), ("file", "anonymous"), ("lmdb", "raise"), ("lmdb", "anonymous"),
    ("sql", "anonymous"),  # with raise, SQLite's table cannot be made: a StoreError at startup, as for a database down
])
def test_the_middleware_starts_on_a_full_disk_and_stores_sessions_once_there_is_room(small_tmpfs, kind, policy):
    # A full disk is an outage, not a configuration mistake: workers restarted
    # meanwhile must boot, and on_store_error decides what requests get.
    result = run_on_a_full_disk(small_tmpfs, kind, policy, "boot")
    assert matches(result["full"], failed_write(policy)), result["full"]
    assert result["after"]["cookie"] and result["after"]["body"] == "after"


# ---------------------------------------------------------------- the compiled request cycle


def test_replacing_the_wrapped_app_after_construction_takes_effect():
    """app (or Beaker's wrap_app) is a field of the compiled Middleware base: the next request runs the new one."""
    mw = make_mw(App(inc))
    test = webtest_app(mw)
    assert test.get("/").text == "1"
    mw.app = App(read)
    assert test.get("/").text == "1"
    assert test.get("/").text == "1"  # read, not counted up
    mw.wrap_app = App(inc)  # Beaker's name for it
    assert mw.app is mw.wrap_app
    assert test.get("/").text == "2"


def test_the_request_cycle_is_compiled_exactly_when_the_c_kernel_is_selected():
    """fastsess._request is _request_py.py compiled; wsgi takes it with the C kernel, else the source."""
    from fastsess import _request_py, core, wsgi

    if core.IMPLEMENTATION == "python":
        assert wsgi._request is _request_py
        return
    try:
        from fastsess import _request
    except ImportError:
        assert not core.REQUIRE_EXTENSIONS, "FASTSESS_REQUIRE_EXTENSIONS=1 but fastsess._request is not built"
        assert wsgi._request is _request_py
        return
    assert wsgi._request is _request
    assert _request.__file__ != _request_py.__file__
    assert wsgi.SessionMiddleware.__mro__[1] is _request.Middleware
    # Calling the middleware is the extension type's C slot, not a Python-level method.
    assert type(wsgi.SessionMiddleware.__call__).__name__ == "wrapper_descriptor"
    # The compiled Response keeps its state in C fields: no per-instance dict.
    response = _request.Response(None, {}, None, None)
    assert not hasattr(response, "__dict__")


def test_the_session_module_is_compiled_exactly_when_the_c_kernel_is_selected():
    """fastsess.session is _session_py.py, compiled as fastsess._session with the C kernel."""
    import fastsess.session
    from fastsess import _session_py, core, wsgi

    if core.IMPLEMENTATION == "python":
        assert fastsess.session is _session_py
    else:
        try:
            from fastsess import _session
        except ImportError:
            assert not core.REQUIRE_EXTENSIONS, "FASTSESS_REQUIRE_EXTENSIONS=1 but fastsess._session is not built"
            assert fastsess.session is _session_py
        else:
            assert fastsess.session is _session
            assert _session.__file__ != _session_py.__file__
            # The loaded state keeps its attributes in C fields: no per-instance dict.
            assert not hasattr(_session._State(0.0), "__dict__")
    # Every importer sees one module, whichever it is: the middleware builds the class
    # applications see, and a constant set on fastsess.session is the one the code reads.
    assert wsgi.Session is fastsess.session.Session
    assert fastsess.Session is fastsess.session.Session
    assert fastsess.session.Session.__module__ == "fastsess.session"


def test_an_event_nobody_logs_or_hooks_costs_no_sid_and_one_that_is_seen_carries_it(caplog):
    hashed = []
    events = EventLog()
    events.log_sid = lambda session_id: hashed.append(session_id) or "0123456789abcdef"
    caplog.set_level(logging.WARNING, logger="fastsess")
    events.emit("created", session_id="the-id")  # logged at DEBUG: not seen here
    assert hashed == [] and events.counts["created"] == 1  # counted all the same
    caplog.set_level(logging.DEBUG, logger="fastsess")
    events.emit("created", session_id="the-id")
    [record] = [r for r in caplog.records if getattr(r, "fastsess_event", None) == "created"]
    assert record.sid == "0123456789abcdef" and hashed == ["the-id"]
    caplog.set_level(logging.WARNING, logger="fastsess")
    seen = []
    events.hook = lambda name, **fields: seen.append((name, fields["sid"]))
    events.emit("created", session_id="the-id")
    assert seen == [("created", "0123456789abcdef")] and hashed == ["the-id", "the-id"]


def test_a_new_sessions_created_event_carries_the_sid_of_its_id():
    seen = []
    mw = SessionMiddleware(App(inc), secret=SECRET, on_event=lambda name, **fields: seen.append((name, fields["sid"])))
    served = call(mw)
    session_id, _, _ = mw.service.open_cookie(served.cookie_value())
    assert seen == [("created", mw.service.sid(session_id))] and mw.service.sid(session_id) is not None
