"""Session events: one logger ("fastsess"), one event name per kind, an optional hook.

Events that clients can trigger (bad or expired cookies, writes by a request
replaying a rotated-away id) are logged at DEBUG or INFO behind a per-process
rate limit, as are the warnings a client can replay; every event is counted.
Raw ids, cookie values, tokens and session data never reach a log line: `sid`
is a keyed hash.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fastsess")

#: Events a client can cause at will; rate-limited so they cannot flood the logs.
#: A client can replay an old-key or a Beaker cookie as often as a bad one.
CLIENT_EVENTS = frozenset(
    {"invalid_cookie", "expired", "tombstone_hit", "unknown_id", "old_key_used", "beaker_cookie_accepted"}
)
#: Logged as warnings or errors, yet a client can replay what causes them: a cookie
#: whose record is damaged, or the id every login tombstones, sent to a page that writes.
REPLAYABLE_EVENTS = frozenset({"corrupt_record", "write_dropped"})
_RATE_LIMITED = CLIENT_EVENTS | REPLAYABLE_EVENTS
_LEVELS = {
    "store_error": logging.ERROR,
    "corrupt_record": logging.ERROR,
    "write_dropped": logging.WARNING,
    "conflict_raised": logging.WARNING,
    "cookie_too_large": logging.WARNING,
    "insecure_cookie": logging.WARNING,
    "cache_control_overridden": logging.WARNING,
    "table_created": logging.WARNING,
    "table_found": logging.WARNING,
    "save_gone": logging.INFO,
    "conflict_merged": logging.INFO,
    "old_key_used": logging.INFO,
    "beaker_cookie_accepted": logging.INFO,
    "cleanup": logging.INFO,
    "invalid_cookie": logging.INFO,
    "expired": logging.DEBUG,
}
RATE_LIMIT_PER_SECOND = 10


class EventLog:
    """Counts events, logs them, and calls the on_event hook."""

    def __init__(self, hook: Callable[..., Any] | None = None) -> None:
        self.hook = hook
        #: log_sid(session_id): the keyed hash a session's events carry as `sid` (the
        #: session layer sets its KeyRing's); computed only for events that are logged
        #: or hooked, so an event nobody sees costs no HMAC.
        self.log_sid: Callable[[str], str | None] | None = None
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._window = 0
        self._in_window: Counter[str] = Counter()

    def _allowed(self, name: str) -> bool:
        now = int(time.monotonic())
        with self._lock:
            if now != self._window:
                self._window = now
                self._in_window.clear()
            self._in_window[name] += 1
            return self._in_window[name] <= RATE_LIMIT_PER_SECOND

    def emit(
        self, name: str, sid: str | None = None, message: str = "", client: bool = False,
        level: int | None = None, session_id: str | None = None, **fields: Any,
    ) -> None:
        """Record event `name`; fields must never hold ids, cookie values or session data.

        client: this occurrence is one a client can cause at will (as CLIENT_EVENTS
        always are): logged at INFO at most, and rate-limited. level: the log level,
        when this occurrence needs another than the event's own. session_id: the
        session's id, which becomes `sid` (log_sid) only if the event is logged or hooked.
        """
        self.counts[name] += 1
        if level is None:
            level = _LEVELS.get(name, logging.DEBUG)
        if client:
            level = min(level, logging.INFO)
        logged = log.isEnabledFor(level) and (not (client or name in _RATE_LIMITED) or self._allowed(name))
        if session_id is not None and sid is None and (logged or self.hook is not None) and self.log_sid is not None:
            sid = self.log_sid(session_id)
        if logged:
            text = f"{name}: {message}" if message else name
            log.log(level, text, extra={"fastsess_event": name, "sid": sid, **fields})
        if self.hook is not None:
            try:
                self.hook(name, sid=sid, **fields)
            except Exception:  # a broken hook must not break requests
                log.exception("on_event hook failed", extra={"fastsess_event": "hook_error", "sid": sid})
