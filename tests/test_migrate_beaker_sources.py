"""`fastsess migrate-beaker` from Beaker 1.14's ext:sqla, ext:rediscluster and ext:memcached stores.

Beaker itself writes each store here (pickle serializer, its default), on
real servers the tests start; the migrated sessions are then read back
through a fastsess middleware with the Beaker cookie. Hostile pickles are
refused without running, as from every other source.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import pickle
import socketserver
import threading
import time
import uuid

import pytest

from fastsess.cli import main
from fastsess.migrate import _metadump_entry
from test_migrate_beaker import (
    BEAKER_SECRET,
    DELTA_SLACK_SECONDS,
    RICH,
    Hostile,
    beaker_write,
    fastsess_read,
    migrate,
    write_ini,
)


def beaker_settings(kind: str, **where) -> dict:
    return {"session.type": kind, "session.secret": BEAKER_SECRET, **{f"session.{k}": v for k, v in where.items()}}


# ---------------------------------------------------------------- ext:sqla


def sqla_settings(engine, table, lock_dir) -> dict:
    """ext:sqla as an application configures it: an engine and a Table object (and, for Beaker's
    locks, a data_dir: its SqlaNamespaceManager fails without one)."""
    return beaker_settings("ext:sqla", bind=engine, table=table, data_dir=str(lock_dir))


@pytest.fixture
def sqla_source(tmp_path):
    """A SQLite database and a `make_cache_table` table, as an application hands them to Beaker."""
    sa = pytest.importorskip("sqlalchemy")
    from beaker.ext.sqla import SqlaNamespaceManager, make_cache_table

    SqlaNamespaceManager._init_dependencies()  # Beaker imports SQLAlchemy on first use only
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    engine = sa.create_engine(url)
    table = make_cache_table(sa.MetaData(), table_name="app_sessions")
    table.create(engine)
    yield url, engine, table
    engine.dispose()


def test_beaker_sqla_sessions_migrate_and_load_with_the_beaker_cookie(tmp_path, capsys, sqla_source):
    url, engine, table = sqla_source
    settings = sqla_settings(engine, table, tmp_path / "locks")
    rich = beaker_write(settings, RICH)
    plain = beaker_write(settings, {"user": "grace"})
    ini = write_ini(tmp_path)
    args = ("--from-type", "ext:sqla", "--from-url", url, "--from-table", "app_sessions")
    report = migrate(capsys, ini, *args)
    assert report["source"] == f"ext:sqla:{url}:app_sessions"
    assert (report["mode"], report["seen"], report["migrated"], report["refused"]) == ("bulk", 2, 2, 0)
    seen, _ = fastsess_read(ini, rich)
    assert seen["data"] == RICH
    assert {k: type(v) for k, v in seen["data"].items()} == {k: type(v) for k, v in RICH.items()}
    assert fastsess_read(ini, plain)[0]["data"] == {"user": "grace"}

    beaker_write(settings, {"user": "grace", "n": 2}, cookie=plain)
    delta = migrate(capsys, ini, *args)
    assert (delta["mode"], delta["migrated"], delta["updated"], delta["unchanged"]) == ("delta", 0, 1, 1)
    assert fastsess_read(ini, plain)[0]["data"] == {"user": "grace", "n": 2}


def test_a_sqla_delta_pass_reads_only_rows_written_since(tmp_path, capsys, sqla_source):
    url, engine, table = sqla_source
    settings = sqla_settings(engine, table, tmp_path / "locks")
    old = [beaker_write(settings, {"n": i}) for i in range(3)]
    with engine.begin() as conn:  # the bulk pass ran long ago, as far as these rows know
        past = _dt.datetime.now() - _dt.timedelta(seconds=2 * DELTA_SLACK_SECONDS)
        conn.execute(table.update().values(accessed=past))
    ini = write_ini(tmp_path)
    args = ("--from-type", "ext:sqla", "--from-url", url, "--from-table", "app_sessions")
    assert migrate(capsys, ini, *args)["migrated"] == 3
    beaker_write(settings, {"n": 100}, cookie=old[0])
    delta = migrate(capsys, ini, *args)
    assert (delta["seen"], delta["updated"]) == (1, 1)  # the other rows never left the database
    assert fastsess_read(ini, old[0])[0]["data"] == {"n": 100}
    assert fastsess_read(ini, old[1])[0]["data"] == {"n": 1}


def test_a_sqla_dry_run_writes_nothing(tmp_path, capsys, sqla_source):
    url, engine, table = sqla_source
    cookie = beaker_write(sqla_settings(engine, table, tmp_path / "locks"), {"n": 1})
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:sqla", "--from-url", url, "--from-table", "app_sessions",
                     "--dry-run")
    assert (report["dry_run"], report["migrated"]) == (True, 1)
    assert fastsess_read(ini, cookie)[0]["data"] == {}


def test_a_hostile_pickle_in_the_sqla_table_is_refused_and_never_run(tmp_path, capsys, sqla_source):
    sa = pytest.importorskip("sqlalchemy")
    url, engine, table = sqla_source
    good = beaker_write(sqla_settings(engine, table, tmp_path / "locks"), {"user": "ada"})
    marker = tmp_path / "pwned"
    now = _dt.datetime.now()
    with engine.begin() as conn:  # raw bytes: PickleType would pickle the pickle
        conn.execute(
            sa.text("INSERT INTO app_sessions (namespace, accessed, created, data) VALUES (:n, :a, :a, :d)"),
            {"n": uuid.uuid4().hex, "a": now, "d": pickle.dumps({"session": Hostile(marker)})},
        )
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:sqla", "--from-url", url, "--from-table", "app_sessions")
    assert (report["migrated"], report["refused"]) == (1, 1) and not marker.exists()
    assert "refused global posix.system" in report["refusals"][0]["reason"]
    assert fastsess_read(ini, good)[0]["data"] == {"user": "ada"}


def test_a_missing_sqla_url_is_a_clear_error(tmp_path, capsys):
    ini = write_ini(tmp_path)
    assert main(["migrate-beaker", "--config", ini, "--from-type", "ext:sqla", "--from-data-dir", "x"]) == 2
    assert "session.bind" in capsys.readouterr().err


@pytest.mark.servers
def test_beaker_sqla_sessions_in_a_postgresql_schema_migrate(tmp_path, capsys):
    sa = pytest.importorskip("sqlalchemy")
    from beaker.ext.sqla import SqlaNamespaceManager, make_cache_table

    import server_postgres

    SqlaNamespaceManager._init_dependencies()
    server = server_postgres.get_server()
    url = server.url()
    schema = f"legacy_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        table = make_cache_table(sa.MetaData(), schema_name=schema)
        table.create(engine)
        cookie = beaker_write(sqla_settings(engine, table, tmp_path / "locks"), RICH)
        ini = write_ini(tmp_path)
        report = migrate(capsys, ini, "--from-type", "ext:sqla", "--from-url", url, "--from-schema", schema)
        assert report["source"].endswith(f":{schema}.beaker_cache")
        assert (report["seen"], report["migrated"], report["refused"]) == (1, 1, 0)
        assert fastsess_read(ini, cookie)[0]["data"] == RICH
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


# ---------------------------------------------------------------- ext:rediscluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-node Redis Cluster of this module's own: the shared one holds other tests' keys."""
    pytest.importorskip("redis")
    import server_redis

    cluster = server_redis.RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_urls(cluster):
    """Beaker's session.urls for the cluster, emptied before each test."""
    import server_redis

    for node in cluster.nodes:
        server_redis.command(node.port, "FLUSHALL")
    return ",".join(f"redis://{address}" for address in cluster.urls)


def cluster_keys(cluster) -> list[int]:
    """How many keys each node holds."""
    import server_redis

    return [int(server_redis.command(node.port, "DBSIZE")[1:]) for node in cluster.nodes]


@pytest.mark.servers
def test_beaker_rediscluster_sessions_on_every_node_migrate(tmp_path, capsys, cluster, cluster_urls):
    settings = beaker_settings("ext:rediscluster", urls=cluster_urls)
    cookies = {beaker_write(settings, {"n": i}): i for i in range(20)}
    rich = beaker_write(settings, RICH)
    assert all(count > 0 for count in cluster_keys(cluster))  # the sessions are spread over all three
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:rediscluster", "--from-urls", cluster_urls)
    assert report["source"] == f"ext:rediscluster:{cluster_urls}"
    assert (report["seen"], report["migrated"], report["refused"]) == (21, 21, 0)
    assert fastsess_read(ini, rich)[0]["data"] == RICH
    for cookie, n in cookies.items():
        assert fastsess_read(ini, cookie)[0]["data"] == {"n": n}

    changed = next(iter(cookies))
    beaker_write(settings, {"n": -1}, cookie=changed)
    delta = migrate(capsys, ini, "--from-type", "ext:rediscluster", "--from-url", cluster_urls)
    assert (delta["mode"], delta["migrated"], delta["updated"], delta["unchanged"]) == ("delta", 0, 1, 20)
    assert fastsess_read(ini, changed)[0]["data"] == {"n": -1}


@pytest.mark.servers
def test_a_rediscluster_dry_run_writes_nothing(tmp_path, capsys, cluster_urls):
    cookie = beaker_write(beaker_settings("ext:rediscluster", urls=cluster_urls), {"n": 1})
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:rediscluster", "--from-url", cluster_urls, "--dry-run")
    assert (report["dry_run"], report["migrated"]) == (True, 1)
    assert fastsess_read(ini, cookie)[0]["data"] == {}


@pytest.mark.servers
def test_a_hostile_pickle_in_the_cluster_is_refused_and_never_run(tmp_path, capsys, cluster, cluster_urls):
    from redis.cluster import ClusterNode, RedisCluster

    beaker_write(beaker_settings("ext:rediscluster", urls=cluster_urls), {"user": "ada"})
    marker = tmp_path / "pwned"
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in cluster.nodes])
    for _ in range(6):  # some land on other nodes than the good session
        client.set(f"beaker_cache:{uuid.uuid4().hex}:session", pickle.dumps(Hostile(marker)))
    client.close()
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "ext:rediscluster", "--from-url", cluster_urls)
    assert (report["migrated"], report["refused"]) == (1, 6) and not marker.exists()


# ---------------------------------------------------------------- ext:memcached


@pytest.fixture
def memcached(tmp_path):
    """Two memcached servers of the test's own; Beaker's url names both."""
    import server_memcached

    servers = [server_memcached.MemcachedServer(tmp_path / f"mc{i}").start() for i in range(2)]
    yield servers
    for server in servers:
        server.stop()


def memcached_url(servers) -> str:
    return ";".join(server.address for server in servers)


@pytest.mark.servers
def test_beaker_memcached_sessions_on_every_server_migrate(tmp_path, capsys, memcached):
    url = memcached_url(memcached)
    settings = beaker_settings("ext:memcached", url=url)
    cookies = {beaker_write(settings, {"n": i}): i for i in range(16)}
    rich = beaker_write(settings, RICH)
    assert all(server.stats()["curr_items"] > 0 for server in memcached)  # the client spread them
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:memcached", "--from-url", url)
    assert report["source"] == f"ext:memcached:{url}"
    assert (report["seen"], report["migrated"], report["refused"]) == (17, 17, 0)
    assert fastsess_read(ini, rich)[0]["data"] == RICH
    for cookie, n in cookies.items():
        assert fastsess_read(ini, cookie)[0]["data"] == {"n": n}

    changed = next(iter(cookies))
    beaker_write(settings, {"n": -1}, cookie=changed)
    delta = migrate(capsys, ini, "--from-type", "ext:memcached", "--from-url", url)
    assert (delta["mode"], delta["migrated"], delta["updated"], delta["unchanged"]) == ("delta", 0, 1, 16)
    assert fastsess_read(ini, changed)[0]["data"] == {"n": -1}


@pytest.mark.servers
def test_a_memcached_delta_pass_skips_keys_untouched_since(tmp_path, capsys, memcached):
    url = memcached_url(memcached)
    for i in range(3):
        beaker_write(beaker_settings("ext:memcached", url=url), {"n": i})
    ini = write_ini(tmp_path)
    args = ("--from-type", "ext:memcached", "--from-url", url)
    later = str(time.time() + 2 * DELTA_SLACK_SECONDS)  # nothing was accessed after this
    report = migrate(capsys, ini, *args, "--since", later)
    assert (report["seen"], report["unchanged"], report["migrated"]) == (3, 3, 0)
    report = migrate(capsys, ini, *args, "--since", str(time.time()))
    assert (report["seen"], report["migrated"]) == (3, 3)


def beaker_cookie(beaker_id: str) -> str:
    """The cookie Beaker signs for an id: hex HMAC-SHA1 of the id, then the id."""
    return hmac.new(BEAKER_SECRET.encode(), beaker_id.encode(), hashlib.sha1).hexdigest() + beaker_id


@pytest.mark.servers
def test_memcached_values_the_client_pickled_or_compressed_are_read(tmp_path, capsys, memcached):
    """python-memcached compresses with zlib (flag 8) when asked to; other clients pickle strings (flag 1)."""
    memcache = pytest.importorskip("memcache")
    from pymemcache.client.base import Client

    import server_memcached

    server = memcached[0]
    now = time.time()
    session = {"_creation_time": now, "_accessed_time": now, "user": "ada" * 50}
    encoded = base64.b64encode(pickle.dumps(session, 2)).decode()
    compressed, pickled = uuid.uuid4().hex, uuid.uuid4().hex
    client = memcache.Client([server.address])
    client.set(f"{compressed}_session", encoded, min_compress_len=1)
    client.disconnect_all()
    assert server_memcached.command(server.port, f"get {compressed}_session").split(b" ")[2] == b"24"
    raw = Client(("127.0.0.1", server.port))
    raw.set(f"{pickled}_session", pickle.dumps(encoded), flags=1)
    raw.close()
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:memcached", "--from-url", server.address)
    assert (report["migrated"], report["refused"]) == (2, 0)
    for beaker_id in (compressed, pickled):
        assert fastsess_read(ini, beaker_cookie(beaker_id))[0]["data"] == {"user": "ada" * 50}


@pytest.mark.servers
def test_a_hostile_pickle_in_memcached_is_refused_and_never_run(tmp_path, capsys, memcached):
    from pymemcache.client.base import Client

    url = memcached_url(memcached)
    good = beaker_write(beaker_settings("ext:memcached", url=url), {"user": "ada"})
    marker = tmp_path / "pwned"
    raw = Client(("127.0.0.1", memcached[1].port))
    raw.set(f"{uuid.uuid4().hex}_session", pickle.dumps(Hostile(marker)), flags=1)
    raw.set("app_cache_entry", b"not a session")
    raw.set(f"{'x' * 32}_session", b"a session of something else")
    raw.close()
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:memcached", "--from-url", url)
    assert (report["migrated"], report["refused"], report["skipped"]) == (1, 1, 1) and not marker.exists()
    assert "refused global posix.system" in report["refusals"][0]["reason"]
    assert fastsess_read(ini, good)[0]["data"] == {"user": "ada"}


@pytest.mark.servers
def test_expired_beaker_memcached_sessions_are_counted_not_migrated(tmp_path, capsys, memcached, monkeypatch):
    """Beaker sets no memcached expiry: sessions idle past the timeout stay in memory until evicted."""
    url = memcached_url(memcached)
    settings = beaker_settings("ext:memcached", url=url)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 7200)
    beaker_write(settings, {"n": 1})
    monkeypatch.setattr(time, "time", real)
    beaker_write(settings, {"n": 2})
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "ext:memcached", "--from-url", url)
    assert (report["migrated"], report["expired"]) == (1, 1)


@pytest.mark.servers
def test_memcached_with_its_lru_crawler_off_is_refused_with_the_fix_before_anything_is_written(
    tmp_path, capsys, memcached
):
    import server_memcached

    class CrawlerOff(server_memcached.MemcachedServer):
        def argv(self) -> list[str]:
            return [*super().argv(), "-o", "no_lru_crawler"]

    off = CrawlerOff(tmp_path / "off").start()
    try:
        url = f"{memcached[0].address};{off.address}"
        cookies = [beaker_write(beaker_settings("ext:memcached", url=url), {"n": i}) for i in range(16)]
        assert memcached[0].stats()["curr_items"] > 0 and off.stats()["curr_items"] > 0
        ini = write_ini(tmp_path)
        args = ["migrate-beaker", "--config", ini, "--from-type", "ext:memcached", "--from-url", url]
        assert main(args) == 2
        assert "lru_crawler enable" in capsys.readouterr().err
        assert all(fastsess_read(ini, cookie)[0]["data"] == {} for cookie in cookies)
        server_memcached.command(off.port, "lru_crawler enable")
        assert migrate(capsys, ini, *args[3:])["migrated"] == 16
        assert all(fastsess_read(ini, cookie)[0]["data"] == {"n": i} for i, cookie in enumerate(cookies))
    finally:
        off.stop()


def test_memcached_keys_one_key_dump_missed_are_found_by_the_next(monkeypatch):
    """The crawler can miss an item memcached moves between LRU segments: dump until nothing new shows."""
    from fastsess.migrate import MemcachedSource

    source = object.__new__(MemcachedSource)  # no server: the dumps are scripted
    source.servers = ["127.0.0.1:1"]
    first, second = (f"{uuid.uuid4().hex}_session" for _ in range(2))
    dumps = iter([[first], [first, second], [second, first]])
    calls = []

    def scripted_dump(name):
        calls.append(name)
        return ((key, None) for key in next(dumps))

    monkeypatch.setattr(source, "_dump", scripted_dump)
    monkeypatch.setattr(source, "_batch", lambda name, keys: iter([(name, tuple(keys))]))
    assert list(source.items(None)) == [("127.0.0.1:1", (first, second))]
    assert len(calls) == 3  # the third dump listed nothing new

    dumps = iter([[], []])
    calls.clear()
    assert list(source.items(None)) == [] and len(calls) == 2  # an empty server: twice, not three times


def test_memcached_dump_waits_out_a_busy_crawler_then_gives_a_clear_error(monkeypatch):
    """memcached starts a crawl of its own when its crawler is switched on: wait, never fail at once."""
    import fastsess.migrate as migrate_module
    from fastsess.errors import StoreError
    from fastsess.migrate import MemcachedSource

    monkeypatch.setattr(migrate_module, "_MC_BUSY_WAITS", (0, 0, 0))
    source = object.__new__(MemcachedSource)
    busy = b"BUSY currently processing crawler request"
    replies = iter([busy, busy, None])
    key = f"{uuid.uuid4().hex}_session"

    def scripted_dump_once(name):
        reply = next(replies)
        if reply is not None:
            raise source._dump_refused(name, reply)
        yield key, None

    monkeypatch.setattr(source, "_dump_once", scripted_dump_once)
    assert list(source._dump("127.0.0.1:1")) == [(key, None)]

    replies = iter([busy] * 4)
    with pytest.raises(StoreError, match="busy with another crawl"):
        list(source._dump("127.0.0.1:1"))


class _OldMemcached(socketserver.StreamRequestHandler):
    """Answers `version` as memcached 1.4.25 would, and nothing else."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(b"VERSION 1.4.25\r\n" if line.startswith(b"version") else b"ERROR\r\n")


def test_memcached_too_old_to_list_keys_is_refused_with_what_users_see(tmp_path, capsys):
    pytest.importorskip("pymemcache")
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _OldMemcached) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            address = f"127.0.0.1:{server.server_address[1]}"
            ini = write_ini(tmp_path)
            assert main(["migrate-beaker", "--config", ini, "--from-type", "ext:memcached",
                         "--from-url", address]) == 2
        finally:
            server.shutdown()
    err = capsys.readouterr().err
    assert "1.4.31" in err and "beaker_compat" in err and "fresh session" in err


def test_metadump_lines_give_the_decoded_key_and_last_access():
    line = b"key=abc%20def_session exp=-1 la=1795684242 cas=1 fetch=no cls=6 size=255"
    assert _metadump_entry(line) == ("abc def_session", 1795684242)
    assert _metadump_entry(b"key=k exp=-1 cas=1") == ("k", None)


def test_an_unreachable_memcached_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("pymemcache")
    from loopback import free_port

    ini = write_ini(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    assert main(["migrate-beaker", "--config", ini, "--from-type", "ext:memcached", "--from-url", address]) == 2
    assert f"cannot reach memcached at {address}" in capsys.readouterr().err
