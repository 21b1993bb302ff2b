"""File store: one file per session under data_dir, safe for many processes on one machine.

Layout. A record for store key K lives at data_dir/K[0:2]/K in lower-case
hex, so names never carry anything but hex digits of a SHA-256 digest. Writes
go to a temporary file in the same directory and are moved in place
atomically, so readers never lock and never see a torn or missing file.
One level of 256 directories: a new session lands in a directory that exists
(making one costs about as much as writing the file), and a million sessions
are about 4000 files per directory, which ext4's hashed directories look up
in constant time. Earlier versions used a second level, data_dir/K[0:2]/K[2:4]/K:
a record still there is moved up when its key is first looked for, and
cleanup walks both levels, so an upgrade keeps every session.

Moving in place. Over an existing file, os.replace (rename) costs about 150
us on ext4, not for the rename: ext4 (and btrfs) see "replace via rename"
and write the new file's data out first (auto_da_alloc), a guard for
programs that never fsync. On Linux the store swaps the two names instead,
renameat2(RENAME_EXCHANGE), atomic just the same, and unlinks the old file
now under the temporary name: about 30 us for the whole write. What the
guard gave is not lost here: a session file is whole after a crash of the
process either way, and a power loss is what fsync=True is for (a file
damaged by one reads as missing). Where the exchange is not available (not
Linux, an old C library, a filesystem that refuses it) os.replace is used.

File content: a 40-byte header, then the blob.

    offset  size  field
    0       4     magic b"FSSF"
    4       1     format (1)
    5       1     kind (0 record, 1 tombstone)
    6       2     flags (0; room for a later user index)
    8       8     version, u64
    16      8     expires_at as written, f64 Unix time
    24      8     last_access as written, f64 Unix time
    32      4     blob length, u32
    36      4     CRC-32 of bytes 0..35 and the blob
    (all little-endian)

A file that fails these checks (wrong magic, cut short, bad CRC) is damaged:
load() raises CorruptRecord and writes treat it as missing, so create()
replaces it; cleanup() goes by mtime and never reads it.

Expiry lives in the file's mtime. Every write sets mtime to expires_at, so
cleanup decides from a stat alone, and touch() is one os.utime that moves
mtime to the new expires_at without rewriting data or bumping the version.
last_access is mtime minus the "lead" (expires_at - last_access) recorded in
the header; while mtime still equals the written expires_at to the
nanosecond the header values are returned exactly. A touch keeps last_access
exact (within 1 ms) when the new lead equals the stored one, which is the
case while the idle timeout governs expiry. When it does not (the absolute
timeout caps expiry, or the timeout changed), touch rewrites the file with
the same version and blob and the new lead: rare, and still atomic.
Filesystems with coarse timestamps (1 s) lose up to their granularity on
expiry; ext4, XFS, btrfs and tmpfs keep nanoseconds.

Locking. Compare-and-set, create, touch, rotate and locked_update hold one of
256 stripe locks (stripe = first key byte): an flock on data_dir/locks/XX
plus a threading.Lock, since flock is per open file description and would let
two threads of one process in at once. Lock files are reopened after a fork
so parent and child never share a description. A stripe is also a top-level
shard directory, so cleanup takes one lock per directory. A lock file that
cannot be opened or locked (EMFILE under load, say) is a StoreError, and
whatever was taken is released first: a leaked thread lock would block every
later session on its stripe. Sessions cleared by hand while the store runs
(rm -rf data_dir) take the lock files with them: the directories are made
again, and a lock file found removed once locked is opened again at its path,
where other processes lock it too.

Versions start at a random 63-bit number for each create, so a stale
compare-and-set against a deleted and recreated record fails.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import NamedTuple

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

_MAGIC = b"FSSF"
_FORMAT = 1
_RECORD, _TOMBSTONE = 0, 1
_HEAD = struct.Struct("<4sBBHQddI")  # the header without its CRC
_HEADER_SIZE = _HEAD.size + 4
_STRIPES = 256
_U64 = (1 << 64) - 1
# A touch may keep the stored lead when the new one differs by less than this;
# last_access is then off by at most this much.
_TOUCH_SLACK = 0.001
# mtime cannot hold every float; expiry beyond this (year 2242) is stored as this.
_MAX_SECONDS = 1 << 33
# Temporary files older than this (by ctime) are leftovers of a crashed writer.
_STALE_TMP_SECONDS = 3600
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _load_renameat2():
    """libc's renameat2 through ctypes, or None (not Linux, or a C library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (ImportError, OSError, AttributeError):
        return None
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    renameat2.restype = ctypes.c_int
    return renameat2, ctypes.get_errno


_renameat2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: renameat2 errors meaning "not here": the kernel, C library or filesystem cannot exchange
_NO_EXCHANGE = frozenset((errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM))


class _Stored(NamedTuple):
    """A parsed, valid file."""

    kind: int
    version: int
    expires_at: float  # effective: from mtime once touched
    last_access: float
    written_expires: float
    written_access: float
    blob: bytes


def _ns(t: float) -> int:
    """Unix time in seconds to integer nanoseconds, exact to the float's precision."""
    if not t < _MAX_SECONDS:  # also catches inf and nan
        t = _MAX_SECONDS
    elif t < 0:
        t = 0.0
    whole = math.floor(t)
    return whole * 1_000_000_000 + round((t - whole) * 1e9)


def _new_version() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


def _encode(kind: int, version: int, expires_at: float, last_access: float, blob: bytes) -> bytes:
    head = _HEAD.pack(_MAGIC, _FORMAT, kind, 0, version, expires_at, last_access, len(blob))
    crc = zlib.crc32(blob, zlib.crc32(head))
    return b"".join((head, crc.to_bytes(4, "little"), blob))


def _decode(data: bytes, mtime_ns: int) -> _Stored | None:
    """The parsed file, or None when it is not one of ours or is damaged."""
    if len(data) < _HEADER_SIZE:
        return None
    magic, fmt, kind, _flags, version, expires_at, last_access, size = _HEAD.unpack_from(data)
    if magic != _MAGIC or fmt != _FORMAT or kind > _TOMBSTONE or len(data) != _HEADER_SIZE + size:
        return None
    view = memoryview(data)
    crc = zlib.crc32(view[_HEADER_SIZE:], zlib.crc32(view[: _HEAD.size]))
    if crc != int.from_bytes(view[_HEAD.size : _HEADER_SIZE], "little"):
        return None
    effective_expires, effective_access = expires_at, last_access
    if mtime_ns != _ns(expires_at):
        # touched since written: mtime is the expiry, the lead is unchanged
        effective_expires = mtime_ns / 1e9
        effective_access = effective_expires - (expires_at - last_access)
    return _Stored(
        kind, version, effective_expires, effective_access, expires_at, last_access, data[_HEADER_SIZE:]
    )


class FileStore(Store):
    """Sessions as files under data_dir; see the module docstring for the layout."""

    has_locked_update = True
    kind = "file"

    def __init__(self, data_dir: str, clock: Callable[[], float] = time.time, fsync: bool = False) -> None:
        super().__init__(clock)
        self.data_dir = os.path.abspath(data_dir)
        self.fsync = fsync
        self._exchange = _renameat2 is not None  # cleared when this filesystem refuses
        self._lock_dir = os.path.join(self.data_dir, "locks")
        try:
            os.makedirs(self._lock_dir, mode=0o700, exist_ok=True)
            # Prove the directory is writable now, not at the first request.
            probe = os.path.join(self.data_dir, f".probe-{os.urandom(6).hex()}.tmp")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600))
            os.unlink(probe)
        except OSError as exc:
            raise self._error("create or write the data directory", exc) from None
        self._cleanup_cursor = os.urandom(1)[0]  # processes start their sweeps apart
        self._reset_locks()

    # -- locking

    def _reset_locks(self) -> None:
        """Fresh thread locks and lock-file descriptors for this process."""
        self._pid = os.getpid()
        self._thread_locks = [threading.Lock() for _ in range(_STRIPES)]
        self._lock_fds = [-1] * _STRIPES

    def _after_fork(self) -> None:
        # The inherited descriptors share their open file description (and so
        # their flock) with the parent; closing our copies leaves the parent's
        # locks alone, unlocking them would not.
        for fd in self._lock_fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._reset_locks()

    def _acquire(self, stripes: tuple) -> None:
        """Take the stripes in ascending order (callers pass them sorted and distinct).

        On any failure every lock taken so far is released before the error is
        raised: a stripe whose thread lock leaked would block its sessions forever.
        """
        if self._pid != os.getpid():
            self._after_fork()
        taken: list = []
        try:
            for stripe in stripes:
                self._thread_locks[stripe].acquire()
                taken.append(stripe)
                # Safe without another lock: only the holder of the thread
                # lock of this stripe gets here.
                fd = self._lock_fds[stripe]
                if fd < 0:
                    fd = self._lock_fds[stripe] = self._open_lock_file(stripe)
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink == 0:
                    # Removed by hand (sessions cleared with rm -rf) since we opened
                    # it: another process would lock the new file at that path.
                    self._lock_fds[stripe] = -1
                    os.close(fd)
                    fd = self._lock_fds[stripe] = self._open_lock_file(stripe)
                    fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            self._release(tuple(taken))
            raise self._error("open or take a lock file", exc) from None
        except BaseException:
            self._release(tuple(taken))
            raise

    def _open_lock_file(self, stripe: int) -> int:
        """A descriptor of the stripe's lock file; the directories are made again if removed."""
        path = os.path.join(self._lock_dir, f"{stripe:02x}")
        flags = os.O_RDONLY | os.O_CREAT | _O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(self._lock_dir, mode=0o700, exist_ok=True)
            return os.open(path, flags, 0o600)

    @contextlib.contextmanager
    def _holding(self, stripes: tuple):
        """Hold these stripe locks (sorted, so two keys never deadlock) for the with-block."""
        self._acquire(stripes)
        try:
            yield
        except BaseException:
            self._release(stripes)  # the error in flight says more than a failed unlock
            raise
        failure = self._release(stripes)
        if failure is not None:
            raise self._error("release a lock", failure)

    def _release(self, stripes: tuple) -> OSError | None:
        """Release the stripes; every thread lock is released whatever fails. Returns the first failure."""
        failure = None
        for stripe in reversed(stripes):
            try:
                fd = self._lock_fds[stripe]
                if fd >= 0:  # -1 when opening the lock file failed
                    try:
                        # Harmless when this description holds no lock (a failed flock).
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    except OSError as exc:
                        failure = failure or exc
                        # Closing our only descriptor of the file drops its flock;
                        # the next acquire opens the lock file again.
                        self._lock_fds[stripe] = -1
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            finally:
                self._thread_locks[stripe].release()
        return failure

    # -- file I/O

    def _error(self, action: str, exc: OSError) -> StoreError:
        # Never the path: it carries the store key.
        code = errno.errorcode.get(exc.errno or 0, "error")
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        return StoreError(f"file store: cannot {action} in {self.data_dir}: {code} ({reason})")

    def _path(self, key: bytes) -> str:
        if len(key) != 32:
            raise ValueError("store keys are 32 bytes")
        name = key.hex()
        return f"{self.data_dir}/{name[:2]}/{name}"

    def _read(self, path: str) -> _Stored | None:
        """The parsed file; None when missing; CorruptRecord when damaged."""
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            if not self._adopt_two_level(path):
                return None
            try:
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:  # written or deleted again meanwhile: as missing
                return None
            except OSError as exc:
                raise self._error("read a session file", exc) from None
        except OSError as exc:
            raise self._error("read a session file", exc) from None
        try:
            st = os.fstat(fd)
            data = os.read(fd, st.st_size)
            while len(data) < st.st_size:
                chunk = os.read(fd, st.st_size - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise self._error("read a session file", exc) from None
        finally:
            os.close(fd)
        stored = _decode(data, st.st_mtime_ns)
        if stored is None:
            # Never the path: it carries the store key.
            raise CorruptRecord(f"file store: a session file in {self.data_dir} is damaged")
        return stored

    def _adopt_two_level(self, path: str) -> bool:
        """Move the record an earlier version kept at data_dir/K[0:2]/K[2:4]/K to path; False if none.

        One rename, atomic: of processes racing to adopt the same file, one
        moves it and the others find it gone (and then read it at path).
        """
        top, name = os.path.split(path)
        try:
            os.rename(os.path.join(top, name[2:4], name), path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error("move a session file from the two-level layout", exc) from None
        return True

    def _live(self, path: str, now: float) -> _Stored | None:
        """The live record or tombstone; None when missing or expired; CorruptRecord when damaged."""
        stored = self._read(path)
        if stored is None or now > stored.expires_at:
            return None
        return stored

    def _current(self, path: str, now: float) -> _Stored | None:
        """What a write finds: as _live, but a damaged file counts as missing (and is logged)."""
        try:
            return self._live(path, now)
        except CorruptRecord:
            self._report("store_error", "file store: a damaged session file was treated as missing by a write",
                         logging.WARNING)
            return None

    def _write(
        self, path: str, kind: int, version: int, blob: bytes, expires_at: float, last_access: float,
        fresh: bool = False,
    ) -> None:
        """Write the file at path through a temporary one; fresh: nothing is expected at path (see _move_in)."""
        data = _encode(kind, version, expires_at, last_access, blob)
        tmp = f"{path}.{os.urandom(4).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, 0o600)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                fd = os.open(tmp, flags, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            mtime = _ns(expires_at)
            # atime just after mtime (and after ctime, for a live record) keeps
            # relatime mounts from writing an atime update on every load.
            os.utime(tmp, ns=(mtime + 1, mtime))
            self._move_in(tmp, path, fresh)
            if self.fsync:
                self._fsync_dir(os.path.dirname(path))
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._error("write a session file", exc) from None

    def _move_in(self, tmp: str, path: str, fresh: bool = False) -> None:
        """Put the file tmp at path atomically: exchange the two names where possible, else os.replace.

        fresh: the caller found nothing at path (a create), so an exchange would
        fail and a rename adds the file; should a file be there after all, the
        rename still replaces it atomically, only slower on ext4.
        """
        if self._exchange and not fresh:
            renameat2, get_errno = _renameat2
            if renameat2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) == 0:
                try:
                    os.unlink(tmp)  # now the record it replaced
                except OSError:
                    pass  # written all the same; cleanup removes stale temporary files
                return
            err = get_errno()
            if err in _NO_EXCHANGE:
                self._exchange = False
            elif err != errno.ENOENT:  # ENOENT: nothing at path yet, and a rename adds it
                raise OSError(err, os.strerror(err), path)
        os.replace(tmp, path)

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _unlink(self, path: str) -> bool:
        """Remove path; False when it was not there."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error("remove a session file", exc) from None
        return True

    # -- the Store interface

    def load(self, key: bytes) -> LoadResult:
        stored = self._read(self._path(key))
        if stored is None:
            return None
        if self.clock() > stored.expires_at:
            return None if stored.kind == _TOMBSTONE else EXPIRED
        if stored.kind == _TOMBSTONE:
            return TOMBSTONE
        return record_from((stored.blob, stored.version, stored.expires_at, stored.last_access))

    def create(self, key: bytes, blob: bytes, expires_at: float) -> WriteResult:
        path = self._path(key)
        with self._holding((key[0],)):
            now = self.clock()
            if self._current(path, now) is not None:
                return EXISTS
            version = _new_version()
            self._write(path, _RECORD, version, blob, expires_at, now, fresh=True)
            return version

    def cas(self, key: bytes, blob: bytes, expected_version: int, expires_at: float) -> WriteResult:
        path = self._path(key)
        with self._holding((key[0],)):
            now = self.clock()
            stored = self._current(path, now)
            if stored is None or stored.kind == _TOMBSTONE:
                return GONE
            if stored.version != expected_version:
                return CONFLICT
            version = (stored.version + 1) & _U64
            self._write(path, _RECORD, version, blob, expires_at, now)
            return version

    def touch(self, key: bytes, expires_at: float) -> bool:
        path = self._path(key)
        with self._holding((key[0],)):
            now = self.clock()
            stored = self._current(path, now)
            if stored is None or stored.kind == _TOMBSTONE:
                return False
            lead = stored.written_expires - stored.written_access
            if abs((expires_at - now) - lead) <= _TOUCH_SLACK:
                mtime = _ns(expires_at)
                try:
                    os.utime(path, ns=(mtime + 1, mtime))
                except FileNotFoundError:
                    return False
                except OSError as exc:
                    raise self._error("touch a session file", exc) from None
            else:
                self._write(path, _RECORD, stored.version, stored.blob, expires_at, now)
            return True

    def delete(self, key: bytes) -> None:
        path = self._path(key)
        with self._holding((key[0],)):
            if not self._unlink(path):  # never looked for since the upgrade: still in the two-level layout
                top, name = os.path.split(path)
                self._unlink(os.path.join(top, name[2:4], name))

    def rotate(
        self,
        old_key: bytes,
        new_key: bytes,
        blob: bytes,
        expires_at: float,
        tombstone_seconds: float,
        expected_version: int | None = None,
    ) -> WriteResult:
        old_path, new_path = self._path(old_key), self._path(new_key)
        with self._holding(tuple(sorted({old_key[0], new_key[0]}))):
            now = self.clock()
            old = self._current(old_path, now)
            if old is None or old.kind == _TOMBSTONE:
                return GONE
            if expected_version is not None and old.version != expected_version:
                return CONFLICT
            if self._current(new_path, now) is not None:
                return CONFLICT
            version = _new_version()
            # New record first: a crash in between leaves the old session
            # usable rather than logging the user out.
            self._write(new_path, _RECORD, version, blob, expires_at, now)
            self._write(old_path, _TOMBSTONE, (old.version + 1) & _U64, b"", now + tombstone_seconds, now)
            return version

    def locked_update(self, key: bytes, fn: UpdateFn) -> WriteResult:
        """Run fn under the key's stripe lock; fn must not use this store."""
        path = self._path(key)
        with self._holding((key[0],)):
            now = self.clock()
            stored = self._current(path, now)
            if stored is None or stored.kind == _TOMBSTONE:
                return GONE
            result = fn(record_from((stored.blob, stored.version, stored.expires_at, stored.last_access)))
            if result is None:
                return stored.version
            blob, expires_at = result
            version = (stored.version + 1) & _U64
            self._write(path, _RECORD, version, blob, expires_at, now)
            return version

    def cleanup(self, now: float, budget: int) -> int:
        """Remove expired records and tombstones by mtime, sweeping shards from a cursor.

        Each call resumes at the shard where the previous one ran out of
        budget, so repeated small calls cover the whole directory.
        """
        if budget <= 0:
            return 0
        now_ns = _ns(now)
        removed = 0
        start = self._cleanup_cursor
        for step in range(_STRIPES):
            stripe = (start + step) % _STRIPES
            removed += self._cleanup_shard(stripe, now_ns, budget - removed)
            if removed >= budget:
                self._cleanup_cursor = stripe
                return removed
        return removed

    def cleanup_step(self, now: float, budget: int) -> int:
        """One top-level shard (1/256 of the store) from the cursor: a scan that never covers everything.

        cleanup() keeps looking until it has removed `budget` files, so with
        nothing expired it would stat every session file; a write must not pay that.
        """
        if budget <= 0:
            return 0
        stripe = self._cleanup_cursor
        self._cleanup_cursor = (stripe + 1) % _STRIPES
        return self._cleanup_shard(stripe, _ns(now), budget)

    def _cleanup_shard(self, stripe: int, now_ns: int, budget: int) -> int:
        top = os.path.join(self.data_dir, f"{stripe:02x}")
        expired = []
        stale_before = time.time() - _STALE_TMP_SECONDS
        # The shard's files, then those of any second-level directory an earlier version made.
        directories = [top]
        while directories:
            directory = directories.pop()
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._error("list session files", exc) from None
            for entry in entries:
                if directory == top and len(entry.name) == 2 and entry.is_dir(follow_symlinks=False):
                    directories.append(entry.path)
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise self._error("inspect a session file", exc) from None
                if entry.name.endswith(".tmp"):
                    if st.st_ctime < stale_before:
                        self._unlink(entry.path)
                elif len(entry.name) == 64 and st.st_mtime_ns < now_ns:
                    expired.append(entry.path)
        if not expired:
            return 0
        removed = 0
        with self._holding((stripe,)):
            for path in expired:
                if removed >= budget:
                    break
                # Look again under the lock: a writer may have replaced it.
                try:
                    if os.stat(path).st_mtime_ns > now_ns:
                        continue
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise self._error("inspect a session file", exc) from None
                self._unlink(path)
                removed += 1
        return removed

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._lock_fds:
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._lock_fds = [-1] * _STRIPES
