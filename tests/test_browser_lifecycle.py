"""Session lifecycle in a real browser (headless Chromium through Selenium), against a threaded server.

WebTest checks the headers; this checks that a browser does with them what
SPEC 3 means: a persistent cookie's expiry slides as the session is touched,
regenerate_id() replaces the cookie, delete() removes it, and a slow request
that loaded the session before a login cannot put the old cookie back.
Skipped when Selenium, Chromium or chromedriver is missing.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from concurrency_app import ThreadedServer
from fastsess import SessionMiddleware

SECRET = "browser-test-secret-" + "b" * 24
WAIT = 10.0  # seconds a route waits for the other request of a race before giving up


def _chromium() -> tuple[str, str]:
    pytest.importorskip("selenium")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Chromium and chromedriver are needed for the browser tests")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


class SentThen:
    """A response body that calls `then` once the server has sent it (WSGI close())."""

    def __init__(self, result, then) -> None:
        self.result = result
        self.then = then

    def __iter__(self):
        return iter(self.result)

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()
        self.then()


class Site:
    """A threaded server for a scripted app; `race` lets a slow read and a login interleave."""

    def __init__(self, **options) -> None:
        self.loaded = threading.Event()  # the slow read has loaded the session
        self.rotated = threading.Event()  # the login response, its rotation stored, has been sent
        self.mw = SessionMiddleware(self.app, **{"type": "memory", "secret": SECRET, "timeout": 600, **options})
        self.server = ThreadedServer(self.outer, label="browser").start()
        self.base = f"http://127.0.0.1:{self.server.port}"

    def app(self, environ, start_response):
        session = environ["beaker.session"]
        path = environ["PATH_INFO"]
        if path == "/inc":
            session["n"] = session.get("n", 0) + 1
            session.save()
        elif path == "/login":
            self.loaded.wait(WAIT)
            session["user"] = "ann"
            session.regenerate_id()
        elif path == "/logout":
            session.delete()
        elif path == "/slow":
            session.get("n")
            self.loaded.set()
            self.rotated.wait(WAIT)
        body = repr(sorted(dict(session).items())).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def outer(self, environ, start_response):
        result = self.mw(environ, start_response)
        if environ["PATH_INFO"] == "/login":
            return SentThen(result, self.rotated.set)
        return result

    def stop(self) -> None:
        self.server.stop()
        self.mw.close()


@pytest.fixture
def site():
    made = Site(secure="false", cookie_expires=3600, touch_interval=0)  # every read slides the cookie
    yield made
    made.stop()


def body(browser) -> str:
    return browser.find_element("tag name", "body").text


def session_cookies(browser) -> list:
    return [c for c in browser.get_cookies() if c["name"] == "session"]


def test_regenerate_replaces_the_cookie_and_delete_removes_it(browser, site):
    browser.delete_all_cookies()
    browser.get(site.base + "/inc")
    browser.get(site.base + "/inc")
    [before] = session_cookies(browser)
    site.loaded.set()  # no slow read races this login
    browser.get(site.base + "/login")
    [after] = session_cookies(browser)
    assert after["value"] != before["value"]
    browser.get(site.base + "/read")
    assert body(browser) == "[('n', 2), ('user', 'ann')]"
    browser.get(site.base + "/logout")
    assert session_cookies(browser) == []
    browser.get(site.base + "/read")
    assert body(browser) == "[]"


def test_a_persistent_cookie_slides_when_the_session_is_touched(browser, site):
    browser.delete_all_cookies()
    browser.get(site.base + "/inc")
    [first] = session_cookies(browser)
    site.mw.service.clock = site.mw.store.clock = lambda: time.time() + 120  # two minutes later
    browser.get(site.base + "/read")
    [touched] = session_cookies(browser)
    assert touched["value"] == first["value"]
    assert touched["expiry"] >= first["expiry"] + 100


def test_a_slow_read_racing_a_login_cannot_put_the_old_cookie_back(browser, site):
    # The page fires a slow request, then logs in: the login's response comes first, and
    # the slow one, which loaded the session before the rotation, must not replace its cookie.
    browser.delete_all_cookies()
    browser.get(site.base + "/inc")
    [before] = session_cookies(browser)
    browser.set_script_timeout(2 * WAIT)
    done = browser.execute_async_script(
        """
        const finish = arguments[arguments.length - 1];
        const slow = fetch('/slow', {credentials: 'same-origin'}).then(r => r.text());
        const login = fetch('/login', {credentials: 'same-origin'}).then(r => r.text());
        Promise.all([slow, login]).then(finish, e => finish('failed: ' + e));
        """
    )
    assert not str(done).startswith("failed"), done
    [after] = session_cookies(browser)
    assert after["value"] != before["value"]
    browser.get(site.base + "/read")
    assert body(browser) == "[('n', 1), ('user', 'ann')]"
