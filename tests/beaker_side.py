"""What the Beaker compatibility tests share: cookies made by Beaker 1.14 itself, and two small fakes."""

from __future__ import annotations

import time

from beaker.middleware import SessionMiddleware as BeakerMiddleware
from webtest import TestApp

SECRET = "a-fastsess-secret-of-at-least-32-characters"
BEAKER_SECRET = "tg-quickstart"  # Beaker never required a length
HTTPS = {"wsgi.url_scheme": "https", "HTTP_HOST": "example.com"}
NAME = "beaker.session.id"


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """Wraps a store and counts the loads and creates the session asks of it (a forged cookie makes none)."""

    def __init__(self, store) -> None:
        self.store = store
        self.loads = 0
        self.creates = 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def load(self, key):
        self.loads += 1
        return self.store.load(key)

    def create(self, key, blob, expires_at):
        self.creates += 1
        return self.store.create(key, blob, expires_at)


def beaker_cookie(settings: dict, data: dict | None = None, path: str | None = None, seen: dict | None = None) -> str:
    """The value of the cookie session Beaker's middleware sets with these settings (type = cookie).

    data: the session's contents ({"user": "ada", "n": 1} by default); path: the
    session's own cookie path; seen: receives the session's id under "id".
    """

    def beaker_app(environ, start_response):
        session = environ["beaker.session"]
        session.update({"user": "ada", "n": 1} if data is None else data)
        if path is not None:
            session.path = path
        if seen is not None:
            seen["id"] = session.id
        session.save()
        start_response("200 OK", [])
        return [b""]

    header = TestApp(BeakerMiddleware(beaker_app, settings)).get("/").headers["Set-Cookie"]
    return header.split(";")[0].split("=", 1)[1]


def quickstart_cookie_settings(**options) -> dict:
    """TurboGears' quickstart cookie session: signed zlib-compressed JSON, one string as secret and validate_key."""
    settings = {
        "session.type": "cookie", "session.validate_key": BEAKER_SECRET, "session.secret": BEAKER_SECRET,
        "session.data_serializer": "json",
    }
    settings.update({f"session.{k}": v for k, v in options.items()})
    return settings
