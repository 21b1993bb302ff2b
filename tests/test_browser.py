"""SPEC 3 "Cookies" and SPEC 7 as users meet them: gunicorn serving fastsess to a real headless Chromium.

Each test starts gunicorn on tests/browser_app.py with the options under test
and drives it with Chromium (tests/browser.py); raw HTTP (http.client) checks
the exact headers where a browser would hide them. What the browser holds is
read through the DevTools protocol, whatever page it shows.
"""

from __future__ import annotations

import http.cookies
import re
import urllib.parse
from email.utils import formatdate, parsedate_to_datetime

import pytest
import webtest

from browser import (
    PUBLIC_HOST,
    Site,
    browser_cookies,
    chromium,
    clear_cookies,
    header_values,
    page_json,
    request,
)
from browser_app import SECRET
from fastsess import ConfigError, SessionMiddleware

pytestmark = [pytest.mark.servers, pytest.mark.slow]

EPOCH_EXPIRES = "Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def chrome(browser):
    """The module's Chromium, holding no cookie."""
    clear_cookies(browser)
    return browser


@pytest.fixture
def site(tmp_path):
    """Starts gunicorn on browser_app with the given options (timeout 600 unless given); stops it after."""
    started: list[Site] = []

    def start(workers: int = 1, tls: bool = False, **options) -> Site:
        directory = tmp_path / f"site{len(started)}"
        directory.mkdir()
        running = Site({"timeout": 600, **options}, directory, workers, tls).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def lmdb(tmp_path, **options) -> dict:
    """The demo's store: LMDB under tmp_path."""
    return {"type": "lmdb", "data_dir": str(tmp_path / "lmdb"), **options}


MODES = {
    "lmdb": lambda tmp_path: lmdb(tmp_path),
    "cookie-signed": lambda tmp_path: {"type": "cookie"},
    "cookie-encrypted": lambda tmp_path: {"type": "cookie", "cookie_mode": "encrypted"},
}


def visit(driver, site: Site, path: str, host: str = "127.0.0.1") -> dict:
    driver.get(site.url(path, host))
    return page_json(driver)


def session_cookies(driver, name: str = "session") -> list[dict]:
    return [c for c in browser_cookies(driver) if c["name"] == name]


def session_value(driver, name: str = "session") -> str:
    [cookie] = session_cookies(driver, name)
    return cookie["value"]


def on_the_wire(text: str) -> str:
    """What a WSGI server makes of `text` sent as UTF-8 in a header: header bytes are decoded as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def plant(driver, site: Site, value: str, path: str = "/", name: str = "session", host: str = "127.0.0.1") -> None:
    """Makes the browser hold `name=value` on `path`, as if a server had set it (UTF-8, as browsers store it)."""
    query = urllib.parse.urlencode({"name": name, "value": on_the_wire(value), "path": path})
    driver.get(site.url(f"/plant?{query}", host))


def flip(value: str, index: int) -> str:
    """The value with one base64url character changed."""
    return value[:index] + ("A" if value[index] != "A" else "B") + value[index + 1 :]


def sent_cookie_header(driver, site: Site, path: str = "/echo") -> str | None:
    """The Cookie header the browser sends for `path`."""
    return visit(driver, site, path)["cookie"]


# ---------------------------------------------------------------- attributes


def test_chromium_keeps_the_default_cookie_and_sends_it_back(chrome, site, tmp_path):
    # Defaults: Secure (kept over http://127.0.0.1, a secure context), HttpOnly,
    # SameSite=Lax, Path=/, host-only, a browser-session cookie.
    running = site(**lmdb(tmp_path))
    assert [visit(chrome, running, "/inc")["n"] for _ in range(3)] == [1, 2, 3]
    [cookie] = session_cookies(chrome)
    assert cookie["secure"] and cookie["httpOnly"] and cookie["session"]
    assert (cookie["sameSite"], cookie["path"], cookie["domain"]) == ("Lax", "/", "127.0.0.1")


def _morsel(value: str, **attributes) -> str:
    cookie = http.cookies.SimpleCookie()
    cookie["session"] = value
    for key, attr in attributes.items():
        cookie["session"][key.replace("_", "-")] = attr
    return cookie["session"].OutputString()


def test_set_cookie_through_gunicorn_is_spelled_as_morsel_spells_it(site, tmp_path):
    running = site(**lmdb(tmp_path, cookie_domain=".example.test", samesite="Strict", max_age=120))
    status, headers, _ = request(running.port, "/inc", host=PUBLIC_HOST)
    assert status == 200
    [header] = header_values(headers, "Set-Cookie")
    value = header.split(";", 1)[0].split("=", 1)[1]
    expires = re.search(r"expires=([^;]+)", header).group(1)
    assert formatdate(parsedate_to_datetime(expires).timestamp(), usegmt=True) == expires
    assert header == _morsel(
        value, domain=".example.test", expires=expires, httponly=True, max_age=120, path="/",
        samesite="Strict", secure=True,
    )
    assert header_values(headers, "Vary") == ["Cookie"]
    assert header_values(headers, "Cache-Control") == ["private, no-store"]

    status, headers, _ = request(running.port, "/logout", [("Cookie", f"session={value}")], host=PUBLIC_HOST)
    [header] = header_values(headers, "Set-Cookie")
    name_value, attributes = header.split("; ", 1)
    assert name_value == "session="  # Morsel would quote the empty value; browsers read both alike
    assert attributes == _morsel(
        "x", domain=".example.test", expires=EPOCH_EXPIRES, httponly=True, max_age=0, path="/",
        samesite="Strict", secure=True,
    ).split("; ", 1)[1]


@pytest.mark.parametrize(
    "options, expected",
    [
        pytest.param({"key": "__Host-session"}, {"secure": True}, id="host-prefix"),
        pytest.param({"key": "__Secure-session"}, {"secure": True}, id="secure-prefix"),
        pytest.param({"samesite": "None"}, {"sameSite": "None", "secure": True}, id="samesite-none"),
        pytest.param({"partitioned": "true"}, {"secure": True}, id="partitioned"),
        pytest.param({"samesite": "Strict", "cookie_expires": 3600}, {"sameSite": "Strict", "session": False},
                     id="strict-persistent"),
        pytest.param({"max_age": 120}, {"session": False}, id="max-age"),
        pytest.param({"secure": "auto"}, {"secure": False}, id="secure-auto-over-http"),
        pytest.param({"secure": "false", "httponly": "false"}, {"secure": False, "httponly": False},
                     id="neither-secure-nor-httponly"),
    ],
)
def test_chromium_keeps_the_cookie_every_accepted_configuration_sets(chrome, site, tmp_path, options, expected):
    running = site(**lmdb(tmp_path, **options))
    name = options.get("key", "session")
    assert [visit(chrome, running, "/inc")["n"] for _ in range(2)] == [1, 2]  # the cookie came back
    [cookie] = session_cookies(chrome, name)
    assert {k: cookie[k.replace("httponly", "httpOnly")] for k in expected} == expected


#: cookies Chromium drops, planted as a server would set them, and the options that would set them
DROPPED = {
    "host-prefix-in-lower-case": ("__host-session", "v", "/", {"key": "__host-session", "secure": "false"}),
    "secure-prefix-in-upper-case": ("__SECURE-s", "v", "/", {"key": "__SECURE-s", "secure": "auto"}),
    "host-prefix-with-a-path": ("__Host-session", "v; Secure", "/app", {"key": "__Host-session", "cookie_path": "/app"}),
    "partitioned-without-secure": ("p", "v; Partitioned", "/", {"partitioned": "true", "secure": "auto"}),
    "samesite-none-without-secure": ("s", "v; SameSite=None", "/", {"samesite": "None", "secure": "false"}),
}


def test_what_chromium_drops_the_configuration_refuses(chrome, site):
    running = site(type="memory")
    for kind, (name, value, path, options) in DROPPED.items():
        plant(chrome, running, value, path, name)  # over http://127.0.0.1, where Secure cookies are kept
        assert browser_cookies(chrome) == [], kind
        with pytest.raises(ConfigError):
            SessionMiddleware(lambda environ, start_response: [], type="memory", secret=SECRET, timeout=60, **options)


# ---------------------------------------------------------------- secure = true / false / auto


def test_secure_auto_behind_gunicorn_follows_the_forwarded_scheme(site):
    # gunicorn trusts forwarded headers from 127.0.0.1 and sets wsgi.url_scheme from them.
    running = site(type="memory", secure="auto")
    for forwarded, secure in [
        ([], False),
        ([("X-Forwarded-Proto", "https")], True),
        ([("X-Forwarded-Ssl", "on")], True),
        ([("X-Forwarded-Proto", "http")], False),
    ]:
        _, headers, _ = request(running.port, "/inc", forwarded, host=PUBLIC_HOST)
        [header] = header_values(headers, "Set-Cookie")
        assert header.endswith("; Secure") is secure, (forwarded, header)


def test_secure_cookie_for_a_public_host_over_plain_http_is_dropped_by_chromium_and_warned_once(chrome, site):
    running = site(type="memory")
    # Behind a TLS proxy that says so, nothing is wrong.
    request(running.port, "/inc", [("X-Forwarded-Proto", "https")], host=PUBLIC_HOST)
    assert running.events().get("insecure_cookie") is None
    # Plain HTTP to a public name: the browser drops the Secure cookie every time.
    assert [visit(chrome, running, "/inc", PUBLIC_HOST)["n"] for _ in range(3)] == [1, 1, 1]
    assert browser_cookies(chrome) == []
    assert running.events()["insecure_cookie"] == 1
    assert running.log().count("insecure_cookie") == 1  # what the operator reads: one line per process
    # Loopback is a secure context: the same Secure cookie works there, without a warning.
    assert [visit(chrome, running, "/inc", "app.localhost")["n"] for _ in range(2)] == [1, 2]
    assert running.events()["insecure_cookie"] == 1


def test_over_https_a_host_prefixed_secure_cookie_works_and_no_sibling_can_plant_one(chrome, site, tmp_path):
    running = site(tls=True, **lmdb(tmp_path, key="__Host-session"))
    assert [visit(chrome, running, "/inc", PUBLIC_HOST)["n"] for _ in range(2)] == [1, 2]
    [cookie] = session_cookies(chrome, "__Host-session")
    assert (cookie["secure"], cookie["domain"], cookie["path"]) == (True, PUBLIC_HOST, "/")
    # A sibling subdomain cannot plant a __Host- cookie for the whole domain (README, "Security").
    plant(chrome, running, "planted; Secure; Domain=.example.test", name="__Host-session", host="shop.example.test")
    assert [c["value"] for c in browser_cookies(chrome)] == [cookie["value"]]
    visit(chrome, running, "/login?user=ada", PUBLIC_HOST)
    assert session_value(chrome, "__Host-session") != cookie["value"]
    visit(chrome, running, "/logout", PUBLIC_HOST)
    assert browser_cookies(chrome) == []
    assert running.events().get("insecure_cookie") is None


def test_secure_auto_over_real_https_sets_a_secure_cookie(chrome, site):
    running = site(tls=True, type="memory", secure="auto")
    assert [visit(chrome, running, "/inc", PUBLIC_HOST)["n"] for _ in range(2)] == [1, 2]
    assert session_cookies(chrome)[0]["secure"] is True


def test_secure_false_cookie_works_on_a_public_host_over_plain_http(chrome, site):
    running = site(type="memory", secure="false")
    assert [visit(chrome, running, "/inc", PUBLIC_HOST)["n"] for _ in range(2)] == [1, 2]
    assert running.events().get("insecure_cookie") is None


# ---------------------------------------------------------------- cache headers


def test_cache_headers_as_gunicorn_sends_them(site):
    running = site(type="memory", secure="auto")
    cases = [
        # (the session: 0 untouched, 1 read, 2 written), the app's Vary and Cache-Control -> what is sent
        ("0", None, None, [], []),
        ("1", None, None, ["Cookie"], ["private"]),
        ("1", "Accept-Encoding", "max-age=60", ["Accept-Encoding, Cookie"], ["max-age=60"]),
        ("1", "*", None, ["*"], ["private"]),
        ("2", "accept-encoding, cookie", "public, max-age=60", ["accept-encoding, cookie"], ["private, no-store"]),
        ("2", None, "s-maxage=10", ["Cookie"], ["private, no-store"]),
        ("2", None, "no-cache", ["Cookie"], ["private, no-store"]),
    ]
    for touch, vary, cache_control, sent_vary, sent_cache_control in cases:
        query = {"touch": touch, **({"vary": vary} if vary else {}), **({"cache-control": cache_control} if cache_control else {})}
        _, headers, _ = request(running.port, "/headers?" + urllib.parse.urlencode(query))
        assert header_values(headers, "Vary") == sent_vary, query
        assert header_values(headers, "Cache-Control") == sent_cache_control, query
        assert len(header_values(headers, "Set-Cookie")) == (touch == "2"), query
    assert running.log().count("cache_control_overridden") == 2  # public and s-maxage, each logged


# ---------------------------------------------------------------- per-session domain and path


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_per_session_domain_and_path_reach_chromium_and_logout_expires_that_cookie(chrome, site, tmp_path, mode):
    running = site(**MODES[mode](tmp_path), secure="auto")
    www, sibling = PUBLIC_HOST, "shop.example.test"
    assert visit(chrome, running, "/app/scope?path=/app&domain=.example.test", www)["n"] == 1
    [cookie] = session_cookies(chrome)
    assert (cookie["domain"], cookie["path"]) == (".example.test", "/app")
    assert visit(chrome, running, "/app/inc", sibling)["n"] == 2  # a sibling subdomain shares it
    assert visit(chrome, running, "/read", sibling)["is_new"]  # outside its path, it is not sent
    visit(chrome, running, "/app/logout", sibling)
    assert browser_cookies(chrome) == []  # the expiring cookie carried the same Domain and Path
    assert visit(chrome, running, "/app/read", www)["n"] is None


# ---------------------------------------------------------------- several cookies of one name


def test_chromium_holding_several_session_cookies_uses_the_first_that_verifies(chrome, site, tmp_path):
    running = site(**lmdb(tmp_path, secure="auto"))
    visit(chrome, running, "/inc")
    assert visit(chrome, running, "/inc")["n"] == 2
    good = session_value(chrome)
    # A quoted value is what the browser sends as it was set: quotes included; one pair is stripped.
    plant(chrome, running, f'"{good}"')
    assert sent_cookie_header(chrome, running) == f'session="{good}"'
    assert visit(chrome, running, "/read")["n"] == 2
    plant(chrome, running, good)

    for bad in ["", "garbage", flip(good, 60), good[:40], '"' + good, "caf\u00e9", "x" * 4000]:
        plant(chrome, running, bad, "/app")
        # The longer path comes first: the rejected value is the first candidate.
        assert sent_cookie_header(chrome, running, "/app/echo") == f"session={on_the_wire(bad)}; session={good}"
        assert visit(chrome, running, "/app/read") == {"is_new": False, "n": 2, "user": None, "size": 0}, bad
        assert sorted(c["value"] for c in session_cookies(chrome)) == sorted([good, bad])  # nothing set

    # Only three candidates are verified: behind three bad ones, the good cookie is not reached.
    plant(chrome, running, "garbage", "/app")
    plant(chrome, running, good[:40], "/app/x")
    plant(chrome, running, "", "/app/x/y")
    assert sent_cookie_header(chrome, running, "/app/x/y/echo").count("session=") == 4
    assert visit(chrome, running, "/app/x/y/read")["is_new"]
    assert visit(chrome, running, "/app/x/read")["n"] == 2  # two bad ones, then the good one
    assert running.events().get("unknown_id") is None  # no rejected value reached the store


# ---------------------------------------------------------------- bad cookies


def _expired_cookie(tmp_path, mode: str) -> str:
    """A cookie issued with this site's secret in 2001, for a session that has long timed out."""
    def save(environ, start_response):
        environ["beaker.session"]["n"] = 5
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    issuer = SessionMiddleware(save, **{**MODES[mode](tmp_path / "issuer"), "secret": SECRET, "timeout": 600})
    issuer.service.clock = lambda: 1_000_000_000.0  # the store's own clock is irrelevant: it is not the site's
    response = webtest.TestApp(issuer, extra_environ={"wsgi.url_scheme": "https"}).get("/")
    issuer.close()
    return response.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_bad_cookie_in_chromium_gives_a_fresh_session_and_only_a_write_replaces_it(chrome, site, tmp_path, mode):
    running = site(**MODES[mode](tmp_path), secure="auto")
    visit(chrome, running, "/inc")
    good = session_value(chrome)
    bad_cookies = {
        "tampered": flip(good, 20),
        "truncated": good[:-5],
        "garbage": "not-a-session",
        "empty": "",
        "non-ascii": good[:-1] + "\u00e9",
        "quoted-garbage": '"garbage"',
        "long": "A" * 4000,  # near the longest Chromium keeps (4096 bytes, name plus value)
        "expired": _expired_cookie(tmp_path, mode),
    }
    for kind, bad in bad_cookies.items():
        plant(chrome, running, bad)
        assert visit(chrome, running, "/read") == {"is_new": True, "n": None, "user": None, "size": 0}, kind
        assert session_value(chrome) == bad, kind  # only read: nothing set, nothing expired
        assert visit(chrome, running, "/inc")["n"] == 1, kind
        assert session_value(chrome) not in (bad, good), kind  # the write replaced it
    assert running.events().get("invalid_cookie", 0) >= 1
    assert "Traceback" not in running.log()


# ---------------------------------------------------------------- login, logout


@pytest.mark.parametrize("mode", sorted(MODES))
def test_login_regenerates_the_id_and_logout_expires_the_cookie_in_chromium(chrome, site, tmp_path, mode):
    running = site(**MODES[mode](tmp_path), secure="auto", workers=2)
    visit(chrome, running, "/inc")
    before = session_value(chrome)
    assert visit(chrome, running, "/login?user=ada") == {"is_new": False, "n": 1, "user": "ada", "size": 0}
    logged_in = session_value(chrome)
    assert logged_in != before
    assert visit(chrome, running, "/inc")["user"] == "ada"
    logged_in = session_value(chrome)

    # A request still carrying the pre-login cookie sets no cookie over the login one.
    _, headers, body = request(running.port, "/read", [("Cookie", f"session={before}")])
    assert header_values(headers, "Set-Cookie") == []
    if mode == "lmdb":
        assert b'"user": null' in body and b'"n": null' in body  # the tombstone: empty and read-only

    visit(chrome, running, "/logout")
    assert browser_cookies(chrome) == []
    assert visit(chrome, running, "/read")["is_new"]

    _, headers, body = request(running.port, "/read", [("Cookie", f"session={logged_in}")])
    if mode == "lmdb":
        assert b'"is_new": true' in body and b'"user": null' in body  # the record is gone
    else:
        # SPEC 3: a cookie session's old value stays valid until its own expiry; only
        # the browser forgets it. That is why absolute_timeout always applies to them.
        assert b'"user": "ada"' in body


# ---------------------------------------------------------------- size


def test_a_cookie_session_up_to_4093_bytes_round_trips_through_chromium_and_one_more_is_refused(chrome, site):
    running = site(type="cookie", secure="auto")

    def status(size: int) -> int:
        return request(running.port, f"/big?size={size}")[0]

    low, high = 0, 4096  # a blob of `low` characters fits, one of `high` does not
    assert status(low) == 200 and status(high) == 500
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if status(middle) == 200 else (low, middle)

    assert visit(chrome, running, f"/big?size={low}")["size"] == low
    cookie = session_value(chrome)
    assert 4093 - 4 < len("session") + len(cookie) <= 4093  # base64 grows by 4 characters at most per step
    assert visit(chrome, running, "/read")["size"] == low  # the browser sent all of it back
    chrome.get(running.url(f"/big?size={high}"))  # SessionTooLarge: a 500, never a dropped cookie
    assert session_value(chrome) == cookie
    assert visit(chrome, running, "/read")["size"] == low
    assert "SessionTooLarge" in running.log()
    assert running.log().count("cookie_too_large") == 1  # the 2 KB warning, once per process
