"""LMDB store: one memory-mapped environment in data_dir, shared by every process and thread.

Layout: two sub-databases in one environment (three for older records).

    meta    store key (32 bytes) -> 32-byte header, little-endian, then the blob:
              format u8 (2), kind u8 (0 record, 1 tombstone), 2 bytes zero,
              blob length u32, version u64, expires_at f64, last_access f64
    expiry  8-byte big-endian start of the record's expiry granule, in whole
            milliseconds (a multiple of 10 s) + store key -> b""
    data    format 1 only: store key -> blob. Releases before format 2 kept
            the header alone in meta (format 1) and the blob here.

One entry per record: a read is one lookup and a write dirties one page of
meta, where two entries cost a second B-tree on every read and write. LMDB
copies a page on every change anyway, so touch() rewriting the entry costs
no more than rewriting a 32-byte header; it keeps the blob's bytes and the
version. Format-1 records stay readable, and their next write stores them
in format 2 and drops the data entry, so an upgrade logs nobody out. The
other way does not hold: a process of an older release reads format-2
entries as damaged, so restart every worker when upgrading across format 2
rather than reloading them one by one onto a shared environment.

cleanup() walks the expiry index in order and stops at the first granule
that starts in the future, so its cost follows the number of expired
records, not the store size. The index holds granules, not exact expiries,
so a record rewritten or touched again within its granule leaves the index
alone: a busy session's write changes one entry of one sub-database.

A record's next version is max(its last version + 1, the time in
microseconds), taken in the writing transaction: versions of a key only grow
while its metadata lives, and one created again after deletion starts above
anything its earlier life can have reached (writes are microseconds apart).
An environment written by an older fastsess may hold a "state" sub-database
(a global version counter) and index entries in exact milliseconds; the
first is ignored and cleanup() re-files the second.

Durability: commits write through the page cache, so they survive a crash of
the process. With sync=True every commit is flushed to disk as well and
survives a power loss; with sync=False a power loss may lose the last
commits or damage the file, which is then moved aside (below).

The map stays read-only. A writable one (MDB_WRITEMAP) makes a write
transaction about four times cheaper, but a write into the sparse file on a
full disk is then SIGBUS instead of an error, and LMDB truncates the file to
the opening process's map size, so a process opening or adopting a size while
another grows the map can cut the file under the other's writes (SIGBUS too).

Processes and forks. The environment is opened lazily, once per process id
(checked on every operation: compiled, against a copy of getpid() kept in a
page the kernel wipes in a forked child, so no system call is made) and data directory, and shared
by every LmdbStore on that directory in the process: LMDB forbids opening one
environment twice in a process. LMDB handles must not cross a fork: closing
an inherited one in the child wipes the parent's reader slots, and lmdb 3.x
refuses a second open while the inherited one is alive. So an os.fork() hook
closes this process's environments just before every fork (after waiting for
running transactions) and both sides reopen on next use; the child inherits
nothing. A fork that skips the Python hooks (a C-level fork) leaves the child
an inherited environment: it goes to _graveyard, referenced and never used
or closed, and a fresh one is opened. Should the lmdb module refuse that
open, it is one that deallocates inherited environments without touching
LMDB, and the graveyard lets go of the old one first.

Failure handling: MapResizedError (another process grew the map) adopts the
new size and retries; MapFullError doubles the map and retries (raising
StoreError if the write still does not fit after two growths); a full
reader table is cleared of dead readers and retried once. A map that cannot
grow at all (no address space or memory for it) fails that write with a
StoreError, and the environment reopens at a size that maps: what is stored
stays readable, and writes that fit go on. An environment that cannot be
opened because it is damaged (a data file that ends inside a page included:
reading past its end would be SIGBUS), or that reports corruption in use, is
renamed to data.mdb.corrupt-<time> (and lock.mdb likewise) and replaced by an
empty one, with an error logged: sessions are disposable, an outage is not.
One record whose metadata or blob is damaged makes load() raise
CorruptRecord; writes treat it as missing, and cleanup() removes it.
Other failures raise StoreError.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable

import lmdb

from .. import core
from ..errors import CorruptRecord, StoreError
from .base import (
    CONFLICT,
    EXISTS,
    EXPIRED,
    GONE,
    TOMBSTONE,
    LoadResult,
    Store,
    UpdateFn,
    WriteResult,
    record_from,
)

_fast_path = core.build_of("fastsess.stores._lmdb_fast")  # compiled with the C kernel

LmdbFastPath = _fast_path.LmdbFastPath
# The header format, and the constants load() and cas() share with the rest of the store.
_META, _HEADER, _unpack_meta = _fast_path._META, _fast_path._HEADER, _fast_path._unpack_meta
_FORMAT, _FORMAT_SPLIT = _fast_path._FORMAT, _fast_path._FORMAT_SPLIT
_RECORD, _TOMBSTONE = _fast_path._RECORD, _fast_path._TOMBSTONE
_MAINTAIN_EVERY = _fast_path._MAINTAIN_EVERY
_RETRY = _fast_path._RETRY
_getpid = _fast_path._getpid
_pack_meta = _fast_path._pack_meta
_MS = struct.Struct(">Q")
_pack_ms = _MS.pack
_MAX_MS = (1 << 64) - 1
_GRANULE_MS, _GRANULE_MS_F, _EXACT_MS = _fast_path._GRANULE_MS, _fast_path._GRANULE_MS_F, _fast_path._EXACT_MS
_U64 = _fast_path._U64
_DRAIN_POLL_SECONDS = 0.05  # an exclusive holder rechecks the running count at least this often
_MAP_GRANULE = 1 << 16  # map sizes stay multiples of every common page size
_ATTEMPTS = 5
_LOCK_PAGE = 4096  # lock.mdb's first page: LMDB's header and the first reader slots
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_time_ns = _fast_path._time_ns
# The per-request paths call py-lmdb positionally, as begin(db, parent, write),
# get(key, default, db), put(key, value, dupdata, overwrite, append, db) and
# delete(key, value, db): it parses keyword arguments slowly (~70 ns a call).

_CORRUPTION: tuple = tuple(
    cls
    for cls in (
        lmdb.CorruptedError,
        lmdb.PageNotFoundError,
        lmdb.InvalidError,
        lmdb.VersionMismatchError,
        lmdb.PanicError,
        lmdb.IncompatibleError,
        getattr(lmdb, "BadChecksumError", None),
    )
    if cls is not None
)

_registry: dict = {}  # (realpath, pid) -> _SharedEnv
_registry_lock = threading.Lock()
#: (path, environment) inherited through a fork that bypassed the os.fork()
#: hooks: kept referenced so they are not deallocated, and never used or closed.
_graveyard: list = []
_graveyard_lock = threading.Lock()  # taken last, never while waiting for another lock


def _granule(expires_at: float) -> int:
    """The start of expires_at's expiry granule, in whole milliseconds."""
    ms = expires_at * 1000
    if not ms < _MAX_MS:  # also catches inf and nan
        ms = _MAX_MS
    else:
        ms = int(ms) if ms > 0 else 0
    return ms - ms % _GRANULE_MS


def _index_key(expires_at: float, key: bytes) -> bytes:
    """The expiry index entry: the start of the expiry's granule, then the store key."""
    return _MS.pack(_granule(expires_at)) + key


def _parse_meta(raw: bytes | None) -> tuple | None:
    """(kind, size, version, expires_at, last_access, split), or None when missing or damaged.

    split: a format-1 entry, whose blob is in the data sub-database.
    """
    if raw is None or len(raw) < _HEADER:
        return None
    fmt, kind, size, version, expires_at, last_access = _META.unpack_from(raw)
    if kind > _TOMBSTONE:
        return None
    if fmt == _FORMAT:
        if len(raw) != _HEADER + size:
            return None
    elif fmt != _FORMAT_SPLIT or len(raw) != _HEADER:
        return None
    return kind, size, version, expires_at, last_access, fmt == _FORMAT_SPLIT


def _reindex(txn, shared, key: bytes, old_expires: float | None, expires_at: float) -> None:
    """Keep key's one expiry index entry in expires_at's granule; old_expires: the expiry it replaces, if any."""
    granule = _granule(expires_at)
    if old_expires is not None:
        old_granule = _granule(old_expires)
        if old_granule == granule:
            return  # the same granule: the expiry index is not written at all
        txn.delete(_MS.pack(old_granule) + key, b"", shared.expiry)
    txn.put(_MS.pack(granule) + key, b"", True, True, False, shared.expiry)


def _allocate_lock_file(path: str) -> None:
    """Give lock.mdb disk blocks before LMDB opens it; never while this process has it open.

    LMDB sizes its lock file with ftruncate (a sparse file) and writes its
    header and reader slots through a shared mapping: on a full disk, the first
    write to a page without a block is SIGBUS, which kills the process. With
    the blocks allocated first, a full disk is a StoreError here instead. A
    file in use gets blocks for its size, never a new size (LMDB reads the
    number of reader slots from it); a new one gets its first page, where LMDB
    writes its header and the first slots. Only before lmdb.open(): closing
    any descriptor of the file drops this process's POSIX locks on it, LMDB's
    own included.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)  # as lmdb.open() would: it may have been removed
        fd = os.open(os.path.join(path, "lock.mdb"), os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
        try:
            fallocate(fd, 0, os.fstat(fd).st_size or _LOCK_PAGE)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # a filesystem that cannot allocate ahead: nothing to gain here
        raise StoreError(
            f"lmdb store: cannot allocate the lock file in {path}: "
            f"{errno.errorcode.get(exc.errno or 0, 'error')} ({exc.strerror})"
        ) from None


class _Gate:
    """Many transactions at once, or one exclusive holder (map resize, reopen, fork).

    LMDB requires that no transaction of this process runs while the map is
    resized or the environment closed. Each thread holds a lock of its own
    while it runs one, so the common path takes one uncontended lock; the
    exclusive holder takes every thread's lock. (Compiled, load() and cas()
    count their transactions instead; _SharedEnv.acquire_exclusive() waits
    for those as well, and is what the store calls.)
    """

    def __init__(self) -> None:
        #: this thread's state: .lock once the thread has one (thread_lock())
        self.local = threading.local()
        self._locks: weakref.WeakSet = weakref.WeakSet()  # a thread's lock goes when the thread does
        self._exclusive = threading.Lock()
        self._held: list = []

    def thread_lock(self):
        """This thread's lock; acquire it around a transaction."""
        try:
            return self.local.lock
        except AttributeError:
            lock = threading.Lock()
            # Registering under the exclusive lock: an exclusive holder never
            # misses a thread that starts meanwhile.
            with self._exclusive:
                self._locks.add(lock)
            self.local.lock = lock
            return lock

    def acquire_exclusive(self) -> None:
        """Wait for running transactions and block new ones; never call it holding thread_lock()."""
        self._exclusive.acquire()
        held = list(self._locks)
        for lock in held:
            lock.acquire()
        self._held = held

    def release_exclusive(self) -> None:
        held, self._held = self._held, []
        for lock in held:
            lock.release()
        self._exclusive.release()


class _SharedEnv(_fast_path.SharedFields):
    """One process's environment for one directory, shared by its LmdbStores.

    The fields load() and cas() read are SharedFields' (C struct fields with the C kernel).
    """

    def __init__(self, path: str, map_size: int, sync: bool, max_readers: int) -> None:
        self.path = path
        self.pid = os.getpid()
        self.map_size = map_size
        self.sync = sync
        self.max_readers = max_readers
        self.gate = _Gate()
        self.thread = self.gate.local  # its .lock is gate.thread_lock(), one attribute away
        self.env: lmdb.Environment | None = None
        self.meta = self.data = self.expiry = None
        self.identity: tuple | None = None
        self.users = 0
        self.ops = 0
        self.active = 0
        self.draining = False
        self.drained = threading.Event()
        #: the stores on this environment, and what it noticed for them to report
        #: (outside its locks: an on_event hook may use the store)
        self.stores: weakref.WeakSet = weakref.WeakSet()
        self.reports: list[str] = []

    def acquire_exclusive(self) -> None:
        """Wait for running transactions, locked or counted (SharedFields), and block new ones."""
        self.gate.acquire_exclusive()
        self.draining = True
        while self.active:
            self.drained.clear()
            if self.active:  # the last one sets drained after this clear
                self.drained.wait(_DRAIN_POLL_SECONDS)

    def release_exclusive(self) -> None:
        self.draining = False
        self.gate.release_exclusive()

    # -- called with the gate held exclusively

    def exclusively(self, fn: Callable[[], None]) -> None:
        self.acquire_exclusive()
        try:
            fn()
        finally:
            self.release_exclusive()

    def _data_identity(self) -> tuple | None:
        try:
            st = os.stat(os.path.join(self.path, "data.mdb"))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"lmdb store: cannot inspect {self.path}: {exc.strerror}") from None
        return st.st_dev, st.st_ino

    def ensure_open(self) -> None:
        if self.env is not None:
            return
        tried = self._data_identity()
        try:
            try:
                self._open()
            except lmdb.Error as exc:
                if "already open" not in str(exc) or not _forget_inherited(self.path):
                    raise
                self._open()
        except _CORRUPTION as exc:
            self._move_aside(tried, f"could not be opened ({type(exc).__name__})")
            try:
                self._open()
            except lmdb.Error as again:
                raise self._error(again) from None
        except lmdb.Error as exc:
            raise self._error(exc) from None

    def _error(self, exc: lmdb.Error) -> StoreError:
        if "already open" in str(exc):
            return StoreError(
                f"lmdb store: this process inherited the open environment in {self.path} through a fork "
                "that bypassed os.fork(), and the lmdb module refuses to open it again; "
                "create the store after forking"
            )
        return StoreError(f"lmdb store: cannot open the environment in {self.path}: {exc}")

    def _open(self) -> None:
        # Other processes may grow the data while we open: a map smaller than
        # the data fails with MapResizedError, inside lmdb.open() or at the
        # first transaction. Size the map from the file, and retry.
        for _ in range(_ATTEMPTS):
            try:
                size = os.stat(os.path.join(self.path, "data.mdb")).st_size
            except OSError:
                size = 0
            needed = max(self.map_size, -(-size // _MAP_GRANULE) * _MAP_GRANULE)
            try:
                try:
                    self._open_sized(max(needed, -(-2 * size // _MAP_GRANULE) * _MAP_GRANULE))
                except lmdb.MemoryError:
                    # No address space (or memory) for room to grow: map what the data needs.
                    self._open_sized(needed)
                return
            except lmdb.MapResizedError:
                continue
        raise lmdb.Error(f"{self.path}: the map kept growing while it was being opened")

    def _open_sized(self, map_size: int) -> None:
        _allocate_lock_file(self.path)
        env = lmdb.open(
            self.path,
            map_size=map_size,
            subdir=True,
            sync=self.sync,
            metasync=self.sync,
            mode=0o700,
            readahead=False,  # random access: readahead only evicts useful pages
            max_readers=self.max_readers,
            max_dbs=8,
        )
        try:
            meta = env.open_db(b"meta")
            data = env.open_db(b"data")
            expiry = env.open_db(b"expiry")
            env.reader_check()
            # LMDB writes whole pages: a data file that ends inside one was cut
            # short (a copy cut off, say), and reading a page mapped past its end
            # would be SIGBUS. (Its last pages may legitimately be unwritten free
            # pages, so a length short of last_pgno proves nothing.)
            if os.stat(os.path.join(self.path, "data.mdb")).st_size % env.stat()["psize"]:
                raise lmdb.CorruptedError(f"{self.path}: data.mdb ends inside a page")
            # Another process may have grown the map beyond our request.
            self.map_size = env.info()["map_size"]
        except BaseException:
            env.close()
            raise
        self.env, self.meta, self.data, self.expiry = env, meta, data, expiry
        self.identity = self._data_identity()
        self.ops = 0

    def close_env(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env = self.meta = self.data = self.expiry = None

    def repair(self, fn: Callable[[], None]) -> None:
        """Run one of _run's repairs exclusively; LMDB failing it is a StoreError.

        A map that cannot be resized (the address space or memory is exhausted)
        leaves the environment unusable: py-lmdb invalidates it. It is closed,
        and the next operation opens it again at a size that maps, so records
        stay readable and writes that fit keep working.
        """
        self.acquire_exclusive()
        try:
            fn()
        except lmdb.Error as exc:
            try:
                self.close_env()
            except lmdb.Error:
                self.env = self.meta = self.data = self.expiry = None
            raise StoreError(
                f"lmdb store: the map in {self.path} could not be resized or repaired "
                f"(at {self.map_size} bytes): {exc}"
            ) from None
        finally:
            self.release_exclusive()

    def recover(self, failing: lmdb.Environment, reason: str) -> None:
        """Replace an environment that reported corruption, unless someone already did."""
        if self.env is not failing:
            return
        identity = self.identity
        self.close_env()
        self._move_aside(identity, reason)
        self.ensure_open()

    def clear_readers(self, failing: lmdb.Environment) -> None:
        if self.env is failing:
            self.env.reader_check()

    def reopen_if_moved(self) -> None:
        if self.env is not None and self._data_identity() != self.identity:
            self.close_env()
            self.ensure_open()

    def _move_aside(self, identity: tuple | None, reason: str) -> None:
        """Rename the damaged files, unless another process already replaced them."""
        suffix = f".corrupt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        try:
            fd = os.open(os.path.join(self.path, "recovery.lock"), os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"lmdb store: cannot recover {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._data_identity() != identity:
                return
            for name in ("data.mdb", "lock.mdb"):
                try:
                    os.replace(os.path.join(self.path, name), os.path.join(self.path, name + suffix))
                except FileNotFoundError:
                    pass
        except OSError as exc:
            raise StoreError(f"lmdb store: cannot recover {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        self.reports.append(
            f"lmdb store: the environment in {self.path} {reason}; moved it aside as data.mdb{suffix} "
            "and started empty"
        )

    def grow(self, failing: lmdb.Environment, seen_size: int, need: int) -> None:
        """Double the map, unless it was reopened or grown since the failure."""
        if self.env is not failing or self.map_size != seen_size:
            return
        current = self.env.info()["map_size"]
        size = max(current * 2, current + 4 * need)
        size = -(-size // _MAP_GRANULE) * _MAP_GRANULE
        self.env.set_mapsize(size)
        self.map_size = self.env.info()["map_size"]

    def adopt_map_size(self, failing: lmdb.Environment) -> None:
        """Take the size another process grew the map to."""
        if self.env is not failing:
            return
        self.env.set_mapsize(0)
        self.map_size = self.env.info()["map_size"]

    # -- shared use

    def enter(self):
        """(environment, lock): an open environment and this thread's held gate lock."""
        lock = self.gate.thread_lock()
        while True:
            lock.acquire()
            env = self.env
            if env is not None:
                return env, lock
            lock.release()
            self.exclusively(self.ensure_open)

    def maintain(self) -> None:
        """Clear dead readers; follow the files if another process moved them aside."""
        self.ops = 0
        env, lock = self.enter()
        try:
            env.reader_check()
            moved = self._data_identity() != self.identity
        except (lmdb.Error, StoreError):
            moved = False  # maintenance must not fail the operation that triggered it
        finally:
            lock.release()
        if moved:
            self.exclusively(self.reopen_if_moved)


def _bury_inherited(pid: int) -> None:
    """Drop other processes' entries; their open environments go to the graveyard."""
    for entry_key, shared in list(_registry.items()):
        if shared.pid != pid:
            if shared.env is not None:
                with _graveyard_lock:
                    _graveyard.append((shared.path, shared.env))
                # Forget, never close: closing in a child clears the parent's readers.
                shared.env = shared.meta = shared.data = shared.expiry = None
            del _registry[entry_key]


def _forget_inherited(path: str) -> bool:
    """Release the graveyard's environments for path; True when there were any.

    For lmdb modules that refuse to open an environment while an inherited one
    is alive. Those same modules deallocate an inherited environment without
    touching LMDB (they compare process ids), so releasing it is safe there.
    """
    with _graveyard_lock:
        kept = [entry for entry in _graveyard if entry[0] != path]
        if len(kept) == len(_graveyard):
            return False
        released = _graveyard[:]
        _graveyard[:] = kept
    del released  # deallocated here, outside the lock
    return True


def _before_fork() -> None:
    # Close this process's environments so the child inherits none; the gates
    # stay held across the fork so no thread reopens one in between.
    _registry_lock.acquire()
    pid = os.getpid()
    for shared in _registry.values():
        if shared.pid == pid:
            shared.acquire_exclusive()
            try:
                shared.close_env()
            except lmdb.Error:
                shared.env = None


def _after_fork_in_parent() -> None:
    pid = os.getpid()
    for shared in _registry.values():
        if shared.pid == pid:
            shared.release_exclusive()
    _registry_lock.release()


def _after_fork_in_child() -> None:
    # Nothing is open (see _before_fork); the child builds its own entries.
    _registry.clear()
    _registry_lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )


class LmdbStore(LmdbFastPath, Store):
    """Sessions in an LMDB environment; see the module docstring for the layout.

    LmdbFastPath comes first, so its load() and cas() are the store's: with the C
    kernel they are found on the compiled type, and called without a Python frame.
    """

    has_locked_update = True
    kind = "lmdb"
    _reindex = staticmethod(_reindex)  # for LmdbFastPath's _cas, whose module cannot import this one

    def __init__(
        self,
        data_dir: str,
        map_size: int = 1 << 30,
        sync: bool = False,
        max_readers: int = 512,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create data_dir if missing; the environment itself opens on first use.

        map_size is address space, not disk: the file grows as data does.
        max_readers bounds concurrent reads across all processes (workers x
        threads); the first process to open the environment sets it.
        Options of the first store on a directory in a process apply to all.
        """
        super().__init__(clock)
        if map_size < _MAP_GRANULE:
            raise ValueError(f"map_size must be at least {_MAP_GRANULE} bytes")
        try:
            os.makedirs(data_dir, mode=0o700, exist_ok=True)
            self.data_dir = os.path.realpath(data_dir)
            probe = os.path.join(self.data_dir, f".probe-{os.urandom(6).hex()}.tmp")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise StoreError(
                f"lmdb store: cannot create or write the data directory {os.path.abspath(data_dir)}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        self.map_size = -(-map_size // _MAP_GRANULE) * _MAP_GRANULE
        self.sync = sync
        self.max_readers = max_readers
        self._shared_env: _SharedEnv | None = None
        self._closed = False

    # -- environment plumbing

    def _shared(self) -> _SharedEnv:
        shared = self._shared_env
        pid = os.getpid()
        if shared is not None and shared.pid == pid:
            return shared
        with _registry_lock:
            if self._closed:
                raise StoreError("lmdb store: used after close()")
            _bury_inherited(pid)
            shared = _registry.get((self.data_dir, pid))
            if shared is None:
                shared = _SharedEnv(self.data_dir, self.map_size, self.sync, self.max_readers)
                _registry[(self.data_dir, pid)] = shared
            shared.users += 1
            shared.stores.add(self)
            self._shared_env = shared
            return shared

    def _environment(self) -> lmdb.Environment:
        """This process's open environment (for tests and tools)."""
        env, lock = self._shared().enter()
        lock.release()
        return env

    def _report_damaged(self) -> None:
        self._report("store_error", "lmdb store: a damaged session record was treated as missing by a write",
                     logging.WARNING)

    def _deliver_reports(self, shared: _SharedEnv) -> None:
        """Report what the environment noticed to every store on it with a reporter (else log it once)."""
        while shared.reports:
            try:
                message = shared.reports.pop(0)
            except IndexError:  # another thread delivered it
                return
            for store in [store for store in shared.stores if store.report is not None] or [self]:
                store._report("store_error", message)

    def _run(self, write: bool, body: Callable, *args, need: int = 0):
        """Run body(txn, shared, *args) in one transaction, recovering from LMDB's soft failures.

        need: bytes this write adds, so a map that must grow grows enough.
        """
        shared = self._shared_env
        if shared is None or shared.pid != _getpid():
            shared = self._shared()
        try:
            return self._attempt(shared, write, body, args, need)
        finally:
            if shared.reports:
                self._deliver_reports(shared)

    def _attempt(self, shared: _SharedEnv, write: bool, body: Callable, args: tuple, need: int):
        growths = 0
        readers_cleared = False
        for _ in range(_ATTEMPTS):
            repair = None
            env, lock = shared.enter()
            seen_size = shared.map_size
            try:
                txn = env.begin(None, None, write)
                try:
                    result = body(txn, shared, *args)
                except BaseException:
                    txn.abort()
                    raise
                txn.commit()
            except lmdb.MapResizedError:
                repair = functools.partial(shared.adopt_map_size, env)
            except lmdb.MapFullError:
                # Twice: a concurrent thread's growth may have been the first.
                if growths == 2:
                    raise StoreError(
                        f"lmdb store: the map in {self.data_dir} is full at {shared.map_size} bytes "
                        "even after growing it; raise lmdb_map_size"
                    ) from None
                growths += 1
                repair = functools.partial(shared.grow, env, seen_size, need)
            except lmdb.ReadersFullError:
                if readers_cleared:
                    raise StoreError(
                        f"lmdb store: all {shared.max_readers} reader slots of {self.data_dir} are in use; "
                        "raise max_readers (workers x threads)"
                    ) from None
                readers_cleared = True
                repair = functools.partial(shared.clear_readers, env)
            except _CORRUPTION as exc:
                repair = functools.partial(shared.recover, env, f"reported corruption ({type(exc).__name__})")
            except lmdb.Error as exc:
                raise StoreError(f"lmdb store: {type(exc).__name__} in {self.data_dir}: {exc}") from None
            finally:
                lock.release()
            if repair is None:
                shared.ops += 1
                if shared.ops >= _MAINTAIN_EVERY:
                    shared.maintain()
                return result
            shared.repair(repair)
        raise StoreError(f"lmdb store: gave up on {self.data_dir} after {_ATTEMPTS} attempts")

    @staticmethod
    def _next_version(old: tuple | None) -> int:
        """The version a write gives a record whose metadata was old (None: there was none)."""
        now_us = time.time_ns() // 1000
        if old is None or old[2] < now_us:
            return now_us
        return (old[2] + 1) & _U64

    @staticmethod
    def _put(txn, shared, key, old, kind, version, blob, expires_at, last_access) -> None:
        """Write the entry; move the index entry when the expiry left its granule."""
        entry = _META.pack(_FORMAT, kind, len(blob), version, expires_at, last_access) + blob
        txn.put(key, entry, True, True, False, shared.meta)
        if old is not None and old[5]:
            txn.delete(key, db=shared.data)
        _reindex(txn, shared, key, None if old is None else old[3], expires_at)

    @staticmethod
    def _check_key(key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("store keys are 32 bytes")

    # -- the Store interface

    # load() and cas() are LmdbFastPath's (_lmdb_fast_py.py), compiled with the C kernel.

    def _load(self, txn, shared, key):
        raw = txn.get(key, db=shared.meta)
        split = bool(raw) and raw[0] == _FORMAT_SPLIT
        return self._loaded(raw, txn.get(key, db=shared.data) if split else None)

    def _loaded(self, raw: bytes | None, blob: bytes | None) -> LoadResult:
        """The record in an entry; blob: a format-1 entry's blob from the data sub-database."""
        if raw is None:
            return None
        meta = _parse_meta(raw)
        if meta is None:
            raise self._damaged()
        kind, size, version, expires_at, last_access, split = meta
        if self.clock() > expires_at:
            return None if kind == _TOMBSTONE else EXPIRED
        if kind == _TOMBSTONE:
            return TOMBSTONE
        if not split:
            blob = raw[_HEADER:]
        elif blob is None or len(blob) != size:
            raise self._damaged()
        return record_from((blob, version, expires_at, last_access))

    def _damaged(self) -> CorruptRecord:
        return CorruptRecord(f"lmdb store: a session record in {self.data_dir} is damaged")

    # create, cas and touch each run their transaction inline, as load does: the common
    # case in one frame, anything LMDB raises handed to _run's recovery loop. One shared
    # helper for the three costs a frame and an argument tuple, about 3,000 instructions
    # (3%) per request that saves (bench/instructions.sh fastsess-c-lmdb modify).

    def create(self, key: bytes, blob: bytes, expires_at: float) -> WriteResult:
        if len(key) != 32:
            raise ValueError("store keys are 32 bytes")
        blob = bytes(blob)
        shared = self._shared_env
        if shared is None or shared.pid != _getpid():
            shared = self._shared()
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
                        result = self._create(txn, shared, key, blob, expires_at)
                    except BaseException:
                        txn.abort()
                        raise
                    txn.commit()
                except lmdb.Error:
                    result = _RETRY
        finally:
            lock.release()
        if result is _RETRY:
            return self._run(True, self._create, key, blob, expires_at, need=len(blob))
        shared.ops += 1
        if shared.ops >= _MAINTAIN_EVERY:
            shared.maintain()
            if shared.reports:
                self._deliver_reports(shared)
        return result

    def _create(self, txn, shared, key, blob, expires_at):
        now = self.clock()
        raw = txn.get(key, None, shared.meta)
        if raw is None:  # a new session, as nearly always: version as _next_version(None)
            version = _time_ns() // 1000
            txn.put(key, _pack_meta(_FORMAT, _RECORD, len(blob), version, expires_at, now) + blob,
                    True, True, False, shared.meta)
            txn.put(_pack_ms(_granule(expires_at)) + key, b"", True, True, False, shared.expiry)
            return version
        old = _parse_meta(raw)
        if old is not None and now < old[3]:
            return EXISTS
        if old is None:  # a damaged entry: its format-1 blob may linger
            txn.delete(key, b"", shared.data)
        version = self._next_version(old)
        self._put(txn, shared, key, old, _RECORD, version, blob, expires_at, now)
        return version

    # cas() and _cas() are LmdbFastPath's too: every session save runs them.

    def touch(self, key: bytes, expires_at: float) -> bool:
        if len(key) != 32:
            raise ValueError("store keys are 32 bytes")
        shared = self._shared_env
        if shared is None or shared.pid != _getpid():
            shared = self._shared()
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
                        result = self._touch(txn, shared, key, expires_at)
                    except BaseException:
                        txn.abort()
                        raise
                    txn.commit()
                except lmdb.Error:
                    result = _RETRY
        finally:
            lock.release()
        if result is _RETRY:
            return self._run(True, self._touch, key, expires_at)
        shared.ops += 1
        if shared.ops >= _MAINTAIN_EVERY:
            shared.maintain()
            if shared.reports:
                self._deliver_reports(shared)
        return result

    def _touch(self, txn, shared, key, expires_at) -> bool:
        now = self.clock()
        raw = txn.get(key, None, shared.meta)
        if raw is None or len(raw) < _HEADER:
            return False  # missing, or damaged
        fmt, kind, size, version, old_expires, _ = _unpack_meta(raw)
        if kind != _RECORD or now > old_expires:
            return False  # a tombstone, expired (or a damaged kind)
        if fmt == _FORMAT and len(raw) == _HEADER + size:
            entry = _pack_meta(_FORMAT, _RECORD, size, version, expires_at, now) + raw[_HEADER:]
        elif fmt == _FORMAT_SPLIT and len(raw) == _HEADER:  # the blob stays where it is
            entry = _pack_meta(_FORMAT_SPLIT, _RECORD, size, version, expires_at, now)
        else:
            return False  # damaged
        txn.put(key, entry, True, True, False, shared.meta)
        if expires_at != old_expires:
            ms = expires_at * 1000.0
            old_ms = old_expires * 1000.0
            if not (0.0 < ms < _EXACT_MS and 0.0 < old_ms < _EXACT_MS and ms // _GRANULE_MS_F == old_ms // _GRANULE_MS_F):
                _reindex(txn, shared, key, old_expires, expires_at)
        return True

    def delete(self, key: bytes) -> None:
        self._check_key(key)
        self._run(True, self._delete, key)

    def _delete(self, txn, shared, key):
        old = _parse_meta(txn.get(key, db=shared.meta))
        if old is not None:
            txn.delete(_index_key(old[3], key), db=shared.expiry)
        txn.delete(key, db=shared.meta)
        if old is None or old[5]:  # format 1, or damaged: a blob may be in data
            txn.delete(key, db=shared.data)

    def rotate(
        self,
        old_key: bytes,
        new_key: bytes,
        blob: bytes,
        expires_at: float,
        tombstone_seconds: float,
        expected_version: int | None = None,
    ) -> WriteResult:
        self._check_key(old_key)
        self._check_key(new_key)
        args = (old_key, new_key, bytes(blob), expires_at, tombstone_seconds, expected_version)
        return self._run(True, self._rotate, *args, need=len(blob))

    def _rotate(self, txn, shared, old_key, new_key, blob, expires_at, tombstone_seconds, expected_version):
        now = self.clock()
        old = _parse_meta(txn.get(old_key, None, shared.meta))
        if old is None or now > old[3] or old[0] == _TOMBSTONE:
            return GONE
        if expected_version is not None and old[2] != expected_version:
            return CONFLICT
        existing = _parse_meta(txn.get(new_key, None, shared.meta))
        if existing is not None and not now > existing[3]:  # live, a tombstone included
            return CONFLICT
        version = self._next_version(existing)
        self._put(txn, shared, new_key, existing, _RECORD, version, blob, expires_at, now)
        tombstone_version = self._next_version(old)
        self._put(txn, shared, old_key, old, _TOMBSTONE, tombstone_version, b"", now + tombstone_seconds, now)
        return version

    def locked_update(self, key: bytes, fn: UpdateFn) -> WriteResult:
        """Run fn inside one write transaction; fn must not use this store.

        If LMDB asks for a retry (map growth), fn is not called again unless
        the record changed in between.
        """
        self._check_key(key)
        seen: list = []
        return self._run(True, self._locked_update, key, fn, seen)

    def _locked_update(self, txn, shared, key, fn, seen):
        now = self.clock()
        raw = txn.get(key, db=shared.meta)
        old = _parse_meta(raw)
        if old is None or now > old[3] or old[0] == _TOMBSTONE:
            if raw is not None and old is None:
                self._report_damaged()
            return GONE
        kind, size, version, expires_at, last_access, split = old
        blob = txn.get(key, db=shared.data) if split else raw[_HEADER:]
        if blob is None or len(blob) != size:
            self._report_damaged()
            return GONE
        if seen and seen[0] == version:
            result = seen[1]
        else:
            result = fn(record_from((blob, version, expires_at, last_access)))
            seen[:] = [version, result]
        if result is None:
            return version
        new_blob, new_expires = result
        new_version = self._next_version(old)
        self._put(txn, shared, key, old, _RECORD, new_version, bytes(new_blob), new_expires, now)
        return new_version

    def cleanup(self, now: float, budget: int) -> int:
        if budget <= 0:
            return 0
        self._shared().maintain()
        return self._run(True, self._cleanup, now, budget)

    def _cleanup(self, txn, shared, now, budget):
        limit = _index_key(now, b"")  # the granule now is in: it and every earlier one
        removed = scanned = 0
        # Records of the current granule that have not expired yet are
        # skipped; bound how many a call looks at.
        scan_limit = 4 * budget + 64
        refile = []
        cursor = txn.cursor(db=shared.expiry)
        if not cursor.first():
            return 0
        while removed < budget and scanned < scan_limit:
            index_key = cursor.key()
            if not index_key or index_key[:8] > limit:
                break
            scanned += 1
            key = index_key[8:]
            raw = txn.get(key, db=shared.meta)
            meta = _parse_meta(raw)
            if meta is None:
                if raw is not None:  # damaged: it goes too
                    txn.delete(key, db=shared.meta)
                    txn.delete(key, db=shared.data)
                    removed += 1
                cursor.delete()
            elif now > meta[3]:
                txn.delete(key, db=shared.meta)
                if meta[5]:
                    txn.delete(key, db=shared.data)
                cursor.delete()
                removed += 1
            elif _index_key(meta[3], key) != index_key:
                # Not where this record's expiry files it: left by a damaged
                # write or by an older fastsess (exact milliseconds).
                cursor.delete()
                refile.append(_index_key(meta[3], key))
            elif not cursor.next():
                break
        for index_key in refile:
            txn.put(index_key, b"", db=shared.expiry)
        return removed

    def close(self) -> None:
        with _registry_lock:
            if self._closed:
                return
            self._closed = True
            shared, self._shared_env = self._shared_env, None
            if shared is None or shared.pid != os.getpid():
                return
            shared.users -= 1
            if shared.users > 0:
                return
            if _registry.get((shared.path, shared.pid)) is shared:
                del _registry[(shared.path, shared.pid)]
        shared.exclusively(shared.close_env)
