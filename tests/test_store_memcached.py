"""The memcached store against real servers: real-time TTLs, several nodes, failures, round trips.

The contract suite (tests/contract_kinds_memcached.py) covers the interface;
this file covers what only a real memcached shows. Failure tests start
servers of their own, since they stop and restart them.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sys
import threading
import time

import pytest
import webtest
from pymemcache.exceptions import MemcacheUnexpectedCloseError, MemcacheUnknownError

from chunked_socket import ChunkedSocket, every_split
from fastsess import SessionMiddleware, core
from fastsess.errors import ConfigError, SessionTooLarge, StoreError
from fastsess.stores.base import CONFLICT, EXISTS, GONE, TOMBSTONE, StoredRecord
from fastsess.stores.memcached import MemcachedStore, _MetaClient, parse_servers, read_meta_reply
from server_memcached import command, memcached_server, memcached_servers, start_server  # noqa: F401 - fixtures
from test_store_timeouts import receive_timeout

pytestmark = pytest.mark.servers

SECRET = "memcached-test-secret-" + "z" * 20
TIMEOUT = 0.5  # connect and socket timeouts of the failure tests
#: pytest-timeout's limit for a failure test: a node that made the store hang fails the test
#: outright. The tests themselves check what failed and why, never how long it took.
HANG_LIMIT = pytest.mark.timeout(60)

_prefixes = itertools.count()


def skey(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def prefix() -> str:
    return f"t{next(_prefixes)}-{time.monotonic_ns()}:"


class Clock:
    """A clock that starts at the real time and moves only by hand: the store's (or session's) idea of now.

    The server keeps counting TTLs in real time; a store only ever sends it
    relative TTLs, so moving this clock forward looks to the store exactly
    like time passing, without waiting.
    """

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(memcached_server, clock):  # noqa: F811 - the fixture imported above
    made = MemcachedStore(memcached_server.address, key_prefix=prefix(), clock=clock)
    yield made
    made.close()


def mkey(store: MemcachedStore, key: bytes) -> bytes:
    return f"{store.key_prefix}{key.hex()}".encode()


def remaining_ttl(server, key: bytes) -> int:
    reply = command(server.port, f"mg {key.decode()} t")
    assert reply.startswith(b"HD"), reply
    return int(re.search(rb" t(-?\d+)", reply).group(1))


# ---------------------------------------------------------------- configuration


def test_url_takes_beaker_syntax_commas_and_lists():
    assert parse_servers("10.0.0.1:11211;10.0.0.2:11212") == ["10.0.0.1:11211", "10.0.0.2:11212"]
    assert parse_servers(" a:1 , b:2 ;") == ["a:1", "b:2"]
    assert parse_servers(["a:1", "b"]) == ["a:1", "b:11211"]
    assert parse_servers("a:1;a:1") == ["a:1"]
    assert parse_servers("[::1]:11300;[::1]") == ["[::1]:11300", "[::1]:11211"]
    assert parse_servers("unix:/run/memcached.sock") == ["unix:/run/memcached.sock"]


@pytest.mark.parametrize("url", ["", " ; ", "a:b", "a:0", "a:70000", "::1:11211", "[::1", "unix:"])
def test_bad_url_is_a_config_error(url):
    with pytest.raises(ConfigError):
        MemcachedStore(url)


@pytest.mark.parametrize("key_prefix", ["has space:", "tab\t", "é:", "x" * 187])
def test_key_prefix_must_fit_a_memcached_key(key_prefix):
    with pytest.raises(ConfigError):
        MemcachedStore("127.0.0.1:11211", key_prefix=key_prefix)


def test_records_live_under_prefix_plus_hex_store_key(store, memcached_server):  # noqa: F811
    store.create(skey("a"), b"data", store.clock() + 60)
    assert memcached_server.has_key(mkey(store, skey("a")))
    assert len(mkey(store, skey("a"))) <= 250


# ---------------------------------------------------------------- versions, touch, expiry


def test_create_is_an_add(store, clock):
    assert isinstance(store.create(skey("a"), b"one", clock() + 60), int)
    assert store.create(skey("a"), b"two", clock() + 60) is EXISTS


def test_touch_keeps_the_version_and_moves_expires_at_and_last_access(store, clock):
    start = clock()
    version = store.create(skey("a"), b"data", start + 1800)
    clock.advance(300)  # the store thinks 5 minutes passed; the server's TTL still says 1800 s
    store.touch(skey("a"), clock() + 1800)
    record = store.load(skey("a"))
    assert (record.blob, record.version) == (b"data", version)
    assert record.expires_at == pytest.approx(clock() + 1800, abs=1.5)
    assert record.last_access == pytest.approx(clock(), abs=1.5)
    # A later write is exact again: the header holds the written values.
    written_at = clock()
    v2 = store.cas(skey("a"), b"new", version, written_at + 1800)
    record = store.load(skey("a"))
    assert record.version == v2 and record.last_access == written_at and record.expires_at == written_at + 1800


def test_touch_to_a_capped_expiry_moves_expires_at_and_keeps_the_version(store, clock):
    # The absolute timeout caps expiry: memcached's TTL moves, but the touch time is
    # not recoverable from it; last_access stays the last write (documented).
    start = clock()
    version = store.create(skey("a"), b"data", start + 1800)
    clock.advance(100)
    cap = clock() + 50
    store.touch(skey("a"), cap)
    record = store.load(skey("a"))
    assert record.version == version
    assert record.expires_at == pytest.approx(cap, abs=1.5)
    assert start <= record.last_access <= clock()


def test_untouched_record_reports_the_written_values_exactly(store, clock):
    now = clock()
    store.create(skey("a"), b"data", now + 600)
    record = store.load(skey("a"))
    assert (record.expires_at, record.last_access) == (now + 600, now)


def test_a_record_memcached_still_holds_past_its_written_expiry_is_live(store, clock, memcached_server):  # noqa: F811
    # A 3 s timeout: each touch moves memcached's expiry by about a second, less than SLACK,
    # so the written expiry falls behind while memcached keeps the record.
    version = store.create(skey("a"), b"data", clock() + 3)
    clock.advance(3.2)  # past the written expiry
    reply = command(memcached_server.port, f"mg {mkey(store, skey('a')).decode()} T2")  # a late touch
    assert reply.startswith(b"HD"), reply
    record = store.load(skey("a"))
    assert isinstance(record, StoredRecord) and record.version == version
    assert record.expires_at >= clock() and clock() - record.last_access <= 3  # live, and not idle too long


def test_the_ttl_outlasts_expires_at_by_memcacheds_clock_tick(store, clock, memcached_server):  # noqa: F811
    # memcached's clock ticks once a second: a TTL of 1 can end at the next tick, at once.
    # A tick between the write and the query shows 1 left of a TTL of 2; a TTL of 1 never
    # shows 2, so one query of several that sees 2 proves the margin.
    seen = []
    for _ in range(5):
        store.delete(skey("a"))
        store.create(skey("a"), b"short", clock() + 0.9)
        seen.append(remaining_ttl(memcached_server, mkey(store, skey("a"))))
        if seen[-1] == 2:
            break
    assert seen[-1] == 2 and set(seen) <= {1, 2}, seen
    record = store.load(skey("a"))
    assert record.expires_at == clock() + 0.9  # the margin is the store's own: never reported


def test_record_expires_in_real_time_and_can_be_created_again(store, clock):
    store.create(skey("a"), b"short", clock() + 1)
    assert store.load(skey("a")).blob == b"short"
    time.sleep(3.1)  # 1 s, plus the margin, plus memcached's clock tick
    assert store.load(skey("a")) is None
    assert store.cas(skey("a"), b"x", 1, clock() + 60) is GONE
    assert isinstance(store.create(skey("a"), b"again", clock() + 60), int)


def test_touch_extends_a_record_past_its_first_ttl(store, clock):
    version = store.create(skey("a"), b"data", clock() + 1)
    store.touch(skey("a"), clock() + 5)
    time.sleep(3.1)  # the first TTL (1 s, plus the margin, plus a clock tick) is over
    record = store.load(skey("a"))
    assert isinstance(record, StoredRecord) and record.version == version


def test_tombstone_expires_after_tombstone_seconds_even_when_touched(store, clock):
    store.create(skey("old"), b"data", clock() + 60)
    assert isinstance(store.rotate(skey("old"), skey("new"), b"data", clock() + 60, 1), int)
    store.touch(skey("old"), clock() + 60)  # a late touch must not keep the tombstone for 60 s
    assert store.load(skey("old")) is TOMBSTONE
    time.sleep(3.1)  # 1 s, plus the margin, plus memcached's clock tick
    assert store.load(skey("old")) is None
    assert store.load(skey("new")).blob == b"data"


def test_ttl_over_30_days_is_sent_as_a_unix_time(store, clock, memcached_server):  # noqa: F811
    forty_days = 40 * 24 * 3600
    store.create(skey("a"), b"long", clock() + forty_days)
    assert store.load(skey("a")).blob == b"long"
    assert remaining_ttl(memcached_server, mkey(store, skey("a"))) == pytest.approx(forty_days, abs=5)
    store.touch(skey("a"), clock() + forty_days + 3600)
    assert remaining_ttl(memcached_server, mkey(store, skey("a"))) == pytest.approx(forty_days + 3600, abs=5)


def test_a_session_whose_expiry_lies_past_2038_is_kept(memcached_server):  # noqa: F811
    """memcached reads an absolute expiry as a 32-bit signed number: a later one drops the item at once."""
    mw = middleware(memcached_server.address, timeout=str(20 * 365 * 24 * 3600), absolute_timeout="0")
    app = webtest.TestApp(mw)
    assert app.get("/inc").text == "1"
    assert app.get("/inc").text == "2"
    assert app.get("/read").text == "2"
    mw.close()


def test_cas_after_a_touch_still_matches(store, clock):
    version = store.create(skey("a"), b"one", clock() + 60)
    store.touch(skey("a"), clock() + 120)
    assert isinstance(store.cas(skey("a"), b"two", version, clock() + 60), int)
    assert store.cas(skey("a"), b"three", version, clock() + 60) is CONFLICT


def test_a_record_too_large_for_memcached_is_refused_before_it_is_sent(store, clock):
    sent = []
    call = store._call
    store._call = lambda node, command: sent.append(command) or call(node, command)
    with pytest.raises(SessionTooLarge, match=r"item size limit, memcached -I"):
        store.create(skey("big"), b"x" * (2 * 1024 * 1024), clock() + 60)
    assert sent == []
    assert isinstance(store.create(skey("small"), b"x", clock() + 60), int)
    assert store.load(skey("small")).blob == b"x"


def test_an_oversized_write_leaves_the_stored_session_intact(memcached_server):  # noqa: F811
    # memcached answers an item over its limit (-I, 1 MiB here) with an error and drops the old item.
    mw = middleware(memcached_server.address, max_record_size=str(4 * 1024 * 1024))
    app = webtest.TestApp(mw)
    assert app.get("/inc").text == "1"
    with pytest.raises(SessionTooLarge, match="memcached"):
        app.get("/big")
    assert app.get("/read").text == "1"
    assert app.get("/inc").text == "2"
    mw.close()


# ---------------------------------------------------------------- connections


def total_connections(server) -> int:
    """Connections the server accepted so far (the probe's own included)."""
    stats = command(server.port, "stats").decode()
    return int(re.search(r"STAT total_connections (\d+)", stats).group(1))


def test_sequential_commands_reuse_one_connection(store, memcached_server):  # noqa: F811
    store.create(skey("a"), b"data", store.clock() + 60)
    before = total_connections(memcached_server)
    for _ in range(20):
        assert store.load(skey("a")).blob == b"data"
    assert total_connections(memcached_server) == before + 1  # only the probe connected


def test_threads_never_share_a_connection(store, memcached_server):  # noqa: F811
    # A shared connection would interleave replies: a thread would read another's value.
    for i in range(8):
        store.create(skey(f"k{i}"), f"value {i}".encode() * 50, store.clock() + 60)
    errors = []

    def reader(i: int) -> None:
        for _ in range(200):
            record = store.load(skey(f"k{i}"))
            if record is None or record.blob != f"value {i}".encode() * 50:
                errors.append((i, record))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    (node,) = store._nodes.values()
    assert 1 <= len(node.pool._idle) <= 8  # one connection per concurrent thread at most


def test_a_failed_connection_is_dropped_and_the_next_command_reconnects(store, memcached_server):  # noqa: F811
    store.create(skey("a"), b"data", store.clock() + 60)
    (node,) = store._nodes.values()
    (client,) = node.pool._idle
    client.sock.close()  # the connection breaks under the idle client
    with pytest.raises(StoreError):
        store.load(skey("a"))
    assert len(node.pool._idle) == 0
    assert store.load(skey("a")).blob == b"data"
    assert len(node.pool._idle) == 1 and node.pool._idle[0] is not client


# ---------------------------------------------------------------- several nodes


def test_keys_spread_over_both_nodes_and_each_key_has_one_node(memcached_servers, clock):  # noqa: F811
    a, b = memcached_servers
    store = MemcachedStore(f"{a.address};{b.address}", key_prefix=prefix(), clock=clock)
    keys = [skey(f"k{i}") for i in range(200)]
    for key in keys:
        store.create(key, b"v", clock() + 60)
    placed = {key: store.node_for(key) for key in keys}
    for key, node in placed.items():
        holder, other = (a, b) if node == a.address else (b, a)
        assert holder.has_key(mkey(store, key)) and not other.has_key(mkey(store, key))
    counts = {a.address: 0, b.address: 0}
    for node in placed.values():
        counts[node] += 1
    assert min(counts.values()) > 60, counts
    # Placement depends on the node names only: the order in the url does not matter,
    # so every process and every app server agrees.
    reordered = MemcachedStore([b.address, a.address], key_prefix=store.key_prefix)
    assert {key: reordered.node_for(key) for key in keys} == placed
    assert all(reordered.load(key).blob == b"v" for key in keys)
    store.close()
    reordered.close()


def test_rotate_across_two_nodes(memcached_servers, clock):  # noqa: F811
    a, b = memcached_servers
    store = MemcachedStore([a.address, b.address], key_prefix=prefix(), clock=clock)
    old = skey("old")
    new = next(skey(f"new{i}") for i in itertools.count() if store.node_for(skey(f"new{i}")) != store.node_for(old))
    v1 = store.create(old, b"data", clock() + 60)
    store.cas(old, b"changed", v1, clock() + 60)
    assert store.rotate(old, new, b"x", clock() + 60, 60, expected_version=v1) is CONFLICT
    assert store.load(new) is None  # the new record was taken back
    assert isinstance(store.rotate(old, new, b"moved", clock() + 60, 60), int)
    assert store.load(old) is TOMBSTONE and store.load(new).blob == b"moved"
    store.close()


# ---------------------------------------------------------------- failures


@pytest.fixture
def two_nodes():
    """Two servers of this test's own, which it may stop, pause and restart."""
    servers = [start_server("fail-a"), start_server("fail-b")]
    yield servers
    for server in servers:
        if server.running:
            server.resume()
        server.stop()


def failure_store(servers, clock=time.time, **options) -> MemcachedStore:
    options = {"connect_timeout": TIMEOUT, "socket_timeout": TIMEOUT, "breaker_cooldown": 0.3, **options}
    return MemcachedStore([s.address for s in servers], key_prefix=prefix(), clock=clock, **options)


def key_on(store: MemcachedStore, server) -> bytes:
    return next(skey(f"on{i}") for i in itertools.count() if store.node_for(skey(f"on{i}")) == server.address)


def attempt(fn, *args):
    """fn(*args), or the StoreError it raised."""
    try:
        return fn(*args)
    except StoreError as exc:
        return exc


@HANG_LIMIT
def test_a_downed_node_fails_its_keys_with_store_error_and_the_other_node_keeps_working(two_nodes):
    a, b = two_nodes
    store = failure_store(two_nodes)
    on_a, on_b = key_on(store, a), key_on(store, b)
    version = store.create(on_a, b"a", time.time() + 60)
    store.create(on_b, b"b", time.time() + 60)
    a.stop()
    for operation in (
        lambda: store.load(on_a),
        lambda: store.create(on_a, b"x", time.time() + 60),
        lambda: store.cas(on_a, b"x", version, time.time() + 60),
        lambda: store.touch(on_a, time.time() + 60),
        lambda: store.delete(on_a),
    ):
        error = attempt(operation)
        assert isinstance(error, StoreError), error  # never None: a down node is not a missing session
        assert a.address in str(error) and on_a.hex() not in str(error)
    assert store.load(on_b).blob == b"b"
    assert isinstance(store.cas(on_b, b"b2", store.load(on_b).version, time.time() + 60), int)
    # Nothing for a's key went to b.
    assert not b.has_key(mkey(store, on_a))


@HANG_LIMIT
def test_a_hung_node_times_out_instead_of_hanging(two_nodes):
    a, _ = two_nodes
    store = failure_store(two_nodes)
    on_a = key_on(store, a)
    store.create(on_a, b"a", time.time() + 60)
    a.pause()
    error = attempt(store.load, on_a)
    assert isinstance(error, StoreError) and "timed out" in str(error)  # the socket timeout ended the wait
    a.resume()


@HANG_LIMIT
def test_breaker_fails_fast_after_repeated_failures_then_recovers(two_nodes):
    a, b = two_nodes
    store = failure_store(two_nodes, breaker_threshold=2, breaker_cooldown=0.5)
    on_a, on_b = key_on(store, a), key_on(store, b)
    store.create(on_a, b"a", time.time() + 60)
    a.pause()
    for _ in range(2):
        assert isinstance(attempt(store.load, on_a), StoreError)
    error = attempt(store.load, on_a)
    # The breaker answered: no connection was tried, so no socket timeout was waited out.
    assert isinstance(error, StoreError) and "not retrying" in str(error)
    assert store.load(on_b) is None  # the other node's breaker is its own
    a.resume()
    time.sleep(0.6)
    assert store.load(on_a).blob == b"a"  # the record survived the pause: not stale, simply there


def test_service_resumes_after_restart_and_serves_nothing_stale(two_nodes):
    a, b = two_nodes
    store = failure_store(two_nodes)
    on_a = key_on(store, a)
    version = store.create(on_a, b"before", time.time() + 60)
    a.stop()
    with pytest.raises(StoreError):
        store.cas(on_a, b"during", version, time.time() + 60)
    with pytest.raises(StoreError):
        store.load(on_a)
    writes_on_b = b.stats()["cmd_set"]
    with pytest.raises(StoreError):
        store.create(on_a, b"during", time.time() + 60)
    assert b.stats()["cmd_set"] == writes_on_b  # never remapped to the other node
    a.restart()  # same port, empty
    time.sleep(0.4)  # past the breaker's cooldown
    assert store.load(on_a) is None  # missing, as after any memcached restart; never "before" from elsewhere
    assert store.cas(on_a, b"x", version, time.time() + 60) is GONE
    assert isinstance(store.create(on_a, b"after", time.time() + 60), int)
    assert store.load(on_a).blob == b"after"


def test_a_restart_while_connections_idle_costs_no_request_an_error(two_nodes):
    a, _ = two_nodes
    store = failure_store(two_nodes, breaker_threshold=2)
    on_a = key_on(store, a)
    store.create(on_a, b"before", time.time() + 60)
    pool = store._pool(store._nodes[a.address])
    extra = [_MetaClient(pool._server, connect_timeout=TIMEOUT, timeout=TIMEOUT) for _ in range(3)]
    for client in extra:
        client.meta(b"mn\r\n")  # connected, then idle in the pool
        pool._idle.append(client)
    a.stop()
    a.restart()  # same port, empty: every idle connection is dead
    for _ in range(5):
        assert store.load(on_a) is None  # never a StoreError, and the breaker (threshold 2) stays shut
    assert isinstance(store.create(on_a, b"after", time.time() + 60), int)
    assert store.load(on_a).blob == b"after"


def test_a_restart_before_a_workers_first_write_costs_that_write_no_error(two_nodes):
    """The first write of a process asks the node its item size limit: on an idle connection too."""
    a, _ = two_nodes
    shared = prefix()
    earlier = webtest.TestApp(middleware(a.address, key_prefix=shared))
    assert earlier.get("/inc").text == "1"
    worker = middleware(a.address, key_prefix=shared)  # a worker that has only read so far
    reader = webtest.TestApp(worker, cookiejar=earlier.cookiejar)
    assert reader.get("/read").text == "1"  # its connection now idles in the pool
    a.restart()  # same port, empty
    assert webtest.TestApp(worker).get("/inc").text == "1"  # its first write: a new session, no 500
    assert reader.get("/read").text == "None"  # missing, as after any restart
    worker.close()


@HANG_LIMIT
def test_a_closed_connection_to_a_stopped_server_is_still_a_store_error(two_nodes):
    a, _ = two_nodes
    store = failure_store(two_nodes)
    on_a = key_on(store, a)
    store.create(on_a, b"before", time.time() + 60)
    a.stop()  # the retry on a new connection is refused
    assert isinstance(attempt(store.load, on_a), StoreError)


def test_store_error_in_rotate_takes_the_new_record_back(two_nodes):
    a, b = two_nodes
    store = failure_store(two_nodes)
    old = key_on(store, a)
    new = key_on(store, b)
    version = store.create(old, b"data", time.time() + 60)
    a.stop()
    with pytest.raises(StoreError):
        store.rotate(old, new, b"data", time.time() + 60, 60, expected_version=version)
    assert store.load(new) is None
    assert not b.has_key(mkey(store, new))


# ---------------------------------------------------------------- end to end through SessionMiddleware


def counter_app(environ, start_response):
    session = environ["beaker.session"]
    path = environ["PATH_INFO"]
    if path == "/inc":
        session["n"] = session.get("n", 0) + 1
        session.save()
        body = str(session["n"])
    elif path == "/read":
        body = str(session.get("n"))
    elif path == "/id":
        body = session.id
    elif path == "/big":
        session["big"] = "x" * 1_500_000
        session.save()
        body = "big"
    else:
        body = "untouched"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


def middleware(url: str, **options) -> SessionMiddleware:
    config = {
        "session.type": "memcached", "session.url": url, "session.secret": SECRET,
        "session.timeout": "600", "session.secure": "false", "session.key_prefix": prefix(),
        "session.connect_timeout": str(TIMEOUT), "session.socket_timeout": str(TIMEOUT),
    }
    config.update({f"session.{name}": value for name, value in options.items()})
    return SessionMiddleware(counter_app, config)


COUNTERS = ("cmd_get", "cmd_set", "cmd_touch", "cas_hits", "cas_misses", "cas_badval", "delete_hits", "delete_misses")


def commands_for(server, request) -> dict[str, int]:
    """The server's command counters that one request moved."""
    before = server.stats()
    request()
    after = server.stats()
    return {name: after[name] - before[name] for name in COUNTERS if after[name] != before[name]}


@pytest.mark.parametrize(("timeout", "absolute_timeout", "ttl"), [("1000", "300", 300), ("100", "3000", 100)])
def test_the_servers_ttl_is_the_sooner_of_idle_and_absolute_expiry(
    memcached_server, timeout, absolute_timeout, ttl  # noqa: F811
):
    mw = middleware(memcached_server.address, timeout=timeout, absolute_timeout=absolute_timeout)
    app = webtest.TestApp(mw)
    app.get("/inc")
    key = core.store_key(app.get("/id").text)
    assert ttl - 5 < remaining_ttl(memcached_server, mkey(mw.store, key)) <= ttl + 2  # whole seconds, plus the margin
    mw.close()


def test_apps_with_different_key_prefixes_on_two_nodes_never_see_each_others_sessions(memcached_servers):  # noqa: F811
    url = ";".join(server.address for server in memcached_servers)
    one, two = middleware(url), middleware(url)  # each with a prefix of its own, one secret
    first, other = webtest.TestApp(one), webtest.TestApp(two)
    for _ in range(10):
        first.reset()
        assert [first.get("/inc").text for _ in range(2)] == ["1", "2"]
        other.reset()
        other.set_cookie("session", first.cookies["session"])  # the cookie verifies in both
        assert other.get("/read").text == "None"
        assert other.get("/inc").text == "1"  # a session of its own
        assert first.get("/read").text == "2"
    one.close()
    two.close()


def test_round_trips_per_request_counted_by_the_server(memcached_server):  # noqa: F811
    mw = middleware(memcached_server.address)
    app = webtest.TestApp(mw)
    assert commands_for(memcached_server, lambda: app.get("/inc")) == {"cmd_set": 1}  # new: one add
    assert commands_for(memcached_server, lambda: app.get("/untouched")) == {}
    assert commands_for(memcached_server, lambda: app.get("/read")) == {"cmd_get": 1}
    assert commands_for(memcached_server, lambda: app.get("/inc")) == {"cmd_get": 1, "cmd_set": 1, "cas_hits": 1}
    assert app.get("/read").text == "2"
    mw.close()


def test_a_touch_is_one_more_round_trip_counted_by_the_server(memcached_server):  # noqa: F811
    mw = middleware(memcached_server.address, touch_interval="0")  # every request slides the expiry
    app = webtest.TestApp(mw)
    app.get("/inc")
    assert commands_for(memcached_server, lambda: app.get("/read")) == {"cmd_get": 1, "cmd_touch": 1}
    assert commands_for(memcached_server, lambda: app.get("/untouched")) == {}
    mw.close()


def test_round_trips_per_request_counted_by_the_client(memcached_server):  # noqa: F811
    mw = middleware(memcached_server.address)
    sent: list[bytes] = []
    call = mw.store._call

    def counting(node, command):
        sent.append(command.split(b" ", 1)[0])
        return call(node, command)

    mw.store._call = counting
    app = webtest.TestApp(mw)
    for path, expected in [("/inc", [b"ms"]), ("/untouched", []), ("/read", [b"mg"]), ("/inc", [b"mg", b"ms"])]:
        sent.clear()
        app.get(path)
        assert sent == expected, path
    mw.close()


def test_counter_with_beaker_type_name_and_string_config(memcached_server):  # noqa: F811
    mw = SessionMiddleware(counter_app, {
        "session.type": "ext:memcached", "session.url": f"{memcached_server.address};",
        "session.secret": SECRET, "session.timeout": "600", "session.secure": "false",
        "session.key_prefix": prefix(), "session.socket_timeout": "1.5", "session.connect_timeout": "0.5",
    })
    assert isinstance(mw.store, MemcachedStore) and mw.store.socket_timeout == 1.5
    app = webtest.TestApp(mw)
    assert [app.get("/inc").text for _ in range(3)] == ["1", "2", "3"]
    assert app.get("/read").text == "3"
    mw.close()


def test_a_session_kept_alive_by_reads_outlives_its_timeout(memcached_server):  # noqa: F811
    # Only touches keep it: memcached would drop it at 6 s, and the session layer
    # would call it expired if last_access did not follow the touch.
    mw = middleware(memcached_server.address, timeout="6", touch_interval="3.5")
    app = webtest.TestApp(mw)
    assert app.get("/inc").text == "1"
    time.sleep(4)
    assert app.get("/read").text == "1"  # touches: expiry now 10 s after the start
    time.sleep(4)
    assert app.get("/read").text == "1"  # 8 s after the last write
    mw.close()


@pytest.mark.parametrize(
    ("timeout", "every", "reads"),
    [
        ("3", 1.0, 5),  # each touch moves expiry by about a second, within SLACK
        ("1", 0.5, 6),  # a touch sends a TTL of 1 s: without a margin memcached may drop it at its next tick
    ],
)
def test_a_session_read_more_often_than_a_short_timeout_stays_alive(memcached_server, timeout, every, reads):  # noqa: F811
    mw = middleware(memcached_server.address, timeout=timeout)
    app = webtest.TestApp(mw)
    assert app.get("/inc").text == "1"
    for _ in range(reads):
        time.sleep(every)
        assert app.get("/read").text == "1"
    mw.close()


def test_a_downed_node_fails_the_request_or_serves_anonymous_and_never_loses_the_session(two_nodes):
    a, _ = two_nodes
    shared = prefix()  # two middlewares, one for each policy, on the same records
    raising = middleware(a.address, key_prefix=shared)
    anonymous = middleware(a.address, key_prefix=shared, on_store_error="anonymous")
    app = webtest.TestApp(raising)
    assert app.get("/inc").text == "1"
    a.pause()
    with pytest.raises(StoreError):
        app.get("/read")
    fallback = webtest.TestApp(anonymous, cookiejar=app.cookiejar)
    served = fallback.get("/inc")
    assert served.text == "1" and "Set-Cookie" not in served.headers  # an unsaved anonymous session
    a.resume()
    time.sleep(0.4)
    assert app.get("/read").text == "1"  # the session was never treated as missing
    assert app.get("/inc").text == "2"
    raising.close()
    anonymous.close()



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel timeouts are used on Linux only")
def test_connections_time_out_in_the_kernel_not_with_pythons_poll(memcached_server):  # noqa: F811
    store = MemcachedStore(memcached_server.address, key_prefix="kt:", socket_timeout=0.4)
    try:
        store.create(b"k" * 32, b"data", time.time() + 60)
        (node,) = store._nodes.values()
        (client,) = node.pool._idle
        assert client.sock.gettimeout() is None
        assert receive_timeout(client.sock) == pytest.approx(0.4)
    finally:
        store.close()


# ---------------------------------------------------------------- the meta reply reader


@pytest.mark.parametrize(
    ("reply", "line", "value"),
    [
        (b"VA 5 c12 t-1\r\nhello\r\n", b"VA 5 c12 t-1", b"hello"),
        (b"VA 0\r\n\r\n", b"VA 0", b""),
        (b"VA 4 c1\r\na\r\nb\r\n", b"VA 4 c1", b"a\r\nb"),  # a value may hold CRLF
        (b"EN\r\n", b"EN", None),
        (b"HD c7\r\n", b"HD c7", None),
        (b"NS\r\n", b"NS", None),
        (b"SERVER_ERROR out of memory\r\n", b"SERVER_ERROR out of memory", None),
    ],
)
def test_meta_reply_is_read_however_the_bytes_arrive(reply, line, value):
    for pieces in every_split(reply):
        sock = ChunkedSocket(pieces)
        assert read_meta_reply(sock) == (line, value)
        assert sock.pieces == []  # read to its end, and no further


def test_meta_reply_with_a_value_longer_than_the_first_read():
    value = bytes(range(256)) * 200  # 51,200 bytes
    reply = b"VA %d c3 t60\r\n%b\r\n" % (len(value), value)
    for pieces in ([reply], [reply[:7], reply[7:30000], reply[30000:]], [reply[:-1], reply[-1:]]):
        assert read_meta_reply(ChunkedSocket(pieces)) == (b"VA %d c3 t60" % len(value), value)


@pytest.mark.parametrize(
    "reply",
    [
        b"VA 5\r\nhello\r\nEN\r\n",  # bytes beyond the reply: the stream is out of step
        b"EN\r\nHD\r\n",
        b"VA 5\r\nhelloXY",  # no CRLF after the value
        b"VA x\r\nhello\r\n",  # not a length
        b"VA -1\r\n",
    ],
)
def test_a_malformed_meta_reply_is_refused(reply):
    with pytest.raises(MemcacheUnknownError):
        read_meta_reply(ChunkedSocket([reply]))


@pytest.mark.parametrize("pieces", [[], [b"VA 5\r\nhel"], [b"VA 5"]])
def test_the_end_of_the_stream_within_a_meta_reply_is_an_unexpected_close(pieces):
    with pytest.raises(MemcacheUnexpectedCloseError):
        read_meta_reply(ChunkedSocket(pieces))
