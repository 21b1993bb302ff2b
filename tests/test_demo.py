"""`fastsess demo` serves a working site: a real HTTP client with a cookie jar sees it work."""

from __future__ import annotations

import http.cookiejar
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from loopback import free_port


@pytest.fixture
def demo(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastsess", "demo", "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"demo exited: {proc.stdout.read().decode()}")
                time.sleep(0.1)
        else:
            pytest.fail("demo did not start listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Browser:
    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, url: str):
        with self.opener.open(url, timeout=10) as response:
            return response, response.read().decode()

    def post(self, url: str, fields: dict):
        data = urllib.parse.urlencode(fields).encode()
        with self.opener.open(url, data=data, timeout=10) as response:
            return response, response.read().decode()

    def cookies(self) -> dict:
        return {c.name: c.value for c in self.jar}


def count(page: str) -> int:
    return int(re.search(r'id="count">(\d+)<', page).group(1))


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_demo_counter_goes_up_across_requests_with_one_cookie(demo):
    browser = Browser()
    counts = []
    for _ in range(3):
        response, page = browser.get(demo + "/")
        counts.append(count(page))
        assert len(response.headers.get_all("Set-Cookie") or []) <= 1
    assert counts == [1, 2, 3]
    assert list(browser.cookies()) == ["session"]


def test_demo_login_regenerates_id_and_logout_invalidates(demo):
    browser = Browser()
    _, page = browser.get(demo + "/")
    before = browser.cookies()["session"]
    _, page = browser.post(demo + "/login", {"name": "ada", "csrf": csrf(page)})
    assert "Welcome, ada!" in page
    assert 'id="user">ada<' in page
    after_login = browser.cookies()["session"]
    assert after_login != before
    assert count(page) == 2  # the data survived the new id

    stale = Browser()  # a parallel request still carrying the pre-login cookie
    stale.jar.set_cookie(http.cookiejar.Cookie(
        0, "session", before, None, False, "127.0.0.1", False, False, "/", True, False, None, True, None, None, {}
    ))
    response, page = stale.get(demo + "/")
    assert "ada" not in page
    assert response.headers.get_all("Set-Cookie") is None  # cannot overwrite the new login cookie

    _, page = browser.post(demo + "/logout", {"csrf": csrf(page_of(browser, demo))})
    assert "Goodbye, ada." in page
    assert "Log in" in page
    assert browser.cookies()["session"] not in (before, after_login)


def page_of(browser: Browser, demo: str) -> str:
    return browser.get(demo + "/")[1]


def test_demo_rejects_a_form_without_the_csrf_token(demo):
    browser = Browser()
    browser.get(demo + "/")
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        browser.post(demo + "/login", {"name": "mallory", "csrf": "forged"})
    assert excinfo.value.code == 403


def submit_and_wait(driver, text: str) -> str:
    """Click the page's form button and return the next page once it shows text.

    A click returns before the browser has loaded the page the form posts to.
    """
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element("css selector", "form button").click()
    WebDriverWait(driver, 30).until(lambda d: text in d.page_source)
    return driver.page_source


def test_demo_in_chromium_counts_logs_in_with_a_new_id_and_logs_out(demo):
    from browser import browser_cookies, chromium

    driver = chromium()

    def session_cookie() -> dict:
        [cookie] = browser_cookies(driver)  # the demo sets exactly one cookie
        assert cookie["name"] == "session"
        return cookie

    def replay(value: str) -> tuple[str, list]:
        """A parallel request still carrying an old cookie: its page and its Set-Cookie headers."""
        request = urllib.request.Request(demo + "/", headers={"Cookie": f"session={value}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode(), response.headers.get_all("Set-Cookie") or []

    try:
        for expected in (1, 2, 3):
            driver.get(demo + "/")
            assert count(driver.page_source) == expected
        cookie = session_cookie()
        # secure = auto over plain HTTP: no Secure, so the browser keeps it; HttpOnly, Lax, a session cookie
        assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"], cookie["session"]) == (False, True, "Lax", True)
        before = cookie["value"]

        driver.find_element("name", "name").send_keys("ada")
        page = submit_and_wait(driver, "Welcome, ada!")
        assert "Welcome, ada!" in page and 'id="user">ada<' in page
        assert count(page) == 4  # the data survived the new id
        logged_in = session_cookie()["value"]
        assert logged_in != before
        page, set_cookies = replay(before)
        assert "ada" not in page and set_cookies == []  # the tombstone cannot overwrite the login cookie

        page = submit_and_wait(driver, "Goodbye, ada.")
        assert "Goodbye, ada." in page and "Log in" in page
        assert session_cookie()["value"] not in (before, logged_in)
        page, _ = replay(logged_in)
        assert "ada" not in page and count(page) == 1  # the logged-in cookie is dead
    finally:
        driver.quit()
