"""Redis store (redis-py): a single server, Sentinel, or Redis Cluster; records expire by Redis TTL.

Each record is one Redis string: a 28-byte header, then the record bytes.

    b"FS1"  kind (b"R" live, b"T" tombstone)  version u64  expires_at f64  last_access f64  (little endian)

A load is one GET. On a single server (not Sentinel, not a cluster) the
commands skip redis-py's per-command machinery: `_Direct` keeps this
process's own idle redis-py connections (made from the client's settings, so
TLS, unix sockets, AUTH, SELECT and the protocol handshake stay redis-py's
code), writes each command and reads its one reply itself. redis-py spends
about 170,000 instructions of Python on one GET (pool bookkeeping, retry,
event and observability hooks, a general reply parser); a whole session read
through this store, GET included, about 48,000 (bench/instructions.sh), so
it costs less than the client library's own GET.

- A GET on a connection the server closed while it idled fails at once (end
  of stream, reset): it is sent once more on a new connection. A timeout is
  never retried.
- Any other command is sent at most once. An idle connection is checked
  first (one poll): one on which anything has arrived (the end of the
  stream, bytes nobody asked for) is replaced before the command is sent.
- A reply that is not a bulk string, an integer, a null or an error (a
  RESP3 push the server sent unasked) drops the connection: a GET then goes
  through the client, another command fails with a StoreError.
- Without select.poll (Windows), only the GETs go direct.

A touch is one script that rewrites only the 16 header
bytes of expiry and access time (SETRANGE) and the TTL: it never rewrites the
data or changes the version. Create, compare-and-set and rotation are Lua
scripts, one round trip each (EVALSHA, falling back to EVAL when the server
has not cached the script). A value that does not start with the header
(written by something else, damaged, or not a string) is damaged: load()
raises CorruptRecord, and the writes count it as missing.

GETEX is not used: a touch must also move last_access, which lives in the
header, and the session layer decides only after the load whether a touch is
due (at most once per touch_interval). So a read is one GET, and the read
that touches adds one script call.

TTLs are relative (PX): `expires_at - now` on the store's clock, which is the
clock that computed expires_at, so a skew between the application's and
Redis's clocks does not shift expiry. Redis removes expired records and
tombstones itself; cleanup() has nothing to do.

Versions are random 63-bit numbers drawn by the client for every write: no
counter key is needed (in a cluster it would live in another slot), and a
record deleted and created again practically never (2**-63) reuses a version
its old readers hold.

Failures. Every redis-py error becomes a StoreError whose message never
contains a key. redis-py's own retries (with backoff) are off, so a failing
call returns within its connect and socket timeouts, and a CircuitBreaker
fails calls fast after repeated failures: one per store, or in a cluster one
per node, so that a node that is down fails its own keys fast while the
successes of the others do not keep closing its breaker. The node of a key is
its slot's primary in redis-py's slot table, looked up only while some
breaker has failures. The client (and its pool) is built on first use
in each process: a forked child builds its own and never touches the parent's.

Rotation in a cluster. The old and new keys hash to different slots, so no
script can see both. There, rotate() takes two steps: it writes the new key
(SET NX: CONFLICT when taken, nothing changed), then turns the old key into a
tombstone under compare-and-set; when that finds the old record gone or
changed, it deletes the new key again and returns GONE or CONFLICT. The new id
reaches no client before rotate() returns, so the two ids are never both in
use; the old id is only ever replaced by a tombstone, never restored. When the
second step fails with an error, the new key is deleted (best effort) and the
error raised: the session may be lost, but the old id is not revived. A
key_prefix with a hash tag (`{sessions}:`) puts every key in one slot, and
rotation is then one script again.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import select
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import InvalidResponse, NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.retry import Retry

from ..errors import ConfigError, CorruptRecord, StoreError
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

_HEADER = struct.Struct("<3sBQdd")
_HEADER_SIZE = _HEADER.size  # 28
_MAGIC = b"FS1"
_LIVE, _TOMBSTONE = ord("R"), ord("T")
_VERSION = struct.Struct("<Q")
_TIMES = struct.Struct("<dd")  # expires_at, last_access: header bytes 12..27

_ERRORS = (RedisError, RedisClusterException, OSError)


class _Script:
    """A Lua script and its SHA-1, for EVALSHA."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


# Every script starts by reading the header of KEYS[1]: `kind` is 'R' (live), 'T' (tombstone) or
# false (missing, another type, or not a record), and `head` holds the header bytes.
_READ_HEADER = """
local head = redis.pcall('GETRANGE', KEYS[1], 0, 27)
local kind = type(head) == 'string' and #head == 28 and string.sub(head, 1, 3) == 'FS1'
  and string.sub(head, 4, 4)
"""

# KEYS[1] key; ARGV value, ttl_ms. Returns 1 when written, 0 when a record or tombstone is there.
_CREATE = _Script(_READ_HEADER + """
if kind == 'R' or kind == 'T' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""")

# KEYS[1] key; ARGV expected version (8 bytes), value, ttl_ms. Returns 0 written, 1 gone, 2 conflict.
_CAS = _Script(_READ_HEADER + """
if kind ~= 'R' then return 1 end
if string.sub(head, 5, 12) ~= ARGV[1] then return 2 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 0
""")

# KEYS[1] key; ARGV expires_at and last_access (16 bytes: header offset 12), ttl_ms. Live records
# only. Returns 1 touched, 0 no live record.
_TOUCH = _Script(_READ_HEADER + """
if kind == 'R' then
  redis.call('SETRANGE', KEYS[1], 12, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""")

# KEYS old, new; ARGV expected version (8 bytes, or empty for any), value, ttl_ms, tombstone,
# tombstone ttl_ms. Returns 0 written, 1 gone, 2 conflict.
_ROTATE = _Script(_READ_HEADER + """
if kind ~= 'R' then return 1 end
if ARGV[1] ~= '' and string.sub(head, 5, 12) ~= ARGV[1] then return 2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
return 0
""")

# Cluster rotation, second step. KEYS[1] old; ARGV expected version (8 bytes or empty), tombstone,
# tombstone ttl_ms. Returns 0 written, 1 gone, 2 conflict.
_RETIRE = _Script(_READ_HEADER + """
if kind ~= 'R' then return 1 end
if ARGV[1] ~= '' and string.sub(head, 5, 12) ~= ARGV[1] then return 2 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 0
""")

_OUTCOME = (None, GONE, CONFLICT)  # script result -> marker (0 means written)

#: bytes asked of the socket by the first read of a reply; a longer value is read on into a buffer of its size
_FIRST_READ = 8192
#: the longest reply header line ("$<length>" or an error) the reader waits for
_MAX_LINE = 65536


class _ClosedByServer(redis.exceptions.ConnectionError):
    """The server ended the stream: it closed the connection (restart, idle timeout)."""


#: how an idle connection the server closed fails: at once, never by timing out
_CLOSED = (_ClosedByServer, ConnectionResetError, BrokenPipeError)
#: read_reply's answer for a reply of another kind (a RESP3 push): the connection cannot go on
_OTHER = object()
_POLL_IN = getattr(select, "POLLIN", 0)


def read_reply(sock: socket.socket):
    """One reply read from sock: bytes (a bulk string), an int, or None (a null).

    An error reply raises ResponseError (NoScriptError for NOSCRIPT), after the
    whole reply was read (the connection can go on). A reply of another kind
    returns _OTHER; a malformed one, or bytes beyond the reply, raise
    InvalidResponse; the end of the stream raises _ClosedByServer. The socket's
    own timeout bounds every read.
    """
    buf = sock.recv(_FIRST_READ)
    end = buf.find(b"\r\n")
    while end < 0:
        if not buf or len(buf) > _MAX_LINE:
            if buf:
                raise InvalidResponse("reply line too long")
            raise _ClosedByServer("connection closed by the server")
        more = sock.recv(_FIRST_READ)
        if not more:
            raise _ClosedByServer("connection closed by the server")
        buf += more
        end = buf.find(b"\r\n")
    kind = buf[0]
    if kind == 36:  # $: a bulk string, or $-1 (RESP2's null)
        try:
            size = int(buf[1:end])
        except ValueError:
            raise InvalidResponse("malformed bulk string length") from None
        if size < 0:
            if size != -1 or len(buf) != end + 2:
                raise InvalidResponse("malformed null reply")
            return None
        start = end + 2
        total = start + size + 2
        if len(buf) < total:  # the rest of a long value
            buf = read_through(sock, buf, total)
            if buf is None:
                raise _ClosedByServer("connection closed by the server")
        if len(buf) != total or buf[total - 2:] != b"\r\n":
            raise InvalidResponse("bulk string not followed by the end of the reply")
        return buf[start:total - 2]
    if len(buf) != end + 2:
        raise InvalidResponse("bytes after a reply")
    if kind == 95 and end == 1:  # _: RESP3's null
        return None
    if kind == 58:  # :: an integer
        try:
            return int(buf[1:end])
        except ValueError:
            raise InvalidResponse("malformed integer reply") from None
    if kind == 45:  # -: an error
        message = buf[1:end].decode(errors="replace")
        if message.startswith("NOSCRIPT "):
            raise NoScriptError(message[9:])
        raise ResponseError(message)
    return _OTHER


def _pack_command(args: tuple) -> bytes:
    """A command in RESP: an array of bulk strings (bytes, str or int arguments)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is not bytes:
            arg = (arg if type(arg) is str else str(arg)).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


def _idle_and_clean(sock) -> bool:
    """Whether nothing has arrived on an idle connection: no end of stream, no bytes nobody asked for."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()
    poller.register(sock, _POLL_IN)
    return not poller.poll(0)


def _plain_pool(client: redis.Redis) -> bool:
    """Whether client's pool is redis-py's plain one, without a client-side cache: the reader's connections."""
    pool = client.connection_pool
    return type(pool) is redis.ConnectionPool and getattr(pool, "cache", None) is None


def _without_pushes(options: dict) -> dict:
    """Connection options that turn off what makes a server push messages unasked.

    redis-py 7 and later ask a server that offers them for maintenance
    notifications (RESP3 pushes announcing a failover); a push between a
    command and its reply would fail a direct write. Direct connections do
    without: the client's own connections still get them.
    """
    if "maint_notifications_config" not in options:
        return dict(options)
    from redis.maint_notifications import MaintNotificationsConfig

    return {**options, "maint_notifications_config": MaintNotificationsConfig(enabled=False)}


class _Direct:
    """Commands to a single server over this process's own idle redis-py connections; see the module docstring.

    Any number of threads share it: a thread pops an idle connection (or makes
    one) and appends it back after a clean reply, both atomic without a lock.
    A connection that failed is disconnected and dropped.
    """

    def __init__(self, client: redis.Redis, socket_timeout: float) -> None:
        pool = client.connection_pool
        options = _without_pushes(pool.connection_kwargs)
        self._make = lambda: pool.connection_class(**options)
        self._fallback = client.get
        self._timeout = socket_timeout
        self._idle: deque = deque()

    def get(self, rkey: bytes) -> bytes | None:
        """GET rkey; sent once more on a new connection when an idle one turns out closed."""
        command = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(rkey), rkey)
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._connect()
        else:
            try:
                value = self._ask(connection, command)
            except _CLOSED:  # closed while idle: the server was restarted, or dropped idle clients
                connection = self._connect()
            else:
                return value if value is not _OTHER else self._fallback(rkey)
        value = self._ask(connection, command)
        return value if value is not _OTHER else self._fallback(rkey)

    def call(self, *args):
        """Any command; sent at most once, on a connection found clean first."""
        command = _pack_command(args)
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._connect()
        else:
            if not _idle_and_clean(connection._sock):
                connection.disconnect()
                connection = self._connect()
        reply = self._ask(connection, command)
        if reply is _OTHER:
            raise InvalidResponse("a reply of an unexpected kind")
        return reply

    def _connect(self):
        connection = self._make()
        try:
            connection.connect()
            kernel_timeouts(connection._sock, self._timeout)
        except BaseException:
            connection.disconnect()
            raise
        return connection

    def _ask(self, connection, command: bytes):
        """Send command and read its reply; the connection goes back idle unless it failed (or _OTHER)."""
        sock = connection._sock
        try:
            sock.sendall(command)
            reply = read_reply(sock)
        except ResponseError:
            self._idle.append(connection)  # the whole reply was read: the connection goes on
            raise
        except BlockingIOError:  # the kernel's timeout (stores.base.kernel_timeouts)
            connection.disconnect()
            raise TimeoutError("Timeout reading from or writing to the socket") from None
        except BaseException:
            connection.disconnect()
            raise
        if reply is _OTHER:  # not a reply this code knows: the connection is out of step
            connection.disconnect()
        else:
            self._idle.append(connection)
        return reply

    def close(self) -> None:
        while self._idle:
            try:
                self._idle.pop().disconnect()
            except IndexError:  # another thread took the last one
                break


def _ttl_ms(expires_at: float, now: float) -> int:
    """Milliseconds until expires_at, rounded up so Redis never drops a record early; at least 1."""
    ms = math.ceil((expires_at - now) * 1000.0)
    return ms if ms > 0 else 1


def _new_version() -> int:
    return random.getrandbits(63)


def _hash_tagged(prefix: str) -> bool:
    """True when the prefix carries a Redis hash tag, so every key maps to one cluster slot."""
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 1) > start + 1


def _split_host(text: str, default_port: int) -> tuple[str, int]:
    """host:port, [ipv6]:port or a bare host."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"session.url: bad port in {text!r}") from None


def parse_cluster_urls(urls: list[str]) -> tuple[list[tuple[str, int]], dict]:
    """Redis Cluster node URLs (`redis://[user:password@]host:port[?option=value]`, or bare `host:port`):
    the nodes, and the credentials, TLS setting and options (`rediss://...?ssl_ca_certs=...`) they carry.

    The client options of a single-server URL apply, as redis-py reads them; a
    cluster has one database, so a database number is ignored.
    """
    nodes, options = [], {}
    for item in urls:
        url = item if "://" in item else "redis://" + item
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss"):
            raise ConfigError(f"session.urls: {scheme}:// is not a Redis Cluster node URL")
        try:
            parsed = redis.connection.parse_url(url)
        except ValueError as exc:
            reason = "a node URL has a bad port" if "Port" in str(exc) else str(exc)
            raise ConfigError(f"session.urls: {reason}") from None
        nodes.append((parsed.pop("host", "localhost"), parsed.pop("port", 6379)))
        parsed.pop("db", None)
        if parsed.pop("connection_class", None) is not None:  # rediss://
            options["ssl"] = True
        options.update(parsed)
    return nodes, options




def _check_database(url: str, parsed: dict) -> None:
    """A redis:// URL's path is its database number; redis-py would use database 0 for any other path."""
    split = urlsplit(url)
    path = unquote(split.path).strip("/")
    if split.scheme in ("redis", "rediss") and path and "db" not in parse_qs(split.query):
        if not path.isdigit():
            raise ConfigError(f"session.url: the database after the host must be a number, got {path!r}")
    db = parsed.get("db", 0)
    if not isinstance(db, int) or db < 0:
        raise ConfigError(f"session.url: the database must be a number of 0 or more, got {db!r}")


class RedisStore(Store):
    """Records in Redis strings; scripts for the writes; one connection pool per process."""

    has_locked_update = False

    def __init__(
        self,
        url: str | None = None,
        urls: list[str] | None = None,
        key_prefix: str = "fastsess:",
        connect_timeout: float = 1.0,
        socket_timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        super().__init__(clock)
        check_timeouts(connect_timeout, socket_timeout)
        self.key_prefix = key_prefix
        self._prefix = key_prefix.encode()
        self._options = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": socket_timeout,
        }
        self._breaker = breaker or CircuitBreaker()
        #: cluster mode: a breaker per node name ("host:port"), made like self._breaker
        self._node_breakers: dict[str, CircuitBreaker] = {}
        # Set by a failure, cleared once no breaker has failures left: while it is clear
        # every breaker is closed, and the calls skip them.
        self._failing = False
        if urls:
            self._mode = "cluster"
            self._nodes, auth = parse_cluster_urls(urls)
            self._options.update(auth)
            self._name = "redis cluster"
        elif url and url.startswith("redis+sentinel://"):
            self._mode = "sentinel"
            self._sentinels, self._service, db, auth = self._parse_sentinel(url)
            self._options.update(auth, db=db)
            self._name = f"redis sentinel service {self._service}"
        elif url:
            self._mode = "single"
            self._url = url if "://" in url else "redis://" + url
            try:
                parsed = redis.connection.parse_url(self._url)
            except ValueError as exc:
                raise ConfigError(f"session.url is not a redis URL: {exc}") from None
            _check_database(self._url, parsed)
            where = parsed.get("path") or f"{parsed.get('host', 'localhost')}:{parsed.get('port', 6379)}"
            self._name = f"redis at {where}"
        else:
            raise ConfigError("the redis store needs session.url, or session.urls for a cluster")
        self._atomic_rotate = self._mode != "cluster" or _hash_tagged(key_prefix)
        self._lock = fork_safe_lock(self)  # building a client takes it
        self._pid = 0
        self._client = None
        self._sentinel = None
        # This process's direct connections (a single server), its GET and its other commands:
        # the _Direct's, or the client's.
        self._direct: _Direct | None = None
        self._get: Callable[[bytes], bytes | None] | None = None
        self._call: Callable[..., object] | None = None
        self._inherited: list = []  # clients from before a fork: kept referenced, never used
        self._closed = False

    # -------------------------------------------------- configuration

    def _parse_sentinel(self, url: str) -> tuple[list, str, int, dict]:
        """redis+sentinel://[user:password@]h1:26379,h2:26379/<service>/<db>; the password is the master's."""
        rest = url[len("redis+sentinel://"):]
        netloc, _, path = rest.partition("/")
        userinfo, _, hosts = netloc.rpartition("@")
        auth = {}
        if userinfo:
            user, _, password = userinfo.partition(":")
            auth = {"username": unquote(user)} if user else {}
            if password:
                auth["password"] = unquote(password)
        sentinels = [_split_host(h.strip(), 26379) for h in hosts.split(",") if h.strip()]
        service, _, db = path.partition("/")
        if not sentinels or not service:
            raise ConfigError("session.url: use redis+sentinel://host:26379,host:26379/<service>/<db>")
        try:
            return sentinels, unquote(service), int(db.strip("/") or 0), auth
        except ValueError:
            raise ConfigError("session.url: the Sentinel URL's database must be a number") from None

    # -------------------------------------------------- connections

    def _connection(self):
        """This process's client, built on first use and again after a fork."""
        if self._pid != os.getpid():
            self._open()
        return self._client

    def _reader(self) -> Callable[[bytes], bytes | None]:
        """This process's GET, built on first use and again after a fork."""
        if self._pid != os.getpid():
            self._open()
        return self._get

    def _commands(self) -> Callable[..., object]:
        """This process's way to send any other command (name, then arguments): its reply."""
        if self._pid != os.getpid():
            self._open()
        return self._call

    def _open(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            if self._closed:
                raise StoreError(f"{self._name}: the store was used after close()")
            if self._client is not None:  # a fork's parent's: never used here, nor closed
                self._inherited.append((self._client, self._sentinel, self._direct))
            self._client = self._sentinel = self._direct = self._get = self._call = None
            no_retries = Retry(NoBackoff(), 0)  # a retry would exceed the configured timeouts
            if self._mode == "single":
                client = redis.Redis.from_url(self._url, retry=no_retries, **self._options)
            elif self._mode == "sentinel":
                from redis.sentinel import Sentinel

                sentinel_options = {k: v for k, v in self._options.items() if k.startswith("socket_")}
                self._sentinel = Sentinel(
                    self._sentinels, sentinel_kwargs={**sentinel_options, "retry": Retry(NoBackoff(), 0)},
                )
                client = self._sentinel.master_for(self._service, retry=no_retries, **self._options)
            else:
                from redis.cluster import ClusterNode, RedisCluster

                client = RedisCluster(
                    startup_nodes=[ClusterNode(host, port) for host, port in self._nodes],
                    retry=no_retries, **self._options,
                )
            if self._mode == "single" and _plain_pool(client):
                self._direct = _Direct(client, self._options["socket_timeout"])
                self._get = self._direct.get
                self._call = self._direct.call if hasattr(select, "poll") else client.execute_command
            else:
                self._get, self._call = client.get, client.execute_command
            self._client = client
            self._pid = os.getpid()

    def close(self) -> None:
        with self._lock:
            client, sentinel, direct = self._client, self._sentinel, self._direct
            self._client = self._sentinel = self._direct = self._get = self._call = None
            owned, self._pid = self._pid == os.getpid(), 0
            self._closed = True
        if client is not None and owned:
            try:
                if direct is not None:
                    direct.close()
                client.close()
                if sentinel is not None:
                    for node in sentinel.sentinels:
                        node.close()
            except _ERRORS:
                pass

    def _key(self, key: bytes) -> bytes:
        return self._prefix + key.hex().encode()

    def _breaker_for(self, rkey: bytes) -> tuple[CircuitBreaker, str]:
        """The breaker that guards rkey, and the name it fails under: its node's, in a cluster."""
        if self._mode != "cluster" or self._pid != os.getpid():  # no client of this process yet
            return self._breaker, self._name
        try:
            client = self._client
            node = client.nodes_manager.get_node_from_slot(client.keyslot(rkey)).name
        except _ERRORS:  # slot not covered (yet): the store's own breaker
            return self._breaker, self._name
        breaker = self._node_breakers.get(node)
        if breaker is None:
            with self._lock:
                template = self._breaker
                breaker = self._node_breakers.setdefault(
                    node, CircuitBreaker(template.threshold, template.cooldown, template.clock)
                )
        return breaker, f"{self._name} node {node}"

    def _before_call(self, rkey: bytes) -> None:
        """Only while some breaker has failures: StoreError when rkey's breaker is open."""
        breaker, name = self._breaker_for(rkey)
        breaker.before_call(name)

    def _failed(self, what: str, exc: BaseException, *keys: bytes) -> StoreError:
        """A StoreError for a failed call, counted against the first key's breaker; never shows a key."""
        self._failing = True
        self._breaker_for(keys[0])[0].failed()
        detail = str(exc)
        for rkey in keys:
            detail = detail.replace(rkey.decode(errors="replace"), "<key>")
            detail = detail.replace(rkey[len(self._prefix):].decode(), "<key>")
        return StoreError(f"{self._name}: {what} failed: {type(exc).__name__}: {detail}"[:500])

    def _recovered(self, *keys: bytes) -> None:
        for rkey in keys:
            self._breaker_for(rkey)[0].succeeded()
        self._failing = self._breaker.failing or any(b.failing for b in list(self._node_breakers.values()))

    def _eval(self, call: Callable[..., object], script: _Script, numkeys: int, *args):
        """Run script through call (the store's _commands(), or a cluster client's execute_command)."""
        try:
            return call("EVALSHA", script.sha, numkeys, *args)
        except NoScriptError:  # not cached on this server (restart, failover, SCRIPT FLUSH)
            return call("EVAL", script.text, numkeys, *args)

    # -------------------------------------------------- the interface

    def load(self, key: bytes) -> LoadResult:
        rkey = self._prefix + key.hex().encode()
        if self._failing:
            self._before_call(rkey)
        try:
            value = self._reader()(rkey)
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise self._failed("load", exc, rkey) from None
            value = b""  # not a string, so not a record: damaged
        except _ERRORS as exc:
            raise self._failed("load", exc, rkey) from None
        if self._failing:
            self._recovered(rkey)
        if value is None:
            return None
        if len(value) < _HEADER_SIZE:
            raise self._damaged()
        magic, kind, version, expires_at, last_access = _HEADER.unpack_from(value)
        if magic != _MAGIC:
            raise self._damaged()
        if kind == _LIVE:
            if self.clock() > expires_at:  # within Redis's millisecond rounding of the TTL
                return None
            return record_from((value[_HEADER_SIZE:], version, expires_at, last_access))
        if kind == _TOMBSTONE:
            return TOMBSTONE
        raise self._damaged()

    def _damaged(self) -> CorruptRecord:
        return CorruptRecord(f"{self._name}: a stored session value is not a record (damaged)")

    def create(self, key: bytes, blob: bytes, expires_at: float) -> WriteResult:
        rkey = self._key(key)
        now = self.clock()
        version = _new_version()
        value = _HEADER.pack(_MAGIC, _LIVE, version, expires_at, now) + blob
        if self._failing:
            self._before_call(rkey)
        try:
            created = self._eval(self._commands(), _CREATE, 1, rkey, value, _ttl_ms(expires_at, now))
        except _ERRORS as exc:
            raise self._failed("create", exc, rkey) from None
        if self._failing:
            self._recovered(rkey)
        return version if created else EXISTS

    def cas(self, key: bytes, blob: bytes, expected_version: int, expires_at: float) -> WriteResult:
        rkey = self._key(key)
        now = self.clock()
        version = _new_version()
        value = _HEADER.pack(_MAGIC, _LIVE, version, expires_at, now) + blob
        if self._failing:
            self._before_call(rkey)
        try:
            outcome = self._eval(
                self._commands(), _CAS, 1, rkey, _VERSION.pack(expected_version), value,
                _ttl_ms(expires_at, now),
            )
        except _ERRORS as exc:
            raise self._failed("compare-and-set", exc, rkey) from None
        if self._failing:
            self._recovered(rkey)
        return _OUTCOME[outcome] or version

    def touch(self, key: bytes, expires_at: float) -> bool:
        rkey = self._key(key)
        now = self.clock()
        if self._failing:
            self._before_call(rkey)
        try:
            times = _TIMES.pack(expires_at, now)
            touched = self._eval(self._commands(), _TOUCH, 1, rkey, times, _ttl_ms(expires_at, now))
        except _ERRORS as exc:
            raise self._failed("touch", exc, rkey) from None
        if self._failing:
            self._recovered(rkey)
        return touched == 1

    def delete(self, key: bytes) -> None:
        rkey = self._key(key)
        if self._failing:
            self._before_call(rkey)
        try:
            self._commands()("DEL", rkey)
        except _ERRORS as exc:
            raise self._failed("delete", exc, rkey) from None
        if self._failing:
            self._recovered(rkey)

    def rotate(self, old_key, new_key, blob, expires_at, tombstone_seconds, expected_version=None):
        old, new = self._key(old_key), self._key(new_key)
        now = self.clock()
        version = _new_version()
        value = _HEADER.pack(_MAGIC, _LIVE, version, expires_at, now) + blob
        tombstone = _HEADER.pack(_MAGIC, _TOMBSTONE, _new_version(), now + tombstone_seconds, now)
        expected = b"" if expected_version is None else _VERSION.pack(expected_version)
        ttl, tombstone_ttl = _ttl_ms(expires_at, now), _ttl_ms(now + tombstone_seconds, now)
        if self._failing:
            self._before_call(old)
            self._before_call(new)
        blamed = old  # the key whose node a failure counts against
        try:
            if self._atomic_rotate:
                outcome = self._eval(self._commands(), _ROTATE, 2, old, new, expected, value, ttl, tombstone, tombstone_ttl)
            else:
                # Cluster rotation (see the module docstring): new key first, then the old one's tombstone.
                client = self._connection()
                blamed = new
                if not client.set(new, value, nx=True, px=ttl):
                    outcome = 2
                else:
                    blamed = old
                    outcome = self._retire(client, old, new, expected, tombstone, tombstone_ttl)
        except _ERRORS as exc:
            raise self._failed("rotate", exc, blamed, old, new) from None
        if self._failing:
            self._recovered(old, new)
        return _OUTCOME[outcome] or version

    def _retire(self, client, old, new, expected, tombstone, tombstone_ttl) -> int:
        """Cluster rotation, second step: the old key's tombstone; the new key goes again when it fails."""
        try:
            outcome = self._eval(client.execute_command, _RETIRE, 1, old, expected, tombstone, tombstone_ttl)
        except _ERRORS:
            try:
                client.delete(new)
            except _ERRORS:
                pass  # an orphan whose id no client holds; its TTL removes it
            raise
        if outcome:
            client.delete(new)
        return outcome

    def cleanup(self, now: float, budget: int) -> int:
        return 0  # Redis TTLs remove expired records and tombstones
