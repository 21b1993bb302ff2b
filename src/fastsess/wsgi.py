"""SessionMiddleware: puts a lazy session in the environ and persists it before the body is sent.

The middleware holds the configuration; each request, the Set-Cookie value
included, runs through fastsess._request_py (compiled with the C kernel). The
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
from typing import Any

from . import core
from .config import Config, load_config
from .session import Session, SessionService
from .stores import open_store

# The request cycle, compiled with the kernel: the C build of _request_py.py
# exactly when core picked the C kernel.
_request = core.build_of("fastsess._request")

log = logging.getLogger("fastsess")

_insecure_warned = False  # the plain-HTTP warning is logged once per process


def _insecure_request(service: SessionService, environ: dict) -> bool:
    """A Secure cookie set on a plain-HTTP request: warn, once per process, unless the host is loopback.

    True once the process has warned (by this middleware or another), so the caller stops asking.
    """
    global _insecure_warned
    if _insecure_warned:
        return True
    if _is_loopback(_host_name(environ)):
        return False  # browsers keep Secure cookies from loopback hosts
    _insecure_warned = True
    service.events.emit(
        "insecure_cookie",
        message="secure cookie set on a plain-HTTP request: browsers will drop it "
        "(serve over HTTPS, or set session.secure = auto)",
    )
    return True


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
        self.cookie_spec = _request.CookieSpec(self.config, self.service, _insecure_request)

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


def filter_factory(global_conf: Mapping[str, Any], **local_conf: Any) -> Callable:
    """Paste Deploy: `[filter:session] use = egg:fastsess#session`."""

    def make_filter(app: Callable) -> SessionMiddleware:
        return SessionMiddleware(app, global_conf, **local_conf)

    return make_filter


def filter_app_factory(app: Callable, global_conf: Mapping[str, Any], **local_conf: Any) -> SessionMiddleware:
    """Paste Deploy's filter-app form of filter_factory."""
    return SessionMiddleware(app, global_conf, **local_conf)
