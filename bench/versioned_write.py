"""What versioning costs: a compare-and-set write against a blind overwrite, on every server-side store.

SPEC 3 makes every save a compare-and-set against the loaded version, and
SPEC 9 promises that without a conflict it is the write itself, with no extra
round trip. This script measures that on this machine. For each store it
times `store.cas(key, blob, version, expires_at)` (the versioned write a save
makes) against a blind write of the same record by the same store code, with
the version check and whatever it needs taken out:

    memory     cas: lock, look up, compare, put      blind: locked_update (lock, look up, put)
    file       cas: stripe lock (flock), read the file, write a temporary file, rename
               blind: write a temporary file, rename (no lock, no read)
    lmdb       cas: one write transaction that reads the metadata, then puts
               blind: one write transaction that only puts
    memcached  cas: `ms K C<cas>` (memcached checks the CAS)   blind: `ms K`, one round trip each
    redis      cas: EVALSHA of the compare-and-set script      blind: `SET K V PX ttl`, one round trip each
    sql        cas: UPDATE ... WHERE key = ? AND version = ? AND live   blind: UPDATE ... WHERE key = ?
               (SQLite file in WAL mode, and PostgreSQL)

Batches of cas and blind writes alternate (which goes first alternates too),
and the median over rounds of the per-write time is reported. Servers for
memcached, redis and PostgreSQL are started on free loopback ports with the
test suite's helpers (tests/server_*.py) and stopped at exit; a store whose
server or client library is missing is reported as skipped.

Run from the repository root:

    PYTHONPATH=src python bench/versioned_write.py
    PYTHONPATH=src python bench/versioned_write.py --stores file,lmdb --rounds 15 --writes 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fastsess  # noqa: E402
from fastsess.stores.base import StoredRecord  # noqa: E402
from harness import cpu_model  # noqa: E402

STORES = ("memory", "file", "lmdb", "memcached", "redis", "sql-sqlite", "sql-postgresql")
KEY = bytes(range(32))
TTL = 3600.0


# ---------------------------------------------------------------- per store: (store, blind write)


def _memory(directory: str):
    from fastsess.stores.memory import MemoryStore

    store = MemoryStore()
    store.create(KEY, b"", time.time() + TTL)  # locked_update changes a record that is there

    def blind(blob: bytes, expires_at: float) -> None:
        # The table's own code (compiled with the C kernel, as cas is), without the version check.
        store.locked_update(KEY, lambda current: (blob, expires_at))

    return store, blind


def _file(directory: str):
    from fastsess.stores import file as file_store

    store = file_store.FileStore(directory)
    path = store._path(KEY)

    def blind(blob: bytes, expires_at: float) -> None:
        store._write(path, file_store._RECORD, file_store._new_version(), blob, expires_at, time.time())

    return store, blind


def _lmdb(directory: str):
    from fastsess.stores import lmdb as lmdb_store

    store = lmdb_store.LmdbStore(directory)

    def put(txn, shared, blob, expires_at):
        # The same expiry every time, so the expiry index entry is overwritten rather than left behind.
        version = store._next_version(None)  # a blind write reads nothing, not even the old version
        store._put(txn, shared, KEY, None, lmdb_store._RECORD, version, blob, expires_at, time.time())

    def blind(blob: bytes, expires_at: float) -> None:
        store._run(True, put, blob, expires_at)

    return store, blind


def _memcached(directory: str):
    import server_memcached
    from fastsess.stores import memcached as mc

    server = server_memcached.shared_server()
    store = mc.MemcachedStore(server.address, key_prefix="versioned-write:")
    hexkey = KEY.hex()
    node, mkey = store._node(hexkey), store._mkey(hexkey)

    def blind(blob: bytes, expires_at: float) -> None:
        now = time.time()
        value = mc._HEADER.pack(mc._FORMAT, mc._RECORD, now, expires_at) + blob
        store._call(node, b"ms %s %d T%d\r\n%s\r\n" % (mkey, len(value), store._ttl(expires_at, now), value))

    return store, blind


def _redis(directory: str):
    import server_redis
    from fastsess.stores import redis as rd

    server = server_redis.shared_server()
    store = rd.RedisStore(server.url, key_prefix="versioned-write:")
    rkey = store._key(KEY)

    def blind(blob: bytes, expires_at: float) -> None:
        now = time.time()
        value = rd._HEADER.pack(rd._MAGIC, rd._LIVE, rd._new_version(), expires_at, now) + blob
        store._connection().set(rkey, value, px=rd._ttl_ms(expires_at, now))

    return store, blind


def _sql(store) -> Callable:
    from fastsess.stores import sql

    k = store._key(KEY)

    def blind(blob: bytes, expires_at: float) -> None:
        params = {"k": k, "v": sql._new_version(), "e": expires_at, "now": time.time(), "d": bytes(blob)}
        with store._single.begin() as conn:
            conn.execute(store._write, params)

    return blind


def _sql_sqlite(directory: str):
    from fastsess.stores.sql import SqlStore

    store = SqlStore(url=f"sqlite:///{directory}/sessions.sqlite")
    return store, _sql(store)


def _sql_postgresql(directory: str):
    import server_postgres
    from fastsess.stores.sql import SqlStore

    store = SqlStore(url=server_postgres.get_server().url(), table_name=f"versioned_write_{os.getpid()}")
    return store, _sql(store)


OPENERS = {
    "memory": _memory, "file": _file, "lmdb": _lmdb, "memcached": _memcached, "redis": _redis,
    "sql-sqlite": _sql_sqlite, "sql-postgresql": _sql_postgresql,
}


# ---------------------------------------------------------------- timing


def _time_cas(store, blob: bytes, writes: int) -> float:
    record = store.load(KEY)
    assert isinstance(record, StoredRecord), record
    version = record.version
    expires_at = time.time() + TTL
    started = time.perf_counter()
    for _ in range(writes):
        version = store.cas(KEY, blob, version, expires_at)
    elapsed = time.perf_counter() - started
    assert isinstance(version, int), f"a cas failed: {version!r}"
    return elapsed / writes


def _time_blind(blind: Callable, blob: bytes, writes: int) -> float:
    expires_at = time.time() + TTL
    started = time.perf_counter()
    for _ in range(writes):
        blind(blob, expires_at)
    return (time.perf_counter() - started) / writes


def measure(kind: str, rounds: int, writes: int, size: int) -> tuple[float, float]:
    """(median seconds per versioned write, median seconds per blind write)."""
    with tempfile.TemporaryDirectory(prefix=f"versioned-write-{kind}-") as directory:
        store, blind = OPENERS[kind](directory)
        try:
            blob = os.urandom(size)
            store.delete(KEY)
            assert isinstance(store.create(KEY, blob, time.time() + TTL), int)
            _time_cas(store, blob, max(writes // 10, 10))  # warm up both paths
            _time_blind(blind, blob, max(writes // 10, 10))
            cas_times, blind_times = [], []
            for round_number in range(rounds):
                if round_number % 2:
                    blind_times.append(_time_blind(blind, blob, writes))
                    cas_times.append(_time_cas(store, blob, writes))
                else:
                    cas_times.append(_time_cas(store, blob, writes))
                    blind_times.append(_time_blind(blind, blob, writes))
            store.delete(KEY)
        finally:
            store.close()
    return statistics.median(cas_times), statistics.median(blind_times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: " + ", ".join(STORES))
    parser.add_argument("--rounds", type=int, default=9, help="alternating batches of each kind (default 9)")
    parser.add_argument("--writes", type=int, default=500, help="writes per batch (default 500)")
    parser.add_argument("--size", type=int, default=400, help="record bytes (default 400)")
    args = parser.parse_args(argv)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
          f"fastsess {fastsess.__version__}")
    print(f"one key, {args.size}-byte record, {args.rounds} rounds of {args.writes} writes each, "
          "medians; one thread, no contention\n")
    header = f"{'store':<16}{'versioned (us)':>16}{'blind (us)':>12}{'difference (us)':>17}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for kind in (s.strip() for s in args.stores.split(",")):
        try:
            cas, blind = measure(kind, args.rounds, args.writes, args.size)
        except BaseException as exc:  # the server helpers skip (a BaseException) when a binary is missing
            if isinstance(exc, KeyboardInterrupt):
                raise
            print(f"{kind:<16}skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        difference = (cas - blind) * 1e6
        print(f"{kind:<16}{cas * 1e6:>16.1f}{blind * 1e6:>12.1f}{difference:>+17.1f}{cas / blind:>8.2f}")


if __name__ == "__main__":
    main()
