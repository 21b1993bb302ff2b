"""The store interface: opaque record bytes plus metadata, keyed by 32-byte store keys.

Stores know nothing of sessions, cookies or WSGI. A store key is SHA-256 of a
session id (computed by the session layer), so a dump of a store cannot be
replayed as cookies. Every record carries a version; writes are compare-and-set
against it and never turn into inserts.

A record whose stored bytes are damaged (not written by this store, cut
short, failing a checksum) makes load() raise CorruptRecord, so the session
layer can apply its invalidate_corrupt policy; writes treat it as missing:
create() replaces it, and cas(), rotate() and locked_update() find it GONE.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import ssl
import struct
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple, Union

from ..errors import ConfigError

_logger = logging.getLogger("fastsess")


class _Marker:
    """A named singleton result (EXISTS, CONFLICT, GONE, TOMBSTONE, EXPIRED)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self) -> str:
        return self.name


EXISTS = _Marker("EXISTS")  #: create(): the key is already present
CONFLICT = _Marker("CONFLICT")  #: cas()/rotate(): the stored version differs
GONE = _Marker("GONE")  #: cas()/rotate(): the record is missing, expired or a tombstone
TOMBSTONE = _Marker("TOMBSTONE")  #: load(): the id was rotated away and must not be used
#: load(): the record was there but has expired (stores whose server drops expired
#: records, memcached and Redis, cannot tell and say None)
EXPIRED = _Marker("EXPIRED")


class StoredRecord(NamedTuple):
    """What load() returns for a live record (a tuple: cheap to build on every load)."""

    blob: bytes
    version: int
    expires_at: float  # Unix time; the record is live while now <= expires_at
    last_access: float  # Unix time of the last write or touch


#: StoredRecord(*fields) from any 4-item iterable, with no Python-level __new__ in
#: between: load() builds one per request.
record_from = functools.partial(tuple.__new__, StoredRecord)

LoadResult = Union[StoredRecord, _Marker, None]  # noqa: UP007 - a runtime alias
WriteResult = Union[int, _Marker]  # noqa: UP007 - a runtime alias
#: locked_update callback: given the live record, return (blob, expires_at) to
#: write, or None to write nothing.
UpdateFn = Callable[[StoredRecord], tuple | None]


class Store(ABC):
    """Interface every store implements; the contract suite pins its behaviour.

    `clock` returns the current Unix time; tests inject a fake one.
    """

    #: True when the store offers locked_update() (a cheap exclusive lock).
    has_locked_update = False
    #: Where the store reports what it notices by itself (a damaged record a write
    #: replaced, an environment moved aside): report(event, message=..., store=...).
    #: The session layer sets its EventLog.emit, so these reach on_event and the
    #: counters as well as the log; unset, they are only logged.
    report: Callable[..., None] | None = None
    #: the store's name in those reports
    kind = "store"
    #: What building the store did that the session layer reports once it attaches
    #: (the sql store's table_created, say): (event, log level, message) triples.
    startup_events: tuple = ()
    #: locked_rotate() is offered: rotation merges under the store's lock (SQL), where an
    #: optimistic rotation would keep losing to writers that hold a lock
    has_locked_rotate = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    @abstractmethod
    def load(self, key: bytes) -> LoadResult:
        """The live record, TOMBSTONE, EXPIRED or None (missing); CorruptRecord when damaged.

        EXPIRED is a record past its expiry that the store still holds; a store
        that cannot tell (its server dropped it) answers None. An expired
        tombstone is None.
        """

    @abstractmethod
    def create(self, key: bytes, blob: bytes, expires_at: float) -> WriteResult:
        """Insert only when absent (or expired): the new version, or EXISTS."""

    @abstractmethod
    def cas(self, key: bytes, blob: bytes, expected_version: int, expires_at: float) -> WriteResult:
        """Replace when the stored version matches: new version, CONFLICT or GONE."""

    @abstractmethod
    def touch(self, key: bytes, expires_at: float) -> bool | None:
        """Refresh expiry and last access; never bumps the version or rewrites data.

        True when a live record was touched; False when there was none (missing,
        expired or a tombstone: deleted or rotated away since it was loaded), so
        the client is not sent its old cookie again. None means the store cannot tell.
        """

    @abstractmethod
    def delete(self, key: bytes) -> None:
        """Remove the record (or tombstone); a missing key is not an error."""

    @abstractmethod
    def rotate(
        self,
        old_key: bytes,
        new_key: bytes,
        blob: bytes,
        expires_at: float,
        tombstone_seconds: float,
        expected_version: int | None = None,
    ) -> WriteResult:
        """Atomically write new_key and turn old_key into a tombstone.

        GONE when old_key is missing, expired or a tombstone; CONFLICT when
        expected_version is given and differs, or new_key already exists.
        """

    @abstractmethod
    def cleanup(self, now: float, budget: int) -> int:
        """Remove at most `budget` expired records and tombstones; return how many.

        Fewer than `budget` means none are left: `fastsess cleanup` calls it
        until then.
        """

    def cleanup_step(self, now: float, budget: int) -> int:
        """Automatic cleanup's share of a write: at most `budget` removals, for a bounded cost.

        Unlike cleanup(), it may stop before it has looked everywhere; repeated
        calls cover the whole store. Stores that find expired records through
        an index (its cost follows the removals) keep this default.
        """
        return self.cleanup(now, budget)

    def locked_update(self, key: bytes, fn: UpdateFn) -> WriteResult:
        """Run fn on the live record under the store's lock and write its result.

        Returns the new version, GONE when there is no live record, or the
        current version when fn returns None (nothing written).
        Only stores with has_locked_update = True offer it.
        """
        raise TypeError(f"{type(self).__name__} has no locked_update")

    def locked_rotate(self, old_key: bytes, new_key: bytes, fn: UpdateFn, tombstone_seconds: float) -> WriteResult:
        """rotate(), with the new record computed by fn from the live old one under the store's lock.

        fn gets the old StoredRecord and returns (blob, expires_at) for new_key.
        Returns the new version, GONE when old_key holds no live record, CONFLICT
        when new_key already does. Only stores with has_locked_rotate = True offer it.
        """
        raise TypeError(f"{type(self).__name__} has no locked_rotate")

    def close(self) -> None:  # noqa: B027 - optional: most stores hold nothing to release
        """Release resources; the store may not be used afterwards."""

    def _report(self, event: str, message: str, level: int = logging.ERROR) -> None:
        """Tell the session layer (or, without one, the log) what the store noticed; never a key."""
        report = self.report
        if report is not None:
            report(event, message=message, store=self.kind)
        else:
            _logger.log(level, message, extra={"fastsess_event": event, "sid": None})


def check_timeouts(connect_timeout: float, socket_timeout: float) -> None:
    """A network store's timeouts: positive and finite (None would wait forever on a hung server, 0 fails every call)."""
    for name, value in (("connect_timeout", connect_timeout), ("socket_timeout", socket_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ConfigError(f"session.{name} must be a positive, finite number of seconds, got {value!r}")


def kernel_timeouts(sock: socket.socket, timeout: float) -> bool:
    """Make a connected socket time out in the kernel, not in Python: True when it now does.

    With a Python timeout set, CPython polls the socket before every send and
    every receive: two more system calls per round trip, about 3 us of a
    30 us loopback one (bench: a meta get over a raw socket, interleaved). A
    blocking socket with SO_RCVTIMEO and SO_SNDTIMEO waits in the call itself
    and fails with BlockingIOError after `timeout`; callers report that as a
    timeout. Linux only, and never for TLS (the ssl module expects Python's
    own timeouts): elsewhere the socket keeps its Python timeout.
    """
    if not sys.platform.startswith("linux") or isinstance(sock, ssl.SSLSocket):
        return False
    micros = max(1, round(timeout * 1_000_000))  # a zero interval would mean no timeout at all
    interval = struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)  # struct timeval
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
    except OSError:  # refused: keep Python's timeout (setting the first alone changes nothing it relies on)
        return False
    sock.settimeout(None)
    return True


def read_through(sock: socket.socket, buf: bytes, total: int) -> bytes | None:
    """buf and what follows it on sock, `total` bytes in all; None at the end of the stream.

    For a reply whose length its first line gave: the rest is read straight
    into one buffer of that size, never by joining pieces.
    """
    whole = bytearray(total)
    whole[: len(buf)] = buf
    view = memoryview(whole)
    have = len(buf)
    while have < total:
        got = sock.recv_into(view[have:])
        if not got:
            return None
        have += got
    return bytes(whole)


# ---------------------------------------------------------------- locks across fork()

#: owner -> how many striped locks owner._locks holds (None: one lock, owner._lock)
_relocked_in_child: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fork_safe_lock(owner: object) -> threading.Lock:
    """A new lock for owner._lock, which a forked child replaces with a fresh one.

    A fork taken while another thread holds a lock copies it held into the
    child, where no thread will ever release it: the child's first use of the
    owner would wait forever.
    """
    _relocked_in_child[owner] = None
    return threading.Lock()


def fork_safe_locks(owner: object, stripes: int) -> list[threading.Lock]:
    """`stripes` new locks for owner._locks, which a forked child replaces as fork_safe_lock's."""
    _relocked_in_child[owner] = stripes
    return [threading.Lock() for _ in range(stripes)]


def _fresh_locks_in_child() -> None:
    for owner, stripes in list(_relocked_in_child.items()):
        if stripes is None:
            owner._lock = threading.Lock()
        else:
            owner._locks = [threading.Lock() for _ in range(stripes)]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_in_child)
