"""SQL store kinds for the contract suite: SQLite (file and in-memory) and PostgreSQL.

Damage sets a row's kind to a value the store never writes: the stored
metadata is unreadable, as garbage bytes are for the file and lmdb stores.
Each PostgreSQL store gets a table of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
import os

import pytest

from test_store_contract import StoreKind

try:
    import sqlalchemy as sa

    from fastsess.stores.sql import SqlStore
except ImportError:  # the sql extra is missing: these kinds skip
    SqlStore = None

_tables = itertools.count()


def _sql_store(url: str, clock, table_name: str = "fastsess_sessions"):
    if SqlStore is None:
        pytest.skip("SQLAlchemy is not installed (pip install 'fastsess[sql]')")
    return SqlStore(url=url, table_name=table_name, clock=clock)


def _postgres_store(tmp, clock):
    from server_postgres import get_server

    server = get_server()
    return _sql_store(server.url(), clock, table_name=f"contract_{os.getpid()}_{next(_tables)}")


def _damage_sql_record(store, key: bytes) -> None:
    key_column = store.table.c["key"]
    with store.engine.begin() as conn:
        conn.execute(sa.update(store.table).where(key_column == key.hex()).values(kind=99))


KINDS = {
    "sql-sqlite-file": StoreKind(
        make=lambda tmp, clock: _sql_store(f"sqlite:///{tmp / 'sessions.sqlite'}", clock),
        damage=_damage_sql_record,
        shared_across_processes=True,
    ),
    "sql-sqlite-memory": StoreKind(
        make=lambda tmp, clock: _sql_store("sqlite://", clock),
        damage=_damage_sql_record,
        shared_across_processes=False,
    ),
    "sql-postgres": StoreKind(
        make=_postgres_store,
        damage=_damage_sql_record,
        shared_across_processes=True,
    ),
}
