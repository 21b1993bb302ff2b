"""SessionMiddleware: puts a lazy session in the environ and persists it before the body is sent.

The application's start_response is recorded, not forwarded. Once the
application has returned its iterable (and, for a generator, produced its
first chunk), the session is written, the cookie and cache headers are
decided, and only then does the server get start_response and the first
byte. A client can therefore never see a response before its session is
stored. Changes made while a generator streams are written, best effort,
when the iterable is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import timezone
from typing import Any

from . import core
from .config import FAR_FUTURE, Config, load_config
from .errors import SessionTooLarge
from .session import EXPIRE_COOKIE, MAX_COOKIE_BYTES, SET_COOKIE, Session, SessionService
from .stores import open_store

log = logging.getLogger("fastsess")

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_insecure_warned = False  # the plain-HTTP warning is logged once per process


def _warn_insecure_once() -> bool:
    global _insecure_warned
    first, _insecure_warned = not _insecure_warned, True
    return first


def _host_name(environ: dict) -> str:
    """The request's host without port or IPv6 brackets."""
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0]


class SessionMiddleware:
    """WSGI middleware offering `environ["beaker.session"]`, configured like Beaker's."""

    def __init__(
        self,
        wrap_app: Callable,
        config: Mapping[str, Any] | None = None,
        environ_key: str = "beaker.session",
        **kwargs: Any,
    ) -> None:
        self.wrap_app = self.app = wrap_app
        self.config: Config = load_config(config, **kwargs)
        self.environ_key = environ_key
        self.store = open_store(self.config)
        self.service = SessionService(self.config, self.store)
        self._bound_get_session = self.get_session  # one bound method, not one per request
        self._webtest_varname = self.config.webtest_varname or None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        session = Session(self.service, environ.get("HTTP_COOKIE"))
        environ["fastsess.session"] = environ[self.environ_key] = session
        environ["beaker.get_session"] = self._bound_get_session
        if self._webtest_varname is not None or "fastsess.no_touch" in environ:
            self._request_options(environ, session)
        response = _Response(self, environ, session, start_response)
        return response.finish(self.app(environ, response.start_response))

    def _request_options(self, environ: dict, session: Session) -> None:
        """What a request may ask beyond the default: no touch, or WebTest's view of the session."""
        if environ.get("fastsess.no_touch"):
            session.read_only()
        if self._webtest_varname is not None and "paste.testing_variables" in environ:
            environ["paste.testing_variables"][self._webtest_varname] = session

    def get_session(self, session_id: str | None = None) -> Session:
        """The session stored under session_id, or a new unsaved one; its save() writes at once."""
        return Session(self.service, session_id=session_id, detached=True)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # -------------------------------------------------- headers

    def cookie_header(self, session: Session, environ: dict) -> str | None:
        """The Set-Cookie value persist decided on, or None."""
        s = session._sess
        if s is None or s.cookie_action is None or not self.config.use_cookies or session._detached:
            return None
        cfg = self.config
        secure = cfg.secure
        if secure == "auto":
            secure = environ.get("wsgi.url_scheme") == "https"
        elif secure and not _insecure_warned and environ.get("wsgi.url_scheme") != "https":
            if _host_name(environ) not in _LOOPBACK_HOSTS:
                _warn_insecure_once()
                self.service.events.emit(
                    "insecure_cookie",
                    message="secure cookie set on a plain-HTTP request: browsers will drop it "
                    "(serve over HTTPS, or set session.secure = auto)",
                )
        domain = s.domain if s.domain is not None else cfg.cookie_domain
        path = s.path if s.path is not None else cfg.cookie_path
        if s.cookie_action == EXPIRE_COOKIE:
            value, expires, max_age = "", 0, 0
        else:
            value = s.sealed if self.service.cookie_only else self.service.sign(s.id)
            expires, max_age = self._expiry(session)
        header = core.build_set_cookie(
            cfg.cookie_name, value, path=path, domain=domain, expires=expires, max_age=max_age,
            secure=bool(secure), httponly=cfg.httponly, samesite=cfg.samesite, partitioned=cfg.partitioned,
        )
        if s.cookie_action == SET_COOKIE and len(cfg.cookie_name) + 1 + len(value) > MAX_COOKIE_BYTES:
            raise SessionTooLarge(f"session cookie would be {len(value)} bytes; browsers drop cookies over 4093")
        return header

    def _expiry(self, session: Session) -> tuple:
        """(expires, max_age) for a live cookie: Beaker's cookie_expires, or max_age when set."""
        cfg = self.config
        now = self.service.clock()
        if cfg.max_age is not None:
            return now + cfg.max_age, cfg.max_age
        expires = cfg.cookie_expires
        if expires is True:
            return None, None
        if expires is False:
            return FAR_FUTURE, None
        if hasattr(expires, "total_seconds"):
            return now + expires.total_seconds(), None
        if expires.tzinfo is None:  # Beaker writes a naive datetime's fields as GMT
            expires = expires.replace(tzinfo=timezone.utc)
        return expires.timestamp(), None


class _Response:
    """One request's response: holds start_response until the session is written."""

    status: str | None = None  # set by the application's start_response
    exc_info = None
    sent = False
    server_write: Callable | None = None

    def __init__(self, mw: SessionMiddleware, environ: dict, session: Session, start_response: Callable) -> None:
        self.mw = mw
        self.environ = environ
        self.session = session
        self.server_start_response = start_response

    def start_response(self, status: str, headers: list, exc_info=None) -> Callable:
        if self.sent:
            if exc_info is None:
                raise AssertionError("start_response called twice without exc_info")
            # headers are out: let the server decide (it re-raises if bytes were sent)
            return self.server_start_response(status, headers, exc_info)
        self.status, self.headers, self.exc_info = status, headers, exc_info
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy write callable: the session is persisted before the first byte."""
        if not self.sent:
            self.send_headers()
        self.server_write(data)

    def send_headers(self) -> None:
        session = self.session
        server_error = not self.status or self.status[0] >= "5"  # 5xx (and garbage) saves nothing
        accessed = session._sess is not None
        cookie = None
        if server_error and not self.mw.config.save_on_error:
            session._suppressed = True
        elif accessed:
            session.persist()
            cookie = self.mw.cookie_header(session, self.environ)
        headers = list(self.headers)  # never grow a list the application may reuse
        if accessed or session._was_loaded:  # TurboGears' no_session_touch resets _sess after reading
            _cache_headers(headers, cookie is not None, self.mw)
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))
        self.sent = True
        self.server_write = self.server_start_response(self.status, headers, self.exc_info)

    def finish(self, result: Iterable[bytes]) -> Iterable[bytes]:
        session = self.session
        if (
            type(result) is list and session._sess is None and not session._was_loaded
            and self.status is not None and not self.sent
        ):
            # The common untouched case: no session, and no application code left to
            # run, so nothing can call start_response or write() after this.
            self.server_start_response(self.status, self.headers, self.exc_info)
            return result
        first = None
        no_app_code_left = _no_app_code_left(result, self.environ)
        try:
            if not no_app_code_left and not self.sent:
                # A generator runs application code (and may call start_response or
                # change the session) up to its first chunk: run it before persisting.
                for chunk in result:
                    first = (chunk,)
                    break
            if self.status is None:
                raise RuntimeError("the application returned without calling start_response")
            if not self.sent:
                self.send_headers()
        except BaseException:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise
        if no_app_code_left:
            return result
        return _StreamingBody(result, first, self.session)


def _no_app_code_left(result: Any, environ: dict) -> bool:
    """Lists, tuples and file wrappers run no application code while the body is sent."""
    if type(result) in (list, tuple):
        return True
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(result, wrapper)


class _StreamingBody:
    """Passes a streamed body through and writes late session changes when closed."""

    __slots__ = ("result", "first", "session", "iterator")

    def __init__(self, result: Iterable[bytes], first: tuple | None, session: Session) -> None:
        self.result = result
        self.first = first
        self.session = session
        self.iterator = iter(result)

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self.first is not None:
            chunk = self.first[0]
            self.first = None
            return chunk
        return next(self.iterator)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.session.persist_late()


def _cache_headers(headers: list, setting_cookie: bool, mw: SessionMiddleware) -> None:
    """Vary: Cookie on responses that read the session; private, no-store when setting a cookie."""
    vary_index = cache_index = None
    for i, header in enumerate(headers):
        size = len(header[0])  # compare lengths first: most names are neither
        if size == 4 and header[0].lower() == "vary":
            vary_index = i
        elif size == 13 and header[0].lower() == "cache-control":
            cache_index = i
    if vary_index is None:
        headers.append(("Vary", "Cookie"))
    else:
        name, value = headers[vary_index]
        fields = [f.strip().lower() for f in value.split(",")]
        if "*" not in fields and "cookie" not in fields:
            headers[vary_index] = (name, value + ", Cookie" if value.strip() else "Cookie")
    if setting_cookie:
        if cache_index is not None:
            name, value = headers[cache_index]
            directives = [d.strip().lower().split("=")[0] for d in value.split(",")]
            if "public" in directives or "s-maxage" in directives:
                mw.service.events.emit(
                    "cache_control_overridden",
                    message="response sets a session cookie: shared caching removed",
                )
            del headers[cache_index]
        headers.append(("Cache-Control", "private, no-store"))
    elif cache_index is None:
        headers.append(("Cache-Control", "private"))


def filter_factory(global_conf: Mapping[str, Any], **local_conf: Any) -> Callable:
    """Paste Deploy: `[filter:session] use = egg:fastsess#session`."""

    def make_filter(app: Callable) -> SessionMiddleware:
        return SessionMiddleware(app, global_conf, **local_conf)

    return make_filter


def filter_app_factory(app: Callable, global_conf: Mapping[str, Any], **local_conf: Any) -> SessionMiddleware:
    """Paste Deploy's filter-app form of filter_factory."""
    return SessionMiddleware(app, global_conf, **local_conf)
