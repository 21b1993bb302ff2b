# cython: annotation_typing=False
"""The LMDB store's hot paths: load(), which every request with an LMDB session runs, and cas(), every save.

LmdbStore (lmdb.py) subclasses LmdbFastPath, which holds the two fields they
need (the shared environment and the clock), load() and cas(). With the C
kernel this source is also compiled, as fastsess.stores._lmdb_fast
(declarations in _lmdb_fast.pxd), as _request_py.py and _session_py.py are:
a session then calls them without a Python frame, the environment's fields
are read as C, and a loaded entry's header is read and its record built as
C. Everything they do not do in their one transaction (opening the
environment, recovery, damaged entries, old formats) is LmdbStore's, in
Python.

The layout of an entry is described in lmdb.py; its header format is here,
where both modules read it.
"""

from __future__ import annotations

import operator
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import lmdb

try:  # compiled, the declarations in _lmdb_fast.pxd; in pure Python, no-ops
    import cython
except ImportError:
    from .._pure import cython

from .base import CONFLICT, EXPIRED, GONE, LoadResult, StoredRecord, WriteResult, record_from

_META = struct.Struct("<BBxxIQdd")
_HEADER = _META.size
_unpack_meta = _META.unpack_from
_pack_meta = _META.pack
_FORMAT = 2  # header and blob in one meta entry
_FORMAT_SPLIT = 1  # older releases: the header alone, the blob in the data sub-database
_RECORD, _TOMBSTONE = 0, 1
_MAINTAIN_EVERY = 1000  # operations between reader_check() and moved-file checks
_RETRY = object()  # a fast path (load, create, cas, touch) hit something only LmdbStore._run() handles
_time_ns = time.time_ns
_U64 = (1 << 64) - 1
_GRANULE_MS = 10_000  # expiry index resolution
_GRANULE_MS_F = float(_GRANULE_MS)
_EXACT_MS = float(1 << 53)  # below it, a float number of milliseconds floor-divides exactly


class SharedFields:
    """The fields of lmdb._SharedEnv (one process's environment) that load() and cas() read.

    _SharedEnv subclasses it; compiled, they are C struct fields, so load() and
    cas() read them without Python's attribute lookup.

    A transaction must not run while an exclusive holder (a map resize, a
    reopen, a fork) works; other code takes this thread's gate lock around
    one. Compiled, load() and cas() count themselves in `active` instead: the
    test of `draining` and the count are C with the GIL held, so no other
    thread runs between them, and that saves the lock's lookup and two method
    calls on every request. An exclusive holder first takes every thread's
    lock, then sets `draining` and waits on `drained` until `active` is 0;
    while `draining` is set, load() and cas() take the lock like the rest.
    In pure Python `active += 1` is not atomic, so they always lock.
    """

    pid: int  # the process that opened env
    gate: Any  # the _Gate: many transactions, or one exclusive holder
    thread: Any  # gate.local; its .lock is this thread's lock, once it has one
    env: Any  # the lmdb.Environment, or None while closed
    meta: Any  # the sub-databases load() and cas() use
    data: Any
    ops: int  # operations since the last maintenance
    active: int  # compiled: load() and cas() transactions running without the lock
    draining: bool  # an exclusive holder waits for active to reach 0
    drained: Any  # a threading.Event the last of them sets
    reports: list  # what the environment noticed, for the stores to report


class LmdbFastPath:
    """load() and cas(), and the two fields they read; LmdbStore is the rest of the store.

    No __init__: Store.__init__ sets clock, and LmdbStore's sets _shared_env.
    """

    clock: Callable[[], float]
    _shared_env: Any  # lmdb._SharedEnv, this process's environment; None until first used

    @cython.locals(shared=SharedFields, now=cython.double, expires_at=cython.double, every=cython.Py_ssize_t)
    def load(self, key: bytes) -> LoadResult:
        # The hot path: one read transaction, no retry loop unless LMDB asks.
        if len(key) != 32:
            raise ValueError("store keys are 32 bytes")
        shared = self._shared_env
        if shared is None or shared.pid != _current_pid():
            shared = self._shared()
        if cython.compiled and not shared.draining:  # counted, not locked: see SharedFields
            lock = None
            shared.active += 1
        else:
            try:
                lock = shared.thread.lock
            except AttributeError:
                lock = shared.gate.thread_lock()
            lock.acquire()
        blob = None
        try:
            env = shared.env
            if env is None:
                raw = _RETRY
            else:
                try:
                    txn = env.begin()
                    try:
                        raw = txn.get(key, None, shared.meta)
                        # The older split format? Compiled, a C read of the first byte (_lmdb_fast.pxd).
                        if _is_split_entry(raw) if cython.compiled else raw and raw[0] == _FORMAT_SPLIT:  # noqa: F821
                            blob = txn.get(key, db=shared.data)
                    finally:
                        txn.abort()
                except lmdb.Error:
                    raw = _RETRY
        finally:
            if lock is None:
                shared.active -= 1
                if shared.draining and shared.active == 0:
                    shared.drained.set()  # the last transaction an exclusive holder waits for
            else:
                lock.release()
        if raw is _RETRY:
            return self._run(False, self._load, key)
        shared.ops += 1
        every = _MAINTAIN_EVERY  # compiled, both sides of the test are C integers
        if shared.ops >= every:
            shared.maintain()
            if shared.reports:
                self._deliver_reports(shared)
        if blob is None and raw is not None:
            record = _plain_record(raw)
            if record is not None:  # a format-2 record, as nearly always
                now = self.clock()  # compiled, the times are compared as C doubles
                expires_at = _record_field(record, 2)
                return EXPIRED if now > expires_at else record
        return self._loaded(raw, blob)

    @cython.locals(shared=SharedFields)
    def cas(self, key: bytes, blob: bytes, expected_version: int, expires_at: float) -> WriteResult:
        if len(key) != 32:
            raise ValueError("store keys are 32 bytes")
        blob = bytes(blob)
        shared = self._shared_env
        if shared is None or shared.pid != _current_pid():
            shared = self._shared()
        if cython.compiled and not shared.draining:  # counted, not locked: see SharedFields
            lock = None
            shared.active += 1
        else:
            try:
                lock = shared.thread.lock
            except AttributeError:
                lock = shared.gate.thread_lock()
            lock.acquire()
        try:
            env = shared.env
            if env is None:
                result = _RETRY
            else:
                try:
                    txn = env.begin(None, None, True)
                    try:
                        result = self._cas(txn, shared, key, blob, expected_version, expires_at)
                    except BaseException:
                        txn.abort()
                        raise
                    txn.commit()
                except lmdb.Error:
                    result = _RETRY
        finally:
            if lock is None:
                shared.active -= 1
                if shared.draining and shared.active == 0:
                    shared.drained.set()  # the last transaction an exclusive holder waits for
            else:
                lock.release()
        if result is _RETRY:
            return self._run(True, self._cas, key, blob, expected_version, expires_at, need=len(blob))
        shared.ops += 1
        if shared.ops >= _MAINTAIN_EVERY:
            shared.maintain()
            if shared.reports:
                self._deliver_reports(shared)
        return result

    @cython.locals(shared=SharedFields)
    def _cas(self, txn, shared, key, blob, expected_version, expires_at):
        # One straight function: this is every session save.
        now = self.clock()
        raw = txn.get(key, None, shared.meta)
        if raw is None or len(raw) < _HEADER:
            return GONE  # missing, or damaged: a write treats it as missing
        fmt, kind, size, version, old_expires, _ = _unpack_meta(raw)
        if kind != _RECORD or now > old_expires:
            return GONE  # a tombstone, expired (or a damaged kind)
        if fmt == _FORMAT:
            if len(raw) != _HEADER + size:
                return GONE
        elif fmt != _FORMAT_SPLIT or len(raw) != _HEADER:
            return GONE
        if version != expected_version:
            return CONFLICT
        now_us = _time_ns() // 1000  # the next version, as _next_version()
        version = now_us if version < now_us else (version + 1) & _U64
        txn.put(key, _pack_meta(_FORMAT, _RECORD, len(blob), version, expires_at, now) + blob,
                True, True, False, shared.meta)
        if fmt == _FORMAT_SPLIT:
            txn.delete(key, b"", shared.data)
        if expires_at != old_expires:
            ms = expires_at * 1000.0
            old_ms = old_expires * 1000.0
            if not (0.0 < ms < _EXACT_MS and 0.0 < old_ms < _EXACT_MS and ms // _GRANULE_MS_F == old_ms // _GRANULE_MS_F):
                self._reindex(txn, shared, key, old_expires, expires_at)  # a new granule: rare
        return version


def _getpid() -> int:
    """This process's id: os.getpid(), which compiled is cached where a fork clears it (_lmdb_fast.pxd)."""
    return _current_pid()


def pid_is_cached() -> bool:
    """Whether _getpid() answers without a system call: compiled, on a kernel that wipes pages on fork."""
    return _pid_cached()


if not cython.compiled:  # compiled, inline C functions in _lmdb_fast.pxd
    _getpid = _current_pid = os.getpid  # noqa: F811 - without a Python frame more
    _record_field = operator.getitem  # compiled, a C read of the tuple (_record.pxd)

    def _pid_cached() -> bool:
        return False

    def _plain_record(raw: bytes) -> StoredRecord | None:
        """The record a format-2 entry holds; None for anything else (a tombstone, format 1, damage)."""
        if len(raw) <= _HEADER:
            return None
        fmt, kind, size, version, expires_at, last_access = _unpack_meta(raw)
        if fmt != _FORMAT or kind != _RECORD or len(raw) != _HEADER + size:
            return None
        return record_from((raw[_HEADER:], version, expires_at, last_access))
