"""SPEC 3 ("Lifecycle", "Saving", "Timeouts", "Concurrency") through SessionMiddleware, on every store.

test_session.py pins the session layer down on the memory store; this file
runs the same promises end to end (WebTest and a cookie jar) on every store
a user can configure: memory, file, lmdb, sql (SQLite and PostgreSQL),
memcached, redis, and cookie-only sessions where the promise applies.
"""

from __future__ import annotations

import io
import itertools
import sys
import uuid

import pytest
import webtest

from fastsess import SessionMiddleware, core
from fastsess.errors import ConflictError
from fastsess.stores.base import TOMBSTONE, StoredRecord
from test_wsgi import Clock

SECRET = "lifecycle-test-secret-" + "z" * 20
HTTPS = {"wsgi.url_scheme": "https", "HTTP_HOST": "example.com"}
#: every server-side store; those that need a server of their own are marked for it
SERVER_STORES = [
    "memory", "file", "lmdb", "sql-sqlite",
    *(pytest.param(kind, marks=pytest.mark.servers)
      for kind in ("sql-postgresql", "memcached", "redis", "redis-cluster")),
]
_serial = itertools.count()


def store_options(kind: str, tmp_path) -> dict:
    if kind in ("memory", "cookie"):
        return {"type": kind}
    if kind in ("file", "lmdb"):
        return {"type": kind, "data_dir": str(tmp_path / kind)}
    if kind == "sql-sqlite":
        return {"type": "sql", "url": f"sqlite:///{tmp_path / 'sessions.sqlite'}"}
    if kind == "sql-postgresql":
        import server_postgres

        table = f"lifecycle_{next(_serial)}_{uuid.uuid4().hex[:8]}"
        return {"type": "sql", "url": server_postgres.get_server().url(), "table_name": table}
    if kind == "memcached":
        import server_memcached

        url = server_memcached.shared_server().address
        return {"type": "memcached", "url": url, "key_prefix": f"lc{uuid.uuid4().hex[:8]}:"}
    if kind == "redis":
        import server_redis

        url = server_redis.shared_server().url
        return {"type": "redis", "url": url, "key_prefix": f"lc{uuid.uuid4().hex[:8]}:"}
    if kind == "redis-cluster":
        import server_redis

        urls = ",".join(server_redis.shared_cluster().urls)
        return {"type": "redis", "urls": urls, "key_prefix": f"lc{uuid.uuid4().hex[:8]}:"}
    raise AssertionError(kind)


def needs_time_travel(kind: str) -> None:
    """memcached keeps expiry by its own real-time clock: the fake clock cannot move it (test_store_memcached.py)."""
    if kind == "memcached":
        pytest.skip("memcached expires and touches in real time; see test_store_memcached.py")


class Site:
    """Middlewares on one store, an app whose action each request scripts, and a fake clock."""

    def __init__(self, kind: str, tmp_path, **options) -> None:
        self.kind = kind
        self.action = None
        self.status = "200 OK"
        self.events: list = []
        self.mws = []
        self.clock = Clock()
        self.store_options = store_options(kind, tmp_path)
        self.mw = self.build(**options)
        self.app = webtest.TestApp(self.mw, extra_environ=HTTPS)

    def build(self, **options):
        def app(environ, start_response):
            session = environ["beaker.session"]
            body = self.action(session) if self.action is not None else None
            start_response(self.status, [("Content-Type", "text/plain")])
            return [b"" if body is None else str(body).encode()]

        settings = {"secret": SECRET, "timeout": 600, **self.store_options, **options}
        settings.setdefault("on_event", lambda name, **fields: self.events.append(name))
        mw = SessionMiddleware(app, **settings)
        if self.kind == "memory" and self.mws:  # one process, one dict: share the first middleware's
            mw.store = mw.service.store = self.mws[0].store
        mw.service.clock = self.clock
        if mw.store is not None:
            mw.store.clock = self.clock
        self.mws.append(mw)
        return mw

    def get(self, action=None, cookie=None, status="200 OK", expect_errors=False):
        """One request that runs action(session) and answers status, sending cookie (a value) if given."""
        self.action = action
        self.status = status
        self.app.cookiejar.clear()  # every request says which cookie it sends
        headers = {"Cookie": f"session={cookie}"} if cookie is not None else {}
        return self.app.get("/", headers=headers, expect_errors=expect_errors)

    def close(self):
        for mw in self.mws:
            mw.close()


def set_cookies(response) -> list:
    return [v for v in response.headers.getall("Set-Cookie") if v.startswith("session=")]


def cookie_value(response) -> str:
    [header] = set_cookies(response)
    return header.split(";", 1)[0].split("=", 1)[1]


def is_expiring(header: str) -> bool:
    return header.startswith("session=;") or "Max-Age=0" in header


@pytest.fixture(params=SERVER_STORES)
def kind(request):
    return request.param


@pytest.fixture
def site(kind, tmp_path):
    made = Site(kind, tmp_path)
    yield made
    made.close()


def setter(**values):
    def action(session):
        session.update(values)
        session.save()
        return "ok"

    return action


def dump(session):
    return repr(sorted(dict(session).items()))


# ------------------------------------------------------------ strict mode


def test_signed_id_without_a_record_is_never_adopted(site):
    forged_id = core.new_session_id()
    forged = site.mw.service.sign(forged_id)
    response = site.get(lambda s: s.get("n"), cookie=forged)
    assert set_cookies(response) == []
    response = site.get(setter(n=1), cookie=forged)
    value = cookie_value(response)
    assert value != forged
    assert site.mw.service.open_cookie(value)[0] != forged_id
    assert site.mw.store.load(core.store_key(forged_id)) is None


def test_expired_id_is_never_adopted_and_a_write_gets_a_new_id(site):
    needs_time_travel(site.kind)
    old = cookie_value(site.get(setter(n=1)))
    site.clock.advance(601)
    response = site.get(dump, cookie=old)
    assert response.text == "[]" and set_cookies(response) == []
    new = cookie_value(site.get(setter(m=2), cookie=old))
    assert new != old
    assert site.get(dump, cookie=new).text == "[('m', 2)]"
    assert site.get(dump, cookie=old).text == "[]"


def test_deleted_id_is_never_adopted(site):
    old = cookie_value(site.get(setter(n=1)))
    [header] = set_cookies(site.get(lambda s: s.delete(), cookie=old))
    assert is_expiring(header)
    response = site.get(dump, cookie=old)
    assert response.text == "[]" and set_cookies(response) == []
    new = cookie_value(site.get(setter(m=2), cookie=old))
    assert new != old
    assert site.get(dump, cookie=new).text == "[('m', 2)]"


# ------------------------------------------------------------ regenerate, invalidate, delete


def test_regenerate_id_alone_issues_a_new_cookie_and_tombstones_the_old_id(site):
    old = cookie_value(site.get(setter(n=1)))
    new = cookie_value(site.get(lambda s: s.regenerate_id(), cookie=old))
    assert new != old
    old_id = site.mw.service.open_cookie(old)[0]
    assert site.mw.store.load(core.store_key(old_id)) is TOMBSTONE
    assert site.get(dump, cookie=new).text == "[('n', 1)]"


def test_parallel_request_with_a_rotated_id_is_empty_read_only_and_gets_no_cookie(site):
    old = cookie_value(site.get(setter(n=1)))
    new = cookie_value(site.get(lambda s: s.regenerate_id(), cookie=old))
    response = site.get(lambda s: (dump(s), s.__setitem__("x", 9), s.save(), s.flash("hi"))[0], cookie=old)
    assert response.text == "[]"
    assert set_cookies(response) == []
    assert "write_dropped" in site.events
    assert site.get(dump, cookie=new).text == "[('n', 1)]"
    # delete() and invalidate() on the tombstoned id change nothing either
    for end in (lambda s: s.delete(), lambda s: s.invalidate(), lambda s: s.regenerate_id()):
        response = site.get(end, cookie=old)
        assert set_cookies(response) == []
    assert site.get(dump, cookie=new).text == "[('n', 1)]"


def test_request_that_loaded_before_the_rotation_neither_writes_nor_expires_the_new_cookie(site):
    old = cookie_value(site.get(setter(n=1)))
    box = {}

    def slow(session):
        session.get("n")  # loaded before the login response
        box["new"] = cookie_value(site.get(lambda s: s.regenerate_id(), cookie=old))
        session["late"] = 1
        session.save()
        return "ok"

    response = site.get(slow, cookie=old)
    assert set_cookies(response) == []
    assert site.get(dump, cookie=box["new"]).text == "[('n', 1)]"


def test_a_touch_that_meets_a_rotation_never_resends_the_old_persistent_cookie(kind, tmp_path):
    # The reading request loaded the session before the login rotated its id and
    # touches it after: its cookie must not replace the login's in the browser.
    site = Site(kind, tmp_path, cookie_expires=False, touch_interval=0)  # every read touches
    try:
        old = cookie_value(site.get(setter(n=1)))
        site.clock.advance(1)
        box = {}

        def reader(session):
            session.get("n")
            box["new"] = cookie_value(site.get(lambda s: s.regenerate_id(), cookie=old))
            return "ok"

        response = site.get(reader, cookie=old)
        assert set_cookies(response) == []
        assert site.get(dump, cookie=box["new"]).text == "[('n', 1)]"
        assert site.get(dump, cookie=old).text == "[]"
    finally:
        site.close()


def test_invalidate_then_write_gives_a_new_session_and_the_old_cookie_loads_nothing(site):
    old = cookie_value(site.get(setter(n=1)))
    new = cookie_value(site.get(lambda s: (s.invalidate(), setter(m=2)(s)), cookie=old))
    assert new != old
    assert site.get(dump, cookie=new).text == "[('m', 2)]"
    assert site.get(dump, cookie=old).text == "[]"


def test_invalidate_without_a_write_expires_the_cookie_and_the_old_cookie_loads_nothing(site):
    old = cookie_value(site.get(setter(n=1)))
    [header] = set_cookies(site.get(lambda s: s.invalidate(), cookie=old))
    assert is_expiring(header)
    assert site.get(dump, cookie=old).text == "[]"


def test_delete_of_a_session_the_client_never_had_sends_an_expiring_cookie(site):
    [header] = set_cookies(site.get(lambda s: s.delete()))
    assert is_expiring(header)


@pytest.mark.parametrize("logout", ["delete", "invalidate"])
def test_log_out_then_flash_goodbye_starts_a_new_session_that_shows_it_once(site, logout):
    old = cookie_value(site.get(setter(user="ann")))
    response = site.get(lambda s: (getattr(s, logout)(), s.flash("goodbye")), cookie=old)
    new = cookie_value(response)
    assert new not in (old, "")
    assert site.get(lambda s: (s.pop_flash(), dump(s)), cookie=new).text == str((["goodbye"], "[]"))
    assert site.get(lambda s: s.pop_flash(), cookie=new).text == "[]"
    assert site.get(dump, cookie=old).text == "[]"


def test_delete_after_regenerate_in_one_request_removes_both_ids(site):
    old = cookie_value(site.get(setter(n=1)))
    [header] = set_cookies(site.get(lambda s: (s.regenerate_id(), s.delete()), cookie=old))
    assert is_expiring(header)
    assert site.get(dump, cookie=old).text == "[]"


# ------------------------------------------------------------ saving


def test_new_session_saved_empty_is_created_with_its_cookie(site):
    value = cookie_value(site.get(lambda s: s.save()))
    session_id = site.mw.service.open_cookie(value)[0]
    assert isinstance(site.mw.store.load(core.store_key(session_id)), StoredRecord)
    response = site.get(lambda s: s.is_new, cookie=value)
    assert response.text == "False"


def test_nested_mutation_is_written_on_save(site):
    value = cookie_value(site.get(setter(cart=[1])))
    site.get(lambda s: (s["cart"].append(2), s.save()), cookie=value)
    site.get(lambda s: (s.get("cart").append(3), s.save()), cookie=value)
    assert site.get(dump, cookie=value).text == "[('cart', [1, 2, 3])]"


def test_nested_mutation_without_save_is_written_with_auto(kind, tmp_path):
    site = Site(kind, tmp_path, auto=True)
    try:
        value = cookie_value(site.get(setter(cart={"a": [1]})))
        site.get(lambda s: s["cart"]["a"].append(2), cookie=value)
        assert site.get(dump, cookie=value).text == "[('cart', {'a': [1, 2]})]"
    finally:
        site.close()


def test_a_change_without_save_is_not_written(site):
    value = cookie_value(site.get(setter(cart=[1])))
    response = site.get(lambda s: (s["cart"].append(2), s.__setitem__("x", 1)), cookie=value)
    assert set_cookies(response) == []
    assert site.get(dump, cookie=value).text == "[('cart', [1])]"


class Counting:
    """Wraps a store's methods, counting every call by name."""

    NAMES = ("load", "create", "cas", "touch", "delete", "rotate", "locked_update", "locked_rotate")

    def __init__(self, store):
        self.calls: list = []
        for name in self.NAMES:
            original = getattr(store, name, None)
            if original is None:
                continue

            def wrapped(*args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(*args, **kwargs)

            setattr(store, name, wrapped)

    def writes(self):
        return [c for c in self.calls if c != "load"]


def test_untouched_and_read_only_requests_write_nothing(site):
    value = cookie_value(site.get(setter(n=1, cart=[1])))
    counting = Counting(site.mw.store)
    assert set_cookies(site.get(None, cookie=value)) == []
    assert counting.calls == []
    assert set_cookies(site.get(lambda s: (s["cart"], s.items(), s.save())[0], cookie=value)) == []
    assert counting.writes() == []
    assert set_cookies(site.get(lambda s: (s.read_only(), setter(n=2)(s)), cookie=value)) == []
    assert counting.writes() == []
    assert site.get(dump, cookie=value).text == "[('cart', [1]), ('n', 1)]"


def test_nothing_is_saved_on_a_5xx_response_unless_save_on_error(kind, tmp_path):
    site = Site(kind, tmp_path)
    try:
        value = cookie_value(site.get(setter(n=1)))
        response = site.get(setter(n=2), cookie=value, status="503 Busy", expect_errors=True)
        assert set_cookies(response) == []
        response = site.get(setter(n=2), status="500 Oops", expect_errors=True)
        assert set_cookies(response) == []
        response = site.get(lambda s: s.delete(), cookie=value, status="500 Oops", expect_errors=True)
        assert set_cookies(response) == []
        assert site.get(dump, cookie=value).text == "[('n', 1)]"
    finally:
        site.close()
    site = Site(kind, tmp_path, save_on_error=True)
    try:
        value = cookie_value(site.get(setter(n=1), status="500 Oops", expect_errors=True))
        assert site.get(dump, cookie=value).text == "[('n', 1)]"
    finally:
        site.close()


# ------------------------------------------------------------ timeouts


def test_touch_slides_expiry_without_a_write_and_resends_a_persistent_cookie(kind, tmp_path):
    needs_time_travel(kind)
    site = Site(kind, tmp_path, cookie_expires=False)
    try:
        value = cookie_value(site.get(setter(n=1)))
        session_id = site.mw.service.open_cookie(value)[0]
        before = site.mw.store.load(core.store_key(session_id))
        site.clock.advance(30)
        assert set_cookies(site.get(dump, cookie=value)) == []  # within touch_interval (60 s)
        site.clock.advance(40)
        counting = Counting(site.mw.store)
        response = site.get(dump, cookie=value)
        assert counting.writes() == ["touch"]
        assert cookie_value(response) == value
        after = site.mw.store.load(core.store_key(session_id))
        assert after.version == before.version and after.blob == before.blob
        assert after.last_access == pytest.approx(site.clock.now, abs=1e-3)
        for _ in range(12):  # 12 x 70 s, far more than the timeout: it slides
            site.clock.advance(70)
            assert site.get(dump, cookie=value).text == "[('n', 1)]"
    finally:
        site.close()


def test_max_age_wins_over_cookie_expires_on_touch(kind, tmp_path):
    site = Site(kind, tmp_path, cookie_expires=True, max_age=3600, touch_interval=0)  # every read touches
    try:
        value = cookie_value(site.get(setter(n=1)))
        site.clock.advance(1)
        [header] = set_cookies(site.get(dump, cookie=value))
        assert "Max-Age=3600" in header
    finally:
        site.close()


def test_browser_session_cookie_is_not_resent_on_touch(kind, tmp_path):
    site = Site(kind, tmp_path, touch_interval=0)  # every read touches
    try:
        value = cookie_value(site.get(setter(n=1)))
        site.clock.advance(1)
        counting = Counting(site.mw.store)
        assert set_cookies(site.get(dump, cookie=value)) == []
        assert counting.writes() == ["touch"]
    finally:
        site.close()


# ------------------------------------------------------------ concurrency, interleaved


def concurrent(site, cookie, inner, outer_before, outer_after):
    """A request that loads, lets another request (inner) run to completion, then acts."""

    def action(session):
        outer_before(session)
        site.get(inner, cookie=cookie)
        return outer_after(session)

    return action


@pytest.mark.parametrize("on_conflict", ["merge", "raise"])
@pytest.mark.parametrize("persistent", [False, True], ids=["browser-cookie", "persistent-cookie"])
def test_save_after_a_concurrent_delete_writes_nothing_and_expires_the_cookie(kind, tmp_path, on_conflict, persistent):
    site = Site(kind, tmp_path, on_conflict=on_conflict, cookie_expires=not persistent)
    try:
        value = cookie_value(site.get(setter(n=1)))
        action = concurrent(site, value, lambda s: s.delete(), lambda s: s.get("n"), setter(n=2, m=2))
        [header] = set_cookies(site.get(action, cookie=value))
        assert is_expiring(header)
        assert "save_gone" in site.events
        session_id = site.mw.service.open_cookie(value)[0]
        assert site.mw.store.load(core.store_key(session_id)) is None
        assert site.get(dump, cookie=value).text == "[]"
    finally:
        site.close()


def test_different_keys_changed_concurrently_both_land(site):
    value = cookie_value(site.get(setter(n=1, gone=1)))
    response = site.get(
        concurrent(site, value, setter(b=2), lambda s: s.get("n"),
                   lambda s: (s.pop("gone"), setter(a=1)(s))),
        cookie=value,
    )
    assert response.status_int == 200
    assert site.get(dump, cookie=value).text == "[('a', 1), ('b', 2), ('n', 1)]"
    assert "conflict_merged" in site.events


def test_same_key_changed_concurrently_is_last_writer_wins(site):
    value = cookie_value(site.get(setter(n=1)))
    site.get(concurrent(site, value, setter(n=2), lambda s: s.get("n"), setter(n=3)), cookie=value)
    assert site.get(dump, cookie=value).text == "[('n', 3)]"


def test_same_key_changed_concurrently_raises_with_on_conflict_raise(kind, tmp_path):
    site = Site(kind, tmp_path, on_conflict="raise")
    try:
        value = cookie_value(site.get(setter(n=1, m=1)))
        with pytest.raises(ConflictError):
            site.get(concurrent(site, value, setter(n=2), lambda s: s.get("n"), setter(n=3)), cookie=value)
        assert site.get(dump, cookie=value).text == "[('m', 1), ('n', 2)]"
        site.get(concurrent(site, value, setter(m=2), lambda s: s.get("n"), setter(n=3)), cookie=value)
        assert site.get(dump, cookie=value).text == "[('m', 2), ('n', 3)]"
    finally:
        site.close()


def test_flash_messages_are_never_lost_or_shown_twice_under_concurrency(site):
    value = cookie_value(site.get(lambda s: s.flash("one")))
    shown = []
    site.get(
        concurrent(site, value, lambda s: s.flash("two"), lambda s: shown.extend(s.pop_flash()), lambda s: None),
        cookie=value,
    )
    site.get(lambda s: shown.extend(s.pop_flash()), cookie=value)
    assert sorted(shown) == ["one", "two"]
    site.get(lambda s: shown.extend(s.pop_flash()), cookie=value)
    assert sorted(shown) == ["one", "two"]


def test_regenerate_id_keeps_a_concurrent_change(site):
    value = cookie_value(site.get(setter(n=1)))
    response = site.get(
        concurrent(site, value, setter(b=2), lambda s: s.get("n"), lambda s: s.regenerate_id()), cookie=value,
    )
    new = cookie_value(response)
    assert site.get(dump, cookie=new).text == "[('b', 2), ('n', 1)]"


# ------------------------------------------------------------ when the write happens


def serve(mw, cookie=None, on_first_byte=None):
    """A WSGI server's loop: start_response, then the body chunk by chunk, then close."""
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_NAME": "example.com", "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "example.com", "wsgi.version": (1, 0), "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    if cookie:
        environ["HTTP_COOKIE"] = f"session={cookie}"
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["headers"] = headers
        return lambda data: None

    result = mw(environ, start_response)
    chunks = []
    try:
        for chunk in result:
            if not chunks and on_first_byte is not None:
                on_first_byte()
            chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    cookies = [v for k, v in seen["headers"] if k == "Set-Cookie" and v.startswith("session=")]
    return b"".join(chunks), cookies


def test_session_is_stored_before_the_first_body_byte(site):
    sessions, stored = [], []

    def app(environ, start_response):
        session = environ["beaker.session"]
        sessions.append(session)
        session["n"] = 1
        session.save()
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        yield b"second"

    site.mw.app = app
    body, cookies = serve(site.mw, on_first_byte=lambda: stored.append(
        site.mw.store.load(core.store_key(sessions[0].id))
    ))
    assert body == b"firstsecond" and len(cookies) == 1
    assert isinstance(stored[0], StoredRecord)


def test_change_made_while_streaming_is_written_at_close(site):
    value = cookie_value(site.get(setter(n=1)))

    def app(environ, start_response):
        session = environ["beaker.session"]
        session.get("n")
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        session["late"] = 2
        session["cart"] = [1]
        session.save()
        yield b"b"

    mw = site.build()
    mw.app = app
    body, cookies = serve(mw, cookie=value)
    assert body == b"ab"
    assert site.get(dump, cookie=value).text == "[('cart', [1]), ('late', 2), ('n', 1)]"


def test_regenerate_or_delete_while_streaming_is_dropped(site):
    value = cookie_value(site.get(setter(n=1)))
    for late in (lambda s: s.regenerate_id(), lambda s: s.delete(), lambda s: s.invalidate()):
        site.events.clear()

        def app(environ, start_response, late=late):
            session = environ["beaker.session"]
            session.get("n")
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"a"
            late(session)

        mw = site.build(on_event=lambda name, **fields: site.events.append(name))
        mw.app = app
        serve(mw, cookie=value)
        assert "write_dropped" in site.events
        assert site.get(dump, cookie=value).text == "[('n', 1)]"


# ------------------------------------------------------------ cookie-only sessions


@pytest.fixture
def cookie_site(tmp_path):
    made = Site("cookie", tmp_path)
    yield made
    made.close()


def test_cookie_session_delete_sends_an_expiring_cookie_even_for_a_session_the_client_never_had(cookie_site):
    [header] = set_cookies(cookie_site.get(lambda s: s.delete()))
    assert is_expiring(header)
    value = cookie_value(cookie_site.get(setter(n=1)))
    [header] = set_cookies(cookie_site.get(lambda s: s.delete(), cookie=value))
    assert is_expiring(header)


def test_cookie_session_saved_empty_is_issued(cookie_site):
    value = cookie_value(cookie_site.get(lambda s: s.save()))
    assert cookie_site.get(lambda s: s.is_new, cookie=value).text == "False"


def test_cookie_session_untouched_or_read_gets_no_cookie(cookie_site):
    value = cookie_value(cookie_site.get(setter(n=1, cart=[1])))
    assert set_cookies(cookie_site.get(None, cookie=value)) == []
    assert set_cookies(cookie_site.get(lambda s: (s["cart"], s.save())[0], cookie=value)) == []
    assert set_cookies(cookie_site.get(lambda s: (s.read_only(), setter(n=2)(s)), cookie=value)) == []
    assert set_cookies(cookie_site.get(setter(n=2), cookie=value, status="500 Oops", expect_errors=True)) == []


def test_cookie_session_nested_mutation_is_resealed(cookie_site):
    value = cookie_value(cookie_site.get(setter(cart=[1])))
    value = cookie_value(cookie_site.get(lambda s: (s["cart"].append(2), s.save()), cookie=value))
    assert cookie_site.get(dump, cookie=value).text == "[('cart', [1, 2])]"


def test_cookie_session_regenerate_id_alone_reseals_with_a_new_id(cookie_site):
    value = cookie_value(cookie_site.get(setter(n=1)))
    ids = []
    new = cookie_value(cookie_site.get(lambda s: (ids.append(s.id), s.regenerate_id(), ids.append(s.id)), cookie=value))
    assert new != value and ids[0] != ids[1]
    assert cookie_site.get(lambda s: (s.id == ids[1], dump(s)), cookie=new).text == str((True, "[('n', 1)]"))


def test_cookie_session_touch_reseals_a_persistent_cookie_and_expiry_slides(tmp_path):
    site = Site("cookie", tmp_path, cookie_expires=False)
    try:
        value = cookie_value(site.get(setter(n=1)))
        site.clock.advance(30)
        assert set_cookies(site.get(dump, cookie=value)) == []
        for _ in range(12):
            site.clock.advance(70)
            response = site.get(dump, cookie=value)
            assert response.text == "[('n', 1)]"
            value = cookie_value(response)
    finally:
        site.close()


def test_cookie_session_expired_is_never_adopted(cookie_site):
    value = cookie_value(cookie_site.get(setter(n=1)))
    cookie_site.clock.advance(601)
    response = cookie_site.get(dump, cookie=value)
    assert response.text == "[]" and set_cookies(response) == []


def test_absolute_timeout_ends_a_session_kept_alive_by_touches(kind, tmp_path):
    needs_time_travel(kind)
    site = Site(kind, tmp_path, absolute_timeout=1000)
    try:
        value = cookie_value(site.get(setter(n=1)))
        for _ in range(9):
            site.clock.advance(100)
            assert site.get(dump, cookie=value).text == "[('n', 1)]"
        site.clock.advance(101)
        response = site.get(dump, cookie=value)
        assert response.text == "[]" and set_cookies(response) == []
    finally:
        site.close()


def test_save_accessed_time_false_never_touches_so_timeout_counts_from_the_last_save(kind, tmp_path):
    needs_time_travel(kind)
    site = Site(kind, tmp_path, save_accessed_time=False, cookie_expires=False)
    try:
        value = cookie_value(site.get(setter(n=1)))
        counting = Counting(site.mw.store)
        site.clock.advance(500)
        assert set_cookies(site.get(dump, cookie=value)) == []
        assert counting.writes() == []
        site.clock.advance(101)
        assert site.get(dump, cookie=value).text == "[]"
    finally:
        site.close()


def test_regenerate_id_after_a_concurrent_logout_writes_nothing_and_expires_the_cookie(site):
    value = cookie_value(site.get(setter(n=1)))
    response = site.get(
        concurrent(site, value, lambda s: s.delete(), lambda s: s.get("n"), lambda s: s.regenerate_id()), cookie=value,
    )
    [header] = set_cookies(response)
    assert is_expiring(header)
    assert "save_gone" in site.events
    assert site.get(dump, cookie=value).text == "[]"
