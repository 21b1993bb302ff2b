"""SqlStore beyond the contract: the table, engine options, SQLite modes, forks, failure, end to end."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid

import pytest

sa = pytest.importorskip("sqlalchemy")

import webtest  # noqa: E402 - after the importorskip above

import server_postgres  # noqa: E402
from fastsess import SessionMiddleware  # noqa: E402
from fastsess.cli import main  # noqa: E402
from fastsess.errors import ConfigError, StoreError  # noqa: E402
from fastsess.stores.base import CONFLICT, StoredRecord  # noqa: E402
from fastsess.stores.breaker import CircuitBreaker  # noqa: E402
from fastsess.stores.sql import SqlStore, StatementWatchdog, sessions_table  # noqa: E402
from test_store_contract import T0, TTL, FakeClock, join_or_kill, skey  # noqa: E402

postgres_server = server_postgres.postgres_server  # the session's PostgreSQL server (a fixture)

SECRET = "sql-store-test-secret-" + "z" * 20
BLOB = b"secret session bytes \x00\x01 that must never be logged"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'sessions.sqlite'}"


@pytest.fixture
def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_url(postgres_server) -> str:
    return postgres_server.url()


@pytest.fixture
def pg_store(pg_url, table_name, clock):
    store = SqlStore(url=pg_url, table_name=table_name, clock=clock)
    yield store
    store.close()


def statements(engine) -> list[str]:
    """The SQL statements the engine executes from now on (collected in a list)."""
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: seen.append(sql))
    return seen


# ---------------------------------------------------------------- the table


def test_table_and_expiry_index_are_created_when_the_store_is_built(sqlite_url):
    store = SqlStore(url=sqlite_url)
    assert store.table_created is True
    inspector = sa.inspect(store.engine)
    assert {c["name"] for c in inspector.get_columns("fastsess_sessions")} == {
        "key", "version", "kind", "expires_at", "last_access", "data",
    }
    assert inspector.get_pk_constraint("fastsess_sessions")["constrained_columns"] == ["key"]
    assert [i["column_names"] for i in inspector.get_indexes("fastsess_sessions")] == [["expires_at"]]
    again = SqlStore(url=sqlite_url)
    assert again.table_created is False
    store.close()
    again.close()


def test_create_table_false_does_not_touch_the_database(tmp_path):
    path = tmp_path / "later.sqlite"
    store = SqlStore(url=f"sqlite:///{path}", create_table=False)
    assert not path.exists()
    assert store.create_table() is True
    assert store.create_table() is False
    assert isinstance(store.create(skey("a"), b"x", time.time() + TTL), int)
    store.close()


def write_ini(path, **session) -> str:
    lines = ["[app:main]", f"session.secret = {SECRET}"] + [f"session.{k} = {v}" for k, v in session.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("step", ["looking for the table", "creating it"])
def test_a_locked_sqlite_database_at_startup_is_retried_whichever_step_meets_it(tmp_path, monkeypatch, step):
    # Workers starting together on a new SQLite file: one switches it to WAL or runs
    # its DDL while another connects or inspects, and SQLite answers "database is
    # locked" at once, without a busy wait.
    import sqlite3

    from sqlalchemy import exc as sa_exc

    store = SqlStore(url=f"sqlite:///{tmp_path / 's.sqlite'}", create_table=False)
    locked = sa_exc.OperationalError("PRAGMA journal_mode=WAL", {}, sqlite3.OperationalError("database is locked"))
    failures = [locked, locked]
    if step == "looking for the table":
        real = store._exists

        def exists():
            if failures:
                raise failures.pop()
            return real()

        monkeypatch.setattr(store, "_exists", exists)
    else:
        real_create = store.table.create

        def create(conn, **kwargs):
            if failures:
                raise failures.pop()
            return real_create(conn, **kwargs)

        monkeypatch.setattr(store.table, "create", create)
    assert store.create_table() is True
    assert not failures
    assert store.create(skey("a"), b"x", time.time() + 60)  # the table is there and works
    store.close()


def test_create_table_command_creates_the_table_once_and_reports_json(tmp_path, capsys):
    ini = write_ini(tmp_path / "app.ini", type="ext:database", url="sqlite:///%(here)s/app.sqlite",
                    table_name="app_sessions")
    assert main(["create-table", "--config", ini, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"table": "app_sessions", "schema": None, "created": True,
                      "database": f"sqlite:///{tmp_path}/app.sqlite"}
    assert main(["create-table", "--config", ini]) == 0
    assert "app_sessions already exists" in capsys.readouterr().out
    assert sa.inspect(sa.create_engine(f"sqlite:///{tmp_path}/app.sqlite")).has_table("app_sessions")


def test_create_table_command_refuses_other_store_types(tmp_path, capsys):
    ini = write_ini(tmp_path / "app.ini", type="lmdb", data_dir=str(tmp_path / "s"))
    assert main(["create-table", "--config", ini]) == 2
    assert "session.type = sql" in capsys.readouterr().err


@pytest.mark.servers
def test_app_without_ddl_rights_uses_a_table_created_by_the_command(
    postgres_server, table_name, tmp_path, capsys
):
    role = f"app_{table_name}"
    with postgres_server.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")  # PostgreSQL 15+: no CREATE on schema public
    app_url = postgres_server.url(user=role)
    with pytest.raises(StoreError, match="fastsess create-table"):
        SqlStore(url=app_url, table_name=table_name)
    ini = write_ini(tmp_path / "admin.ini", type="sql", url=postgres_server.url(), table_name=table_name)
    assert main(["create-table", "--config", ini, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["created"] is True
    with postgres_server.connect() as conn:
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table_name} TO {role}")
    store = SqlStore(url=app_url, table_name=table_name)
    assert store.table_created is False
    version = store.create(skey("a"), b"data", time.time() + TTL)
    assert store.load(skey("a")).version == version
    store.close()


def test_a_matching_table_object_is_accepted_and_used(sqlite_url):
    engine = sa.create_engine(sqlite_url)
    table = sessions_table("mine")
    store = SqlStore(bind=engine, table=table)
    assert store.table is table and store.table_created
    store.create(skey("a"), b"data", time.time() + TTL)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 1
    store.close()
    engine.dispose()


def test_a_table_with_a_binary_key_column_stores_raw_keys(sqlite_url):
    table = sa.Table(
        "binary_keys", sa.MetaData(),
        sa.Column("key", sa.LargeBinary(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("last_access", sa.Float, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    store = SqlStore(url=sqlite_url, table=table)
    store.create(skey("a"), b"data", time.time() + TTL)
    assert store.load(skey("a")).blob == b"data"
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(table.c["key"])).scalar() == skey("a")
    store.close()


def test_beakers_table_layout_is_a_config_error(sqlite_url):
    beaker = sa.Table(
        "beaker_cache", sa.MetaData(),
        sa.Column("namespace", sa.String(255), primary_key=True),
        sa.Column("accessed", sa.DateTime, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("data", sa.PickleType, nullable=False),
    )
    with pytest.raises(ConfigError, match="Beaker's table layout differs"):
        SqlStore(url=sqlite_url, table=beaker)


def test_bind_must_be_an_engine():
    with pytest.raises(ConfigError, match="session.bind"):
        SqlStore(bind="sqlite://")


def test_a_url_given_as_bind_in_an_ini_file_says_it_belongs_in_url():
    """An INI file can only give bind a string: Beaker's ext:sqla users may write the URL there."""
    with pytest.raises(ConfigError, match=r"session.bind must be an SQLAlchemy Engine \(a database URL goes in session.url\)"):
        SessionMiddleware(lambda environ, start_response: [], {
            "session.type": "ext:sqla", "session.bind": "sqlite://", "session.secret": SECRET, "session.timeout": "60",
        })


def test_a_url_that_is_not_an_sqlalchemy_url_is_a_config_error():
    with pytest.raises(ConfigError, match="not an SQLAlchemy URL"):
        SqlStore(url="not a url at all")


@pytest.mark.parametrize("url", ["nosuchdialect://host/db", "postgresql+nosuchdriver://host/db"])
def test_a_url_naming_a_dialect_sqlalchemy_lacks_is_a_config_error_about_the_url(url):
    """Not about sa_opts, which the application may not even set."""
    with pytest.raises(ConfigError, match="session.url names a database SQLAlchemy has no dialect for"):
        SessionMiddleware(lambda environ, start_response: [], type="sql", url=url, secret=SECRET, timeout=60)




@pytest.mark.parametrize(("url", "driver"), [
    ("postgresql+psycopg2://app@127.0.0.1/db", "psycopg2"),
    ("mysql://app@127.0.0.1/db", "MySQLdb"),
])
def test_a_url_naming_a_driver_that_is_not_installed_says_to_install_that_driver(url, driver, monkeypatch):
    """fastsess[sql] installs psycopg 3, not every driver a URL can name: installing it would not help."""
    monkeypatch.setitem(sys.modules, driver, None)  # not installed
    with pytest.raises(ConfigError) as caught:
        SessionMiddleware(lambda environ, start_response: [], type="sql", url=url, secret=SECRET, timeout=60)
    message = str(caught.value)
    assert f"database driver {driver}" in message and "postgresql+psycopg://" in message
    assert "fastsess[sql]'" not in message  # never the advice to install what is already there
# ---------------------------------------------------------------- engine options


def test_sa_opts_strings_from_an_ini_file_are_coerced(sqlite_url):
    store = SqlStore(url=sqlite_url, sa_opts={
        "pool_recycle": "3600", "sa.pool_size": "3", "pool_pre_ping": "true", "echo": "false",
        "hide_parameters": False,
    })
    pool = store.engine.pool
    assert (pool._recycle, pool.size(), pool._pre_ping, store.engine.echo) == (3600, 3, True, False)
    assert store.engine.hide_parameters is True  # never switched off
    store.close()


def test_unknown_or_malformed_sa_opts_are_config_errors(sqlite_url):
    with pytest.raises(ConfigError, match="sa_opts"):
        SqlStore(url=sqlite_url, sa_opts={"pool_sizes": 3})
    with pytest.raises(ConfigError, match="session.sa.pool_recycle"):
        SqlStore(url=sqlite_url, sa_opts={"pool_recycle": "hourly"})


@pytest.mark.parametrize("bound", [False, True], ids=["own-engine", "bound-engine"])
def test_a_failing_statement_never_shows_keys_or_data(sqlite_url, bound, caplog):
    # A bound engine was built by the application without hide_parameters.
    engine = sa.create_engine(sqlite_url) if bound else None
    store = SqlStore(bind=engine) if bound else SqlStore(url=sqlite_url)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE fastsess_sessions"))
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    caplog.clear()
    with pytest.raises(StoreError) as raised:
        store.create(skey("a"), BLOB, time.time() + TTL)
    assert "INSERT INTO fastsess_sessions" in caplog.text  # the statement was logged, its parameters not
    message = str(raised.value)
    assert "create failed (OperationalError): no such table" in message
    underlying = str(raised.value.__context__)
    assert "SQL parameters hidden due to hide_parameters=True" in underlying
    for text in (message, underlying, caplog.text):
        assert skey("a").hex() not in text and "secret session bytes" not in text
    store.close()


@pytest.mark.servers
def test_postgres_url_without_a_driver_uses_psycopg(pg_url, table_name):
    store = SqlStore(url=pg_url.replace("postgresql+psycopg://", "postgresql://"), table_name=table_name)
    assert store.engine.dialect.driver == "psycopg"
    store.close()


@pytest.mark.servers
def test_single_statement_operations_are_one_autocommit_statement_on_postgres(pg_store, clock):
    version = pg_store.create(skey("a"), b"one", T0 + TTL)
    seen = []

    def record(conn, cursor, sql, params, context, executemany):
        seen.append((sql.split()[0], conn.connection.dbapi_connection.autocommit))

    sa.event.listen(pg_store.engine, "before_cursor_execute", record)
    pg_store.load(skey("a"))
    version = pg_store.cas(skey("a"), b"two", version, T0 + TTL)
    pg_store.touch(skey("a"), T0 + TTL)
    pg_store.delete(skey("a"))
    assert seen == [("SELECT", True), ("UPDATE", True), ("UPDATE", True), ("DELETE", True)]


# ---------------------------------------------------------------- SQLite


def test_sqlite_file_runs_in_wal_mode_with_a_busy_timeout(sqlite_url):
    store = SqlStore(url=sqlite_url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_sqlite_memory_database_is_one_database_for_every_thread(url):
    store = SqlStore(url=url)
    assert isinstance(store.engine.pool, sa.pool.StaticPool)
    store.create(skey("main"), b"from main", time.time() + TTL)
    seen, errors = [], []

    def work(n: int) -> None:
        try:
            seen.append(store.load(skey("main")).blob)
            for i in range(20):
                store.create(skey(f"{n}-{i}"), b"x", time.time() + TTL)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and seen == [b"from main"] * 8
    assert all(store.load(skey(f"{n}-{i}")) is not None for n in range(8) for i in range(20))
    store.close()


# ---------------------------------------------------------------- cleanup


def test_cleanup_deletes_in_batches_through_the_expiry_index(sqlite_url, clock):
    store = SqlStore(url=sqlite_url, clock=clock)
    store.cleanup_batch = 100
    for i in range(260):
        store.create(skey(f"old{i}"), b"x", T0 + 10)
    for i in range(10):
        store.create(skey(f"live{i}"), b"y", T0 + 1000)
    clock.advance(100)
    seen = statements(store.engine)
    assert store.cleanup(clock.now, 150) == 150  # the budget holds across batches
    assert len(seen) == 2
    seen.clear()
    assert store.cleanup(clock.now, 1000) == 110
    assert len(seen) == 2  # a short batch means nothing is left
    assert "expires_at <" in seen[0] and "LIMIT" in seen[0]
    with store.engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + seen[0], (clock.now, 100, 0, clock.now)).all()
    assert any("ix_fastsess_sessions_expires_at" in str(row) for row in plan)
    assert all(store.load(skey(f"live{i}")).blob == b"y" for i in range(10))
    store.close()


# ---------------------------------------------------------------- forks


def _use_in_child(store: SqlStore, backend_pid: int) -> None:
    calls = []
    real_dispose = store.engine.dispose
    store.engine.dispose = lambda close=True: (calls.append(close), real_dispose(close=close))
    store.create(skey(f"child-{os.getpid()}"), b"child", time.time() + TTL)
    store.load(skey("a"))
    with store.engine.connect() as conn:
        own = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    assert calls == [False], calls  # disposed once, leaving the parent's connections open
    assert own != backend_pid


@pytest.mark.servers
def test_forked_child_opens_its_own_connections_and_leaves_the_parents_alone(pg_store):
    pg_store.create(skey("a"), b"parent", time.time() + TTL)
    with pg_store.engine.connect() as conn:
        backend_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_use_in_child, args=(pg_store, backend_pid))
    child.start()
    join_or_kill(child)
    assert child.exitcode == 0
    assert pg_store.load(skey(f"child-{child.pid}")).blob == b"child"
    closer = context.Process(target=pg_store.close)  # a worker that shuts down without using the store
    closer.start()
    join_or_kill(closer)
    assert closer.exitcode == 0
    with pg_store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == backend_pid


# ---------------------------------------------------------------- concurrency


def _add_in_child(url: str, table_name: str, key: bytes, times: int, locked: bool) -> None:
    store = SqlStore(url=url, table_name=table_name, create_table=False)
    for _ in range(times):
        if locked:
            result = store.locked_update(key, lambda r: (str(int(r.blob) + 1).encode(), r.expires_at))
            assert isinstance(result, int)
            continue
        while True:
            record = store.load(key)
            bumped = str(int(record.blob) + 1).encode()
            if isinstance(store.cas(key, bumped, record.version, record.expires_at), int):
                break
    store.close()


@pytest.mark.parametrize("where", [pytest.param("postgres", marks=pytest.mark.servers), "sqlite-file"])
def test_processes_mixing_cas_and_locked_update_lose_no_increments(where, request, table_name, tmp_path):
    url = request.getfixturevalue("pg_url") if where == "postgres" else f"sqlite:///{tmp_path / 's.sqlite'}"
    store = SqlStore(url=url, table_name=table_name)
    store.create(skey("counter"), b"0", time.time() + TTL)
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_add_in_child, args=(url, table_name, skey("counter"), 40, n % 2 == 0))
        for n in range(6)
    ]
    for child in children:
        child.start()
    for child in children:
        join_or_kill(child, 60)
    assert [child.exitcode for child in children] == [0] * 6
    assert store.load(skey("counter")).blob == b"240"
    store.close()


@pytest.mark.servers
def test_locked_update_holds_the_row_while_the_callback_runs(pg_url, table_name):
    first = SqlStore(url=pg_url, table_name=table_name)
    second = SqlStore(url=pg_url, table_name=table_name, create_table=False)
    version = first.create(skey("a"), b"0", time.time() + TTL)
    inside, release = threading.Event(), threading.Event()

    def slow(record: StoredRecord):
        inside.set()
        release.wait(10)
        return b"locked", record.expires_at

    worker = threading.Thread(target=first.locked_update, args=(skey("a"), slow))
    worker.start()
    assert inside.wait(10)
    results = []
    writer = threading.Thread(
        target=lambda: results.append(second.cas(skey("a"), b"cas", version, time.time() + TTL))
    )
    writer.start()
    writer.join(0.3)
    assert writer.is_alive()  # the compare-and-set waits for the row lock
    release.set()
    worker.join(10)
    writer.join(10)
    assert results == [CONFLICT]  # the version moved on while it waited
    assert first.load(skey("a")).blob == b"locked"
    first.close()
    second.close()


# ---------------------------------------------------------------- failure


@pytest.mark.servers
@pytest.mark.timeout(60)  # a store that hung on the stopped server fails the test outright
def test_postgres_outage_raises_store_error_and_the_breaker_then_fails_fast_and_service_resumes(
    postgres_server, pg_url, table_name
):
    store = SqlStore(url=pg_url, table_name=table_name, breaker=CircuitBreaker(threshold=2, cooldown=0.5))
    version = store.create(skey("a"), b"before", time.time() + TTL)
    postgres_server.stop()
    try:
        for _ in range(3):
            with pytest.raises(StoreError, match="SQL session store") as raised:
                store.load(skey("a"))
        assert "not retrying" in str(raised.value)  # the breaker opened: failing fast
    finally:
        postgres_server.start()
    time.sleep(0.6)
    record = store.load(skey("a"))
    assert (record.blob, record.version) == (b"before", version)
    assert isinstance(store.cas(skey("a"), b"after", version, time.time() + TTL), int)
    store.close()


def postgres_processes(server) -> list[int]:
    """The postmaster and its children (backends and helpers), from /proc."""
    postmaster = server._server_pid()
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(entry))
    return [postmaster, *children]


def send_signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # a backend that was exiting anyway
            pass


@pytest.mark.servers
@pytest.mark.timeout(30)  # without a client-side bound the load waits until the server resumes
def test_a_postgres_that_stops_answering_is_a_store_error_within_the_socket_timeout(
    postgres_server, pg_url, table_name
):
    # Stopped processes (a frozen VM or disk): the kernel still ACKs, statement_timeout never runs.
    store = SqlStore(url=pg_url, table_name=table_name, socket_timeout=1, connect_timeout=1)
    version = store.create(skey("a"), b"before", time.time() + TTL)
    frozen = postgres_processes(postgres_server)
    send_signal(frozen, signal.SIGSTOP)
    try:
        with pytest.raises(StoreError, match=r"load failed: the database did not answer within 1\.5 s"):
            store.load(skey("a"))
    finally:
        # runuser, the server's parent, stops itself when its child stops (job control): resume it too.
        send_signal([*frozen, postgres_server.process.pid], signal.SIGCONT)
    record = store.load(skey("a"))  # a new connection; the shut one was discarded
    assert (record.blob, record.version) == (b"before", version)
    store.close()


@pytest.mark.servers
@pytest.mark.timeout(60)
def test_threads_queued_for_a_pooled_connection_to_a_frozen_postgres_fail_within_the_timeouts(
    postgres_server, pg_url, table_name
):
    # More threads than pooled connections (gthread, waitress): the ones waiting for a
    # connection must not wait out SQLAlchemy's 30 s pool_timeout, nor pass a dead
    # connection on to each other, one connect timeout after another.
    store = SqlStore(url=pg_url, table_name=table_name, socket_timeout=1, connect_timeout=2,
                     sa_opts={"pool_size": 1, "max_overflow": 0}, breaker=CircuitBreaker(threshold=100))
    store.create(skey("a"), b"before", time.time() + TTL)
    # A queued thread waits for a pooled connection at most connect_timeout, not SQLAlchemy's 30 s.
    assert store.engine.pool.timeout() == 2
    frozen = postgres_processes(postgres_server)
    send_signal(frozen, signal.SIGSTOP)
    outcomes = []

    def load():
        try:
            store.load(skey("a"))
            outcomes.append("loaded")
        except StoreError:
            outcomes.append("StoreError")

    threads = [threading.Thread(target=load) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)  # a guard against a hang, not a speed limit
    finally:
        send_signal([*frozen, postgres_server.process.pid], signal.SIGCONT)
    assert not any(thread.is_alive() for thread in threads)
    assert outcomes == ["StoreError"] * 6  # every queued thread got a clear error
    assert store.load(skey("a")).blob == b"before"
    store.close()


def test_the_watchdog_never_shuts_a_connection_back_in_the_pool(tmp_path):
    watchdog = StatementWatchdog(0.05)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    watchdog.watch(engine)
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
        assert len(watchdog._active) == 1
    assert watchdog._active == {}
    time.sleep(0.2)
    with engine.connect() as conn:  # the pooled connection still works
        assert conn.execute(sa.text("select 1")).scalar() == 1
    assert not watchdog.fired()
    watchdog.stop()
    engine.dispose()


def counter_app(environ, start_response):
    session = environ["beaker.session"]
    session["n"] = session.get("n", 0) + 1
    session.save()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session["n"]).encode()]


@pytest.mark.servers
@pytest.mark.timeout(60)
def test_a_postgres_restart_between_requests_costs_no_request_an_error(postgres_server, pg_url, table_name):
    """The pooled connections the restart closed are replaced, as memcached's and Redis's are."""
    mw = SessionMiddleware(counter_app, {
        "session.type": "ext:database", "session.url": pg_url, "session.table_name": table_name,
        "session.secret": SECRET, "session.secure": "false",
    })
    app = webtest.TestApp(mw)
    assert [app.get("/").text for _ in range(2)] == ["1", "2"]  # a pooled connection now idles
    postgres_server.stop()
    postgres_server.start()
    assert app.get("/").text == "3"  # read and written: no StoreError, the session intact
    mw.close()


@pytest.mark.servers
@pytest.mark.timeout(60)  # a store that hung on the stopped server fails the test outright
def test_middleware_with_anonymous_policy_serves_empty_sessions_while_postgres_is_down(
    postgres_server, pg_url, table_name
):
    mw = SessionMiddleware(counter_app, {
        "session.type": "ext:database", "session.url": pg_url, "session.table_name": table_name,
        "session.secret": SECRET, "session.secure": "false", "session.on_store_error": "anonymous",
    })
    app = webtest.TestApp(mw)
    assert [app.get("/").text for _ in range(2)] == ["1", "2"]
    postgres_server.stop()
    try:
        assert app.get("/").text == "1"  # an empty, unsaved session
    finally:
        postgres_server.start()
    assert app.get("/").text == "3"
    mw.close()


@pytest.mark.servers
def test_with_anonymous_policy_workers_boot_while_postgres_is_down_and_recover(
    postgres_server, pg_url, table_name, caplog
):
    options = {
        "session.type": "ext:database", "session.url": pg_url, "session.table_name": table_name,
        "session.secret": SECRET, "session.secure": "false",
    }
    postgres_server.stop()
    try:
        with pytest.raises(StoreError):  # the default policy: a database down at startup is an error
            SessionMiddleware(counter_app, options)
        with caplog.at_level(logging.ERROR, logger="fastsess"):
            mw = SessionMiddleware(counter_app, {**options, "session.on_store_error": "anonymous"})
        assert [r for r in caplog.records if getattr(r, "fastsess_event", None) == "store_error"]
        app = webtest.TestApp(mw)
        assert app.get("/").text == "1"  # an empty, unsaved session
    finally:
        postgres_server.start()
    mw.close()
    # Once the database answers, a worker built with the table in place serves sessions.
    SessionMiddleware(counter_app, options).close()
    mw = SessionMiddleware(counter_app, {**options, "session.on_store_error": "anonymous"})
    app = webtest.TestApp(mw)
    assert [app.get("/").text for _ in range(2)] == ["1", "2"]
    mw.close()


def test_a_table_missing_because_the_database_was_down_at_startup_is_created_once_it_answers(tmp_path, caplog):
    # The SQLite file's directory does not exist yet: the database cannot be opened, as if it were down.
    directory = tmp_path / "not-yet"
    mw = SessionMiddleware(counter_app, {
        "session.type": "sql", "session.url": f"sqlite:///{directory / 'sessions.sqlite'}",
        "session.secret": SECRET, "session.secure": "false", "session.on_store_error": "anonymous",
    })
    app = webtest.TestApp(mw)
    served = app.get("/")
    assert served.text == "1" and "Set-Cookie" not in served.headers  # anonymous while it is down
    directory.mkdir()  # the database answers now, without the table
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastsess"):
        assert [app.get("/").text for _ in range(3)] == ["1", "2", "3"]  # sessions again, same worker
    assert [r.fastsess_event for r in caplog.records] == ["table_created"]  # created once, nothing failed
    assert mw.store.table_created is True
    mw.close()


def test_building_the_middleware_tells_on_event_whether_it_created_the_sessions_table(tmp_path, caplog):
    seen = []
    options = {"session.type": "sql", "session.url": f"sqlite:///{tmp_path / 's.sqlite'}", "session.secret": SECRET}
    with caplog.at_level(logging.DEBUG, logger="fastsess"):
        for _ in range(2):
            SessionMiddleware(counter_app, options, on_event=lambda name, **f: seen.append((name, f["store"]))).close()
    assert seen == [("table_created", "sql"), ("table_found", "sql")]
    logged = {r.fastsess_event: r.levelno for r in caplog.records if getattr(r, "fastsess_event", "").startswith("table")}
    assert logged == {"table_created": logging.INFO, "table_found": logging.DEBUG}  # no warning on every start


def test_a_database_down_at_startup_reaches_on_event_as_a_store_error(tmp_path, caplog):
    seen = []
    with caplog.at_level(logging.ERROR, logger="fastsess"):
        mw = SessionMiddleware(counter_app, {
            "session.type": "sql", "session.url": f"sqlite:///{tmp_path / 'not-yet' / 's.sqlite'}",
            "session.secret": SECRET, "session.on_store_error": "anonymous",
        }, on_event=lambda name, **fields: seen.append((name, fields["store"])))
    assert seen == [("store_error", "sql")]
    assert [r.fastsess_event for r in caplog.records] == ["store_error"]
    assert "could not check or create the sessions table" in caplog.records[0].getMessage()
    mw.close()


@pytest.mark.parametrize("command", [["create-table"], ["cleanup"]])
def test_commands_fail_when_the_database_is_down_even_where_the_app_would_boot_anonymous(tmp_path, capsys, command):
    ini = tmp_path / "app.ini"
    ini.write_text(
        "[app:main]\nsession.type = sql\n"
        f"session.url = sqlite:///{tmp_path / 'not-yet' / 's.sqlite'}\n"
        f"session.secret = {SECRET}\nsession.on_store_error = anonymous\n"
    )
    assert main([*command, "--config", str(ini)]) == 2
    captured = capsys.readouterr()
    assert "unable to open database file" in captured.err and "already exists" not in captured.out


@pytest.mark.parametrize("with_data_dir", [False, True])
def test_beaker_sa_url_names_the_database_when_session_url_is_absent(tmp_path, with_data_dir):
    # Beaker's ext:database takes session.sa.url (SQLAlchemy's own option) in place of session.url.
    database = tmp_path / "beaker-style.sqlite"
    options = {
        "session.type": "ext:database", "session.sa.url": f"sqlite:///{database}",
        "session.secret": SECRET, "session.secure": "false",
    }
    if with_data_dir:  # would otherwise name the default SQLite file
        options["session.data_dir"] = str(tmp_path / "data")
    mw = SessionMiddleware(counter_app, options)
    app = webtest.TestApp(mw)
    assert [app.get("/").text for _ in range(2)] == ["1", "2"]
    assert str(mw.store.engine.url) == f"sqlite:///{database}"
    mw.close()


def test_a_store_built_without_create_table_never_creates_the_table_on_use(tmp_path):
    store = SqlStore(url=f"sqlite:///{tmp_path / 's.sqlite'}", create_table=False)
    with pytest.raises(StoreError, match="no such table"):
        store.create(skey("a"), b"x", time.time() + TTL)
    assert not sa.inspect(store.engine).has_table("fastsess_sessions")
    store.close()


@pytest.mark.servers
@pytest.mark.timeout(60)  # a store that hung on the stopped server fails the test outright
def test_a_worker_booted_while_postgres_was_down_creates_the_table_and_serves_sessions_once_it_answers(
    postgres_server, pg_url, table_name
):
    postgres_server.stop()
    try:
        mw = SessionMiddleware(counter_app, {
            "session.type": "ext:database", "session.url": pg_url, "session.table_name": table_name,
            "session.secret": SECRET, "session.secure": "false", "session.on_store_error": "anonymous",
        })
        app = webtest.TestApp(mw)
        assert app.get("/").text == "1"
    finally:
        postgres_server.start()
    assert [app.get("/").text for _ in range(3)] == ["1", "2", "3"]
    assert mw.store.table_created is True
    mw.close()


# ---------------------------------------------------------------- end to end


@pytest.mark.servers
def test_ext_database_with_a_postgres_url_from_string_config_counts(pg_url, table_name):
    mw = SessionMiddleware(counter_app, {
        "session.type": "ext:database", "session.url": pg_url, "session.table_name": table_name,
        "session.secret": SECRET, "session.secure": "false", "session.timeout": "600",
        "session.sa.pool_recycle": "3600",
    })
    app = webtest.TestApp(mw)
    assert [app.get("/").text for _ in range(3)] == ["1", "2", "3"]
    assert mw.store.engine.pool._recycle == 3600
    with mw.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(mw.store.table)).scalar() == 1
    mw.close()


def test_type_sql_with_only_data_dir_uses_a_sqlite_file(tmp_path):
    mw = SessionMiddleware(counter_app, {
        "session.type": "sql", "session.data_dir": str(tmp_path / "data"), "session.secret": SECRET,
        "session.secure": "false",
    })
    app = webtest.TestApp(mw)
    assert [app.get("/").text for _ in range(3)] == ["1", "2", "3"]
    assert (tmp_path / "data" / "sessions.sqlite").exists()
    assert mw.store.engine.dialect.name == "sqlite"
    mw.close()


class WritersAlwaysWinStore(SqlStore):
    """Every optimistic rotation loses to a writer that lands first, as under heavy load."""

    def rotate(self, old_key, new_key, blob, expires_at, tombstone_seconds, expected_version=None):
        current = self.load(old_key)
        if isinstance(current, StoredRecord):  # the same bytes under a new version
            self.cas(old_key, current.blob, current.version, current.expires_at)
        return super().rotate(old_key, new_key, blob, expires_at, tombstone_seconds, expected_version)


@pytest.mark.parametrize("where", ["sqlite", "postgres"])
def test_regenerate_id_merges_under_the_row_lock_when_writers_keep_winning(where, request, table_name):
    # An optimistic rotation retried 8 times lost to locked writers on PostgreSQL
    # (a login answered 500); the SQL store rotates under the row lock instead.
    url = request.getfixturevalue("sqlite_url" if where == "sqlite" else "pg_url")

    def app(environ, start_response):
        session = environ["beaker.session"]
        if environ["PATH_INFO"] == "/login":
            session.regenerate_id()
            session["user"] = "ada"
        else:
            session["cart"] = "full"
        session.save()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [json.dumps(dict(session.items()), sort_keys=True).encode()]

    mw = SessionMiddleware(app, {"session.type": "sql", "session.url": url, "session.table_name": table_name,
                                 "session.secret": SECRET, "session.timeout": 600, "session.secure": "false"})
    try:
        mw.service.store.__class__ = WritersAlwaysWinStore
        client = webtest.TestApp(mw)
        client.get("/cart")
        old_cookie = client.cookies["session"]
        assert json.loads(client.get("/login").text) == {"cart": "full", "user": "ada"}
        assert client.cookies["session"] != old_cookie
        stale = webtest.TestApp(mw, extra_environ={"HTTP_COOKIE": f"session={old_cookie}"})
        assert stale.get("/cart").text == '{"cart": "full"}'  # the old id loads nothing: a tombstone
    finally:
        mw.close()


def test_a_table_name_that_names_beakers_table_is_a_config_error_at_startup(sqlite_url):
    # Keeping Beaker's session.table_name = beaker_cache built fine, then failed every write.
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE beaker_cache (namespace VARCHAR(255) PRIMARY KEY, accessed TIMESTAMP, "
            "created TIMESTAMP, data BLOB)"
        ))
    engine.dispose()
    with pytest.raises(ConfigError, match="beaker_cache.*table_name"):
        SessionMiddleware(lambda environ, start_response: [], {
            "session.type": "ext:database", "session.url": sqlite_url, "session.table_name": "beaker_cache",
            "session.secret": SECRET, "session.timeout": 60, "session.on_store_error": "anonymous",
        })


# ---------------------------------------------------------------- SQLite loads through the driver


def test_sqlite_loads_go_to_the_driver_with_the_statement_compiled_once(sqlite_url):
    store = SqlStore(url=sqlite_url)
    try:
        assert store._load_sql is not None and store._load_sql.startswith("SELECT")
        seen = statements(store.engine)
        store.create(skey("a"), b"data", time.time() + TTL)
        record = store.load(skey("a"))
        assert record.blob == b"data" and isinstance(record.version, int)
        assert isinstance(record.expires_at, float) and isinstance(record.last_access, float)
        assert store.load(skey("missing")) is None
        assert not [sql for sql in seen if sql.startswith("SELECT")]  # SQLAlchemy's execution was skipped
    finally:
        store.close()


def test_a_table_with_types_the_driver_path_does_not_know_loads_through_sqlalchemy(sqlite_url):
    class Blob(sa.LargeBinary):  # a user's type: its result processing must run
        def result_processor(self, dialect, coltype):
            return lambda value: None if value is None else bytes(value)

    table = sessions_table("decorated")
    table = sa.Table(
        "decorated", sa.MetaData(), *(
            sa.Column(c.name, Blob() if c.name == "data" else c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.columns
        ),
    )
    store = SqlStore(url=sqlite_url, table=table)
    try:
        assert store._load_sql is None
        store.create(skey("a"), b"data", time.time() + TTL)
        assert store.load(skey("a")).blob == b"data"
    finally:
        store.close()


def test_postgres_loads_go_through_sqlalchemy(pg_store):
    assert pg_store._load_sql is None  # its statement watchdog listens to SQLAlchemy's execution


def test_a_driver_error_on_load_is_a_store_error_that_shows_no_key(sqlite_url):
    store = SqlStore(url=sqlite_url)
    try:
        store.create(skey("a"), b"data", time.time() + TTL)
        with store.engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {store.table.name} RENAME COLUMN data TO gone"))
        with pytest.raises(StoreError) as caught:
            store.load(skey("a"))
        assert skey("a").hex() not in str(caught.value)  # parameters stay hidden
    finally:
        store.close()


def test_a_load_on_a_pooled_connection_closed_underneath_runs_again_on_a_new_one(sqlite_url):
    store = SqlStore(url=sqlite_url)
    try:
        store.create(skey("a"), b"data", time.time() + TTL)
        assert store.load(skey("a")).blob == b"data"
        (idle,) = store.engine.pool._pool.queue  # the pool's one idle connection record
        idle.dbapi_connection.close()  # the driver connection dies while it idles in the pool
        assert store.load(skey("a")).blob == b"data"  # invalidated, then once more on a new connection
        assert not store._breaker.failing
    finally:
        store.close()


def test_an_unopenable_sqlite_database_is_a_store_error_on_load(tmp_path):
    path = tmp_path / "sessions.sqlite"
    store = SqlStore(url=f"sqlite:///{path}")
    try:
        store.create(skey("a"), b"data", time.time() + TTL)
        store.engine.dispose()
        path.unlink()
        path.mkdir()  # a directory where the database was: it cannot be opened
        with pytest.raises(StoreError):
            store.load(skey("a"))
    finally:
        store.close()
