"""A small site for the browser tests: fastsess behind gunicorn, driven by a real browser or raw HTTP.

gunicorn workers import this module and build `app` from the environment:

    FASTSESS_BROWSER_OPTIONS   the middleware's options, as JSON (session.* keys or plain names)

Routes (session routes answer {is_new, n, user, size}: what the session held, size being len(blob)):

    /inc                 n += 1; save
    /read                read n: a request that only reads
    /login?user=U        regenerate_id(); user = U; save
    /logout              delete()
    /scope?path=P&domain=D   set the session's own cookie path and domain; n += 1; save
    /big?size=N          blob = "x" * N; save
    /headers?vary=V&cache-control=C&touch=0|1|2   the application sets Vary and Cache-Control; touch 1 reads, 2 writes
    /plant?name=N&value=V&path=P   Set-Cookie of the test's own making, session untouched
    /echo                the Cookie header as the server got it, session untouched
    /stats               no session: this worker's pid and fastsess event counts

Only the last segment of a path counts (/app/inc is /inc): more cookie paths for the browser to hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from fastsess import SessionMiddleware

SECRET = "browser-test-secret-0123456789abcdefghij"


def _reply(start_response: Callable, body: dict, headers: list | None = None) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *(headers or [])])
    return [data]


def make_app(options: dict) -> Callable:
    def routes(environ: dict, start_response: Callable) -> Iterable[bytes]:
        session = environ["beaker.session"]
        path = "/" + environ.get("PATH_INFO", "/").rsplit("/", 1)[-1]  # /app/x/inc is /inc
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}
        if path == "/echo":
            return _reply(start_response, {"cookie": environ.get("HTTP_COOKIE")})
        if path == "/plant":
            cookie = f"{query['name']}={query['value']}; Path={query.get('path', '/')}"
            return _reply(start_response, {}, [("Set-Cookie", cookie)])
        if path == "/headers":
            headers = [(name.title(), query[name]) for name in ("vary", "cache-control") if name in query]
            touch = query.get("touch", "1")
            if touch == "2":
                session["n"] = session.get("n", 0) + 1
                session.save()
            elif touch == "1":
                session.get("n")
            return _reply(start_response, {}, headers)
        if path == "/inc":
            session["n"] = session.get("n", 0) + 1
            session.save()
        elif path == "/login":
            session.regenerate_id()
            session["user"] = query.get("user", "ada")
            session.save()
        elif path == "/logout":
            session.delete()
        elif path == "/scope":
            if "path" in query:
                session.path = query["path"]
            if "domain" in query:
                session.domain = query["domain"]
            session["n"] = session.get("n", 0) + 1
            session.save()
        elif path == "/big":
            session["blob"] = "x" * int(query["size"])
            session.save()
        elif path != "/read":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        return _reply(start_response, {
            "is_new": session.is_new, "n": session.get("n"), "user": session.get("user"),
            "size": len(session.get("blob", "")),
        })

    middleware = SessionMiddleware(routes, **{"secret": SECRET, **options})

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/stats":
            counts = dict(middleware.service.events.counts)
            return _reply(start_response, {"pid": os.getpid(), "events": counts})
        return middleware(environ, start_response)

    return app


if os.environ.get("FASTSESS_BROWSER_OPTIONS"):
    # `browser_app:app` for gunicorn: each worker imports this module and builds its own.
    app = make_app(json.loads(os.environ["FASTSESS_BROWSER_OPTIONS"]))
