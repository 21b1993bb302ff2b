"""SQL store: one table in any database SQLAlchemy speaks (SQLite and PostgreSQL tested).

The table (created when the store is built, or by `fastsess create-table`):

    key          VARCHAR(64)  primary key: the store key in lower-case hex
    version      BIGINT       random 62-bit start per create, +1 per write
    kind         SMALLINT     0 record, 1 tombstone; anything else is damage
    expires_at   DOUBLE       Unix time, indexed for cleanup
    last_access  DOUBLE       Unix time of the last write or touch
    data         BLOB/BYTEA   the record bytes (empty for a tombstone)

The key is hex text rather than binary because VARCHAR primary keys index
well everywhere, while MySQL cannot index a BLOB without a prefix length. A
table passed in (`table=`) may use a binary key column instead.

Expiry is decided against this store's clock (now <= expires_at is live);
expired rows stay until cleanup() deletes them in batches through the
expires_at index. A damaged row (an unknown kind, or NULL where a record
needs a value) makes load() raise CorruptRecord; the writes count it as
missing. Versions start at a random 62-bit number on every create,
so a compare-and-set holding a version from a deleted record's earlier life
fails against the recreated one.

Round trips. On PostgreSQL and other server databases, single-statement
operations (load, create, cas, touch, delete, cleanup) run in autocommit:
one statement, no BEGIN or COMMIT. cas is one conditional UPDATE; only when
it matches no row does a SELECT tell GONE from CONFLICT. rotate() and
locked_update() are transactions that write or lock before they read (an
UPDATE of the old row, SELECT ... FOR UPDATE), so they are race-free on
every backend: SQLite has no row locks, but its first write takes the
database's write lock and the reads that follow see the latest data.
pool_pre_ping is off by default, so a read is one round trip (SPEC 9). After
a database restart the first statement on a pooled connection fails as a
disconnect; SQLAlchemy then drops the pool, and the operation runs once more
on a new connection, so the restart costs no request an error (as with
memcached and Redis). The watchdog's shut-downs below are never run again.

SQLite: a file database runs in WAL mode with a 5 s busy_timeout, so readers
never wait for writers and writers queue instead of failing. An in-memory
database (`sqlite://`) lives in one connection (StaticPool) that all threads
share, one operation at a time; a forked child keeps its private copy.

Forks (gunicorn --preload): pooled connections must not be used on both sides
of a fork, so the first operation in a child process disposes of the
inherited pool without closing its connections (`dispose(close=False)`),
which belong to the parent, and opens its own.

A table still missing. When the database is down while the middleware is
built, create_table() fails and (with on_store_error = anonymous) the store is
built anyway. The first operation that then finds the table missing creates
it, once, under a lock, and runs again: workers serve anonymous sessions until
the database answers, and sessions from then on, without a restart.

A database that stops answering. socket_timeout becomes PostgreSQL's
statement_timeout, which a slow but running server enforces itself. A server
that answers nothing at all (stopped, a frozen VM or disk) cannot: its kernel
still acknowledges every byte, so neither TCP keepalives nor
tcp_user_timeout ever fire, and libpq would wait forever. On an engine the
store made itself for PostgreSQL, a StatementWatchdog therefore shuts down
the socket of a connection that has waited on one statement (and its commit) for
socket_timeout plus half of it (at most 1 s more), which ends the wait with
an error: a StoreError saying the database did not answer, and the
connection is discarded. An engine passed in (`bind=`) is the application's
and gets no watchdog.

Errors: database failures raise StoreError, whose message names the operation
and the database's error class, never a key or data; `hide_parameters=True`
keeps parameters out of SQLAlchemy's own messages and logs, for an engine
passed in (`bind=`) too. Connection failures feed a CircuitBreaker, so an
outage fails fast instead of waiting out timeouts on every request.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.mysql import MEDIUMBLOB
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import asbool

from ..errors import ConfigError, CorruptRecord, StoreError
from .base import (
    CONFLICT,
    EXISTS,
    EXPIRED,
    GONE,
    TOMBSTONE,
    LoadResult,
    Store,
    StoredRecord,
    UpdateFn,
    WriteResult,
    check_timeouts,
    record_from,
)
from .breaker import CircuitBreaker

_RECORD, _TOMBSTONE = 0, 1
_BUSY_TIMEOUT_MS = 5000
_NAME = "the SQL session store"
_DAMAGED = object()  # _record(): a row that is no record (unknown kind, NULLs)

_COLUMNS = ("key", "version", "kind", "expires_at", "last_access", "data")
#: What a column of a table passed in must be (isinstance of one of these types).
_COLUMN_TYPES: dict[str, tuple] = {
    "key": (sa.String, sa.LargeBinary, sa.BINARY, sa.VARBINARY),
    "version": (sa.Integer,),
    "kind": (sa.Integer,),
    "expires_at": (sa.Float,),
    "last_access": (sa.Float,),
    "data": (sa.LargeBinary, sa.BINARY, sa.VARBINARY),
}

# Beaker's sa.* options arrive as strings from INI files.
_SA_INT = ("pool_size", "max_overflow", "pool_recycle", "query_cache_size", "insertmanyvalues_page_size")
_SA_FLOAT = ("pool_timeout",)
_SA_BOOL = ("pool_pre_ping", "pool_use_lifo")
_SA_BOOL_OR_DEBUG = ("echo", "echo_pool")

#: Errors that mean the database could not be reached: they feed the breaker.
_CONNECTION_ERRORS = (
    sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError,
)
#: Errors whose first line is safe and useful to show: they describe the
#: connection or the schema, never a parameter value.
_DESCRIBED_ERRORS = (*_CONNECTION_ERRORS, sa_exc.ProgrammingError)


class _Changed(Exception):
    """Rolls a transaction back: the row changed although it was locked."""


#: column types whose values the SQLite driver returns as SQLAlchemy would (no result processing)
_DRIVER_TYPES = (sa.String, sa.BigInteger, sa.SmallInteger, sa.Integer, sa.Double, sa.Float, sa.LargeBinary)


def _missing_table(exc: sa_exc.SQLAlchemyError) -> bool:
    """True when the database answered that the table does not exist."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == "42P01" or getattr(orig, "pgcode", None) == "42P01":
        return True  # PostgreSQL's undefined_table (psycopg, psycopg2)
    text = str(orig if orig is not None else exc).lower()
    # SQLite, MySQL/MariaDB, SQL Server, Oracle
    return any(words in text for words in (
        "no such table", "doesn't exist", "invalid object name", "table or view does not exist",
    ))


def _new_version() -> int:
    # 62 bits: far from BIGINT's 2^63 limit however many writes follow.
    return int.from_bytes(os.urandom(8), "little") >> 2


def sessions_table(table_name: str = "fastsess_sessions", schema_name: str | None = None) -> sa.Table:
    """The Table this store creates and uses (in a MetaData of its own)."""
    return sa.Table(
        table_name,
        sa.MetaData(),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False, index=True),
        sa.Column("last_access", sa.Double, nullable=False),
        # MySQL's BLOB stops at 64 KiB, exactly the default max_record_size.
        sa.Column("data", sa.LargeBinary().with_variant(MEDIUMBLOB(), "mysql", "mariadb"), nullable=False),
        schema=schema_name,
    )


def _check_table(table: Any) -> sa.Table:
    """A table passed in must have our columns, a unique key, and nothing else required."""
    if not isinstance(table, sa.Table):
        raise ConfigError("session.table must be an sqlalchemy.Table")
    wanted = ", ".join(_COLUMNS)
    for name, types in _COLUMN_TYPES.items():
        column = table.c.get(name)
        if column is None or not isinstance(column.type, types):
            raise ConfigError(
                f"session.table {table.name!r} does not have the columns fastsess needs ({wanted}; "
                "Beaker's table layout differs): drop session.table and let fastsess create its own "
                "with session.table_name"
            )
    unique = {tuple(c.name for c in index.columns) for index in table.indexes if index.unique}
    unique |= {
        tuple(c.name for c in constraint.columns)
        for constraint in table.constraints
        if isinstance(constraint, (sa.PrimaryKeyConstraint, sa.UniqueConstraint))
    }
    if not (table.c["key"].unique or ("key",) in unique):
        raise ConfigError(f"session.table {table.name!r}: column key must be its primary key or unique")
    for column in table.columns:
        if column.name in _COLUMNS or column.nullable or column.default is not None:
            continue
        if column.server_default is not None or (column.primary_key and isinstance(column.type, sa.Integer)):
            continue
        raise ConfigError(
            f"session.table {table.name!r}: column {column.name} is required and fastsess cannot fill it"
        )
    return table


def _engine_options(sa_opts: dict | None) -> dict[str, Any]:
    """Beaker's sa.* options as create_engine() keywords, with INI strings coerced."""
    options: dict[str, Any] = {}
    for name, value in (sa_opts or {}).items():
        name = name[3:] if name.startswith("sa.") else name
        if isinstance(value, str):
            text = value.strip()
            try:
                if name in _SA_INT:
                    value = int(text)
                elif name in _SA_FLOAT:
                    value = float(text)
                elif name in _SA_BOOL:
                    value = asbool(text)
                elif name in _SA_BOOL_OR_DEBUG:
                    value = "debug" if text.lower() == "debug" else asbool(text)
            except ValueError:
                raise ConfigError(f"session.sa.{name} = {value!r} is not a valid value") from None
        options[name] = value
    return options


def _sqlite_memory(url: sa.URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        # WAL with synchronous=NORMAL survives a crash of the application; a
        # power loss may lose the last commits, which for sessions is a logout.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def create_engine(
    url: str | None, sa_opts: dict | None, connect_timeout: float, socket_timeout: float, owned: bool = True
):
    """An engine as the store needs it: timeouts, driver fallback, hidden parameters.

    owned=False is for a database fastsess only reads (migrate-beaker's
    source): a SQLite file keeps its journal mode and settings.
    """
    check_timeouts(connect_timeout, socket_timeout)  # PostgreSQL reads statement_timeout = 0 as no limit at all
    options = _engine_options(sa_opts)
    url = options.pop("url", None) if url is None else url
    if not url:
        raise ConfigError("the sql store needs session.url (an SQLAlchemy URL) or session.bind (an Engine)")
    try:
        parsed = sa.make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise ConfigError(
            "session.url is not an SQLAlchemy URL (dialect+driver://user:pass@host/db)"
        ) from None
    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql":
        # Beaker configs say postgresql://, which means psycopg2; the sql extra installs psycopg 3.
        try:
            import psycopg2  # noqa: F401 - only probing which driver is installed
        except ImportError:
            parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = dict(options.pop("connect_args", None) or {})
    events = []
    if backend == "sqlite":
        if _sqlite_memory(parsed):
            options.setdefault("poolclass", StaticPool)
            connect_args.setdefault("check_same_thread", False)
        else:
            connect_args.setdefault("timeout", _BUSY_TIMEOUT_MS / 1000)
            if owned:
                events.append(("connect", _sqlite_pragmas))
    else:
        if backend == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2"):
            # libpq waits forever by default (2 s is the least connect_timeout
            # it accepts); keepalives notice a peer that vanished mid-query.
            timeouts = {
                "connect_timeout": max(2, math.ceil(connect_timeout)),
                "options": f"-c statement_timeout={int(socket_timeout * 1000)}",
                "keepalives": 1,
                "keepalives_idle": max(1, math.ceil(socket_timeout)),
                "keepalives_interval": 1,
                "keepalives_count": 3,
            }
            for name, value in timeouts.items():
                if name not in parsed.query:  # the URL's own settings win
                    connect_args.setdefault(name, value)
        if "poolclass" not in options and "pool" not in options:
            # Waiting for a pooled connection is part of connecting: without a bound, threads
            # queued behind a database that stopped answering wait SQLAlchemy's 30 s each.
            options.setdefault("pool_timeout", connect_timeout)
    options["hide_parameters"] = True  # session bytes never reach logs or messages
    try:
        engine = sa.create_engine(parsed, connect_args=connect_args, **options)
    except sa_exc.NoSuchModuleError:
        raise ConfigError(
            f"session.url names a database SQLAlchemy has no dialect for: {parsed.drivername!r} "
            "(dialect+driver://user:pass@host/db)"
        ) from None
    except (TypeError, sa_exc.ArgumentError) as exc:
        raise ConfigError(f"session.sa_opts: {exc}") from None
    for name, listener in events:
        sa.event.listen(engine, name, listener)
    return engine


def _describe(what: str, exc: sa_exc.SQLAlchemyError) -> str:
    """The StoreError message: the operation and the error class, never parameters."""
    return f"{_NAME}: {what} failed {sql_error_detail(exc)}"


def sql_error_detail(exc: sa_exc.SQLAlchemyError) -> str:
    """`(ErrorClass)`, then the first line of a connection or schema error: one line, never a parameter."""
    orig = getattr(exc, "orig", None)
    cause = orig if orig is not None else exc
    detail = f"({type(cause).__name__})"
    if isinstance(exc, _DESCRIBED_ERRORS):
        lines = str(cause).strip().splitlines()
        if lines and "[SQL" not in lines[0]:
            detail += f": {lines[0][:200]}"
    return detail


class StatementWatchdog:
    """Shuts down the socket of a connection that has waited on the database for more than `limit` seconds.

    Pool and engine events keep a table of the connections checked out, each
    with a deadline that every statement moves on (the commit that follows
    the last one is fast, and shares its deadline); a daemon thread
    (one per process, started at the first checkout) looks at the table a few
    times a second while it is not empty. A connection leaves the table, under
    the lock the thread holds while it shuts sockets down, when it goes back to
    the pool or is invalidated, so a socket is never shut down after its use.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._tick = max(0.02, min(0.1, limit / 10))
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, list] = {}  # id(DBAPI connection) -> [deadline, connection, thread id]
        self._fired: set[int] = set()  # threads whose connection was shut down, until they look
        self._wake = threading.Event()
        self._pid = 0
        self._stopped = False

    def watch(self, engine: sa.Engine) -> None:
        sa.event.listen(engine, "checkout", self._checkout)
        sa.event.listen(engine, "checkin", self._release)
        sa.event.listen(engine, "invalidate", self._release)
        sa.event.listen(engine, "soft_invalidate", self._release)
        sa.event.listen(engine, "before_cursor_execute", self._statement)

    def after_fork(self) -> None:
        """In a forked child: the parent's table, lock and thread are not this process's."""
        self._reset()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def fired(self) -> bool:
        """True (once) when this thread's connection was shut down for want of an answer."""
        if not self._fired:
            return False
        with self._lock:
            try:
                self._fired.remove(threading.get_ident())
            except KeyError:
                return False
            return True

    # -- events

    def _checkout(self, dbapi_connection, connection_record, connection_proxy) -> None:
        if self._pid != os.getpid():
            self._start()
        self._active[id(dbapi_connection)] = [time.monotonic() + self.limit, dbapi_connection, threading.get_ident()]
        if not self._wake.is_set():
            self._wake.set()

    def _statement(self, conn, cursor, *rest) -> None:
        entry = self._active.get(id(cursor.connection))
        if entry is not None:
            entry[0] = time.monotonic() + self.limit

    def _release(self, dbapi_connection, *rest) -> None:
        if dbapi_connection is not None:
            with self._lock:
                self._active.pop(id(dbapi_connection), None)

    # -- the thread

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="fastsess-sql-watchdog", daemon=True).start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                if not self._active:
                    self._wake.clear()
                    if self._active:  # a checkout came in between
                        self._wake.set()
                    continue
                for key, (deadline, connection, thread) in list(self._active.items()):
                    if deadline <= now:
                        del self._active[key]
                        self._shut_down(connection)
                        self._fired.add(thread)

    @staticmethod
    def _shut_down(connection) -> None:
        # The blocked read returns at once with an end of stream; libpq then closes the
        # connection itself. A duplicate descriptor, because the socket is libpq's to close.
        try:
            fd = os.dup(connection.fileno())
        except Exception:  # noqa: BLE001 - already closed or lost: nothing waits on it
            return
        with socket.socket(fileno=fd) as sock:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class SqlStore(Store):
    """Records in one SQL table, through SQLAlchemy Core; safe across threads and processes.

    Give `url` (any SQLAlchemy URL) or `bind` (an Engine the application
    already has). `table` is an existing Table with this store's columns;
    otherwise `table_name` in `schema_name` is created when missing
    (create_table=True) or by create_table() later. `sa_opts` are
    create_engine() keywords (Beaker's sa.* options), strings coerced.
    """

    has_locked_update = True
    kind = "sql"
    has_locked_rotate = True
    #: rows one cleanup statement deletes at most: short transactions, short locks
    cleanup_batch = 500

    def __init__(
        self,
        url: str | None = None,
        bind: sa.Engine | None = None,
        table_name: str = "fastsess_sessions",
        schema_name: str | None = None,
        sa_opts: dict | None = None,
        table: sa.Table | None = None,
        create_table: bool = True,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 5.0,
        socket_timeout: float = 5.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        super().__init__(clock)
        if bind is not None:
            if not isinstance(bind, sa.Engine):
                hint = " (a database URL goes in session.url)" if isinstance(bind, str) else ""
                raise ConfigError(f"session.bind must be an SQLAlchemy Engine{hint}")
            self.engine = bind
            self._owns_engine = False
        else:
            self.engine = create_engine(url, sa_opts, connect_timeout, socket_timeout)
            self._owns_engine = True
        if table is None:
            table = sessions_table(table_name or "fastsess_sessions", schema_name)
        self.table = _check_table(table)
        key_type = self.table.c["key"].type
        self._key: Callable[[bytes], Any] = bytes.hex if isinstance(key_type, sa.String) else bytes
        dialect = self.engine.dialect.name
        self._sqlite = dialect == "sqlite"
        self._memory = self._sqlite and _sqlite_memory(self.engine.url)
        # A view of the engine (same pool) that hides parameters, also for an engine passed in.
        self._tx = self.engine.execution_options()
        self._tx.hide_parameters = True
        # pysqlite begins transactions only at the first write, so plain
        # transactions already cost nothing extra for single statements there.
        self._single = self._tx if self._sqlite else self._tx.execution_options(isolation_level="AUTOCOMMIT")
        # One shared connection for :memory: (StaticPool): one operation at a time.
        self._serial = threading.Lock() if self._memory else None
        self._mysql = dialect in ("mysql", "mariadb")
        self._pid = os.getpid()
        self._fork_lock = threading.Lock()
        self._breaker = breaker or CircuitBreaker()
        self._closed = False
        self._watchdog: StatementWatchdog | None = None
        if self._owns_engine and dialect == "postgresql":
            self._watchdog = StatementWatchdog(socket_timeout + min(socket_timeout / 2, 1.0))
            self._watchdog.watch(self.engine)
        #: Set when create_table() failed: the first operation that finds the table missing creates it.
        self._table_pending = False
        self._table_lock = threading.Lock()
        self._statements()
        #: True when building this store created the table.
        self.table_created = self.create_table() if create_table else False

    # ------------------------------------------------------------- plumbing

    def _statements(self) -> None:
        t = self.table
        c = t.c
        k, now = sa.bindparam("k"), sa.bindparam("now")
        live = sa.and_(c["key"] == k, c["kind"] == _RECORD, c["expires_at"] >= now)
        columns = (c["version"], c["kind"], c["expires_at"], c["last_access"], c["data"])
        values = dict(
            version=sa.bindparam("v"), expires_at=sa.bindparam("e"), last_access=now, data=sa.bindparam("d")
        )
        self._load = sa.select(*columns).where(c["key"] == k)
        # SQLite through its standard driver, with the column types sessions_table() makes: a load's
        # statement goes straight to the driver (_driver_row), as compiled once here.
        plain = all(type(column.type) in _DRIVER_TYPES for column in (c["key"], *columns))
        driver = self._sqlite and self.engine.dialect.driver == "pysqlite" and plain
        self._load_sql = str(self._load.compile(dialect=self.engine.dialect)) if driver else None
        self._dbapi = self.engine.dialect.loaded_dbapi
        self._load_for_update = self._load.with_for_update()
        self._insert = sa.insert(t).values(key=k, kind=sa.bindparam("kind"), **values)
        self._delete_dead = sa.delete(t).where(
            c["key"] == k, sa.or_(c["expires_at"] < now, c["kind"].not_in([_RECORD, _TOMBSTONE]))
        )
        self._cas = sa.update(t).where(live, c["version"] == sa.bindparam("old")).values(**values)
        self._write = sa.update(t).where(c["key"] == k).values(**values)
        self._touch = sa.update(t).where(live).values(expires_at=sa.bindparam("e"), last_access=now)
        self._delete = sa.delete(t).where(c["key"] == k)
        tombstone = dict(kind=_TOMBSTONE, expires_at=sa.bindparam("e"), last_access=now, data=b"")
        self._bury = sa.update(t).where(live).values(**tombstone)
        self._bury_version = sa.update(t).where(live, c["version"] == sa.bindparam("old")).values(**tombstone)
        # SQLite has no row locks: this no-op write takes the database's write
        # lock before locked_update reads, so nobody writes in between.
        self._lock_db = sa.update(t).where(c["key"] == k).values(kind=c["kind"])
        if not self._mysql:
            # The outer condition is checked again on rows a touch changed meanwhile.
            expired = sa.select(c["key"]).where(c["expires_at"] < now).limit(sa.bindparam("limit"))
            self._cleanup = sa.delete(t).where(c["key"].in_(expired), c["expires_at"] < now)

    def _after_fork(self) -> None:
        with self._fork_lock:
            if self._pid == os.getpid():
                return
            if self._serial is not None:
                # The in-memory database is process-private memory: the child
                # keeps its copy; only the lock may have been held by another thread.
                self._serial = threading.Lock()
            else:
                self.engine.dispose(close=False)
            self._breaker = CircuitBreaker(self._breaker.threshold, self._breaker.cooldown)
            if self._watchdog is not None:
                self._watchdog.after_fork()
            self._pid = os.getpid()

    def _run(self, what: str, operation: Callable, *args):
        """Run one operation: fork check, breaker, SQLAlchemy errors as StoreError."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._closed:
            raise StoreError(f"{_NAME} was used after close()")
        breaker = self._breaker
        breaker.before_call(_NAME)
        try:
            result = self._call(operation, args)
        except sa_exc.SQLAlchemyError as exc:
            result = self._after_failure(what, operation, args, exc)
        breaker.succeeded()
        return result

    def _after_failure(self, what: str, operation: Callable, args: tuple, exc: sa_exc.SQLAlchemyError):
        """Run a failed operation again where that can succeed; otherwise raise its StoreError."""
        if self._table_pending and _missing_table(exc):
            return self._call_after_creating_table(what, operation, args)
        watchdog_fired = self._watchdog is not None and self._watchdog.fired()
        if getattr(exc, "connection_invalidated", False) and not watchdog_fired:
            # The database closed the connection, most often a pooled one while it idled
            # (a restart): SQLAlchemy has dropped the pool, and a new connection runs the
            # operation, once. Should the lost statement have committed before the
            # database went away, the second run finds the write done and answers as it
            # would after a concurrent writer (CONFLICT, GONE, EXISTS), which callers handle.
            try:
                return self._call(operation, args)
            except sa_exc.SQLAlchemyError as again:
                exc = again
                watchdog_fired = self._watchdog is not None and self._watchdog.fired()
        raise self._failure(what, exc, watchdog_fired) from None

    def _call(self, operation: Callable, args: tuple):
        if self._serial is None:
            return operation(*args)
        with self._serial:
            return operation(*args)

    def _failure(self, what: str, exc: sa_exc.SQLAlchemyError, watchdog_fired: bool | None = None) -> StoreError:
        """The StoreError for a failed operation; connection failures count against the breaker."""
        if isinstance(exc, _CONNECTION_ERRORS) or getattr(exc, "connection_invalidated", False):
            self._breaker.failed()
        if watchdog_fired is None:
            watchdog_fired = self._watchdog is not None and self._watchdog.fired()
        if watchdog_fired:
            return StoreError(
                f"{_NAME}: {what} failed: the database did not answer within {self._watchdog.limit:g} s "
                "(connection closed)"
            )
        return StoreError(_describe(what, exc))

    def _call_after_creating_table(self, what: str, operation: Callable, args: tuple):
        """The table create_table() could not make at startup is missing: make it now, then run again."""
        with self._table_lock:
            if self._table_pending:
                try:
                    created = self._call(self._do_create_table, ())
                except sa_exc.SQLAlchemyError as exc:
                    raise self._failure("create table", exc) from None
                self._table_pending = False
                self.table_created = self.table_created or created
                self._report(
                    "table_created" if created else "table_found",
                    f"sql store: the database answers again; {'created' if created else 'found'} the sessions table",
                    logging.WARNING,
                )
        try:
            return self._call(operation, args)
        except sa_exc.SQLAlchemyError as exc:
            raise self._failure(what, exc) from None

    def _record(self, row):
        """A row as load() reports it, or _DAMAGED."""
        version, kind, expires_at, last_access, data = row
        if kind == _RECORD and None not in (version, expires_at, last_access, data):
            blob = data if type(data) is bytes else bytes(data)
            return record_from((blob, version, expires_at, last_access))
        if kind == _TOMBSTONE:
            return TOMBSTONE
        return _DAMAGED

    # ------------------------------------------------------------- interface

    def load(self, key: bytes) -> LoadResult:
        # Raised here, not inside _run(): the query itself succeeded, as the breaker should hear.
        record = self._run("load", self._do_load, key)
        if record is _DAMAGED:
            raise CorruptRecord(f"{_NAME}: a stored session record is damaged")
        return record

    def _do_load(self, key: bytes) -> LoadResult:
        if self._load_sql is not None:
            row = self._driver_row(self._key(key))
        else:
            with self._single.connect() as conn:
                row = conn.execute(self._load, {"k": self._key(key)}).first()
        if row is None:
            return None
        if row[2] is not None and row[2] < self.clock():
            return EXPIRED if row[1] == _RECORD else None
        return self._record(row)

    def _driver_row(self, k) -> tuple | None:
        """SQLite: the load's row through the driver's own cursor.

        SQLAlchemy's execution (a Connection, the compiled-cache lookup, an
        execution context, a result object) is over two thirds of a load's
        instructions, and a load is one plain SELECT by primary key. The
        connection still comes from, and goes back to, the engine's pool (which
        rolls back on return, as for any other use). A driver error is raised
        as SQLAlchemy would raise it (wrapped, parameters hidden, the
        connection invalidated when the dialect calls it a disconnect), so
        _run() handles it as any other.
        """
        try:
            connection = self.engine.raw_connection()
        except self._dbapi.Error as exc:  # the database cannot be opened
            raise sa_exc.DBAPIError.instance(
                None, None, exc, self._dbapi.Error, hide_parameters=True, dialect=self.engine.dialect
            ) from None
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._load_sql, (k,))
                return cursor.fetchone()
            finally:
                cursor.close()
        except self._dbapi.Error as exc:
            dialect = self.engine.dialect
            gone = dialect.is_disconnect(exc, connection.dbapi_connection, None)
            if gone:
                connection.invalidate(exc)
            raise sa_exc.DBAPIError.instance(
                self._load_sql, (k,), exc, self._dbapi.Error,
                hide_parameters=True, connection_invalidated=gone, dialect=dialect,
            ) from None
        finally:
            connection.close()

    def create(self, key: bytes, blob: bytes, expires_at: float) -> WriteResult:
        return self._run("create", self._do_create, key, blob, expires_at)

    def _do_create(self, key: bytes, blob: bytes, expires_at: float) -> WriteResult:
        now = self.clock()
        version = _new_version()
        k = self._key(key)
        params = {"k": k, "kind": _RECORD, "v": version, "e": expires_at, "now": now, "d": bytes(blob)}
        try:
            with self._single.begin() as conn:
                conn.execute(self._insert, params)
            return version
        except sa_exc.IntegrityError:
            pass
        # The key is taken: replace the row only if it is expired or damaged,
        # in one transaction; a concurrent create of the same key then waits
        # for it and finds the new row.
        try:
            with self._tx.begin() as conn:
                if conn.execute(self._delete_dead, {"k": k, "now": now}).rowcount == 0:
                    return EXISTS
                conn.execute(self._insert, params)
        except sa_exc.IntegrityError:
            return EXISTS
        return version

    def cas(self, key: bytes, blob: bytes, expected_version: int, expires_at: float) -> WriteResult:
        return self._run("cas", self._do_cas, key, blob, expected_version, expires_at)

    def _do_cas(self, key: bytes, blob: bytes, expected_version: int, expires_at: float) -> WriteResult:
        now = self.clock()
        k = self._key(key)
        version = expected_version + 1
        params = {
            "k": k, "old": expected_version, "v": version, "e": expires_at, "now": now, "d": bytes(blob),
        }
        with self._single.begin() as conn:
            if conn.execute(self._cas, params).rowcount == 1:
                return version
            row = conn.execute(self._load, {"k": k}).first()
        return CONFLICT if self._is_live(row, now) else GONE

    @staticmethod
    def _is_live(row, now: float) -> bool:
        return row is not None and row[1] == _RECORD and row[2] is not None and row[2] >= now

    def touch(self, key: bytes, expires_at: float) -> bool:
        return self._run("touch", self._do_touch, key, expires_at)

    def _do_touch(self, key: bytes, expires_at: float) -> bool:
        with self._single.begin() as conn:
            return conn.execute(self._touch, {"k": self._key(key), "e": expires_at, "now": self.clock()}).rowcount > 0

    def delete(self, key: bytes) -> None:
        self._run("delete", self._do_delete, key)

    def _do_delete(self, key: bytes) -> None:
        with self._single.begin() as conn:
            conn.execute(self._delete, {"k": self._key(key)})

    def rotate(
        self,
        old_key: bytes,
        new_key: bytes,
        blob: bytes,
        expires_at: float,
        tombstone_seconds: float,
        expected_version: int | None = None,
    ) -> WriteResult:
        return self._run("rotate", self._do_rotate, old_key, new_key, blob, expires_at, tombstone_seconds,
                         expected_version)

    def _do_rotate(
        self, old_key, new_key, blob, expires_at, tombstone_seconds, expected_version
    ) -> WriteResult:
        now = self.clock()
        old, new = self._key(old_key), self._key(new_key)
        version = _new_version()
        bury = {"k": old, "e": now + tombstone_seconds, "now": now}
        statement = self._bury
        if expected_version is not None:
            bury["old"] = expected_version
            statement = self._bury_version
        try:
            # Burying the old row first locks it (the database's write lock on
            # SQLite), so nothing can change it before this commits.
            with self._tx.begin() as conn:
                if conn.execute(statement, bury).rowcount == 1:
                    conn.execute(self._delete_dead, {"k": new, "now": now})
                    conn.execute(self._insert, {"k": new, "kind": _RECORD, "v": version, "e": expires_at,
                                                "now": now, "d": bytes(blob)})
                    return version
                row = conn.execute(self._load, {"k": old}).first()
        except sa_exc.IntegrityError:  # new_key holds a live record: rolled back, old untouched
            return CONFLICT
        return CONFLICT if self._is_live(row, now) else GONE

    def locked_rotate(self, old_key: bytes, new_key: bytes, fn: UpdateFn, tombstone_seconds: float) -> WriteResult:
        return self._run("rotate", self._do_locked_rotate, old_key, new_key, fn, tombstone_seconds)

    def _do_locked_rotate(self, old_key, new_key, fn, tombstone_seconds) -> WriteResult:
        old, new = self._key(old_key), self._key(new_key)
        try:
            with self._tx.begin() as conn:
                record, now = self._locked_record(conn, old)
                if record is None:
                    return GONE
                blob, expires_at = fn(record)  # an exception here rolls back: nothing written
                bury = {"k": old, "e": now + tombstone_seconds, "now": now, "old": record.version}
                if conn.execute(self._bury_version, bury).rowcount != 1:  # cannot happen under the lock
                    raise _Changed
                version = _new_version()
                conn.execute(self._delete_dead, {"k": new, "now": now})
                conn.execute(self._insert, {"k": new, "kind": _RECORD, "v": version, "e": expires_at,
                                            "now": now, "d": bytes(blob)})
                return version
        except (sa_exc.IntegrityError, _Changed):  # new_key holds a live record: rolled back, old untouched
            return CONFLICT

    def cleanup(self, now: float, budget: int) -> int:
        return self._run("cleanup", self._do_cleanup, now, budget)

    def _do_cleanup(self, now: float, budget: int) -> int:
        removed = 0
        while removed < budget:
            batch = min(self.cleanup_batch, budget - removed)
            with self._single.begin() as conn:
                if self._mysql:  # MySQL refuses LIMIT in an IN subquery but has DELETE ... LIMIT
                    statement = sa.delete(self.table).where(self.table.c["expires_at"] < now)
                    count = conn.execute(statement.with_dialect_options(mysql_limit=batch)).rowcount
                else:
                    count = conn.execute(self._cleanup, {"now": now, "limit": batch}).rowcount
            removed += count
            if count < batch:
                break
        return removed

    def locked_update(self, key: bytes, fn: UpdateFn) -> WriteResult:
        return self._run("locked update", self._do_locked_update, key, fn)

    def _locked_record(self, conn, k) -> tuple[StoredRecord | None, float]:
        """(the live record under k, locked until the transaction ends, or None; now)."""
        if self._sqlite:
            conn.execute(self._lock_db, {"k": k})
        row = conn.execute(self._load_for_update, {"k": k}).first()
        now = self.clock()
        if not self._is_live(row, now):
            return None, now
        record = self._record(row)
        if record is _DAMAGED:
            self._report("store_error", "sql store: a damaged session record was treated as missing by a write",
                         logging.WARNING)
            return None, now
        return record, now

    def _do_locked_update(self, key: bytes, fn: UpdateFn) -> WriteResult:
        k = self._key(key)
        with self._tx.begin() as conn:
            record, now = self._locked_record(conn, k)
            if record is None:
                return GONE
            result = fn(record)  # an exception here rolls back: nothing written
            if result is None:
                return record.version
            blob, expires_at = result
            version = record.version + 1
            conn.execute(self._write, {"k": k, "v": version, "e": expires_at, "now": now, "d": bytes(blob)})
        return version

    # ------------------------------------------------------------- setup

    def create_table(self) -> bool:
        """Create the table and its expiry index unless the table exists; True when this call created it.

        Needs DDL rights; where the application has none, an administrator runs
        `fastsess create-table` and the application finds the table in place.
        """
        try:
            created = self._run("create table", self._do_create_table)
        except StoreError as exc:
            # Built anyway (on_store_error = anonymous): operations that find the table missing create it.
            self._table_pending = True
            raise StoreError(
                f"{exc} (where the application has no DDL rights, "
                "run `fastsess create-table` as a user who has)"
            ) from None
        self._table_pending = False
        return created

    def _exists(self) -> bool:
        """Whether the table is there; ConfigError when it is, without this store's columns."""
        with self._tx.connect() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(self.table.name, schema=self.table.schema):
                return False
            found = {column["name"] for column in inspector.get_columns(self.table.name, schema=self.table.schema)}
        missing = [name for name in _COLUMNS if name not in found]
        if missing:
            raise ConfigError(
                f"session.table_name {self.table.name!r} names an existing table without the columns fastsess "
                f"needs (it lacks {', '.join(missing)}; Beaker's beaker_cache table cannot be shared): give "
                "session.table_name another name, or leave it unset for fastsess_sessions"
            )
        return True

    def _do_create_table(self) -> bool:
        # Several workers may start at once. SQLite answers "database is locked"
        # at once (no busy wait) to a writer that raced another one's DDL, and to
        # a connection switching a new file to WAL while another reads it, so a
        # locked database is retried, briefly, whichever step met it.
        for attempt in range(20):
            try:
                if self._exists():
                    return False
                with self._tx.begin() as conn:
                    self.table.create(conn)
                return True
            except sa_exc.OperationalError as exc:
                if "locked" in str(exc.orig) and attempt < 19:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                if self._exists():  # another process created it meanwhile
                    return False
                raise
            except sa_exc.SQLAlchemyError:
                if self._exists():
                    return False
                raise
        return False

    def close(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()  # connections inherited from the parent are the parent's to close
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._owns_engine:
            self.engine.dispose()
