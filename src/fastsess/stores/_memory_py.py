# cython: annotation_typing=False
"""The memory store's table: records in an OrderedDict, oldest-used first, with TTLs.

fastsess.stores.memory.MemoryStore is this table plus the Store interface. Every
request that reads or saves a memory session runs load() and cas() here, so with
the C kernel the same source is also compiled, as fastsess.stores._memory
(declarations in _memory.pxd): the table becomes an extension type whose fields
are C struct fields, and the store's methods are C functions that a session
calls without a Python frame in between.
"""

from __future__ import annotations

import itertools
import operator
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

try:  # compiled, the declarations in _memory.pxd; in pure Python, no-ops
    import cython
except ImportError:
    from .._pure import cython

from .base import (
    CONFLICT,
    EXISTS,
    EXPIRED,
    GONE,
    TOMBSTONE,
    LoadResult,
    StoredRecord,
    UpdateFn,
    WriteResult,
)

#: False on a free-threaded build, where load() takes the lock like every other method
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()

# An entry is a StoredRecord whose blob is None for a tombstone. Entries are
# replaced, never changed, so load() hands a live one out as it is.
_BLOB, _VERSION, _EXPIRES = range(3)
_move_to_end = OrderedDict.move_to_end


class MemoryTable:
    """A thread-safe OrderedDict of records, oldest-used first: the memory store's every method."""

    def __init__(self, max_sessions: int = 10000, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self._entries: OrderedDict[bytes, StoredRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._next_version = 0

    def _live(self, key: bytes, now: float) -> StoredRecord | None:
        """The entry for key if not expired (tombstones included); drops expired ones."""
        entry = _lookup(self._entries, key)
        if entry is not None and now > _field(entry, _EXPIRES):
            del self._entries[key]
            return None
        return entry

    def _version(self) -> int:
        self._next_version += 1
        return self._next_version

    def _put(self, key: bytes, entry: StoredRecord) -> None:
        self._entries[key] = entry
        _move_to_end(self._entries, key)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)

    def load(self, key: bytes) -> LoadResult:
        if not _GIL:
            return self._load_locked(key)
        # Without the lock: with the GIL each step below is one atomic operation, and
        # every write replaces the entry it changes. Expiry removes under the lock.
        entry = _lookup(self._entries, key)
        if entry is None:
            return None
        if self.clock() > _field(entry, _EXPIRES):
            self._drop_expired(key)
            return None if _field(entry, _BLOB) is None else EXPIRED
        if _field(entry, _BLOB) is None:
            return TOMBSTONE
        try:
            _move_to_end(self._entries, key)
        except KeyError:  # deleted or evicted meanwhile: this read still saw it live
            pass
        return entry

    def _load_locked(self, key: bytes) -> LoadResult:
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now > entry[_EXPIRES]:
                del self._entries[key]
                return None if entry[_BLOB] is None else EXPIRED
            if entry[_BLOB] is None:
                return TOMBSTONE
            self._entries.move_to_end(key)
            return entry

    def _drop_expired(self, key: bytes) -> None:
        """Remove key's entry if it is still expired (a write may have replaced it meanwhile)."""
        with self._lock:
            self._live(key, self.clock())

    def create(self, key: bytes, blob: bytes, expires_at: float) -> WriteResult:
        with self._lock:
            now = self.clock()
            if self._live(key, now) is not None:
                return EXISTS
            version = self._version()
            self._put(key, _new_record(StoredRecord, (_as_bytes(blob), version, expires_at, now)))
            return version

    def cas(self, key: bytes, blob: bytes, expected_version: int, expires_at: float) -> WriteResult:
        # Every request that saves comes here: _live, _version and _put inline.
        entries = self._entries
        with self._lock:
            now = self.clock()
            entry = _lookup(entries, key)
            if entry is None:
                return GONE
            if now > _field(entry, _EXPIRES):
                del entries[key]
                return GONE
            if _field(entry, _BLOB) is None:
                return GONE
            if _field(entry, _VERSION) != expected_version:
                return CONFLICT
            self._next_version = version = self._next_version + 1
            entries[key] = _new_record(StoredRecord, (_as_bytes(blob), version, expires_at, now))
            _move_to_end(entries, key)  # the key was there: the count stays within max_sessions
            return version

    def touch(self, key: bytes, expires_at: float) -> bool:
        with self._lock:
            now = self.clock()
            entry = self._live(key, now)
            if entry is None or entry[_BLOB] is None:
                return False
            # Replaced in place: it keeps its place in the order.
            self._entries[key] = _new_record(StoredRecord, (entry[_BLOB], entry[_VERSION], expires_at, now))
            return True

    def delete(self, key: bytes) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def rotate(self, old_key, new_key, blob, expires_at, tombstone_seconds, expected_version=None):
        with self._lock:
            now = self.clock()
            old = self._live(old_key, now)
            if old is None or old[_BLOB] is None:
                return GONE
            if expected_version is not None and old[_VERSION] != expected_version:
                return CONFLICT
            if self._live(new_key, now) is not None:
                return CONFLICT
            version = self._version()
            self._put(old_key, _new_record(StoredRecord, (None, self._version(), now + tombstone_seconds, now)))
            self._put(new_key, _new_record(StoredRecord, (_as_bytes(blob), version, expires_at, now)))
            return version

    def cleanup(self, now: float, budget: int) -> int:
        with self._lock:
            expired = [k for k, e in self._entries.items() if now > e[_EXPIRES]][:budget]
            for key in expired:
                del self._entries[key]
            return len(expired)

    def cleanup_step(self, now: float, budget: int) -> int:
        """Look at the least recently used entries only (at most 4 x budget), where expired ones gather.

        cleanup() reads every entry under the store's lock; a write must not
        hold every other request up for that.
        """
        with self._lock:
            expired = []
            for key, entry in itertools.islice(self._entries.items(), 4 * max(budget, 0)):
                if now > entry[_EXPIRES]:
                    expired.append(key)
                    if len(expired) >= budget:
                        break
            for key in expired:
                del self._entries[key]
            return len(expired)

    def locked_update(self, key: bytes, fn: UpdateFn) -> WriteResult:
        with self._lock:
            now = self.clock()
            entry = self._live(key, now)
            if entry is None or entry[_BLOB] is None:
                return GONE
            result = fn(entry)
            if result is None:
                return entry[_VERSION]
            blob, expires_at = result
            version = self._version()
            self._put(key, _new_record(StoredRecord, (_as_bytes(blob), version, expires_at, now)))
            return version

    def __len__(self) -> int:
        return len(self._entries)


if not cython.compiled:  # compiled, inline C functions in _memory.pxd
    _lookup = OrderedDict.get  # _lookup(entries, key): the entry, or None
    _field = operator.getitem  # _field(entry, _EXPIRES): one field of an entry
    _new_record = tuple.__new__  # _new_record(StoredRecord, fields): an entry
    _as_bytes = bytes  # the blob to keep: bytes, not a view of the caller's buffer
