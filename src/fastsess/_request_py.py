# cython: annotation_typing=False
"""One request through the session middleware: the session in, the response held, the session out.

SessionMiddleware subclasses `Middleware`, whose __call__ is the request
cycle; compiled, Middleware is an extension type, so calling the middleware
is one C slot and its hot attributes are struct fields. The application's
start_response is recorded by a Response, not forwarded; once the
application has returned (and a generator has produced its first chunk) the
session is persisted, the cookie and cache headers are decided, and only
then does the server get start_response. This module is the per-request hot path outside the kernel,
so it is also compiled with it: the same source is built as fastsess._request
(declarations in _request.pxd), and fastsess.wsgi picks that build exactly
when fastsess.core picked the C kernel. Nothing else knows there are two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timezone
from typing import Any

from . import core
from .config import FAR_FUTURE
from .errors import SessionTooLarge
from .session import EXPIRE_COOKIE, MAX_COOKIE_BYTES, SET_COOKIE, Session

try:  # compiled, the declarations in _request.pxd; in pure Python, no-ops
    import cython
except ImportError:
    from ._pure import cython

if not cython.compiled:  # compiled, cimported from _session.pxd as C
    from operator import attrgetter

    _sess_of = attrgetter("_sess")  # a session's loaded state, or None
    _State = _SessionCore = SessionService = object  # types declared for the compiled build
    request_session = Session  # the middleware's session: Session(service, cookie_header)


class Response:
    """One request's response: holds start_response until the session is written.

    The response is itself the start_response the application gets: calling an
    object costs less than making a bound method for every request.
    """

    def __init__(self, mw: Any, environ: dict, session: Session, start_response: Callable) -> None:
        self.mw = mw
        self.environ = environ
        self.session = session
        self.server_start_response = start_response
        self.status: str | None = None  # set by the application's start_response
        self.headers: list | None = None
        self.exc_info = None
        self.sent = False
        self.server_write: Callable | None = None

    def __call__(self, status: str, headers: list, exc_info=None) -> Callable:
        """The application's start_response: recorded, and sent once the session is written."""
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

    @cython.locals(state=_State)
    def send_headers(self) -> None:
        session = self.session
        status = self.status
        if type(status) is str and status:  # compiled, its first character is read as C
            server_error = (cython.cast(str, status) if cython.compiled else status)[0] >= "5"  # 5xx saves nothing
        else:
            server_error = True  # and neither does garbage
        accessed = (_sess_of(session) if cython.compiled else session._sess) is not None  # see _session.pxd
        cookie = None
        if server_error and not self.mw.config.save_on_error:
            session._suppressed = True
        elif accessed:
            if "fastsess.no_touch" in self.environ and self.environ["fastsess.no_touch"]:  # the app may set it
                session.read_only()
            session._persist()  # compiled, a C call
            state = _sess_of(session) if cython.compiled else session._sess
            if state.cookie_action is not None:  # persist decided
                cookie = cookie_header(self.mw.cookie_spec, session, self.environ)
        headers = list(self.headers)  # never grow a list the application may reuse
        if accessed or session._was_loaded:  # TurboGears' no_session_touch resets _sess after reading
            cache_headers(headers, cookie is not None, self.mw)
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))
        self.sent = True
        self.server_write = self.server_start_response(self.status, headers, self.exc_info)

    def finish(self, result: Iterable[bytes]) -> Iterable[bytes]:
        session = self.session
        if (
            type(result) is list and not session._was_loaded  # neither loaded nor reset after loading
            and self.status is not None and not self.sent
        ):
            # The common untouched case: no session, and no application code left to
            # run, so nothing can call start_response or write() after this.
            self.server_start_response(self.status, self.headers, self.exc_info)
            return result
        first = None
        wrote_early = self.sent  # the application used write(): the headers are out
        fixed_body = no_app_code_left(result, self.environ)
        try:
            if not fixed_body and not self.sent:
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
        if fixed_body:
            if wrote_early:  # changes made after the first write(): best effort, as for a stream
                self.session.persist_late()
            return result
        return StreamingBody(result, first, self.session)


class CookieSpec:
    """A middleware's Set-Cookie settings, read once from its Config (nothing changes a built Config)."""

    def __init__(self, config: Any, service: SessionService, insecure_request: Callable) -> None:
        self.service = service
        self.use_cookies = config.use_cookies
        self.name = config.cookie_name
        self.domain = config.cookie_domain
        self.path = config.cookie_path
        self.secure = config.secure  # True, False or "auto"
        self.httponly = config.httponly
        self.samesite = config.samesite
        self.partitioned = config.partitioned
        self.max_age = config.max_age
        self.expires = config.cookie_expires  # Beaker's cookie_expires, when max_age is None
        # insecure_request(service, environ), for a Secure cookie on plain HTTP: True once
        # the process has warned about it, after which it is not asked again.
        self.insecure_request = insecure_request
        self.insecure_warned = False


@cython.locals(s=_State, service=SessionService)
def cookie_header(spec: CookieSpec, session: _SessionCore, environ: dict) -> str | None:
    """The Set-Cookie value persist decided on, or None."""
    s = _sess_of(session) if cython.compiled else session._sess
    if s is None or s.cookie_action is None or not spec.use_cookies or session._detached:
        return None
    service = spec.service
    secure = spec.secure
    if secure is True:
        if not spec.insecure_warned and environ.get("wsgi.url_scheme") != "https":
            spec.insecure_warned = spec.insecure_request(service, environ)
    elif secure == "auto":
        secure = environ.get("wsgi.url_scheme") == "https"
    domain = s.domain if s.domain is not None else spec.domain
    path = s.path if s.path is not None else spec.path
    if s.cookie_action == EXPIRE_COOKIE:
        value, expires, max_age = "", 0, 0
    else:
        value = s.sealed if service.cookie_only else service.sign(s.id)
        max_age = spec.max_age
        if max_age is not None:
            expires = service.clock() + max_age
        elif spec.expires is True:  # a browser-session cookie
            expires = None
        elif spec.expires is False:
            expires = FAR_FUTURE
        else:
            expires = _expires_at(spec.expires, service.clock())
    # Positional, in the kernel's parameter order (name, value, path, domain, expires,
    # max_age, secure, httponly, samesite, partitioned): one call per written cookie.
    header = core.build_set_cookie(
        spec.name, value, path, domain, expires, max_age, bool(secure), spec.httponly, spec.samesite, spec.partitioned
    )
    if s.cookie_action == SET_COOKIE and len(spec.name) + len(value) > MAX_COOKIE_BYTES:
        raise SessionTooLarge(
            f"session cookie would be {len(spec.name) + len(value)} bytes (name plus value); "
            f"browsers drop cookies over {MAX_COOKIE_BYTES}"
        )
    return header


def _expires_at(expires: Any, now: float) -> float:
    """The Unix time a cookie_expires duration (timedelta) or date (datetime) means now."""
    if hasattr(expires, "total_seconds"):
        return now + expires.total_seconds()
    if expires.tzinfo is None:  # Beaker writes a naive datetime's fields as GMT
        expires = expires.replace(tzinfo=timezone.utc)
    return expires.timestamp()


class Middleware:
    """What SessionMiddleware does per request; it sets these attributes in its __init__."""

    app: Callable  # the wrapped application
    service: Any  # the SessionService
    cookie_spec: CookieSpec
    environ_key: str
    _bound_get_session: Callable  # environ["beaker.get_session"]: one bound method, not one per request
    _webtest_varname: str | None

    @cython.locals(response=Response)
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """A lazy session in the environ, persisted before the first byte."""
        cookie = environ["HTTP_COOKIE"] if "HTTP_COOKIE" in environ else None  # compiled, cheaper than get()
        session = request_session(self.service, cookie)
        environ["fastsess.session"] = environ[self.environ_key] = session
        environ["beaker.get_session"] = self._bound_get_session
        if self._webtest_varname is not None or "fastsess.no_touch" in environ:
            self._request_options(environ, session)
        if cython.compiled:  # no arguments parsed, as for the session; tp_new set the other fields as __init__ does
            response = Response.__new__(Response)
            response.mw = self
            response.environ = environ
            response.session = session
            response.server_start_response = start_response
        else:
            response = Response(self, environ, session, start_response)
        return response.finish(self.app(environ, response))


def no_app_code_left(result: Any, environ: dict) -> bool:
    """Lists, tuples and file wrappers run no application code while the body is sent."""
    if type(result) in (list, tuple):
        return True
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(result, wrapper)


class StreamingBody:
    """Passes a streamed body through and writes late session changes when closed, unless it raised."""

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
        try:
            return next(self.iterator)
        except StopIteration:
            raise
        except BaseException:
            self.session._suppressed = True  # a body that failed part way: its changes are not saved
            raise

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.session.persist_late()


def cache_headers(headers: list, setting_cookie: bool, mw: Any) -> None:
    """Vary: Cookie on responses that read the session; private, no-store when setting a cookie.

    An application may send a header more than once: Cookie joins the last
    Vary unless one already names it (or `*`), and a cookie-setting response
    loses every Cache-Control the application set.
    """
    vary_index = -1
    vary_done = False
    cache_indexes = None
    for i, header in enumerate(headers):
        size = len(header[0])  # compare lengths first: most names are neither
        if size == 4 and header[0].lower() == "vary":
            vary_index = i
            if not vary_done:
                fields = [f.strip().lower() for f in header[1].split(",")]
                vary_done = "*" in fields or "cookie" in fields
        elif size == 13 and header[0].lower() == "cache-control":
            if cache_indexes is None:
                cache_indexes = [i]
            else:
                cache_indexes.append(i)
    if vary_index < 0:
        headers.append(("Vary", "Cookie"))
    elif not vary_done:
        name, value = headers[vary_index]
        headers[vary_index] = (name, value + ", Cookie" if value.strip() else "Cookie")
    if setting_cookie:
        if cache_indexes is not None:
            shared = False
            for i in reversed(cache_indexes):
                directives = [d.strip().lower().split("=")[0] for d in headers[i][1].split(",")]
                shared = shared or "public" in directives or "s-maxage" in directives
                del headers[i]
            if shared:
                mw.service.events.emit(
                    "cache_control_overridden",
                    message="response sets a session cookie: shared caching removed",
                )
        headers.append(("Cache-Control", "private, no-store"))
    elif cache_indexes is None:
        headers.append(("Cache-Control", "private"))
