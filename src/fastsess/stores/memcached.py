"""memcached store: records on one or more memcached servers (1.6 or later), through pymemcache.

Nodes. `url` lists servers as Beaker does ("h1:11211;h2:11211"; commas and a
list work too). Rendezvous hashing (pymemcache's RendezvousHash) maps every
store key to one node, and that node alone holds it: a node that fails makes
its keys fail with StoreError, never remaps them elsewhere, so nothing goes
missing or stale when the node comes back (the reason pymemcache's HashClient
is not used). Each node has a thread-safe pool of pymemcache connections,
made on first use and made again in a forked child, and a CircuitBreaker that
fails fast for a few seconds after repeated connection failures. The pool is
a deque of idle clients: a thread pops one (or connects a new one when none
is idle) and appends it back after a clean reply, both atomic without a lock.
pymemcache's PooledClient does the same job with a lock, a generator context
manager and an idle clock, 2.2 us per command against 0.07 us here, and a
read is one command. An idle connection the server closed meanwhile (it was
restarted) fails at once, with a reset or end of stream rather than a
timeout: the command is sent once more on a new connection, so a restart
costs no request an error and does not count towards the breaker. A timeout
is never retried.

Commands. The store speaks memcached's meta protocol, because the classic
commands cannot give what the interface needs in one round trip each:

    load      mg K v c t           value, CAS unique and remaining TTL
    create    ms K n T ME c        add; returns the new CAS unique
    cas       ms K n T C<v> c      compare-and-set; never an insert (NF)
    touch     mg K f T             a TTL update (counted as a touch)
    delete    md K
    rotate    ms NEW ME, then ms OLD C<v> F<expiry> (the tombstone);
              on failure the new record is deleted again

The meta commands go over pymemcache Client connections from that pool, read
with its reply helpers. A server older than 1.6 answers ERROR, which becomes a
StoreError saying so.

Size. memcached refuses an item above its size limit (-I, 1 MiB by default)
and drops what the key held before, so an oversized write would destroy the
session it meant to update. create() and cas() therefore refuse a value the
node cannot hold with SessionTooLarge before sending it; the limit comes from
`stats settings`, asked once per node and process at its first write.

Versions are memcached CAS uniques: every write makes a new one and a touch
keeps it, so a touch never bumps the version. A compare-and-set that meets a
different CAS is told apart (one more read, only then) into CONFLICT, or GONE
when the key now holds a tombstone or damaged bytes. Damaged bytes (a value
that is not a record) make load() raise CorruptRecord, and create() replaces
them. A restarted memcached counts CAS uniques from 1 again, but it also
starts empty, and the session layer never creates a record under a key it
used before.

Value layout: an 18-byte header, then the blob (nothing for a tombstone).

    offset  size  field
    0       1     format (0xF1)
    1       1     kind (0 record, 1 tombstone)
    2       8     last_access as written, f64 Unix time
    10      8     expires_at as written, f64 Unix time
    (little-endian)

A tombstone's client flags hold its expiry (Unix seconds), so that touch,
which cannot see the value, can put back a tombstone's short TTL in the rare
race where it lengthened one. Records carry flags 0.

Expiry and last access. memcached's TTL is the authority for expiry, and a
touch changes only the TTL, never the value, so load derives both from the
remaining TTL. While the server's expiry still matches the written
expires_at (within SLACK, since memcached counts whole seconds), the header
values are returned exactly. Once a touch has moved it, expires_at is now +
the remaining TTL (less TTL_MARGIN) and last_access is the new expiry minus the lead
(expires_at - last_access as written), which is the idle timeout while that
governs expiry: within 1.5 s (app servers' clocks must agree, as for
every store). A touch that moves expiry by less than SLACK plus that error
(3.5 s) can go unnoticed while the written expiry lies ahead, and
last_access then lags by at most as much (the session layer touches again
meanwhile). Once the written expiry has passed, a record memcached still
holds was touched (or is in its last rounding seconds): the server's expiry
counts, never earlier than now, and last_access follows it, so a session
read more often than its timeout stays alive for any timeout of a second or
more. Idle expiry is then memcached's: never early, at most 2 s late. When the absolute timeout caps expiry a touch cannot move it, and
last_access stays the last write; a session is then never expired early
(its record ends at the cap first), but the session layer may touch it
again on later requests.

TTLs are whole seconds, rounded up, plus TTL_MARGIN: memcached's clock
ticks once a second, and a TTL of n seconds ends at its n-th tick, which can
come as early as n - 1 seconds later. With the margin memcached never drops a
record before its expires_at (a 1 s timeout with a TTL of 1 could vanish
before the next read), and keeps it at most 2 s longer. Over 30 days
memcached reads a TTL as a Unix time, so those are sent as one, at most
2**31 - 1 (January 2038), the latest it can hold. cleanup()
has nothing to do: memcached drops expired items itself. Records vanish when memcached evicts them or
restarts; sessions on such a node are then simply missing.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable

from pymemcache.client.base import Client
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import (
    MemcacheError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from ..errors import ConfigError, CorruptRecord, SessionTooLarge, StoreError
from .base import (
    CONFLICT,
    EXISTS,
    GONE,
    TOMBSTONE,
    LoadResult,
    Store,
    WriteResult,
    check_timeouts,
    fork_safe_lock,
    kernel_timeouts,
    read_through,
    record_from,
)
from .breaker import CircuitBreaker

DEFAULT_PORT = 11211
#: memcached reads a TTL above 30 days as an absolute Unix time
RELATIVE_TTL_LIMIT = 30 * 24 * 3600
#: the latest absolute expiry memcached can hold (a 32-bit signed number, January 2038):
#: it reads a later one as already past and drops the item at once
LATEST_UNIX_EXPIRY = 2**31 - 1
#: memcached counts expiry in whole seconds (an estimate from it is within
#: about 1.5 s): a server expiry this close to the written one means no touch
#: has moved it since the write
SLACK = 2.0
#: seconds added to every TTL, so that memcached's once-a-second clock never ends a record early
TTL_MARGIN = 1
MAX_KEY_LENGTH = 250
#: bytes memcached adds to key and value within its item size limit (59 in 1.6), with room to spare
ITEM_OVERHEAD = 128

_FORMAT = 0xF1
_RECORD, _TOMBSTONE = 0, 1
_HEADER = struct.Struct("<BBdd")
_HEADER_SIZE = _HEADER.size

# Errors that mean the node is unreachable; they count against its breaker.
_CONNECTION_ERRORS = (OSError, MemcacheUnexpectedCloseError)
#: how an idle connection the server has closed fails: at once, never by timing out
_CLOSED_BY_SERVER = (ConnectionResetError, BrokenPipeError, MemcacheUnexpectedCloseError)


def parse_servers(url: str | Iterable[str]) -> list[str]:
    """Node names ("host:port", "[v6]:port" or "unix:/path") from Beaker's url syntax, in order, deduplicated."""
    parts = url.replace(",", ";").split(";") if isinstance(url, str) else list(url)
    names: list[str] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        name = _node_name(part)
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError("session.url names no memcached server (host:port;host:port)")
    return names


def _node_name(spec: str) -> str:
    if spec.startswith("unix:"):
        if not spec[5:]:
            raise ConfigError(f"memcached server {spec!r} has no socket path")
        return spec
    if spec.startswith("["):  # [v6]:port
        host, bracket, rest = spec[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not host or not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"memcached server {spec!r} is not [address]:port")
        return f"[{host}]:{_port(spec, port)}"
    host, _, port = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not host or ":" in host:
        raise ConfigError(f"memcached server {spec!r} is not host:port (write IPv6 addresses as [address]:port)")
    return f"{host}:{_port(spec, port)}"


def _port(spec: str, text: str) -> int:
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"memcached server {spec!r} has an invalid port")
    return int(text)


def _server_spec(name: str) -> tuple[str, int] | str:
    """pymemcache's form of a node: (host, port), or a unix socket path."""
    if name.startswith("unix:"):
        return name[5:]
    host, _, port = name.rpartition(":")
    return host.strip("[]"), int(port)


def _rendezvous_score(text: str, seed: int) -> int:
    # pymemcache's default (murmur3 in pure Python) costs ~15 µs per node per key;
    # blake2b is C everywhere. Every process must agree on placement: never change it.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


#: bytes asked of the socket by a reply's first read; a longer value is read on into a buffer of its size
_FIRST_READ = 8192
#: the longest status line read_meta_reply waits for
_MAX_LINE = 8192


def read_meta_reply(sock: socket.socket) -> tuple[bytes, bytes | None]:
    """(status line, value or None) of one meta command's reply, read from sock.

    A value comes after a "VA <size> ..." line and ends with CRLF. The end of
    the stream raises MemcacheUnexpectedCloseError; a malformed reply, or bytes
    beyond it (one command, one reply: the stream would be out of step),
    MemcacheUnknownError. The socket's timeout bounds every read.
    """
    buf = sock.recv(_FIRST_READ)
    end = buf.find(b"\r\n")
    while end < 0:
        if not buf:
            raise MemcacheUnexpectedCloseError()
        if len(buf) > _MAX_LINE:
            raise MemcacheUnknownError("reply line too long")
        more = sock.recv(_FIRST_READ)
        if not more:
            raise MemcacheUnexpectedCloseError()
        buf += more
        end = buf.find(b"\r\n")
    line = buf[:end]
    if not line.startswith(b"VA "):
        if len(buf) != end + 2:
            raise MemcacheUnknownError("unexpected bytes after a reply")
        return line, None
    try:
        size = int(line.split(b" ", 2)[1])
    except ValueError:
        raise MemcacheUnknownError("malformed value length") from None
    if size < 0:
        raise MemcacheUnknownError("malformed value length")
    start = end + 2
    total = start + size + 2
    if len(buf) < total:  # the rest of a long value
        buf = read_through(sock, buf, total)
        if buf is None:
            raise MemcacheUnexpectedCloseError()
    if len(buf) != total or buf[total - 2:] != b"\r\n":
        raise MemcacheUnknownError("unexpected bytes after a reply")
    return line, buf[start:total - 2]


class _MetaClient(Client):
    """A pymemcache Client that also sends one meta-protocol command and reads its reply."""

    def _connect(self) -> None:
        super()._connect()
        kernel_timeouts(self.sock, self.timeout)

    def meta(self, command: bytes) -> tuple[bytes, bytes | None]:
        """(status line, value or None). Any failure closes the connection, as Client does.

        A read or write that timed out in the kernel (BlockingIOError) is a TimeoutError.
        """
        if self.sock is None:
            self._connect()
        try:
            self.sock.sendall(command)
            line, value = read_meta_reply(self.sock)
            if value is None:
                self._raise_errors(line, b"meta")
            return line, value
        except BlockingIOError:
            self.close()
            raise TimeoutError("timed out") from None
        except Exception:
            self.close()
            raise


class _MetaPool:
    """Idle connections to one node; any number of threads take and return them."""

    def __init__(self, server: tuple[str, int] | str, connect_timeout: float, timeout: float) -> None:
        self._server = server
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._idle: deque[_MetaClient] = deque()

    def meta(self, command: bytes) -> tuple[bytes, bytes | None]:
        """Send command on an idle connection, or a new one; a failed one is closed and dropped."""
        try:
            client = self._idle.pop()
        except IndexError:
            return self._on_new_connection(command)
        try:
            reply = client.meta(command)  # on failure the client closed itself and is dropped here
        except _CLOSED_BY_SERVER:
            return self._on_new_connection(command)  # closed while idle: the server was restarted
        self._idle.append(client)
        return reply

    def _on_new_connection(self, command: bytes) -> tuple[bytes, bytes | None]:
        client = self._connection()
        reply = client.meta(command)
        self._idle.append(client)
        return reply

    def _connection(self) -> _MetaClient:
        """A new connection, made at its first command."""
        return _MetaClient(self._server, connect_timeout=self._connect_timeout, timeout=self._timeout, no_delay=True)

    def item_size_max(self) -> int:
        """The node's item size limit (memcached -I), from `stats settings`.

        Asked at a process's first write, often on a connection that has idled
        since its reads: one the server closed meanwhile is replaced, as in meta().
        """
        try:
            client = self._idle.pop()
        except IndexError:
            client = self._connection()
        try:
            settings = client.stats("settings")  # on failure the client closed itself and is dropped here
        except _CLOSED_BY_SERVER:
            client = self._connection()
            settings = client.stats("settings")
        self._idle.append(client)
        return int(settings.get(b"item_size_max", 1024 * 1024))

    def close(self) -> None:
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:  # another thread took the last one
                break


class _Node:
    """One memcached server: its name, its connection pool (per process) and its breaker."""

    __slots__ = ("name", "server", "breaker", "pool", "value_limit")

    def __init__(self, name: str, breaker: CircuitBreaker) -> None:
        self.name = name
        self.server = _server_spec(name)
        self.breaker = breaker
        self.pool: _MetaPool | None = None
        #: the largest value (header and blob) this node stores, learnt at the first write
        self.value_limit: int | None = None


def _flags(line: bytes) -> dict[int, bytes]:
    """The return flags of a meta reply line, keyed by flag letter (as a byte value)."""
    return {token[0]: token[1:] for token in line.split(b" ")[1:] if token}


def _parse(value: bytes | None):
    """(kind, last_access, expires_at) from a stored value, or None when it is not ours (damaged)."""
    if value is None or len(value) < _HEADER_SIZE:
        return None
    fmt, kind, last_access, expires_at = _HEADER.unpack_from(value)
    if fmt != _FORMAT or kind not in (_RECORD, _TOMBSTONE):
        return None
    return kind, last_access, expires_at


class MemcachedStore(Store):
    """Records on memcached nodes picked by rendezvous hashing; see the module docstring."""

    has_locked_update = False

    def __init__(
        self,
        url: str | Iterable[str],
        key_prefix: str = "fastsess:",
        connect_timeout: float = 1.0,
        socket_timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 5.0,
    ) -> None:
        super().__init__(clock)
        names = parse_servers(url)
        if not isinstance(key_prefix, str) or not all("!" <= c <= "~" for c in key_prefix):
            raise ConfigError("session.key_prefix must be printable ASCII without spaces")
        if len(key_prefix) + 64 > MAX_KEY_LENGTH:
            raise ConfigError(f"session.key_prefix is longer than {MAX_KEY_LENGTH - 64} characters")
        check_timeouts(connect_timeout, socket_timeout)
        self.key_prefix = key_prefix
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self._prefix = key_prefix.encode("ascii")
        self._nodes = {
            name: _Node(name, CircuitBreaker(threshold=breaker_threshold, cooldown=breaker_cooldown))
            for name in names
        }
        self._single = self._nodes[names[0]] if len(names) == 1 else None
        self._ring = RendezvousHash(list(names), hash_function=_rendezvous_score)
        self._lock = fork_safe_lock(self)
        self._pid = os.getpid()

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def node_for(self, key: bytes) -> str:
        """The name of the node that holds `key` (the same in every process)."""
        return self._node(key.hex()).name

    def _node(self, hexkey: str) -> _Node:
        if self._single is not None:
            return self._single
        return self._nodes[self._ring.get_node(hexkey)]

    def _pool(self, node: _Node) -> _MetaPool:
        if self._pid != os.getpid():
            self._forget_connections()
        pool = node.pool
        if pool is None:
            with self._lock:
                pool = node.pool
                if pool is None:
                    pool = node.pool = _MetaPool(node.server, self.connect_timeout, self.socket_timeout)
        return pool

    def _forget_connections(self) -> None:
        """In a forked child: drop the parent's pools (and their locks) unused; make new ones on demand."""
        with self._lock:
            if self._pid != os.getpid():
                for node in self._nodes.values():
                    node.pool = None
                self._pid = os.getpid()

    def _call(self, node: _Node, command: bytes) -> tuple[bytes, bytes | None]:
        """Run one command on node; any failure is a StoreError naming the node, never the key."""
        breaker = node.breaker
        breaker.before_call(f"memcached {node.name}")
        try:
            reply = self._pool(node).meta(command)
        except (*_CONNECTION_ERRORS, MemcacheError) as exc:
            raise self._failure(node, exc) from None
        breaker.succeeded()
        return reply

    def _failure(self, node: _Node, exc: Exception) -> StoreError:
        if isinstance(exc, _CONNECTION_ERRORS):
            node.breaker.failed()
            timed_out = isinstance(exc, (socket.timeout, BlockingIOError))  # BlockingIOError: a kernel timeout
            reason = "timed out" if timed_out else f"{type(exc).__name__}: {exc}"
            return StoreError(f"memcached {node.name} failed: {reason}")
        if isinstance(exc, MemcacheUnknownCommandError):
            return StoreError(
                f"memcached {node.name} does not know meta commands: fastsess needs memcached 1.6 or later"
            )
        # the node answered, with an error
        return StoreError(f"memcached {node.name} refused a command: {type(exc).__name__}: {exc}")

    def _check_size(self, node: _Node, value: bytes) -> None:
        """SessionTooLarge for a value the node cannot hold, before it is sent.

        memcached answers such a write with an error and drops the item that key
        held: the session would be lost. The node's limit is asked once per process.
        """
        limit = node.value_limit
        if limit is None:
            node.breaker.before_call(f"memcached {node.name}")
            try:
                item_size_max = self._pool(node).item_size_max()
            except (*_CONNECTION_ERRORS, MemcacheError) as exc:
                raise self._failure(node, exc) from None
            node.breaker.succeeded()
            limit = node.value_limit = item_size_max - ITEM_OVERHEAD - MAX_KEY_LENGTH
        if len(value) > limit:
            raise SessionTooLarge(
                f"session record is {len(value)} bytes; memcached {node.name} stores at most {limit} "
                "(its item size limit, memcached -I): lower max_record_size or raise -I"
            )

    def _mkey(self, hexkey: str) -> bytes:
        return self._prefix + hexkey.encode()

    def _ttl(self, expires_at: float, now: float) -> int:
        seconds = max(1, math.ceil(expires_at - now)) + TTL_MARGIN
        if seconds > RELATIVE_TTL_LIMIT:
            # memcached's clock is real time, whatever self.clock says. A record that lives past
            # 2038 ends there on the server, sooner than asked, never dropped on arrival.
            return min(int(time.time()) + seconds, LATEST_UNIX_EXPIRY)
        return seconds

    # -- the interface

    def load(self, key: bytes) -> LoadResult:
        hexkey = key.hex()
        node = self._node(hexkey)
        line, value = self._call(node, b"mg " + self._mkey(hexkey) + b" v c t\r\n")
        if value is None:
            return None
        if len(value) < _HEADER_SIZE:
            raise self._damaged(node)
        fmt, kind, last_access, expires_at = _HEADER.unpack_from(value)
        if fmt != _FORMAT or kind != _RECORD:
            if fmt == _FORMAT and kind == _TOMBSTONE:
                return TOMBSTONE
            raise self._damaged(node)
        tokens = line.split(b" ")  # "VA <size> c<cas> t<ttl>": flags come back in the order asked
        cas, ttl = tokens[2], tokens[3]
        now = self.clock()
        remaining = int(ttl[1:])
        if remaining >= 0:
            # Whole seconds, truncated on both ends: centre the error, and take off the margin
            # the TTL was given. memcached still holds the record, so it is live now whatever
            # the estimate says.
            server_expiry = max(now, now + remaining - 0.5 - TTL_MARGIN)
            if server_expiry > expires_at + SLACK or now > expires_at:  # touched since the write
                last_access = min(now, max(last_access, server_expiry - (expires_at - last_access)))
                expires_at = server_expiry
            elif server_expiry < expires_at - SLACK:
                expires_at = server_expiry
        if now > expires_at:
            return None
        return record_from((value[_HEADER_SIZE:], int(cas[1:]), expires_at, last_access))

    @staticmethod
    def _damaged(node: _Node) -> CorruptRecord:
        return CorruptRecord(f"memcached {node.name}: a stored session value is not a record (damaged)")

    def create(self, key: bytes, blob: bytes, expires_at: float) -> WriteResult:
        hexkey = key.hex()
        node, mkey = self._node(hexkey), self._mkey(hexkey)
        now = self.clock()
        value = _HEADER.pack(_FORMAT, _RECORD, now, expires_at) + blob
        self._check_size(node, value)
        ttl = self._ttl(expires_at, now)
        for _ in range(3):
            line, _ = self._call(node, b"ms %s %d T%d ME c\r\n%s\r\n" % (mkey, len(value), ttl, value))
            if line.startswith(b"HD"):
                return int(_flags(line)[ord("c")])
            # Present. Damaged bytes are not a record: replace them, under their CAS.
            line, current = self._call(node, b"mg " + mkey + b" v c\r\n")
            if line.startswith(b"EN"):
                continue  # expired or deleted meanwhile: add again
            if _parse(current) is not None:
                return EXISTS
            cas = _flags(line)[ord("c")]
            line, _ = self._call(node, b"ms %s %d T%d C%s c\r\n%s\r\n" % (mkey, len(value), ttl, cas, value))
            if line.startswith(b"HD"):
                return int(_flags(line)[ord("c")])
        return EXISTS

    def cas(self, key: bytes, blob: bytes, expected_version: int, expires_at: float) -> WriteResult:
        hexkey = key.hex()
        node, mkey = self._node(hexkey), self._mkey(hexkey)
        now = self.clock()
        value = _HEADER.pack(_FORMAT, _RECORD, now, expires_at) + blob
        self._check_size(node, value)
        line, _ = self._call(
            node,
            b"ms %s %d T%d C%d c\r\n%s\r\n" % (mkey, len(value), self._ttl(expires_at, now), expected_version, value),
        )
        if line.startswith(b"HD"):
            return int(_flags(line)[ord("c")])
        if line.startswith(b"NF"):
            return GONE
        return self._conflict_or_gone(node, mkey)

    def _conflict_or_gone(self, node: _Node, mkey: bytes) -> WriteResult:
        """After a CAS mismatch: CONFLICT if a live record is there, GONE for a tombstone or damaged bytes."""
        _, current = self._call(node, b"mg " + mkey + b" v\r\n")
        parsed = _parse(current)
        return CONFLICT if parsed is not None and parsed[0] == _RECORD else GONE

    def touch(self, key: bytes, expires_at: float) -> bool:
        hexkey = key.hex()
        node, mkey = self._node(hexkey), self._mkey(hexkey)
        now = self.clock()
        line, _ = self._call(node, b"mg %s f T%d\r\n" % (mkey, self._ttl(expires_at, now)))
        if not line.startswith(b"HD"):
            return False
        tombstone_expiry = int(_flags(line)[ord("f")])
        if tombstone_expiry:  # lengthened a tombstone: give it back its own expiry
            self._call(node, b"mg %s T%d\r\n" % (mkey, self._ttl(tombstone_expiry, now)))
            return False
        return True

    def delete(self, key: bytes) -> None:
        hexkey = key.hex()
        self._call(self._node(hexkey), b"md " + self._mkey(hexkey) + b"\r\n")

    def rotate(
        self,
        old_key: bytes,
        new_key: bytes,
        blob: bytes,
        expires_at: float,
        tombstone_seconds: float,
        expected_version: int | None = None,
    ) -> WriteResult:
        """Add the new record, then turn the old one into a tombstone under its CAS.

        memcached has no transaction across keys (they may live on two nodes), so
        the steps are ordered to fail safe: when the tombstone write does not
        happen, the new record is deleted again and the old one is untouched.
        """
        old_hex, new_hex = old_key.hex(), new_key.hex()
        old_node, old_mkey = self._node(old_hex), self._mkey(old_hex)
        if expected_version is None:
            line, current = self._call(old_node, b"mg " + old_mkey + b" v c\r\n")
            parsed = _parse(current)
            if parsed is None or parsed[0] != _RECORD:
                return GONE
            expected_version = int(_flags(line)[ord("c")])
        version = self.create(new_key, blob, expires_at)
        if version is EXISTS:
            return CONFLICT
        now = self.clock()
        tombstone_expiry = math.ceil(now + tombstone_seconds)
        value = _HEADER.pack(_FORMAT, _TOMBSTONE, now, now + tombstone_seconds)
        command = b"ms %s %d T%d F%d C%d\r\n%s\r\n" % (
            old_mkey, len(value), self._ttl(now + tombstone_seconds, now), tombstone_expiry, expected_version, value,
        )
        try:
            line, _ = self._call(old_node, command)
            if line.startswith(b"HD"):
                return version
            result = GONE if line.startswith(b"NF") else self._conflict_or_gone(old_node, old_mkey)
        except StoreError:
            self._undo_create(new_hex, version)
            raise
        self._undo_create(new_hex, version)
        return result

    def _undo_create(self, hexkey: str, version: int) -> None:
        try:
            self._call(self._node(hexkey), b"md %s C%d\r\n" % (self._mkey(hexkey), version))
        except StoreError:
            pass  # best effort: the orphan expires with its TTL, and nobody holds its id

    def cleanup(self, now: float, budget: int) -> int:
        return 0  # memcached expires items itself

    def close(self) -> None:
        with self._lock:
            for node in self._nodes.values():
                if node.pool is not None:
                    node.pool.close()
                    node.pool = None

    def __repr__(self) -> str:
        return f"MemcachedStore({';'.join(self._nodes)!r}, key_prefix={self.key_prefix!r})"
