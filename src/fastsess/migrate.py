"""`fastsess migrate-beaker`: copies Beaker's server-side sessions into the configured fastsess store.

Beaker keeps each session as base64 of a protocol-2 pickle of the session (or
of zlib-compressed JSON), mostly inside a pickled container:
- file: `container_file/**/<id>.cache`, a pickled dict;
- ext:redis and ext:rediscluster: `beaker_cache:<id>:session`, a pickled string;
- ext:database and ext:sqla: a `beaker_cache` table, the dict in a PickleType column;
- ext:memcached: `<id>_session`, the string as the memcache client stored it.
Every pickle is read by RestrictedUnpickler, which builds plain data only and
refuses anything else before it can run: a hostile pickle is reported, never
executed.
Sessions Beaker encrypted with its encrypt_key are decrypted first, with the
keys the config gives (`beaker_compat_encrypt_key`, else `encrypt_key`).

A session is written under `core.store_key(Beaker id)`, where the Beaker id
cookie (SPEC 3, "Beaker migration") finds it. A bulk pass copies everything;
a delta pass at cutover copies what changed since (`--since`, or the state
file the last pass left). A session already in the fastsess store is replaced
only when Beaker's copy is newer than its last write, so a delta pass never
overwrites a change fastsess made after cutover.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import io
import json
import os
import pickle
import pickletools
import re
import socket
import time
import uuid
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_to_bytes

from . import beaker_compat, core
from .config import Config
from .errors import ConfigError, FastsessError, StoreError
from .session import SessionService
from .stores.base import CONFLICT, EXISTS, GONE, TOMBSTONE, StoredRecord

#: Budgets for one pickle: its size in bytes, and the nodes (opcodes, and
#: values once references are expanded) it may produce.
MAX_PICKLE_BYTES = 4 * 1024 * 1024
MAX_PICKLE_NODES = 200_000
#: Nesting limit for session values (SPEC 4), checked before encoding.
MAX_DEPTH = 64
#: A delta pass also re-reads sessions this much older than its start: Beaker
#: stamps `_accessed_time` when a request starts and writes when it ends.
DELTA_SLACK_SECONDS = 120.0
SOURCE_TYPES = ("file", "ext:redis", "ext:rediscluster", "ext:database", "ext:sqla", "ext:memcached")
STATE_FILE = ".fastsess-migrate-beaker.json"
_WRITE_ATTEMPTS = 4
# What writing one session did.
_CREATED, _REPLACED, _CURRENT, _REGENERATED, _ENDED, _CONTENDED = (
    "created", "replaced", "current", "regenerated", "ended", "contended"
)
_REFUSALS_LISTED = 100
#: Seconds to wait for a network source to accept a connection.
_CONNECT_TIMEOUT = 10.0


# ---------------------------------------------------------------- the restricted unpickler


class PickleRefused(pickle.UnpicklingError):
    """A pickle that holds more than plain data, or exceeds its budget; nothing in it was run."""


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode`, as protocol 2 uses it to store bytes: latin1 from str, nothing else."""
    if type(text) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise PickleRefused("_codecs.encode is allowed only as encode(str, 'latin1')")
    return text.encode("latin-1")


#: Every global a pickle may name. Protocol 2 writes builtins as __builtin__.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
    ("datetime", "datetime"): _dt.datetime,
    ("datetime", "date"): _dt.date,
    ("datetime", "time"): _dt.time,
    ("datetime", "timedelta"): _dt.timedelta,
    ("datetime", "timezone"): _dt.timezone,
    ("decimal", "Decimal"): Decimal,
    ("uuid", "UUID"): uuid.UUID,
}
#: Opcodes that reach outside the pickle (persistent ids, the extension
#: registry, out-of-band buffers) or build arbitrary instances.
_REFUSED_OPCODES = frozenset(
    {"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEXT_BUFFER", "READONLY_BUFFER"}
)
_PLAIN = (str, bytes, int, float, bool, type(None), Decimal, _dt.datetime, _dt.date, _dt.time, _dt.timedelta)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only: the types of SPEC 4 and what protocol 2 needs to build them.

    find_class hands out only the constructors in _ALLOWED_GLOBALS (and
    `_codecs.encode` only for latin1); any other global, a persistent id or an
    extension code raises PickleRefused. Use `loads`, which also checks every
    GLOBAL before anything is built and enforces the size and node budgets.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise PickleRefused(f"refused global {_printable(module)}.{_printable(name)}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise PickleRefused("refused a persistent id")

    @classmethod
    def loads(cls, blob: bytes, max_bytes: int = MAX_PICKLE_BYTES, max_nodes: int = MAX_PICKLE_NODES) -> Any:
        """The plain data in `blob`, or PickleRefused; nothing but the allowed constructors ever runs."""
        if len(blob) > max_bytes:
            raise PickleRefused(f"pickle is {len(blob)} bytes, over the budget of {max_bytes}")
        _scan(blob, max_nodes)
        try:
            value = cls(io.BytesIO(blob)).load()
        except PickleRefused:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError,
                IndexError, OverflowError, UnicodeError, RecursionError, MemoryError) as exc:
            raise PickleRefused(f"malformed pickle ({type(exc).__name__})") from None
        _check_plain(value, max_nodes, max_bytes)
        return value


def _printable(text: Any) -> str:
    text = str(text)
    return text if len(text) <= 60 and text.isprintable() else repr(text[:60])


def _scan(blob: bytes, max_nodes: int) -> None:
    """Walk the opcodes without building anything: refuse bad opcodes and globals, count nodes."""
    count = 0
    try:
        for opcode, arg, _pos in pickletools.genops(blob):
            count += 1
            if count > 4 * max_nodes:
                raise PickleRefused(f"pickle has more than {4 * max_nodes} opcodes")
            if opcode.name in _REFUSED_OPCODES:
                raise PickleRefused(f"refused opcode {opcode.name}")
            if opcode.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if (module, name) not in _ALLOWED_GLOBALS:
                    raise PickleRefused(f"refused global {_printable(module)}.{_printable(name)}")
    except PickleRefused:
        raise
    except (ValueError, UnicodeError, OverflowError) as exc:
        raise PickleRefused(f"malformed pickle ({type(exc).__name__})") from None


def _check_plain(value: Any, max_nodes: int, max_bytes: int) -> None:
    """Plain types only, with references expanded: a small pickle cannot stand for a huge session."""
    nodes = 0
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise PickleRefused(f"pickle expands to more than {max_nodes} values")
        if depth > MAX_DEPTH:
            raise PickleRefused("pickle nests too deeply")
        kind = type(item)
        if kind is dict:
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif kind in (list, tuple, set, frozenset):
            stack.extend((v, depth + 1) for v in item)
        elif kind in (str, bytes):
            size += len(item)
            if size > max_bytes:
                raise PickleRefused(f"pickle expands to more than {max_bytes} bytes of text")
        elif kind is uuid.UUID:
            number = getattr(item, "int", None)  # set by UUID.__setstate__, from the pickle
            if type(number) is not int or not 0 <= number < 1 << 128:
                raise PickleRefused("malformed UUID")
        elif kind not in _PLAIN:
            raise PickleRefused(f"refused value of type {_printable(kind.__name__)}")


# ---------------------------------------------------------------- Beaker's stored values


class SessionRefused(ValueError):
    """A Beaker session that cannot be migrated; the message says why, without ids or data."""


def decode_container(blob: bytes) -> Any:
    """A Beaker container value (file, database row or Redis value), through the restricted unpickler."""
    try:
        return RestrictedUnpickler.loads(blob)
    except PickleRefused as exc:
        raise SessionRefused(f"container pickle: {exc}") from None


def decode_session(stored: Any, config: Config | None = None) -> Any:
    """Beaker's stored `session` value, as the session dict.

    Base64 of a protocol-2 pickle or of zlib-compressed JSON; or, when Beaker
    had an encrypt_key, `nonce + base64(AES(either))`, decrypted with the Beaker
    keys in `config` (beaker_compat.open_encrypted) and then read the same way.
    """
    if isinstance(stored, bytes):
        try:
            stored = stored.decode("ascii")
        except UnicodeDecodeError:
            raise SessionRefused("stored session is not base64") from None
    if not isinstance(stored, str):
        raise SessionRefused(f"stored session is a {type(stored).__name__}, not base64 text")
    try:
        raw = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    try:
        if raw is None:
            raise SessionRefused("stored session is not base64")
        return decode_serialized(raw)
    except SessionRefused as refusal:
        plain_pickle = raw is not None and raw.startswith(beaker_compat.PICKLE_PREFIX)
        if config is None or not config.beaker_encrypt_keys:
            if plain_pickle:
                raise
            raise SessionRefused(
                f"{refusal} (if Beaker encrypted it, set beaker_compat_encrypt_key to Beaker's encrypt_key)"
            ) from None
        try:
            return beaker_compat.open_encrypted(
                stored, config.beaker_encrypt_keys, config.beaker_validate_keys, config.encrypt_nonce_bits,
                decode_serialized, "stored session",
            )
        except beaker_compat.BeakerCookieRefused as exc:
            if plain_pickle:
                raise refusal from None  # a plain pickle, refused: say why
            raise SessionRefused(str(exc)) from None


def decode_serialized(raw: bytes) -> Any:
    """What Beaker's serializer wrote: a protocol-2 pickle (restricted unpickler) or zlib-compressed JSON."""
    if raw[:1] == b"\x80":
        try:
            return RestrictedUnpickler.loads(raw)
        except PickleRefused as exc:
            raise SessionRefused(str(exc)) from None
    try:
        return beaker_compat.inflate_json(raw, MAX_PICKLE_BYTES)
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError):
        raise SessionRefused("stored session is neither a pickle nor zlib-compressed JSON") from None


# ---------------------------------------------------------------- sources


@dataclass
class BeakerItem:
    """One stored Beaker session: its id, when Beaker last wrote it, and how to read it."""

    beaker_id: str
    modified: float | None  # None when only the session's own _accessed_time can tell
    read: Callable[[], Any]  # Beaker's stored `session` value, for decode_session; raises SessionRefused
    ref: str = ""


class BeakerSource(ABC):
    """Where Beaker kept its sessions.

    items() yields a BeakerItem per session (those changed since a time, when
    given), or an (outcome, reason) pair for an entry it passed over.
    """

    kind = ""

    @abstractmethod
    def describe(self) -> str:
        """The source as reports and the state file name it (no passwords)."""

    @abstractmethod
    def items(self, since: float | None) -> Iterator[BeakerItem | tuple[str, str]]:
        """Every stored session, or those changed at or after `since`."""

    def close(self) -> None:  # noqa: B027 - optional: only network sources hold connections
        """Release connections."""


class FileSource(BeakerSource):
    """Beaker's file store: `<data_dir>/container_file/<a>/<ab>/<id>.cache`, one pickled dict per session."""

    kind = "file"

    def __init__(self, data_dir: str) -> None:
        root = os.path.join(data_dir, "container_file")
        self.root = os.path.abspath(root if os.path.isdir(root) else data_dir)
        if not os.path.isdir(self.root):
            raise ConfigError(f"--from-data-dir {data_dir!r} is not a directory")

    def describe(self) -> str:
        return f"file:{self.root}"

    def items(self, since: float | None) -> Iterator[BeakerItem | tuple[str, str]]:
        for directory, _dirs, files in os.walk(self.root):
            for name in sorted(files):
                if not name.endswith(".cache"):
                    continue
                beaker_id = name[: -len(".cache")]
                if not beaker_compat.is_beaker_id(beaker_id):
                    yield ("skipped", "not a Beaker 1.14 session file (cache entries are left alone)")
                    continue
                path = os.path.join(directory, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue  # Beaker deleted it meanwhile
                except OSError as exc:
                    yield ("skipped", f"session file cannot be read ({exc.strerror})")
                    continue
                if since is not None and stat.st_mtime < since:
                    yield ("unchanged", "")
                    continue
                yield BeakerItem(
                    beaker_id, stat.st_mtime, lambda path=path, size=stat.st_size: self._read(path, size)
                )

    @staticmethod
    def _read(path: str, size: int) -> Any:
        if size > MAX_PICKLE_BYTES:
            raise SessionRefused(f"file is {size} bytes, over the budget of {MAX_PICKLE_BYTES}")
        try:
            with open(path, "rb") as f:
                blob = f.read(MAX_PICKLE_BYTES + 1)
        except FileNotFoundError:
            raise SessionRefused("file vanished while reading") from None
        except OSError as exc:
            raise SessionRefused(f"file cannot be read ({exc.strerror})") from None
        container = decode_container(blob)
        if not isinstance(container, dict) or "session" not in container:
            raise SessionRefused("file holds no Beaker session")
        return container["session"]


class RedisSource(BeakerSource):
    """Beaker's ext:redis store: `beaker_cache:<id>:session` holds a pickled base64 string."""

    kind = "ext:redis"
    PREFIX = "beaker_cache:"
    SUFFIX = ":session"
    MATCH = f"{PREFIX}*{SUFFIX}"

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError(
                "--from-type ext:redis needs the redis package: pip install 'fastsess[redis]'"
            ) from None
        self.url = url
        self.errors = (redis.RedisError, OSError)
        try:
            self.client = redis.Redis.from_url(url, socket_connect_timeout=_CONNECT_TIMEOUT)
        except ValueError as exc:
            raise ConfigError(f"--from-url is not a usable Redis URL: {_hide_password(str(exc), url)}") from None
        try:
            self.client.ping()
        except self.errors as exc:
            self.close()
            raise StoreError(f"cannot reach Redis at {_without_password(url)}: "
                             f"{_hide_password(str(exc), url)}") from None

    def describe(self) -> str:
        return f"ext:redis:{_without_password(self.url)}"

    def items(self, since: float | None) -> Iterator[BeakerItem | tuple[str, str]]:
        try:
            yield from self._items(since)
        except self.errors as exc:
            detail = _hide_password(f"{type(exc).__name__}: {exc}", *self._urls())
            raise StoreError(f"{self.describe()} failed while reading sessions: {detail}") from None

    def _urls(self) -> list[str]:
        return [self.url]

    def _items(self, since: float | None) -> Iterator[BeakerItem | tuple[str, str]]:
        batch: list[bytes] = []
        for key in self._keys():
            batch.append(key)
            if len(batch) >= 500:
                yield from self._batch(batch, since)
                batch = []
        if batch:
            yield from self._batch(batch, since)

    def _keys(self) -> Iterator[bytes]:
        """Every key that may hold a Beaker session."""
        return self.client.scan_iter(match=self.MATCH, count=1000)

    def _values(self, keys: list[bytes]) -> list[bytes | None]:
        return self.client.mget(keys)

    def _batch(self, keys: list[bytes], since: float | None) -> Iterator[BeakerItem | tuple[str, str]]:
        values = self._values(keys)
        for key, value in zip(keys, values, strict=True):
            beaker_id = key.decode("latin-1")[len(self.PREFIX) : -len(self.SUFFIX)]
            if not beaker_compat.is_beaker_id(beaker_id):
                yield ("skipped", "not a Beaker 1.14 session key (cache entries are left alone)")
                continue
            if value is None:
                continue  # expired meanwhile
            yield BeakerItem(beaker_id, None, lambda value=value: self._read(value))

    @staticmethod
    def _read(value: bytes) -> Any:
        return decode_container(value)

    def close(self) -> None:
        self.client.close()


class RedisClusterSource(RedisSource):
    """Beaker's ext:rediscluster store: the keys of ext:redis, spread over the cluster's slots.

    SCAN covers one node only, so every primary is scanned; values are read
    through the cluster client, which follows a key that moved meanwhile.
    """

    kind = "ext:rediscluster"

    def __init__(self, urls: str) -> None:
        try:
            from redis.cluster import ClusterNode, RedisCluster
            from redis.exceptions import RedisClusterException, RedisError

            from .stores.redis import parse_cluster_urls
        except ImportError:
            raise ConfigError(
                "--from-type ext:rediscluster needs the redis package: pip install 'fastsess[redis]'"
            ) from None
        self.urls = [u for u in re.split(r"[,\s]+", urls) if u]
        self.errors = (RedisError, RedisClusterException, OSError)
        nodes, auth = parse_cluster_urls(self.urls)
        if not nodes:
            raise ConfigError("--from-url names no Redis Cluster node (Beaker's session.urls)")
        try:
            self.client = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], **auth)
        except self.errors as exc:
            raise StoreError(f"cannot reach the Redis Cluster at {self.describe()}: "
                             f"{_hide_password(str(exc), *self.urls)}") from None

    def describe(self) -> str:
        return f"ext:rediscluster:{','.join(_without_password(u) for u in self.urls)}"

    def _urls(self) -> list[str]:
        return self.urls

    def _keys(self) -> Iterator[bytes]:
        for node in self.client.get_primaries():
            yield from self.client.get_redis_connection(node).scan_iter(match=self.MATCH, count=1000)

    def _values(self, keys: list[bytes]) -> list[bytes | None]:
        return self.client.mget_nonatomic(keys)


#: how long one query of a database source may run (a bulk pass reads whole tables)
SOURCE_QUERY_SECONDS = 600.0


class DatabaseSource(BeakerSource):
    """Beaker's ext:database store: a `beaker_cache` table of (namespace, accessed, created, data).

    The data column is read as plain bytes, never through SQLAlchemy's
    PickleType: it goes to the restricted unpickler like everything else.
    `accessed` is Beaker's naive local time of the last write.
    """

    kind = "ext:database"

    def __init__(self, url: str, table_name: str = "beaker_cache", schema: str | None = None) -> None:
        try:
            import sqlalchemy as sa
        except ImportError:
            raise ConfigError(
                f"--from-type {self.kind} needs SQLAlchemy: pip install 'fastsess[sql]'"
            ) from None
        from .stores.sql import create_engine, sql_error_detail

        self.sa = sa
        self.url = url
        self.error_detail = sql_error_detail
        try:
            # The store's engine settings: a connect timeout (libpq would wait
            # forever on a host that drops packets), psycopg 3 for postgresql://.
            self.engine = create_engine(
                url, None, connect_timeout=10.0, socket_timeout=SOURCE_QUERY_SECONDS, owned=False
            )
        except ConfigError:
            raise ConfigError(
                "--from-url is not a usable SQLAlchemy URL (dialect+driver://user:pass@host/db)"
            ) from None
        except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
            raise ConfigError(
                f"--from-url is not a usable SQLAlchemy URL: {_hide_password(str(exc), url)}"
            ) from None
        self.table = sa.table(
            table_name,
            sa.column("namespace", sa.String),
            sa.column("accessed", sa.DateTime),
            sa.column("data", sa.LargeBinary),
            schema=schema or None,
        )
        try:
            with self.engine.connect():
                pass
        except sa.exc.SQLAlchemyError as exc:
            self.close()
            raise StoreError(f"cannot reach the database at {_without_password(url)} "
                             f"{_hide_password(sql_error_detail(exc), url)}") from None

    def describe(self) -> str:
        name = f"{self.table.schema}.{self.table.name}" if self.table.schema else self.table.name
        return f"{self.kind}:{_without_password(self.url)}:{name}"

    def items(self, since: float | None) -> Iterator[BeakerItem | tuple[str, str]]:
        try:
            yield from self._rows(since)
        except self.sa.exc.SQLAlchemyError as exc:
            detail = _hide_password(self.error_detail(exc), self.url)
            raise StoreError(f"{self.describe()} failed while reading sessions {detail}") from None

    def _rows(self, since: float | None) -> Iterator[BeakerItem | tuple[str, str]]:
        sa = self.sa
        query = sa.select(self.table.c.namespace, self.table.c.accessed, self.table.c.data)
        if since is not None:
            query = query.where(self.table.c.accessed >= _dt.datetime.fromtimestamp(since))
        with self.engine.connect() as conn:
            for namespace, accessed, data in conn.execution_options(stream_results=True).execute(query):
                if not isinstance(namespace, str) or not beaker_compat.is_beaker_id(namespace):
                    yield ("skipped", "not a Beaker 1.14 session row (cache entries are left alone)")
                    continue
                modified = accessed.timestamp() if isinstance(accessed, _dt.datetime) else None
                yield BeakerItem(namespace, modified, lambda data=data: self._read(data))

    @staticmethod
    def _read(data: Any) -> Any:
        if data is None:
            raise SessionRefused("row holds no data")
        container = decode_container(bytes(data))
        if not isinstance(container, dict) or "session" not in container:
            raise SessionRefused("row holds no Beaker session")
        return container["session"]

    def close(self) -> None:
        self.engine.dispose()


class SqlaSource(DatabaseSource):
    """Beaker's ext:sqla store: the table the application handed Beaker, in `make_cache_table`'s layout.

    Beaker was given an engine and a Table object; here the database is named
    by its URL and the table by its name (and schema). Beaker's code reads the
    columns namespace, accessed and data by name, so any table it could use
    has them; rows are read exactly as ext:database rows are.
    """

    kind = "ext:sqla"


# memcache clients' flags: python-memcached and python-binary-memcached agree on these.
_MC_PICKLE, _MC_INTEGER, _MC_LONG, _MC_COMPRESSED, _MC_TEXT = 1, 2, 4, 8, 16
#: key dumps per server at most; the last one listed nothing new, or this many ran
_MC_DUMP_PASSES = 3
_MC_DUMP_TIMEOUT = 30.0
#: How long a dump waits out the crawler's own crawls (it answers BUSY meanwhile), in
#: seconds between tries: memcached starts one whenever the crawler is switched on.
_MC_BUSY_WAITS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)


def _raw_value(key: bytes, value: bytes, flags: int) -> tuple[bytes, int]:
    """A pymemcache deserializer that decodes nothing: the stored bytes and the client's flags."""
    return value, flags


class _CrawlerBusy(StoreError):
    """memcached's crawler is busy with another crawl: worth waiting for."""


class MemcachedSource(BeakerSource):
    """Beaker's ext:memcached store: `<id>_session`, on the server the memcache client hashed it to.

    memcached has no general way to list keys. From 1.4.31 on, `lru_crawler
    metadump all` lists the keys held in memory, which is how each server named
    in the url is searched (so the client's hashing need not be reproduced).
    What it cannot list is gone: a session evicted, or lost in a restart, was
    lost to Beaker too, and its user logs in again. The dump is not a snapshot,
    so a session created during a pass is found by the next one; the delta
    pass at cutover, once Beaker has stopped writing, finds everything left.
    Nor is one dump complete: memcached moves items between its LRU segments
    while the crawler walks them, and an item moved behind the crawler is not
    listed. So each server is dumped again until a dump lists no key the
    earlier ones missed (at most _MC_DUMP_PASSES dumps).
    Each key's `la` (last access, never earlier than its last write, in the
    server's clock) lets a delta pass skip sessions untouched since.
    """

    kind = "ext:memcached"
    SUFFIX = "_session"
    MIN_VERSION = (1, 4, 31)

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        try:
            from pymemcache.client.base import Client, normalize_server_spec
            from pymemcache.exceptions import MemcacheError
        except ImportError:
            raise ConfigError(
                "--from-type ext:memcached needs pymemcache: pip install 'fastsess[memcached]'"
            ) from None
        from .stores.memcached import parse_servers

        self.servers = parse_servers(url)
        self.timeout = timeout
        self.errors = (MemcacheError, OSError)
        self.clients = {
            name: Client(normalize_server_spec(name), connect_timeout=timeout, timeout=timeout,
                         deserializer=_raw_value)
            for name in self.servers
        }
        try:
            for name in self.servers:
                self._check_version(name)
        except FastsessError:
            self.close()
            raise

    def describe(self) -> str:
        return f"ext:memcached:{';'.join(self.servers)}"

    def _check_version(self, name: str) -> None:
        try:
            version = self.clients[name].version()
        except self.errors as exc:
            raise StoreError(f"cannot reach memcached at {name}: {exc}") from None
        text = version.decode("ascii", "replace")
        numbers = tuple(int(part) for part in re.findall(r"\d+", text)[:3])
        if numbers < self.MIN_VERSION:
            raise ConfigError(
                f"memcached at {name} is version {text}: listing its keys (lru_crawler metadump) needs "
                "1.4.31 or later, so its Beaker sessions cannot be migrated. Upgrading restarts memcached, "
                "which loses them as well: with beaker_compat = true, Beaker cookies still verify, and "
                "their users get a fresh session (log in once more)"
            )

    def items(self, since: float | None) -> Iterator[BeakerItem | tuple[str, str]]:
        # Every server's dump first: one that cannot list its keys stops the pass before anything is written.
        found: list[tuple[str, list[str]]] = []
        for name in self.servers:
            keys: list[str] = []
            found.append((name, keys))
            seen: set[str] = set()
            for dump in range(_MC_DUMP_PASSES):
                before = len(seen)
                for key, last_access in self._dump(name):
                    if key in seen:
                        continue
                    seen.add(key)
                    if not key.endswith(self.SUFFIX):
                        continue  # the application's own cache entries
                    if not beaker_compat.is_beaker_id(key[: -len(self.SUFFIX)]):
                        yield ("skipped", "not a Beaker 1.14 session key (cache entries are left alone)")
                        continue
                    if since is not None and last_access is not None and last_access < since:
                        yield ("unchanged", "")
                        continue
                    keys.append(key)
                if dump and len(seen) == before:
                    break  # this dump listed nothing the earlier ones missed
        for name, keys in found:
            for start in range(0, len(keys), 100):
                yield from self._batch(name, keys[start : start + 100])

    def _batch(self, name: str, keys: list[str]) -> Iterator[BeakerItem]:
        try:
            values = self.clients[name].get_many(keys)
        except self.errors as exc:
            raise StoreError(f"memcached at {name} failed while reading sessions: {exc}") from None
        for key in keys:
            found = values.get(key)
            if found is None:
                continue  # evicted since the dump
            value, flags = found
            yield BeakerItem(key[: -len(self.SUFFIX)], None, lambda v=value, f=flags: self._read(v, f))

    def _dump(self, name: str) -> Iterator[tuple[str, int | None]]:
        """(key, last access) for every key server `name` holds in memory, once the crawler is free."""
        for wait in (*_MC_BUSY_WAITS, None):
            listed = False
            try:
                for entry in self._dump_once(name):
                    listed = True
                    yield entry
                return
            except _CrawlerBusy as busy:  # memcached says so before the first key
                if wait is None or listed:
                    raise StoreError(str(busy)) from None
                time.sleep(wait)

    def _dump_once(self, name: str) -> Iterator[tuple[str, int | None]]:
        from pymemcache.client.base import normalize_server_spec

        spec = normalize_server_spec(name)
        try:
            if isinstance(spec, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(spec)
            else:
                sock = socket.create_connection(spec, timeout=self.timeout)
            with sock:
                sock.settimeout(_MC_DUMP_TIMEOUT)
                sock.sendall(b"lru_crawler metadump all\r\n")
                pending = b""
                while True:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        raise StoreError(f"memcached at {name} closed the connection during the key dump")
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        line = line.rstrip(b"\r")
                        if line == b"END":
                            return
                        if line.startswith(b"key="):
                            yield _metadump_entry(line)
                        elif line:
                            raise self._dump_refused(name, line)
        except OSError as exc:
            raise StoreError(f"memcached at {name} failed during the key dump: {exc}") from None

    @staticmethod
    def _dump_refused(name: str, line: bytes) -> FastsessError:
        reply = line.decode("ascii", "replace")[:200]
        if "disabled" in reply:
            return ConfigError(
                f"memcached at {name} has its LRU crawler off ({reply}), so it cannot list its keys: "
                "send it `lru_crawler enable` (no restart needed), then run migrate-beaker again"
            )
        if reply.startswith("BUSY"):
            return _CrawlerBusy(f"memcached at {name} is busy with another crawl ({reply}); try again shortly")
        return StoreError(f"memcached at {name} refused to list its keys: {reply}")

    @staticmethod
    def _read(value: bytes, flags: int) -> Any:
        if flags & (_MC_INTEGER | _MC_LONG) or flags >= 32:
            raise SessionRefused(f"memcached value has client flags {flags}, not a Beaker session string")
        if flags & _MC_COMPRESSED:
            try:
                value = beaker_compat.inflate(value, MAX_PICKLE_BYTES)
            except (zlib.error, ValueError):
                raise SessionRefused("compressed memcached value is corrupt or too large") from None
        return decode_container(value) if flags & _MC_PICKLE else value

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _metadump_entry(line: bytes) -> tuple[str, int | None]:
    """The key and last access of one `lru_crawler metadump` line: `key=<uri-encoded> exp=.. la=.. ...`."""
    fields = dict(part.split(b"=", 1) for part in line.split(b" ") if b"=" in part)
    key = unquote_to_bytes(fields.get(b"key", b"")).decode("latin-1")
    la = fields.get(b"la", b"")
    return key, int(la) if la.isdigit() else None


def _without_password(url: str) -> str:
    """The URL as it may be shown: any password replaced."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def _hide_password(text: str, *urls: str) -> str:
    """An error message as it may be shown: the URLs' passwords replaced, should a client library echo one."""
    for url in urls:
        scheme, sep, rest = url.partition("://")
        credentials = rest.partition("@")[0] if sep and "@" in rest.split("/", 1)[0] else ""
        password = credentials.partition(":")[2]
        if password:
            text = text.replace(url, _without_password(url)).replace(password, "***")
    return text


def open_source(
    kind: str, data_dir: str | None, url: str | None, table_name: str = "beaker_cache",
    schema: str | None = None,
) -> BeakerSource:
    """The Beaker store named on the command line (`--from-type` and its location)."""
    if kind == "file":
        if not data_dir:
            raise ConfigError("--from-type file needs --from-data-dir (Beaker's session.data_dir)")
        return FileSource(data_dir)
    if kind in SOURCE_TYPES and not url:
        where = {
            "ext:rediscluster": "Beaker's session.urls, comma-separated",
            "ext:sqla": "the SQLAlchemy URL of the engine Beaker's session.bind was",
        }.get(kind, "Beaker's session.url")
        raise ConfigError(f"--from-type {kind} needs --from-url ({where})")
    if kind == "ext:redis":
        return RedisSource(url)
    if kind == "ext:rediscluster":
        return RedisClusterSource(url)
    if kind == "ext:database":
        return DatabaseSource(url, table_name, schema)
    if kind == "ext:sqla":
        return SqlaSource(url, table_name, schema)
    if kind == "ext:memcached":
        return MemcachedSource(url)
    raise ConfigError(f"--from-type must be one of {', '.join(SOURCE_TYPES)}, not {kind!r}")


# ---------------------------------------------------------------- one pass


@dataclass
class MigrationReport:
    """What one pass did; `as_dict` is the --json summary."""

    source: str
    destination: str
    mode: str  # "bulk" or "delta"
    since: float | None
    started_at: float
    dry_run: bool = False
    seen: int = 0
    migrated: int = 0  # new in the fastsess store
    updated: int = 0  # replaced an older copy from an earlier pass
    unchanged: int = 0  # not changed since the last pass, or already current
    expired: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    refused: list = field(default_factory=list)  # [{"ref": ..., "reason": ...}], the first _REFUSALS_LISTED
    refused_count: int = 0
    seconds: float = 0.0

    def refuse(self, ref: str, reason: str) -> None:
        self.refused_count += 1
        if len(self.refused) < _REFUSALS_LISTED:
            self.refused.append({"ref": ref, "reason": reason})

    def as_dict(self) -> dict:
        return {
            "source": self.source, "destination": self.destination, "mode": self.mode, "since": self.since, "started_at": self.started_at,
            "dry_run": self.dry_run,
            "seen": self.seen, "migrated": self.migrated, "updated": self.updated,
            "unchanged": self.unchanged, "expired": self.expired,
            "skipped": sum(self.skipped.values()), "skipped_reasons": dict(self.skipped),
            "refused": self.refused_count, "refusals": self.refused, "seconds": round(self.seconds, 3),
        }


def describe_destination(config: Config) -> str:
    """The fastsess store a pass writes to, as the state file names it (no passwords)."""
    kind = config.store_type
    if kind in ("file", "lmdb"):
        return f"{kind} {os.path.abspath(os.path.expanduser(config.data_dir or ''))}"
    if kind in ("memcached", "redis"):
        where = config.url or ",".join(config.urls or ())
        return f"{kind} {_without_password(str(where))} prefix {config.key_prefix!r}"
    if kind == "sql":
        where = _without_password(str(config.url)) if config.url else (
            f"sqlite in {os.path.abspath(config.data_dir)}" if config.data_dir else "an engine passed as bind"
        )
        table = f"{config.schema_name}.{config.table_name}" if config.schema_name else config.table_name
        return f"sql {where} table {table}"
    return kind


def require_server_store(config: Config) -> None:
    """ConfigError unless `config` names a server-side store to migrate into."""
    if config.store_type == "cookie":
        raise ConfigError("migrate-beaker needs a server-side fastsess store; cookie sessions have none "
                          "(Beaker cookie sessions are read directly with beaker_compat = true)")
    if config.store_type == "memory":
        # The sessions would go into this command's own memory store and vanish when it exits,
        # while the report said "migrated" and the state file made the next run a delta pass.
        raise ConfigError("migrate-beaker cannot reach memory sessions: session.type = memory keeps them "
                          "inside each application process (migrate into a store the application shares: "
                          "lmdb, file, redis, memcached or sql)")


class Migration:
    """Copies the sessions of one Beaker source into the configured fastsess store."""

    def __init__(self, config: Config, service: SessionService, source: BeakerSource,
                 clock: Callable[[], float] = time.time) -> None:
        require_server_store(config)
        self.config = config
        self.service = service
        self.source = source
        self.clock = clock

    def run(self, since: float | None, dry_run: bool = False,
            progress: Callable[[MigrationReport], None] | None = None) -> MigrationReport:
        started = self.clock()
        mode = "bulk" if since is None else "delta"
        report = MigrationReport(self.source.describe(), describe_destination(self.config), mode, since, started,
                                 dry_run)
        cutoff = None if since is None else since - DELTA_SLACK_SECONDS
        last_progress = time.monotonic()
        for item in self.source.items(cutoff):
            report.seen += 1
            if isinstance(item, tuple):
                outcome, reason = item
                if outcome == "unchanged":
                    report.unchanged += 1
                else:
                    report.skipped[reason] += 1
            else:
                self._migrate(item, cutoff, report)
            if progress is not None and time.monotonic() - last_progress >= 0.5:
                last_progress = time.monotonic()
                progress(report)
        report.seconds = self.clock() - started
        if progress is not None:
            progress(report)
        return report

    def _migrate(self, item: BeakerItem, cutoff: float | None, report: MigrationReport) -> None:
        key = core.store_key(item.beaker_id)
        ref = key.hex()[:16]  # what reports show: never the Beaker id itself
        now = self.clock()
        try:
            session = beaker_compat.split_session(decode_session(item.read(), self.config), self.config, now)
        except (SessionRefused, beaker_compat.BeakerCookieRefused) as exc:
            report.refuse(ref, str(exc))
            return
        modified = min(item.modified if item.modified is not None else session.accessed, now)
        if cutoff is not None and max(modified, session.accessed) < cutoff:
            report.unchanged += 1
            return
        last_activity = max(session.accessed, modified)
        expires_at = self.service.expires_at(session.created, last_activity)
        if expires_at <= now:
            report.expired += 1
            return
        blob = core.pack_record(
            session.created, modified, 0, session.domain, session.path, None, session.data_bytes
        )
        if len(blob) > self.config.max_record_size:
            report.refuse(ref, f"record of {len(blob)} bytes is over max_record_size")
            return
        if report.dry_run:
            report.migrated += 1
            return
        # A delta pass creates only sessions Beaker started after the passes before it: an
        # older one with no fastsess record was copied then, and fastsess has ended it since
        # (a logout, or regenerate_id() once its tombstone is gone). It must stay ended.
        may_create = cutoff is None or session.created >= cutoff
        try:
            outcome = self._write(key, blob, modified, expires_at, may_create)
        except StoreError as exc:
            raise StoreError(
                f"the fastsess {self.config.store_type} store failed, so the pass stopped ({exc}); what it "
                "copied is kept, and the same command, run again once the store is back, is safe"
            ) from None
        if outcome == _CREATED:
            report.migrated += 1
        elif outcome == _REPLACED:
            report.updated += 1
        elif outcome == _CURRENT:
            report.unchanged += 1
        elif outcome == _REGENERATED:
            report.skipped["id already regenerated in fastsess"] += 1
        elif outcome == _ENDED:
            report.skipped["ended in fastsess after an earlier pass copied it"] += 1
        else:
            report.refuse(ref, "the fastsess record kept changing while it was written")

    def _write(self, key: bytes, blob: bytes, modified: float, expires_at: float, may_create: bool = True) -> str:
        """Create the record (if may_create), or replace one that only Beaker changed since it was written."""
        store = self.service.store
        sealed = self.service.seal_record(key, blob)
        for _ in range(_WRITE_ATTEMPTS):
            if may_create:
                result = store.create(key, sealed, expires_at)
                if result is not EXISTS:
                    return _CREATED
            current = store.load(key)
            if current is TOMBSTONE:
                return _REGENERATED
            if not isinstance(current, StoredRecord):
                if not may_create:
                    return _ENDED
                continue  # expired or deleted meanwhile: create again
            try:
                last_write = core.unpack_record(self.service.open_record(key, current.blob))[1]
            except (ValueError, TypeError):
                last_write = float("-inf")  # damaged: Beaker's copy wins
            if last_write >= modified:
                return _CURRENT  # already this copy, or changed by fastsess since
            result = store.cas(key, sealed, current.version, expires_at)
            if result is not CONFLICT and result is not GONE:
                return _REPLACED
        return _CONTENDED


# ---------------------------------------------------------------- the state file


def _state_key(source: str, destination: str) -> str:
    return f"{source} -> {destination}"


def read_state(path: str, source: str, destination: str) -> float | None:
    """When the last pass from `source` into `destination` started; None before the first one.

    Keyed by both: a trial pass into another store (a development config beside
    the production one) must not turn the real first pass into a delta pass.
    """
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the migrate-beaker state file {path!r}: {exc}") from None
    entry = state.get(_state_key(source, destination)) if isinstance(state, dict) else None
    started = entry.get("started_at") if isinstance(entry, dict) else None
    return float(started) if isinstance(started, (int, float)) else None


def write_state(path: str, report: MigrationReport) -> None:
    """Remember this pass, per source and destination, so the next run is a delta pass from its start."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if not isinstance(state, dict):
            state = {}
    except (OSError, ValueError):
        state = {}
    state[_state_key(report.source, report.destination)] = {
        "started_at": report.started_at, "finished_at": report.started_at + report.seconds,
        "mode": report.mode,
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, path)


def parse_since(text: str) -> float:
    """A Unix time, or an ISO 8601 date-time (local time when it has no offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(f"--since must be a Unix time or an ISO 8601 date-time, not {text!r}") from None
