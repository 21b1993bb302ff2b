"""SessionMiddleware: puts a lazy session in the environ and persists it before the body is sent.

The middleware holds the configuration and decides the Set-Cookie value; each
request runs through fastsess._request_py (compiled with the C kernel). The
application's start_response is recorded, not forwarded. Once the application
has returned its iterable (and, for a generator, produced its first chunk),
the session is written, the cookie and cache headers are decided, and only
then does the server get start_response and the first byte. A client can
therefore never see a response before its session is stored. Changes made
while a generator streams are written, best effort, when the iterable is closed.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from datetime import timezone
from typing import Any

from . import core
from .config import FAR_FUTURE, Config, load_config
from .errors import SessionTooLarge
from .session import EXPIRE_COOKIE, MAX_COOKIE_BYTES, SET_COOKIE, Session, SessionService
from .stores import open_store

# The request cycle, compiled with the kernel: the C build of _request_py.py
# exactly when core picked the C kernel.
_request = core.build_of("fastsess._request")

log = logging.getLogger("fastsess")

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


def _is_loopback(host: str) -> bool:
    """A host browsers treat as a secure context over plain HTTP, so they keep Secure cookies from it.

    That is localhost and any name under it, in any case, and the loopback
    addresses 127.0.0.0/8 and ::1 (the W3C Secure Contexts rules Chromium follows).
    """
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SessionMiddleware(_request.Middleware):
    """WSGI middleware offering `environ["beaker.session"]`, configured like Beaker's.

    Calling it runs one request (_request.Middleware.__call__, compiled with the C kernel).
    """

    def __init__(
        self,
        wrap_app: Callable,
        config: Mapping[str, Any] | None = None,
        environ_key: str = "beaker.session",
        **kwargs: Any,
    ) -> None:
        self.app = wrap_app
        self.config: Config = load_config(config, **kwargs)
        self.environ_key = environ_key
        self.store = open_store(self.config)
        self.service = SessionService(self.config, self.store)
        self._bound_get_session = self.get_session  # one bound method, not one per request
        self._webtest_varname = self.config.webtest_varname or None

    @property
    def wrap_app(self) -> Callable:
        """Beaker's name for the wrapped application: the same attribute as `app`."""
        return self.app

    @wrap_app.setter
    def wrap_app(self, app: Callable) -> None:
        self.app = app

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
        if secure is True and environ.get("wsgi.url_scheme") == "https":
            pass  # the usual production case: nothing to decide
        elif secure == "auto":
            secure = environ.get("wsgi.url_scheme") == "https"
        elif secure and not _insecure_warned and environ.get("wsgi.url_scheme") != "https":
            if not _is_loopback(_host_name(environ)):
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
        # Positional, in the kernel's parameter order (name, value, path, domain, expires,
        # max_age, secure, httponly, samesite, partitioned): one call per written cookie.
        header = core.build_set_cookie(
            cfg.cookie_name, value, path, domain, expires, max_age,
            bool(secure), cfg.httponly, cfg.samesite, cfg.partitioned,
        )
        if s.cookie_action == SET_COOKIE and len(cfg.cookie_name) + len(value) > MAX_COOKIE_BYTES:
            raise SessionTooLarge(
                f"session cookie would be {len(cfg.cookie_name) + len(value)} bytes (name plus value); "
                f"browsers drop cookies over {MAX_COOKIE_BYTES}"
            )
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


def filter_factory(global_conf: Mapping[str, Any], **local_conf: Any) -> Callable:
    """Paste Deploy: `[filter:session] use = egg:fastsess#session`."""

    def make_filter(app: Callable) -> SessionMiddleware:
        return SessionMiddleware(app, global_conf, **local_conf)

    return make_filter


def filter_app_factory(app: Callable, global_conf: Mapping[str, Any], **local_conf: Any) -> SessionMiddleware:
    """Paste Deploy's filter-app form of filter_factory."""
    return SessionMiddleware(app, global_conf, **local_conf)
