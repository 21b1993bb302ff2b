"""The Redis store in the contract suite: on one server, and on a 3-node Redis Cluster.

Every store gets its own key prefix, so tests never see each other's records.
The servers expire records in real time (server_time): TTL behaviour is
tested with short real TTLs in test_store_redis.py.
"""

from __future__ import annotations

import itertools

import server_redis
from fastsess.stores.redis import RedisStore
from test_store_contract import StoreKind

_serial = itertools.count()


def _prefix() -> str:
    return f"contract{next(_serial)}:"


def make_single(tmp, clock) -> RedisStore:
    return RedisStore(url=server_redis.shared_server().url, key_prefix=_prefix(), clock=clock)


def make_cluster(tmp, clock) -> RedisStore:
    return RedisStore(urls=server_redis.shared_cluster().urls, key_prefix=_prefix(), clock=clock)


def damage(store: RedisStore, key: bytes) -> None:
    """Overwrite the record's Redis value with bytes that are no record."""
    store._connection().set(store._key(key), b"not a session record, just garbage bytes")


KINDS = {
    "redis": StoreKind(make=make_single, damage=damage, shared_across_processes=True, server_time=True),
    "redis-cluster": StoreKind(
        make=make_cluster, damage=damage, shared_across_processes=True, server_time=True,
    ),
}
