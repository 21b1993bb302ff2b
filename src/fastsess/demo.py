"""A small demo site on the LMDB store: a visit counter, login and logout, flash messages.

Plain HTML, no external assets, one cookie. Run it with `fastsess demo`.
"""

from __future__ import annotations

import html
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from .wsgi import SessionMiddleware

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fastsess demo</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 36rem; margin: 3rem auto; padding: 0 1rem; }}
.flash {{ background: #eef6ee; border-left: 4px solid #3a3; padding: .5rem 1rem; }}
.count {{ font-size: 3rem; margin: .5rem 0; }}
form {{ margin: 1rem 0; }}
</style></head><body>
<h1>fastsess demo</h1>
{flashes}
<p>You have loaded this page</p>
<p class="count" id="count">{count}</p>
<p>times in this session.</p>
{account}
<p><small>Session store: LMDB in <code>{data_dir}</code>.</small></p>
</body></html>
"""

_LOGIN = """<form method="post" action="/login">
<input type="hidden" name="csrf" value="{csrf}">
<label>Name <input name="name" required maxlength="40"></label>
<button type="submit">Log in</button>
</form>"""

_LOGOUT = """<p>Logged in as <strong id="user">{user}</strong>.</p>
<form method="post" action="/logout">
<input type="hidden" name="csrf" value="{csrf}">
<button type="submit">Log out</button>
</form>"""


def demo_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """The demo's pages; the session comes from SessionMiddleware."""
    session = environ["beaker.session"]
    path = environ.get("PATH_INFO", "/")
    method = environ.get("REQUEST_METHOD", "GET")

    if method == "POST" and path in ("/login", "/logout"):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        form = parse_qs(environ["wsgi.input"].read(min(length, 4096)).decode("utf-8", "replace"))
        if not session.check_csrf_token(form.get("csrf", [""])[0]):
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Invalid form token: reload the page and try again.\n"]
        if path == "/login":
            name = form.get("name", [""])[0].strip()[:40] or "guest"
            session.regenerate_id()  # a new id at every change of privilege
            session["user"] = name
            session.flash(f"Welcome, {name}!")
        else:
            user = session.get("user")
            session.invalidate()
            session.flash(f"Goodbye, {user}." if user else "Logged out.")
        session.save()
        start_response("303 See Other", [("Location", "/"), ("Content-Type", "text/plain")])
        return [b""]

    if path != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Not found\n"]

    session["count"] = session.get("count", 0) + 1
    session.save()
    flashes = "".join(f'<p class="flash">{html.escape(str(m))}</p>' for m in session.pop_flash())
    csrf = session.csrf_token_for_form()
    user = session.get("user")
    account = _LOGOUT.format(user=html.escape(user), csrf=csrf) if user else _LOGIN.format(csrf=csrf)
    body = _PAGE.format(
        flashes=flashes, count=session["count"], account=account,
        data_dir=html.escape(environ.get("fastsess.demo_dir", "")),
    ).encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def _demo_secret(data_dir: str) -> str:
    """A random secret kept beside the demo's sessions, so restarts keep everyone logged in."""
    path = os.path.join(data_dir, "demo-secret")
    try:
        with open(path, encoding="ascii") as f:
            secret = f.read().strip()
        if len(secret) >= 32:
            return secret
    except OSError:
        pass
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret)
    return secret


def make_demo_app(data_dir: str | None = None) -> SessionMiddleware:
    """The demo wrapped in SessionMiddleware on the LMDB store (secure = auto: it is local)."""
    data_dir = data_dir or os.path.join(tempfile.gettempdir(), "fastsess-demo")
    os.makedirs(data_dir, exist_ok=True)
    app = SessionMiddleware(
        demo_app,
        {
            "session.type": "lmdb",
            "session.data_dir": os.path.join(data_dir, "sessions"),
            "session.secret": _demo_secret(data_dir),
            "session.timeout": 3600,
            "session.secure": "auto",
        },
    )

    def with_dir(environ: dict, start_response: Callable) -> Iterable[bytes]:
        environ["fastsess.demo_dir"] = data_dir
        return app(environ, start_response)

    with_dir.session_middleware = app  # type: ignore[attr-defined]
    return with_dir  # type: ignore[return-value]
