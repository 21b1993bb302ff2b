"""RedisStore specifics beyond the contract: real TTLs, round trips, URLs, Sentinel, Cluster rotation,
failures and the circuit breaker, and SessionMiddleware end to end on real servers."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import redis
import webtest

import server_redis
from chunked_socket import ChunkedSocket, every_split
from fastsess import SessionMiddleware, StoreError, core
from fastsess.config import load_config
from fastsess.errors import ConfigError, CorruptRecord
from fastsess.stores import open_store
from fastsess.stores import redis as redis_store
from fastsess.stores.base import CONFLICT, EXISTS, GONE, TOMBSTONE, StoredRecord
from fastsess.stores.breaker import CircuitBreaker
from fastsess.stores.redis import RedisStore
from test_store_contract import T0, TTL, FakeClock, join_or_kill, skey
from test_store_timeouts import receive_timeout

pytestmark = pytest.mark.servers

SECRET = "redis-store-test-secret-" + "s" * 16
HTTPS = {"wsgi.url_scheme": "https", "HTTP_HOST": "example.com"}
#: pytest-timeout's limit for a failure test: a server that made the store hang fails the test
#: outright. The tests themselves check what failed and why, never how long it took.
HANG_LIMIT = pytest.mark.timeout(60)

_serial = itertools.count()


def prefix() -> str:
    return f"t{os.getpid()}-{next(_serial)}:"


@pytest.fixture(scope="session")
def server() -> server_redis.RedisServer:
    return server_redis.shared_server()


@pytest.fixture(scope="session")
def cluster() -> server_redis.RedisCluster:
    return server_redis.shared_cluster()


@pytest.fixture(scope="session")
def sentinel() -> server_redis.RedisSentinel:
    return server_redis.shared_sentinel()


@pytest.fixture
def own_server(tmp_path):
    """A server this test may stop, pause and restart."""
    made = server_redis.RedisServer(tmp_path / "redis").start()
    yield made
    if made.process is not None and made.process.poll() is None:
        os.kill(made.process.pid, signal.SIGCONT)
    made.stop()


@pytest.fixture
def store(server):
    made = RedisStore(url=server.url, key_prefix=prefix())
    yield made
    made.close()


@pytest.fixture
def cluster_store(cluster):
    made = RedisStore(urls=cluster.urls, key_prefix=prefix())
    yield made
    made.close()


class CommandLog:
    """Counts the commands a store sends, through its client or its direct connections: one per round trip."""

    def __init__(self, store: RedisStore) -> None:
        self.names: list[str] = []
        client = store._connection()
        send, get, call = client.execute_command, store._reader(), store._commands()

        def counting(*args, **options):
            self.names.append(str(args[0]).upper())
            return send(*args, **options)

        def counting_get(rkey):
            self.names.append("GET")
            return get(rkey)

        def counting_call(*args):
            self.names.append(str(args[0]).upper())
            return call(*args)

        client.execute_command = counting
        if store._direct is not None:  # a single server (Sentinel and clusters send through the client)
            store._get, store._call = counting_get, counting_call
        else:
            store._call = counting  # the store keeps the client's bound execute_command

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


def command_calls(server: server_redis.RedisServer) -> dict[str, int]:
    stats = server.info("commandstats")
    return {name[len("cmdstat_"):]: int(value.split(",")[0].split("=")[1]) for name, value in stats.items()}


#: commands a client sends; the server also counts the commands scripts run inside (getrange, set, ...)
CLIENT_COMMANDS = ("get", "evalsha", "eval", "del")


def round_trips(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    deltas = {name: after.get(name, 0) - before.get(name, 0) for name in CLIENT_COMMANDS}
    return {name: delta for name, delta in deltas.items() if delta}


# ---------------------------------------------------------------- layout and keys


def test_records_live_under_prefix_plus_hex_store_key(store, server):
    version = store.create(skey("a"), b"data", time.time() + 60)
    raw = redis.Redis(port=server.port).get(store.key_prefix + skey("a").hex())
    assert raw[:4] == b"FS1R" and raw.endswith(b"data")
    assert struct.unpack_from("<Q", raw, 4)[0] == version


def test_damaged_record_raises_on_load_and_counts_as_missing_to_writes(store, server):
    version = store.create(skey("a"), b"data", time.time() + 60)
    raw = redis.Redis(port=server.port)
    for garbage in (b"garbage", b"FS1R", b"FS1X" + bytes(24)):  # not a record; cut short; unknown kind
        raw.set(store._key(skey("a")), garbage)
        with pytest.raises(CorruptRecord):
            store.load(skey("a"))
        store.touch(skey("a"), time.time() + 60)
        assert raw.get(store._key(skey("a"))) == garbage
        assert store.cas(skey("a"), b"x", version, time.time() + 60) is GONE
        assert store.rotate(skey("a"), skey("b"), b"x", time.time() + 60, 60) is GONE
        assert store.load(skey("b")) is None
    raw.delete(store._key(skey("a")))
    raw.hset(store._key(skey("a")), "field", "a hash, not a string")  # GET and GETRANGE say WRONGTYPE
    with pytest.raises(CorruptRecord):
        store.load(skey("a"))
    store.touch(skey("a"), time.time() + 60)
    assert store.cas(skey("a"), b"x", version, time.time() + 60) is GONE
    assert isinstance(store.create(skey("a"), b"fresh", time.time() + 60), int)
    assert store.load(skey("a")).blob == b"fresh"


# ---------------------------------------------------------------- real TTLs


def test_redis_removes_a_record_at_its_expiry(store, server):
    store.create(skey("a"), b"data", time.time() + 0.3)
    raw = redis.Redis(port=server.port)
    assert 0 < raw.pttl(store._key(skey("a"))) <= 300
    assert store.load(skey("a")).blob == b"data"
    time.sleep(0.4)
    assert raw.exists(store._key(skey("a"))) == 0  # Redis dropped it, not just the client's clock check
    assert store.load(skey("a")) is None
    assert store.cas(skey("a"), b"x", 1, time.time() + 60) is GONE
    assert isinstance(store.create(skey("a"), b"new", time.time() + 60), int)


def test_touch_extends_the_ttl_keeping_data_and_version(store, server):
    version = store.create(skey("a"), b"data", time.time() + 0.3)
    time.sleep(0.2)
    now = time.time()
    store.touch(skey("a"), now + 0.6)
    time.sleep(0.25)  # past the first expiry
    record = store.load(skey("a"))
    assert (record.blob, record.version) == (b"data", version)
    assert record.expires_at == pytest.approx(now + 0.6, abs=0.01)
    assert record.last_access == pytest.approx(now, abs=0.01)
    assert 0 < redis.Redis(port=server.port).pttl(store._key(skey("a"))) <= 600


def test_touch_rewrites_header_bytes_only_never_the_data(store, server):
    store.create(skey("a"), b"x" * 4000, time.time() + 60)
    before = command_calls(server)
    store.touch(skey("a"), time.time() + 120)
    after = command_calls(server)
    assert after.get("set", 0) == before.get("set", 0)
    assert after["setrange"] - before.get("setrange", 0) == 1
    assert after["pexpire"] - before.get("pexpire", 0) == 1


def test_touch_on_a_tombstone_or_missing_key_writes_nothing(store, server):
    store.create(skey("old"), b"data", time.time() + 60)
    store.rotate(skey("old"), skey("new"), b"data", time.time() + 60, 0.3)
    store.touch(skey("old"), time.time() + 60)
    store.touch(skey("never"), time.time() + 60)
    raw = redis.Redis(port=server.port)
    assert raw.exists(store._key(skey("never"))) == 0
    assert raw.pttl(store._key(skey("old"))) <= 300


def test_tombstone_expires_after_tombstone_seconds(store):
    store.create(skey("old"), b"data", time.time() + 60)
    store.rotate(skey("old"), skey("new"), b"moved", time.time() + 60, 0.3)
    assert store.load(skey("old")) is TOMBSTONE
    time.sleep(0.4)
    assert store.load(skey("old")) is None
    assert store.load(skey("new")).blob == b"moved"


def test_ttl_follows_the_stores_clock_not_the_servers(server):
    # expires_at comes from the application's clock: Redis gets the difference, so
    # an application clock far from the server's still gives the intended TTL.
    clock = FakeClock(T0)
    made = RedisStore(url=server.url, key_prefix=prefix(), clock=clock)
    made.create(skey("a"), b"data", T0 + TTL)
    assert TTL * 1000 - 1000 < redis.Redis(port=server.port).pttl(made._key(skey("a"))) <= TTL * 1000
    record = made.load(skey("a"))
    assert (record.expires_at, record.last_access) == (T0 + TTL, T0)
    made.close()


def test_cleanup_has_nothing_to_do(store):
    assert store.cleanup(time.time() + 10**6, 100) == 0


# ---------------------------------------------------------------- round trips


def test_every_operation_is_one_round_trip(store):
    expires = time.time() + 60
    store.touch(skey("warm"), expires)  # first use connects; scripts may need loading
    store.create(skey("warm"), b"x", expires)
    store.cas(skey("warm"), b"x", 0, expires)
    store.rotate(skey("warm"), skey("warm2"), b"x", expires, 60, 0)
    log = CommandLog(store)
    v1 = store.create(skey("a"), b"one", expires)
    assert log.take() == ["EVALSHA"]
    assert store.create(skey("a"), b"again", expires) is EXISTS
    assert log.take() == ["EVALSHA"]
    assert isinstance(store.load(skey("a")), StoredRecord)
    assert log.take() == ["GET"]
    v2 = store.cas(skey("a"), b"two", v1, expires)
    assert log.take() == ["EVALSHA"]
    assert store.cas(skey("a"), b"lost", v1, expires) is CONFLICT
    assert log.take() == ["EVALSHA"]
    store.touch(skey("a"), expires + 60)
    assert log.take() == ["EVALSHA"]
    assert isinstance(store.rotate(skey("a"), skey("b"), b"moved", expires, 60, v2), int)
    assert log.take() == ["EVALSHA"]
    store.delete(skey("b"))
    assert log.take() == ["DEL"]


def test_round_trips_seen_by_the_server(store, server):
    expires = time.time() + 60
    v1 = store.create(skey("warm"), b"x", expires)
    store.rotate(skey("warm"), skey("warm2"), b"x", expires, 60, v1)
    store.touch(skey("warm2"), expires)
    versions = {}

    def create():
        versions["a"] = store.create(skey("a"), b"one", expires)

    def cas():
        versions["a"] = store.cas(skey("a"), b"two", versions["a"], expires)
        assert isinstance(versions["a"], int)

    steps = [
        (create, {"evalsha": 1}),
        (lambda: store.load(skey("a")), {"get": 1}),
        (cas, {"evalsha": 1}),
        (lambda: store.touch(skey("a"), expires + 60), {"evalsha": 1}),
        (lambda: store.rotate(skey("a"), skey("b"), b"moved", expires, 60, versions["a"]), {"evalsha": 1}),
        (lambda: store.delete(skey("b")), {"del": 1}),
    ]
    for step, expected in steps:
        before = command_calls(server)
        step()
        assert round_trips(before, command_calls(server)) == expected


def test_a_script_the_server_lost_is_sent_again_with_eval(store, server):
    expires = time.time() + 60
    version = store.create(skey("a"), b"one", expires)
    redis.Redis(port=server.port).script_flush()
    log = CommandLog(store)
    version = store.cas(skey("a"), b"two", version, expires)
    assert isinstance(version, int)
    assert log.take() == ["EVALSHA", "EVAL"]  # NOSCRIPT, then the script itself (which caches it)
    assert isinstance(store.cas(skey("a"), b"three", version, expires), int)
    assert log.take() == ["EVALSHA"]
    assert store.load(skey("a")).blob == b"three"


# ---------------------------------------------------------------- URLs, Sentinel, config


def test_unix_socket_url(server):
    made = RedisStore(url=f"unix://{server.socket_path}?db=0", key_prefix=prefix())
    version = made.create(skey("a"), b"over a unix socket", time.time() + 60)
    assert made.load(skey("a")).version == version
    made.close()


def test_url_without_a_scheme_means_redis(server):
    made = RedisStore(url=server.address, key_prefix=prefix())
    made.create(skey("a"), b"data", time.time() + 60)
    assert made.load(skey("a")).blob == b"data"
    made.close()


def test_password_in_the_url(tmp_path):
    secured = server_redis.RedisServer(tmp_path / "auth", ("--requirepass", "s3cret")).start()
    try:
        anonymous = RedisStore(url=f"redis://127.0.0.1:{secured.port}/0", key_prefix=prefix())
        with pytest.raises(StoreError, match="(?i)auth"):
            anonymous.load(skey("a"))
        made = RedisStore(url=f"redis://:s3cret@127.0.0.1:{secured.port}/0", key_prefix=prefix())
        made.create(skey("a"), b"data", time.time() + 60)
        assert made.load(skey("a")).blob == b"data"
        made.close()
        anonymous.close()
    finally:
        secured.stop()


def _tls_files(directory) -> tuple:
    """A throwaway CA and a server certificate for 127.0.0.1, as PEM files: (ca, cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, ca: bool, san=None):
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastsess test CA")])
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    ca_cert = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server_cert = certificate(server_name, ca_name, server_key.public_key(), ca_key, False, san)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return paths


def test_rediss_url_talks_tls_and_checks_the_servers_certificate(tmp_path):
    pytest.importorskip("cryptography")
    from loopback import free_port

    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    ca, cert, key = _tls_files(tls_dir)
    tls_port = free_port()
    try:
        secured = server_redis.RedisServer(tmp_path / "redis-tls", (
            "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
        )).start()
    except RuntimeError as exc:
        if "tls" not in str(exc).lower():
            raise
        pytest.skip(f"this redis-server was built without TLS: {exc}")
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
        mw = middleware(type="redis", url=url, socket_timeout="2", connect_timeout="2")
        app = webtest.TestApp(mw, extra_environ=HTTPS)
        assert [app.get("/inc").text for _ in range(2)] == ["1", "2"]
        mw.close()
        # Plain Redis on the TLS port fails, and so does TLS that does not trust this CA.
        for wrong in (f"redis://127.0.0.1:{tls_port}/0", f"rediss://127.0.0.1:{tls_port}/0"):
            store = RedisStore(url=wrong, key_prefix=prefix(), socket_timeout=2, connect_timeout=2)
            with pytest.raises(StoreError):
                store.load(skey("a"))
            store.close()
    finally:
        secured.stop()


def test_rediss_cluster_urls_carry_their_tls_options(tmp_path):
    """`urls = rediss://h:p?ssl_ca_certs=...`: a cluster behind a private CA, as a single server's URL allows."""
    pytest.importorskip("cryptography")
    from loopback import free_port

    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    ca, cert, key = _tls_files(tls_dir)
    nodes, tls_ports = [], []
    try:
        for i in range(3):
            tls_ports.append(free_port())
            nodes.append(server_redis.RedisServer(tmp_path / f"node{i}", (
                "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / f"node{i}" / "nodes.conf"),
                "--cluster-port", str(free_port()), "--cluster-node-timeout", "2000",
                "--tls-port", str(tls_ports[-1]), "--tls-cluster", "yes", "--tls-cert-file", str(cert),
                "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
            )).start())
    except RuntimeError as exc:
        for node in nodes:
            node.stop()
        if "tls" not in str(exc).lower():
            raise
        pytest.skip(f"this redis-server was built without TLS: {exc}")
    try:
        subprocess.run(
            [server_redis.require_binary("redis-cli"), "--tls", "--cacert", str(ca), "--cluster", "create",
             *[f"127.0.0.1:{port}" for port in tls_ports], "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        deadline = time.monotonic() + 20
        while not all(b"cluster_state:ok" in server_redis.command(n.port, "CLUSTER", "INFO") for n in nodes):
            assert time.monotonic() < deadline, "the TLS cluster did not reach cluster_state:ok"
            time.sleep(0.05)
        urls = "\n".join(f"rediss://127.0.0.1:{port}?ssl_ca_certs={ca}&ssl_cert_reqs=required" for port in tls_ports)
        mw = middleware(type="ext:rediscluster", urls=urls, socket_timeout="2", connect_timeout="2")
        app = webtest.TestApp(mw, extra_environ=HTTPS)
        assert [app.get("/inc").text for _ in range(3)] == ["1", "2", "3"]
        mw.close()
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379", "redis+sentinel://127.0.0.1:26379", "redis+sentinel:///x/0",
    "redis://127.0.0.1:6379/abc", "rediss://127.0.0.1:6379/1x", "redis://127.0.0.1:6379/-1",
    "redis://127.0.0.1:6379?db=x",
])
def test_bad_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        RedisStore(url=url)


def test_no_url_is_a_config_error():
    with pytest.raises(ConfigError):
        RedisStore()


def test_sentinel_url_reaches_the_master(sentinel):
    made = RedisStore(url=sentinel.url, key_prefix=prefix())
    v1 = made.create(skey("a"), b"one", time.time() + 60)
    v2 = made.cas(skey("a"), b"two", v1, time.time() + 60)
    assert isinstance(made.rotate(skey("a"), skey("b"), b"moved", time.time() + 60, 60, v2), int)
    assert made.load(skey("a")) is TOMBSTONE
    raw = redis.Redis(port=sentinel.master.port).get(made._key(skey("b")))
    assert raw.endswith(b"moved")
    made.close()


def test_sentinel_url_with_an_unknown_service_is_a_store_error(sentinel):
    made = RedisStore(url=f"redis+sentinel://127.0.0.1:{sentinel.sentinel.port}/nosuchservice/0")
    with pytest.raises(StoreError, match="nosuchservice"):
        made.load(skey("a"))
    made.close()


def test_open_store_builds_a_cluster_store_from_urls(cluster):
    config = load_config({
        "session.type": "ext:rediscluster", "session.urls": ",".join(cluster.urls), "session.secret": SECRET,
        "session.key_prefix": prefix(),
    })
    made = open_store(config)
    assert isinstance(made, RedisStore) and made._mode == "cluster"
    made.create(skey("a"), b"data", time.time() + 60)
    assert made.load(skey("a")).blob == b"data"
    made.close()


def test_used_after_close_is_a_store_error(server):
    made = RedisStore(url=server.url, key_prefix=prefix())
    made.load(skey("a"))
    made.close()
    with pytest.raises(StoreError, match="after close"):
        made.load(skey("a"))


def _report_client_id(store: RedisStore, queue) -> None:
    queue.put(store._connection().client_id())
    store.load(skey("a"))


def test_a_forked_child_opens_its_own_connection(store):
    store.create(skey("a"), b"data", time.time() + 60)
    parent_id = store._connection().client_id()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_report_client_id, args=(store, queue))
    child.start()
    child_id = queue.get(timeout=10)
    join_or_kill(child)
    assert child.exitcode == 0
    assert child_id != parent_id
    assert store._connection().client_id() == parent_id  # the parent's pooled connection, untouched
    assert store.load(skey("a")).blob == b"data"


# ---------------------------------------------------------------- the GET reader


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$0\r\n\r\n", b""),
        (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # a value may hold CRLF
        (b"$-1\r\n", None),  # RESP2's null
        (b"_\r\n", None),  # RESP3's null
    ],
)
def test_reader_parses_a_get_reply_however_the_bytes_arrive(reply, value):
    for pieces in every_split(reply):
        sock = ChunkedSocket(pieces)
        assert redis_store.read_reply(sock) == value
        assert sock.pieces == []  # read to its end, and no further


def test_reader_reads_a_value_longer_than_its_first_read_into_one_buffer():
    value = bytes(range(256)) * 300  # 76,800 bytes
    reply = b"$%d\r\n%b\r\n" % (len(value), value)
    for pieces in ([reply], [reply[:10], reply[10:40000], reply[40000:]], [reply[:-1], reply[-1:]]):
        assert redis_store.read_reply(ChunkedSocket(pieces)) == value


def test_reader_raises_an_error_reply_after_reading_all_of_it():
    for pieces in every_split(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"):
        sock = ChunkedSocket(pieces)
        with pytest.raises(redis.exceptions.ResponseError, match="^WRONGTYPE"):
            redis_store.read_reply(sock)
        assert sock.pieces == []


@pytest.mark.parametrize(
    "reply",
    [
        b"$5\r\nhello\r\n+OK\r\n",  # bytes beyond the reply: the stream is out of step
        b"$5\r\nhelloXY",  # no CRLF after the value
        b"$x\r\nhello\r\n",  # not a length
        b"$-2\r\n",
        b"$-1\r\nextra",
        b"_\r\n_\r\n",
    ],
)
def test_reader_refuses_a_malformed_reply(reply):
    with pytest.raises(redis.exceptions.InvalidResponse):
        redis_store.read_reply(ChunkedSocket([reply]))


def test_reader_answers_other_for_a_reply_of_another_kind():
    assert redis_store.read_reply(ChunkedSocket([b">2\r\n"])) is redis_store._OTHER  # a RESP3 push
    assert redis_store.read_reply(ChunkedSocket([b"+OK\r\n"])) is redis_store._OTHER


@pytest.mark.parametrize("pieces", [[], [b"$5\r\nhel"], [b"$5"]])
def test_reader_reports_the_end_of_the_stream_as_closed_by_the_server(pieces):
    with pytest.raises(redis_store._ClosedByServer):
        redis_store.read_reply(ChunkedSocket(pieces))


class FakeConnection:
    """Stands in for a redis-py connection: connect() gives it a ChunkedSocket with its reply."""

    made: list[FakeConnection] = []
    replies: list[list[bytes]] = []

    def __init__(self, **options) -> None:
        self._sock = None
        self.disconnected = False
        FakeConnection.made.append(self)

    def connect(self) -> None:
        self._sock = ChunkedSocket(FakeConnection.replies.pop(0))

    def disconnect(self) -> None:
        self.disconnected = True


class FakeClient:
    def __init__(self) -> None:
        self.connection_pool = type("Pool", (), {"connection_class": FakeConnection, "connection_kwargs": {}})
        self.asked: list[bytes] = []

    def get(self, rkey: bytes) -> bytes:
        self.asked.append(rkey)
        return b"from the client"


@pytest.fixture
def direct():
    FakeConnection.made, FakeConnection.replies = [], []
    client = FakeClient()
    return redis_store._Direct(client, 1.0), client


def test_direct_get_sends_one_get_and_keeps_the_connection_for_the_next(direct):
    wire, client = direct
    FakeConnection.replies.append([b"$3\r\none\r\n"])
    assert wire.get(b"fastsess:ab") == b"one"
    (connection,) = FakeConnection.made
    assert connection._sock.sent == b"*2\r\n$3\r\nGET\r\n$11\r\nfastsess:ab\r\n"
    connection._sock.pieces = [b"$-1\r\n"]
    assert wire.get(b"fastsess:cd") is None
    assert len(FakeConnection.made) == 1 and not connection.disconnected


def test_direct_get_asks_the_client_and_drops_the_connection_on_a_push(direct):
    wire, client = direct
    FakeConnection.replies.append([b">3\r\n"])
    assert wire.get(b"k") == b"from the client"
    assert client.asked == [b"k"] and FakeConnection.made[0].disconnected
    FakeConnection.replies.append([b"$1\r\nx\r\n"])
    assert wire.get(b"k") == b"x"  # a new connection: the dropped one is not reused
    assert len(FakeConnection.made) == 2


def test_direct_keeps_a_connection_after_an_error_reply_and_drops_one_out_of_step(direct):
    wire, client = direct
    FakeConnection.replies.append([b"-WRONGTYPE not a string\r\n"])
    with pytest.raises(redis.exceptions.ResponseError):
        wire.get(b"k")
    (connection,) = FakeConnection.made
    assert not connection.disconnected
    connection._sock.pieces = [b"$1\r\nx\r\n+OK\r\n"]
    with pytest.raises(redis.exceptions.InvalidResponse):
        wire.get(b"k")
    assert connection.disconnected
    FakeConnection.replies.append([b"$1\r\ny\r\n"])
    assert wire.get(b"k") == b"y" and len(FakeConnection.made) == 2


def test_direct_get_is_sent_once_more_on_a_new_connection_when_an_idle_one_was_closed(direct):
    wire, client = direct
    FakeConnection.replies.append([b"$1\r\nx\r\n"])
    assert wire.get(b"k") == b"x"
    FakeConnection.made[0]._sock.pieces = []  # the server closed it while it idled
    FakeConnection.replies.append([b"$1\r\ny\r\n"])
    assert wire.get(b"k") == b"y"
    assert [c.disconnected for c in FakeConnection.made] == [True, False]


def test_direct_get_is_never_sent_twice_after_a_timeout(direct):
    wire, client = direct
    FakeConnection.replies.append([b"$1\r\nx\r\n"])
    assert wire.get(b"k") == b"x"
    connection = FakeConnection.made[0]

    def times_out(size):
        raise TimeoutError("timed out")

    connection._sock.recv = times_out
    with pytest.raises(TimeoutError):
        wire.get(b"k")
    assert len(FakeConnection.made) == 1 and connection.disconnected


def test_direct_command_packs_its_arguments_and_reads_an_integer(direct, monkeypatch):
    wire, client = direct
    monkeypatch.setattr(redis_store, "_idle_and_clean", lambda sock: True)
    FakeConnection.replies.append([b":2\r\n"])
    assert wire.call("EVALSHA", "abc", 1, b"k\x00", 1500) == 2
    (connection,) = FakeConnection.made
    assert connection._sock.sent == (
        b"*5\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$2\r\nk\x00\r\n$4\r\n1500\r\n"
    )
    connection._sock.pieces = [b"-NOSCRIPT No matching script. Please use EVAL.\r\n"]
    with pytest.raises(redis.exceptions.NoScriptError):
        wire.call("EVALSHA", "abc", 0)
    assert not connection.disconnected  # an error reply leaves the connection in step


def test_direct_command_is_never_sent_twice(direct, monkeypatch):
    wire, client = direct
    monkeypatch.setattr(redis_store, "_idle_and_clean", lambda sock: True)
    FakeConnection.replies.append([b":1\r\n"])
    assert wire.call("DEL", b"k") == 1
    FakeConnection.made[0]._sock.pieces = []  # closed after the check: the outcome is unknown
    with pytest.raises(redis_store._ClosedByServer):
        wire.call("DEL", b"k")
    assert len(FakeConnection.made) == 1 and FakeConnection.made[0].disconnected


def test_direct_command_replaces_an_idle_connection_that_is_not_clean(direct, monkeypatch):
    wire, client = direct
    monkeypatch.setattr(redis_store, "_idle_and_clean", lambda sock: False)
    FakeConnection.replies.append([b":1\r\n"])
    assert wire.call("DEL", b"k") == 1
    FakeConnection.replies.append([b":0\r\n"])
    assert wire.call("DEL", b"k") == 0
    first, second = FakeConnection.made
    assert first.disconnected and not second.disconnected
    assert first._sock.sent.count(b"DEL") == 1  # the command went only on the new connection


def test_direct_command_fails_on_a_push_and_drops_the_connection(direct, monkeypatch):
    wire, client = direct
    FakeConnection.replies.append([b">2\r\n"])
    with pytest.raises(redis.exceptions.InvalidResponse):
        wire.call("DEL", b"k")
    assert FakeConnection.made[0].disconnected and client.asked == []


def test_an_idle_connection_is_clean_until_something_arrives():
    ours, theirs = socket.socketpair()
    try:
        assert redis_store._idle_and_clean(ours)
        theirs.sendall(b"+stray\r\n")
        assert not redis_store._idle_and_clean(ours)
        ours.recv(100)
        assert redis_store._idle_and_clean(ours)
        theirs.close()  # the end of the stream
        assert not redis_store._idle_and_clean(ours)
    finally:
        ours.close()
        theirs.close()


def test_single_server_commands_reuse_one_direct_connection(store, server):
    store.create(skey("a"), b"data", time.time() + 60)
    store.load(skey("a"))
    clients = server.info("clients")["connected_clients"]
    version = store.create(skey("b"), b"data", time.time() + 60)
    for _ in range(30):
        assert store.load(skey("a")).blob == b"data"
        version = store.cas(skey("b"), b"more", version, time.time() + 60)
        store.touch(skey("b"), time.time() + 90)
    store.delete(skey("b"))
    assert server.info("clients")["connected_clients"] == clients
    assert len(store._direct._idle) == 1


def test_sentinel_and_cluster_stores_send_through_the_client(sentinel, cluster_store):
    made = open_store(load_config({"session.type": "ext:redis", "session.url": sentinel.url, "session.secret": SECRET}))
    try:
        made.load(skey("a"))
        assert made._direct is None
    finally:
        made.close()
    cluster_store.load(skey("a"))
    assert cluster_store._direct is None


@HANG_LIMIT
def test_a_restart_between_commands_costs_no_error_and_a_hang_no_second_send(own_server):
    made = fast_failing_store(own_server, threshold=1)
    version = made.create(skey("a"), b"data", time.time() + 60)
    assert made.load(skey("a")).blob == b"data"  # the store now holds an idle direct connection
    own_server.restart()
    assert made.load(skey("a")) is None  # sent again on a new connection: no StoreError
    own_server.restart()
    assert made.cas(skey("a"), b"x", version, time.time() + 60) is GONE  # the closed one was replaced first
    assert not made._failing  # nothing counted against the breaker
    made.create(skey("a"), b"data", time.time() + 60)
    os.kill(own_server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreError, match="Timeout"):
            made.load(skey("a"))
        with pytest.raises(StoreError, match="not retrying"):  # one timeout opened the breaker
            made.load(skey("a"))
    finally:
        os.kill(own_server.process.pid, signal.SIGCONT)
    made.close()


def _load_in_child(store: RedisStore, queue) -> None:
    queue.put((store.load(skey("a")).blob, id(store._direct)))


def test_a_forked_child_sends_over_its_own_connections_and_leaves_the_parents_alone(store, server):
    store.create(skey("a"), b"data", time.time() + 60)
    assert store.load(skey("a")).blob == b"data"
    parent_direct = store._direct
    (parent_connection,) = parent_direct._idle
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_load_in_child, args=(store, queue))
    child.start()
    blob, child_direct = queue.get(timeout=10)
    join_or_kill(child)
    assert child.exitcode == 0 and blob == b"data"
    assert child_direct != id(parent_direct)
    assert store.load(skey("a")).blob == b"data"  # the parent's connection still works
    assert list(parent_direct._idle) == [parent_connection]


# ---------------------------------------------------------------- cluster rotation


def test_cluster_keys_of_a_rotation_are_in_different_slots(cluster_store):
    client = cluster_store._connection()
    assert client.keyslot(cluster_store._key(skey("old"))) != client.keyslot(cluster_store._key(skey("new")))
    assert not cluster_store._atomic_rotate


def test_cluster_rotation_writes_new_then_tombstones_old(cluster_store):
    expires = time.time() + 60
    version = cluster_store.create(skey("old"), b"data", expires)
    log = CommandLog(cluster_store)
    new_version = cluster_store.rotate(skey("old"), skey("new"), b"moved", expires, 60, version)
    assert isinstance(new_version, int)
    assert log.take() in (["SET", "EVALSHA"], ["SET", "EVALSHA", "EVAL"])  # two round trips
    assert cluster_store.load(skey("old")) is TOMBSTONE
    record = cluster_store.load(skey("new"))
    assert (record.blob, record.version) == (b"moved", new_version)


def test_cluster_rotation_that_loses_the_race_deletes_the_new_key(cluster_store):
    expires = time.time() + 60
    v1 = cluster_store.create(skey("old"), b"one", expires)
    v2 = cluster_store.cas(skey("old"), b"two", v1, expires)
    assert cluster_store.rotate(skey("old"), skey("new"), b"stale", expires, 60, v1) is CONFLICT
    assert cluster_store.load(skey("new")) is None
    assert cluster_store.load(skey("old")).version == v2
    cluster_store.delete(skey("old"))
    assert cluster_store.rotate(skey("old"), skey("new"), b"stale", expires, 60, v2) is GONE
    assert cluster_store.load(skey("new")) is None


def test_cluster_rotation_onto_a_taken_key_changes_nothing(cluster_store):
    expires = time.time() + 60
    cluster_store.create(skey("old"), b"one", expires)
    cluster_store.create(skey("new"), b"taken", expires)
    log = CommandLog(cluster_store)
    assert cluster_store.rotate(skey("old"), skey("new"), b"x", expires, 60) is CONFLICT
    assert log.take() == ["SET"]
    assert cluster_store.load(skey("old")).blob == b"one"
    assert cluster_store.load(skey("new")).blob == b"taken"


@pytest.mark.parametrize("applied", [False, True], ids=["tombstone-not-written", "reply-lost"])
def test_cluster_rotation_failing_midway_never_revives_the_old_id(cluster_store, applied):
    expires = time.time() + 60
    version = cluster_store.create(skey("old"), b"data", expires)
    client = cluster_store._connection()
    send = client.execute_command

    def second_step_fails(*args, **options):
        if args[0] in ("EVALSHA", "EVAL"):
            if applied:
                send(*args, **options)
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return send(*args, **options)

    client.execute_command = second_step_fails
    with pytest.raises(StoreError, match="rotate"):
        cluster_store.rotate(skey("old"), skey("new"), b"moved", expires, 60, version)
    client.execute_command = send
    assert cluster_store.load(skey("new")) is None  # the new key went again
    old = cluster_store.load(skey("old"))
    if applied:
        assert old is TOMBSTONE  # the session is lost; the old id stays dead
    else:
        assert old.version == version  # nothing happened


def test_hash_tagged_prefix_rotates_atomically_in_a_cluster(cluster):
    made = RedisStore(urls=cluster.urls, key_prefix="{" + prefix() + "}")
    assert made._atomic_rotate
    version = made.create(skey("old"), b"data", time.time() + 60)
    made.rotate(skey("old"), skey("warm"), b"x", time.time() + 60, 60, 0)  # loads the script
    log = CommandLog(made)
    assert isinstance(made.rotate(skey("old"), skey("new"), b"moved", time.time() + 60, 60, version), int)
    assert log.take() == ["EVALSHA"]
    assert made.load(skey("old")) is TOMBSTONE
    made.close()


# ---------------------------------------------------------------- failures


def fast_failing_store(server: server_redis.RedisServer, threshold: int = 3) -> RedisStore:
    return RedisStore(
        url=server.url, key_prefix=prefix(), connect_timeout=0.3, socket_timeout=0.3,
        breaker=CircuitBreaker(threshold=threshold, cooldown=0.5),
    )


@HANG_LIMIT
def test_stopped_server_gives_store_errors_then_the_breaker_fails_fast_then_service_resumes(own_server):
    made = fast_failing_store(own_server)
    version = made.create(skey("a"), b"data", time.time() + 60)
    own_server.stop()
    key_hex = skey("a").hex()
    operations = [
        lambda: made.load(skey("a")),
        lambda: made.cas(skey("a"), b"x", version, time.time() + 60),
        lambda: made.touch(skey("a"), time.time() + 60),
    ]
    for operation in operations:
        with pytest.raises(StoreError) as caught:
            operation()
        assert key_hex not in str(caught.value) and made.key_prefix not in str(caught.value)
    with pytest.raises(StoreError, match="not retrying"):  # open: no connection attempted
        made.load(skey("a"))
    own_server.start()  # same port, empty: the server keeps nothing
    time.sleep(0.6)
    assert made.load(skey("a")) is None
    assert isinstance(made.create(skey("a"), b"back", time.time() + 60), int)
    assert made.load(skey("a")).blob == b"back"
    made.close()


@HANG_LIMIT
def test_a_hung_server_costs_at_most_the_socket_timeout(own_server):
    made = fast_failing_store(own_server)
    made.create(skey("a"), b"data", time.time() + 60)
    os.kill(own_server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreError, match="Timeout"):  # the socket timeout ended the wait
            made.load(skey("a"))
    finally:
        os.kill(own_server.process.pid, signal.SIGCONT)
    assert made.load(skey("a")).blob == b"data"  # the breaker counted one failure and stays closed
    made.close()


def test_restarted_server_is_used_again_without_errors(own_server):
    made = fast_failing_store(own_server)
    made.create(skey("a"), b"data", time.time() + 60)
    own_server.restart()  # pooled connections are now dead
    assert made.load(skey("a")) is None  # redis-py reconnects a closed pooled connection
    assert isinstance(made.create(skey("a"), b"again", time.time() + 60), int)
    made.close()


@HANG_LIMIT
def test_cluster_with_a_stopped_node_gives_store_errors_not_hangs(tmp_path):
    cluster = server_redis.RedisCluster(tmp_path).start()
    try:
        made = RedisStore(
            urls=cluster.urls, key_prefix=prefix(), connect_timeout=0.3, socket_timeout=0.3,
            breaker=CircuitBreaker(threshold=100),
        )
        keys = [skey(f"k{i}") for i in range(12)]
        for key in keys:
            made.create(key, b"data", time.time() + 60)
        cluster.nodes[0].stop()
        failures = 0
        for key in keys:
            try:
                assert made.load(key).blob == b"data"  # keys on the other nodes stay readable
            except StoreError:
                failures += 1
        assert 0 < failures < len(keys)
        made.close()
    finally:
        cluster.stop()


@HANG_LIMIT
def test_cluster_breaker_is_per_node_so_a_hung_node_fails_fast_while_the_others_serve(tmp_path):
    cluster = server_redis.RedisCluster(tmp_path).start()
    hung = cluster.nodes[0]
    try:
        made = RedisStore(
            urls=cluster.urls, key_prefix=prefix(), connect_timeout=0.3, socket_timeout=0.3,
            breaker=CircuitBreaker(threshold=2, cooldown=60),
        )
        client = made._connection()

        def port_of(key: bytes) -> int:
            return client.nodes_manager.get_node_from_slot(client.keyslot(made._key(key))).port

        keys = [skey(f"k{i}") for i in range(40)]
        on_hung = next(k for k in keys if port_of(k) == hung.port)
        elsewhere = next(k for k in keys if port_of(k) != hung.port)
        for key in (on_hung, elsewhere):
            made.create(key, b"data", time.time() + 60)
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # failures on the hung node, each followed by a success elsewhere
                with pytest.raises(StoreError, match="Timeout"):
                    made.load(on_hung)
                assert made.load(elsewhere).blob == b"data"
            with pytest.raises(StoreError, match=f"node 127.0.0.1:{hung.port} is failing; not retrying"):
                made.load(on_hung)
            assert made.load(elsewhere).blob == b"data"
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
        made.close()
    finally:
        cluster.stop()


# ---------------------------------------------------------------- through SessionMiddleware


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
    elif path == "/login":
        session.regenerate_id()
        session["user"] = "alice"
        body = "logged in"
    else:
        body = "untouched"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


def middleware(**options) -> SessionMiddleware:
    config = {"session.secret": SECRET, "session.timeout": "600", "session.key_prefix": prefix()}
    config.update({"session." + name: value for name, value in options.items()})
    return SessionMiddleware(counter_app, config)


def test_middleware_counter_on_ext_redis_with_string_config(server):
    mw = middleware(type="ext:redis", url=server.url, socket_timeout="0.5", connect_timeout="0.5")
    app = webtest.TestApp(mw, extra_environ=HTTPS)
    assert [app.get("/inc").text for _ in range(3)] == ["1", "2", "3"]
    assert app.get("/read").text == "3"
    mw.close()


def test_sessions_survive_a_sentinel_failover(tmp_path):
    """The master dies, the Sentinel promotes the replica, and the same cookie reads and writes on."""
    # 3 s before the Sentinel calls the master down: on a loaded machine a shorter
    # wait can fail over early, while the test still writes to the old master.
    watched = server_redis.RedisSentinel(tmp_path / "failover", replica=True, down_after_ms=3000).start()
    try:
        replica_port = str(watched.replica.port).encode()
        deadline = time.monotonic() + 20
        while replica_port not in server_redis.command(watched.sentinel.port, "SENTINEL", "REPLICAS", "mymaster"):
            assert time.monotonic() < deadline, "the Sentinel never learnt about the replica"
            time.sleep(0.1)
        mw = middleware(type="redis", url=watched.url, socket_timeout="0.5", connect_timeout="0.5")
        app = webtest.TestApp(mw, extra_environ=HTTPS)
        assert [app.get("/inc").text for _ in range(2)] == ["1", "2"]
        # Replicated: the replica holds what the master holds (WAIT would not do: it
        # counts only the writes made on its own connection, here none).
        deadline = time.monotonic() + 20
        while True:
            sizes = {server_redis.command(port, "DBSIZE") for port in (watched.master.port, watched.replica.port)}
            if sizes == {b":1\r\n"}:
                break
            assert time.monotonic() < deadline, f"the replica never caught up: {sizes}"
            time.sleep(0.05)

        assert watched.master_port() == watched.master.port  # no early failover: the writes are on the replica
        watched.master.stop()
        deadline = time.monotonic() + 40
        while watched.master_port() != watched.replica.port:
            assert time.monotonic() < deadline, "the Sentinel did not fail over"
            time.sleep(0.1)
        # Requests fail (StoreError) until the client asks the Sentinel again and the
        # breaker lets calls through; then the session carries on from the replica.
        deadline = time.monotonic() + 20
        while True:
            try:
                body = app.get("/inc").text
                break
            except StoreError:
                assert time.monotonic() < deadline, "no request succeeded after the failover"
                time.sleep(0.2)
        assert body == "3"
        assert app.get("/read").text == "3"
        mw.close()
    finally:
        watched.stop()


def test_middleware_round_trips_untouched_zero_read_one_modify_two(server):
    mw = middleware(type="ext:redis", url=server.url)
    app = webtest.TestApp(mw, extra_environ=HTTPS)
    assert app.get("/inc").text == "1"
    app.get("/inc")  # warm: connection made, scripts cached
    expected = [("/", {}), ("/read", {"get": 1}), ("/inc", {"get": 1, "evalsha": 1})]
    for path, trips in expected:
        before = command_calls(server)
        app.get(path)
        assert round_trips(before, command_calls(server)) == trips, path
    new_visitor = webtest.TestApp(mw, extra_environ=HTTPS)
    before = command_calls(server)
    assert new_visitor.get("/inc").text == "1"
    assert round_trips(before, command_calls(server)) == {"evalsha": 1}  # create only, no read
    mw.close()


def test_middleware_on_ext_rediscluster_counts_and_rotates(cluster):
    mw = middleware(type="ext:rediscluster", urls=",".join(f"redis://{u}" for u in cluster.urls))
    app = webtest.TestApp(mw, extra_environ=HTTPS)
    assert [app.get("/inc").text for _ in range(3)] == ["1", "2", "3"]
    old_cookie = app.cookies["session"]
    assert app.get("/login").text == "logged in"
    assert app.cookies["session"] != old_cookie
    assert app.get("/inc").text == "4"  # the data moved to the new id
    stale = webtest.TestApp(mw, extra_environ=HTTPS)
    stale.set_cookie("session", old_cookie)
    response = stale.get("/read")
    assert response.text == "None"  # the old id loads an empty read-only session
    assert response.headers.getall("Set-Cookie") == []
    mw.close()


@pytest.mark.parametrize(("timeout", "absolute_timeout", "ttl"), [("1000", "300", 300), ("100", "3000", 100)])
def test_the_servers_ttl_is_the_sooner_of_idle_and_absolute_expiry(server, timeout, absolute_timeout, ttl):
    mw = middleware(type="redis", url=server.url, timeout=timeout, absolute_timeout=absolute_timeout)
    app = webtest.TestApp(mw, extra_environ=HTTPS)
    app.get("/inc")
    rkey = mw.store._key(core.store_key(app.get("/id").text))
    remaining = int(server_redis.command(server.port, "PTTL", rkey.decode())[1:])
    assert (ttl - 5) * 1000 < remaining <= ttl * 1000
    mw.close()


def test_apps_with_different_key_prefixes_on_one_server_never_see_each_others_sessions(server):
    one, two = (middleware(type="redis", url=server.url, key_prefix=name) for name in (prefix(), prefix()))
    first = webtest.TestApp(one, extra_environ=HTTPS)
    assert [first.get("/inc").text for _ in range(2)] == ["1", "2"]
    other = webtest.TestApp(two, extra_environ=HTTPS)
    other.set_cookie("session", first.cookies["session"])  # same secret: the cookie verifies
    assert other.get("/read").text == "None"
    assert other.get("/inc").text == "1"  # a session of its own
    assert first.get("/read").text == "2"
    one.close()
    two.close()


@pytest.mark.timeout(300)
def test_sessions_read_and_write_on_while_the_cluster_reshards(tmp_path):
    """Slots move between nodes (ASK, then MOVED) while requests run: none fails, none loses a write."""
    cluster = server_redis.RedisCluster(tmp_path / "reshard").start()
    try:
        mw = middleware(type="ext:rediscluster", urls=",".join(cluster.urls))
        clients = [webtest.TestApp(mw, extra_environ=HTTPS) for _ in range(20)]
        for client in clients:
            client.get("/inc")
        counts, failures, done = [1] * len(clients), [], threading.Event()

        def run() -> None:
            turn = 0
            while not done.is_set():
                i = turn % len(clients)
                turn += 1
                try:
                    if turn % 5 == 0:
                        clients[i].get("/login")  # a rotation: two keys, most often in two slots
                        continue
                    counts[i] += 1
                    got = clients[i].get("/inc").text
                    if got != str(counts[i]):
                        failures.append(f"client {i}: {got}, expected {counts[i]}")
                        counts[i] = int(got)
                except Exception as exc:  # noqa: BLE001 - reported below
                    failures.append(repr(exc))

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        ids = [server_redis.command(n.port, "CLUSTER", "MYID").split(b"\r\n")[1].decode() for n in cluster.nodes]
        try:
            subprocess.run(
                [cluster.cli, "--cluster", "reshard", cluster.urls[0], "--cluster-from", ids[0],
                 "--cluster-to", ids[1], "--cluster-slots", "2000", "--cluster-pipeline", "10", "--cluster-yes"],
                check=True, capture_output=True, timeout=240,
            )
        finally:
            done.set()
            worker.join(60)
        assert not failures, failures[:5]
        assert [client.get("/read").text for client in clients] == [str(n) for n in counts]
        mw.close()
    finally:
        cluster.stop()


@HANG_LIMIT
def test_middleware_with_the_server_down_serves_an_unsaved_empty_session(own_server):
    mw = middleware(type="ext:redis", url=own_server.url, socket_timeout="0.3", connect_timeout="0.3",
                    on_store_error="anonymous")
    app = webtest.TestApp(mw, extra_environ=HTTPS)
    assert [app.get("/inc").text for _ in range(2)] == ["1", "2"]
    own_server.stop()
    response = app.get("/inc")
    assert response.text == "1"  # an empty session: the stored count is unreachable
    assert response.headers.getall("Set-Cookie") == []  # and nothing saved, no new cookie
    strict = middleware(type="ext:redis", url=own_server.url, socket_timeout="0.3", connect_timeout="0.3")
    strict_app = webtest.TestApp(strict, extra_environ=HTTPS)
    strict_app.set_cookie("session", app.cookies["session"])
    with pytest.raises(StoreError):
        strict_app.get("/read")
    mw.close()
    strict.close()


def test_middleware_touches_once_per_touch_interval_in_one_round_trip(server):
    mw = middleware(type="ext:redis", url=server.url, touch_interval="0.2")
    app = webtest.TestApp(mw, extra_environ=HTTPS)
    app.get("/inc")
    key = core.store_key(app.get("/id").text)
    version = mw.store.load(key).version
    mw.store.touch(skey("warm"), time.time() + 60)  # the server caches the touch script
    before = command_calls(server)
    app.get("/read")
    assert round_trips(before, command_calls(server)) == {"get": 1}  # within the interval: no touch
    time.sleep(0.25)
    before = command_calls(server)
    app.get("/read")
    assert round_trips(before, command_calls(server)) == {"get": 1, "evalsha": 1}  # read, then touch
    record = mw.store.load(key)
    assert record.version == version and record.last_access > time.time() - 0.1
    mw.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel timeouts are used on Linux only")
def test_direct_connections_time_out_in_the_kernel_not_with_pythons_poll(server):
    made = RedisStore(url=server.url, key_prefix=prefix(), socket_timeout=0.4)
    try:
        made.load(skey("a"))
        (connection,) = made._direct._idle
        assert connection._sock.gettimeout() is None
        assert receive_timeout(connection._sock) == pytest.approx(0.4)
    finally:
        made.close()


def test_direct_connections_ask_for_no_pushes(server):
    made = RedisStore(url=server.url, key_prefix=prefix())
    try:
        made.load(skey("a"))
        (connection,) = made._direct._idle
        config = getattr(connection, "maint_notifications_config", None)
        assert config is None or config.enabled is False  # redis-py before 7 has no such pushes
    finally:
        made.close()
