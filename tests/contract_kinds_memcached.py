"""The memcached store in the contract suite, against one real server shared by all tests.

Every store gets a key prefix of its own, so tests never see each other's
keys. The server expires records in real time (server_time=True): tests that
move the fake clock skip, and tests/test_store_memcached.py covers expiry.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from fastsess.stores.memcached import MemcachedStore
from server_memcached import command, shared_server
from test_store_contract import FakeClock, StoreKind

_stores = itertools.count()


def make_memcached_store(tmp: Path, clock: FakeClock) -> MemcachedStore:
    server = shared_server()
    return MemcachedStore(server.address, key_prefix=f"contract{os.getpid()}-{next(_stores)}:", clock=clock)


def damage_memcached_record(store: MemcachedStore, key: bytes) -> None:
    """Overwrite the record's value with bytes that are not a record, as a foreign writer might."""
    garbage = b"not a session record, just garbage bytes"
    port = int(store.nodes[0].rpartition(":")[2])
    reply = command(port, f"set {store.key_prefix}{key.hex()} 0 0 {len(garbage)}\r\n{garbage.decode()}")
    assert reply.startswith(b"STORED"), reply


KINDS = {
    "memcached": StoreKind(
        make=make_memcached_store,
        damage=damage_memcached_record,
        shared_across_processes=True,
        server_time=True,
    ),
}
