# cython: annotation_typing=False
"""The LMDB store's read path: LmdbStore.load(), which every request with an LMDB session runs.

LmdbStore (lmdb.py) subclasses LmdbReadPath, which holds the two fields the read
needs (the shared environment and the clock) and load() itself. With the C
kernel this source is also compiled, as fastsess.stores._lmdb_read
(declarations in _lmdb_read.pxd), as _request_py.py and _session_py.py are:
a session then calls load() without a Python frame, and the entry's header is
read and its record built as C. Everything load() does not do in its one
read transaction (opening the environment, recovery, damaged entries, old
formats) is LmdbStore's, in Python.

The layout of an entry is described in lmdb.py; its header format is here,
where both modules read it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import lmdb

try:  # compiled, the declarations in _lmdb_read.pxd; in pure Python, no-ops
    import cython
except ImportError:
    from .._pure import cython

from .base import EXPIRED, LoadResult, StoredRecord, record_from

_META = struct.Struct("<BBxxIQdd")
_HEADER = _META.size
_unpack_meta = _META.unpack_from
_FORMAT = 2  # header and blob in one meta entry
_FORMAT_SPLIT = 1  # older releases: the header alone, the blob in the data sub-database
_RECORD, _TOMBSTONE = 0, 1
_MAINTAIN_EVERY = 1000  # operations between reader_check() and moved-file checks
_RETRY = object()  # a fast path (load, create, cas, touch) hit something only LmdbStore._run() handles
_getpid = os.getpid


class SharedFields:
    """The fields of lmdb._SharedEnv (one process's environment) that load() reads.

    _SharedEnv subclasses it; compiled, they are C struct fields, so load() reads
    them without Python's attribute lookup.
    """

    pid: int  # the process that opened env
    gate: Any  # the _Gate: many transactions, or one exclusive holder
    thread: Any  # gate.local; its .lock is this thread's lock, once it has one
    env: Any  # the lmdb.Environment, or None while closed
    meta: Any  # the sub-databases load() reads
    data: Any
    ops: int  # operations since the last maintenance
    reports: list  # what the environment noticed, for the stores to report


class LmdbReadPath:
    """load(), and the two fields it reads; LmdbStore is the rest of the store.

    No __init__: Store.__init__ sets clock, and LmdbStore's sets _shared_env.
    """

    clock: Callable[[], float]
    _shared_env: Any  # lmdb._SharedEnv, this process's environment; None until first used

    @cython.locals(shared=SharedFields)
    def load(self, key: bytes) -> LoadResult:
        # The hot path: one read transaction, no retry loop unless LMDB asks.
        if len(key) != 32:
            raise ValueError("store keys are 32 bytes")
        shared = self._shared_env
        if shared is None or shared.pid != _getpid():
            shared = self._shared()
        try:
            lock = shared.thread.lock
        except AttributeError:
            lock = shared.gate.thread_lock()
        blob = None
        lock.acquire()
        try:
            env = shared.env
            if env is None:
                raw = _RETRY
            else:
                try:
                    txn = env.begin()
                    try:
                        raw = txn.get(key, None, shared.meta)
                        if raw and raw[0] == _FORMAT_SPLIT:  # an int test: no slice made
                            blob = txn.get(key, db=shared.data)
                    finally:
                        txn.abort()
                except lmdb.Error:
                    raw = _RETRY
        finally:
            lock.release()
        if raw is _RETRY:
            return self._run(False, self._load, key)
        shared.ops += 1
        if shared.ops >= _MAINTAIN_EVERY:
            shared.maintain()
            if shared.reports:
                self._deliver_reports(shared)
        if blob is None and raw is not None:
            record = _plain_record(raw)
            if record is not None:  # a format-2 record, as nearly always
                return EXPIRED if self.clock() > record[2] else record
        return self._loaded(raw, blob)


if not cython.compiled:  # compiled, inline C functions in _lmdb_read.pxd

    def _plain_record(raw: bytes) -> StoredRecord | None:
        """The record a format-2 entry holds; None for anything else (a tombstone, format 1, damage)."""
        if len(raw) <= _HEADER:
            return None
        fmt, kind, size, version, expires_at, last_access = _unpack_meta(raw)
        if fmt != _FORMAT or kind != _RECORD or len(raw) != _HEADER + size:
            return None
        return record_from((raw[_HEADER:], version, expires_at, last_access))
