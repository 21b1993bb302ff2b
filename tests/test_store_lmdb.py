"""LmdbStore specifics beyond the contract: sharing, map growth, forks, corruption, errors."""

from __future__ import annotations

import ctypes
import json
import logging
import math
import mmap
import multiprocessing
import os
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsess import core
from fastsess.errors import CorruptRecord, StoreError
from fastsess.stores import lmdb as lmdb_store
from fastsess.stores.base import CONFLICT, EXPIRED, GONE, TOMBSTONE, StoredRecord
from fastsess.stores.lmdb import LmdbStore
from test_store_contract import T0, TTL, FakeClock, increment, join_or_kill, skey


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "sessions")


@pytest.fixture
def store(data_dir: str, clock: FakeClock):
    made = LmdbStore(data_dir, clock=clock)
    yield made
    made.close()


def test_two_stores_on_one_directory_share_one_environment(store, data_dir, clock):
    other = LmdbStore(data_dir, clock=clock)
    try:
        assert other._environment() is store._environment()
        store.create(skey("a"), b"data", T0 + TTL)
        assert other.load(skey("a")).blob == b"data"
    finally:
        other.close()
    assert store.load(skey("a")).blob == b"data"  # closing one leaves the other open


def test_directory_reopens_after_every_store_closed(data_dir, clock):
    first = LmdbStore(data_dir, clock=clock)
    first.create(skey("a"), b"data", T0 + TTL)
    first.close()
    second = LmdbStore(data_dir, clock=clock)
    assert second.load(skey("a")).blob == b"data"
    second.close()
    with pytest.raises(StoreError, match="after close"):
        first.load(skey("a"))


def test_full_map_grows_and_keeps_every_record(data_dir, clock):
    store = LmdbStore(data_dir, map_size=64 * 1024, clock=clock)
    try:
        for i in range(400):
            store.create(skey(f"k{i}"), bytes([i % 256]) * 1000, T0 + TTL)
        for i in range(400):
            assert store.load(skey(f"k{i}")).blob == bytes([i % 256]) * 1000
        assert store._environment().info()["map_size"] > 64 * 1024
    finally:
        store.close()


# A middleware on an lmdb store whose map cannot grow: the process may map little
# more than the store's map (RLIMIT_AS), so the second doubling fails.
MAP_CANNOT_GROW = """
import json, re, resource, sys
from fastsess import SessionMiddleware

MAP = 32 << 20


def app(environ, start_response):
    session = environ["beaker.session"]
    if environ["PATH_INFO"] == "/write":
        session["blob"] = "x" * 60000
        session.save()
    elif environ["PATH_INFO"] == "/logout":
        session.delete()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [session.get("blob", "-")[:1].encode()]


mw = SessionMiddleware(app, {
    "session.type": "lmdb", "session.data_dir": sys.argv[1], "session.secret": "s" * 40,
    "session.timeout": 600, "session.lmdb_map_size": MAP, "session.on_store_error": sys.argv[2],
})


def call(path, cookie=None):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "localhost", "SERVER_PORT": "443",
               "wsgi.url_scheme": "https", "HTTP_HOST": "localhost"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    out = {}
    def start_response(status, headers, exc_info=None):
        out["status"] = status
        out["cookie"] = next((v.split(";")[0] for k, v in headers if k == "Set-Cookie"), None)
    try:
        out["body"] = b"".join(mw(environ, start_response)).decode()
    except Exception as exc:
        out["error"] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    return out


vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 7 * MAP // 2, resource.getrlimit(resource.RLIMIT_AS)[1]))
cookies = []
for _ in range(3000):
    response = call("/write")
    if "error" in response or not response["cookie"]:
        break
    cookies.append(response["cookie"])
failed = response
read_back = call("/", cookies[0])
freed = [call("/logout", cookie) for cookie in cookies[-40:]]
after = call("/write")
print(json.dumps({"written": len(cookies), "failed": failed, "read_back": read_back, "after": after}))
"""


@pytest.mark.parametrize("policy", ["raise", "anonymous"])
def test_a_map_that_cannot_grow_is_a_store_error_and_the_store_keeps_serving(tmp_path, policy):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), MALLOC_ARENA_MAX="1")
    ran = subprocess.run(
        [sys.executable, "-c", MAP_CANNOT_GROW, str(tmp_path / "sessions"), policy],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout.splitlines()[-1])
    assert result["written"] > 100  # the map grew once, then could not
    failed = result["failed"]
    if policy == "raise":
        assert failed["error"].startswith("fastsess.errors.StoreError: lmdb store: "), failed
    else:
        assert failed == {"status": "200 OK", "cookie": None, "body": "x"}
    # The environment survives: stored sessions still load, and once space is
    # freed new sessions are written again.
    assert result["read_back"]["body"] == "x", result["read_back"]
    assert result["after"]["cookie"], result["after"]


FILL = """
import sys
from fastsess.stores.lmdb import LmdbStore
store = LmdbStore(sys.argv[1])
for i in range(300):
    store.create(bytes([i % 256, i // 256]) * 16, b"x" * 1000, 4e9)
"""


def test_map_grown_by_another_process_is_adopted(data_dir, clock):
    store = LmdbStore(data_dir, map_size=64 * 1024, clock=clock)
    try:
        store.create(skey("parent"), b"before", T0 + TTL)
        # A separate program, not a fork: this process keeps its environment
        # open while the other one grows the map under it.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        subprocess.run([sys.executable, "-c", FILL, data_dir], env=env, check=True, timeout=60)
        assert store.load(bytes([43, 1]) * 16).blob == b"x" * 1000
        assert isinstance(store.create(skey("after"), b"y" * 1000, T0 + TTL), int)
        assert store._environment().info()["map_size"] > 64 * 1024
    finally:
        store.close()


def test_corrupt_environment_is_moved_aside_and_store_starts_empty(data_dir, clock, caplog):
    os.makedirs(data_dir)
    Path(data_dir, "data.mdb").write_bytes(b"this is not an lmdb file " * 1000)
    store = LmdbStore(data_dir, clock=clock)
    try:
        with caplog.at_level(logging.ERROR, logger="fastsess"):
            assert store.load(skey("a")) is None
        assert [(r.fastsess_event, r.sid) for r in caplog.records] == [("store_error", None)]
        moved = [name for name in os.listdir(data_dir) if name.startswith("data.mdb.corrupt-")]
        assert len(moved) == 1
        assert Path(data_dir, moved[0]).read_bytes().startswith(b"this is not an lmdb file")
        assert isinstance(store.create(skey("a"), b"fresh", T0 + TTL), int)
        assert store.load(skey("a")).blob == b"fresh"
    finally:
        store.close()


TRUNCATED = """
import json, os, sys
from fastsess import SessionMiddleware

data_dir = sys.argv[1]


def app(environ, start_response):
    session = environ["beaker.session"]
    if environ["PATH_INFO"] == "/write":
        session["blob"] = "x" * 3000
        session.save()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(session.get("blob", ""))).encode()]


def middleware():
    return SessionMiddleware(app, {"session.type": "lmdb", "session.data_dir": data_dir,
                                   "session.secret": "t" * 40, "session.timeout": 600})


def call(mw, path, cookie=None):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "localhost", "SERVER_PORT": "443",
               "wsgi.url_scheme": "https", "HTTP_HOST": "localhost"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    out = {}
    out["body"] = b"".join(mw(environ, lambda status, headers, exc_info=None: out.update(
        status=status, cookie=next((v.split(";")[0] for k, v in headers if k == "Set-Cookie"), None)))).decode()
    return out


mw = middleware()
cookies = [call(mw, "/write")["cookie"] for _ in range(300)]
mw.close()
path = os.path.join(data_dir, "data.mdb")
os.truncate(path, os.stat(path).st_size // 3 + 1000)  # a copy cut off: inside a page
mw = middleware()
served = [call(mw, "/", cookie) for cookie in cookies]
print(json.dumps({"bodies": sorted({s["body"] for s in served}), "new": call(mw, "/write"),
                  "moved": sorted(n for n in os.listdir(data_dir) if n.startswith("data.mdb.corrupt-"))}))
"""


def test_a_data_file_cut_short_is_moved_aside_instead_of_crashing_the_process(data_dir):
    # Reading a mapped page past the end of the file is SIGBUS: a copy cut off
    # must not make every worker die on its first request, again and again.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    ran = subprocess.run([sys.executable, "-c", TRUNCATED, data_dir], env=env, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, f"exit status {ran.returncode}: {ran.stderr[-2000:]}"
    result = json.loads(ran.stdout.splitlines()[-1])
    assert result["bodies"] == ["0"]  # every session lost with the damaged file, none served from it
    assert result["new"]["cookie"] and result["new"]["body"] == "3000"
    assert len(result["moved"]) == 1


def test_damaged_blob_raises_corrupt_record(store):
    store.create(skey("a"), b"some session data", T0 + TTL)
    shared = store._shared()
    with store._environment().begin(write=True) as txn:
        entry = txn.get(skey("a"), db=shared.meta)
        txn.put(skey("a"), entry[:-3], db=shared.meta)  # the blob is shorter than its header says
    with pytest.raises(CorruptRecord):
        store.load(skey("a"))
    assert store.locked_update(skey("a"), lambda record: (b"x", T0 + TTL)) is GONE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from([2, 2, 2, 0, 3, 255]),
    kind=st.sampled_from([0, 0, 0, 1, 2, 255]),
    blob=st.binary(max_size=64),
    size_delta=st.sampled_from([0, 0, 0, -1, 1, 1 << 31]),
    version=st.integers(0, (1 << 64) - 1),
    expires_at=st.one_of(st.floats(T0 + 1, 1e18), st.floats(allow_nan=False)),
    last_access=st.floats(allow_nan=False),
)
def test_an_entry_loads_as_its_header_says_or_not_at_all(store, fmt, kind, blob, size_delta, version, expires_at,
                                                         last_access):
    """load() reads a header as struct does (compiled, as C): format 2, a record, the length it gives."""
    size = (len(blob) + size_delta) % (1 << 32)
    entry = struct.pack("<BBxxIQdd", fmt, kind, size, version, expires_at, last_access) + blob
    shared = store._shared()
    with store._environment().begin(write=True) as txn:
        txn.put(skey("a"), entry, db=shared.meta)
    try:
        loaded = store.load(skey("a"))
    except CorruptRecord:
        loaded = CorruptRecord
    if fmt == 2 and kind == 0 and size == len(blob):
        if T0 > expires_at:
            assert loaded is EXPIRED
        else:
            assert type(loaded) is StoredRecord
            assert loaded == (blob, version, expires_at, last_access) and type(loaded.blob) is bytes
            assert math.copysign(1.0, loaded.last_access) == math.copysign(1.0, last_access)  # -0.0 too
    elif fmt == 2 and kind == 1 and size == len(blob):
        assert loaded is (TOMBSTONE if T0 <= expires_at else None)
    else:
        assert loaded is CorruptRecord  # an unknown format or kind, or a length that disagrees


# Format 1 (earlier releases): a 32-byte header in meta, the blob in data.


def _put_format1(store: LmdbStore, key: bytes, blob: bytes, version: int, expires_at: float, tombstone=False):
    shared = store._shared()
    header = struct.pack("<BBxxIQdd", 1, int(tombstone), len(blob), version, expires_at, T0)
    with store._environment().begin(write=True) as txn:
        txn.put(key, header, db=shared.meta)
        if not tombstone:
            txn.put(key, blob, db=shared.data)
        txn.put(struct.pack(">Q", int(expires_at * 1000)) + key, b"", db=shared.expiry)


def _in_data(store: LmdbStore, key: bytes) -> bytes | None:
    with store._environment().begin() as txn:
        return txn.get(key, db=store._shared().data)


def test_format1_record_loads_and_its_next_write_moves_it_into_one_entry(store, clock):
    _put_format1(store, skey("a"), b"old layout", 7, T0 + TTL)
    assert store.load(skey("a")) == StoredRecord(b"old layout", 7, T0 + TTL, T0)
    version = store.cas(skey("a"), b"new layout", 7, T0 + TTL)
    assert version > 7
    assert store.load(skey("a")) == StoredRecord(b"new layout", version, T0 + TTL, T0)
    assert _in_data(store, skey("a")) is None


def test_format1_record_touch_keeps_its_blob_and_version(store, clock):
    _put_format1(store, skey("a"), b"old layout", 7, T0 + TTL)
    clock.advance(10)
    store.touch(skey("a"), clock.now + TTL)
    assert store.load(skey("a")) == StoredRecord(b"old layout", 7, clock.now + TTL, clock.now)


def test_format1_record_in_locked_update_rotate_and_delete(store, clock):
    _put_format1(store, skey("a"), b"1", 7, T0 + TTL)
    version = store.locked_update(skey("a"), lambda record: (record.blob + b"2", T0 + TTL))
    assert store.load(skey("a")) == StoredRecord(b"12", version, T0 + TTL, T0)
    _put_format1(store, skey("b"), b"moving", 9, T0 + TTL)
    new_version = store.rotate(skey("b"), skey("c"), b"moved", T0 + TTL, 60, expected_version=9)
    assert store.load(skey("c")).version == new_version
    assert store.load(skey("b")) is TOMBSTONE
    _put_format1(store, skey("d"), b"bye", 11, T0 + TTL)
    store.delete(skey("d"))
    assert store.load(skey("d")) is None
    assert [_in_data(store, skey(k)) for k in "abcd"] == [None, None, None, None]


def test_format1_damaged_blob_and_cleanup(store, clock):
    _put_format1(store, skey("a"), b"some session data", 7, T0 + TTL)
    with store._environment().begin(write=True) as txn:
        txn.put(skey("a"), b"short", db=store._shared().data)
    with pytest.raises(CorruptRecord):
        store.load(skey("a"))
    _put_format1(store, skey("b"), b"expires", 8, T0 + 5)
    clock.advance(30)
    assert store.cleanup(clock.now, 10) == 1
    assert store.load(skey("b")) is None
    assert _in_data(store, skey("b")) is None


@pytest.mark.parametrize("entry", [b"", b"\x01", b"\x02" + bytes(40)])
def test_an_empty_or_cut_entry_raises_corrupt_record(store, entry):
    store.create(skey("a"), b"some session data", T0 + TTL)
    with store._environment().begin(write=True) as txn:
        txn.put(skey("a"), entry, db=store._shared().meta)
    with pytest.raises(CorruptRecord):
        store.load(skey("a"))
    assert isinstance(store.create(skey("a"), b"fresh", T0 + TTL), int)  # a write treats it as missing
    assert store.load(skey("a")).blob == b"fresh"


def test_damaged_record_raises_corrupt_record_on_the_retrying_path_too(store):
    store.create(skey("a"), b"some session data", T0 + TTL)
    shared = store._shared()
    with store._environment().begin(write=True) as txn:
        txn.put(skey("a"), b"garbage", db=shared.meta)
    shared.exclusively(shared.close_env)  # no environment: load() goes through _run()
    with pytest.raises(CorruptRecord):
        store.load(skey("a"))
    assert store.load(skey("b")) is None


def test_unwritable_data_dir_raises_store_error(tmp_path):
    # Root ignores permission bits, so provoke the failure with a file in the way.
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(StoreError, match="data directory"):
        LmdbStore(str(tmp_path / "plain-file" / "sessions"))


def test_data_dir_is_created_with_parents(tmp_path):
    LmdbStore(str(tmp_path / "a" / "b")).close()
    assert (tmp_path / "a" / "b").is_dir()


def _index_entries(store: LmdbStore) -> int:
    with store._environment().begin() as txn:
        return txn.stat(store._shared().expiry)["entries"]


def test_expiry_index_holds_one_entry_per_record(store, clock):
    store.create(skey("a"), b"x", T0 + 10)
    store.create(skey("b"), b"x", T0 + TTL)
    store.touch(skey("b"), T0 + 2 * TTL)
    version = store.load(skey("b")).version
    store.cas(skey("b"), b"y", version, T0 + 3 * TTL)
    store.rotate(skey("b"), skey("c"), b"y", T0 + TTL, 60)
    assert _index_entries(store) == 3
    clock.advance(100)
    assert store.cleanup(clock.now, 10) == 2  # "a" and the tombstone of "b"
    assert _index_entries(store) == 1
    store.delete(skey("c"))
    assert _index_entries(store) == 0


def _index_keys(store: LmdbStore) -> list[bytes]:
    with store._environment().begin() as txn:
        return [key for key, _ in txn.cursor(db=store._shared().expiry)]


def _granule_entry(seconds: float, key: bytes) -> bytes:
    return struct.pack(">Q", int(seconds * 1000) // 10_000 * 10_000) + key


def test_rewrites_within_an_expiry_granule_leave_the_index_alone(store, clock):
    # T0 starts a 10-second granule; a busy session's writes keep their one entry there.
    version = store.create(skey("a"), b"one", T0 + 1)
    assert _index_keys(store) == [_granule_entry(T0, skey("a"))]
    version = store.cas(skey("a"), b"two", version, T0 + 9.5)
    store.touch(skey("a"), T0 + 9.9)
    assert _index_keys(store) == [_granule_entry(T0, skey("a"))]
    store.cas(skey("a"), b"three", version, T0 + 10)  # the next granule: the entry moves
    assert _index_keys(store) == [_granule_entry(T0 + 10, skey("a"))]


def test_cleanup_refiles_index_entries_written_in_exact_milliseconds(store, clock):
    # Earlier releases filed expiries to the millisecond; such entries are moved or used.
    store.create(skey("live"), b"x", T0 + 5)
    store.create(skey("gone"), b"x", T0 + 7)
    store.touch(skey("live"), T0 + TTL)  # its old-style entry below is now stale
    shared = store._shared()
    with store._environment().begin(write=True) as txn:
        for index_key in _index_keys(store):
            txn.delete(index_key, db=shared.expiry)
        txn.put(struct.pack(">Q", int((T0 + 5) * 1000) + 3) + skey("live"), b"", db=shared.expiry)
        txn.put(struct.pack(">Q", int((T0 + 7) * 1000) + 1) + skey("gone"), b"", db=shared.expiry)
    clock.advance(20)
    assert store.cleanup(clock.now, 10) == 1
    assert store.load(skey("gone")) is None
    assert _index_keys(store) == [_granule_entry(T0 + TTL, skey("live"))]
    clock.advance(TTL)
    assert store.cleanup(clock.now, 10) == 1  # the re-filed entry finds the record when it expires
    assert _index_keys(store) == []


def test_versions_grow_per_record_and_never_repeat_after_delete(store, clock):
    first = store.create(skey("a"), b"x", T0 + TTL)
    second = store.cas(skey("a"), b"y", first, T0 + TTL)
    assert second > first
    store.delete(skey("a"))
    again = store.create(skey("a"), b"z", T0 + TTL)
    assert again > second  # a stale writer holding `second` cannot match the new record
    assert store.cas(skey("a"), b"w", second, T0 + TTL) == CONFLICT


def test_versions_ignore_the_global_counter_older_releases_kept(store, clock):
    with store._environment().begin(write=True) as txn:
        state = store._environment().open_db(b"state", txn=txn)
        txn.put(b"version", (2**64 - 1).to_bytes(8, "big"), db=state)
    version = store.create(skey("a"), b"x", T0 + TTL)
    assert store.cas(skey("a"), b"y", version, T0 + TTL) > version


def test_touch_keeps_version_and_blob(store, clock):
    version = store.create(skey("a"), b"blob", T0 + TTL)
    clock.advance(10)
    store.touch(skey("a"), clock.now + TTL)
    assert store.load(skey("a")) == StoredRecord(b"blob", version, clock.now + TTL, clock.now)


def _mapped_environments(data_dir: str) -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(os.path.join(data_dir, "data.mdb")))


def _child_checks_inheritance(store: LmdbStore, data_dir: str) -> None:
    if _mapped_environments(data_dir) != 0:
        os._exit(3)  # the parent's environment crossed the fork
    if store.load(skey("a")).blob != b"data":
        os._exit(4)
    os._exit(0 if _mapped_environments(data_dir) == 1 else 5)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_child_inherits_no_open_environment(store, data_dir):
    store.create(skey("a"), b"data", T0 + TTL)
    assert _mapped_environments(data_dir) == 1
    child = multiprocessing.get_context("fork").Process(
        target=_child_checks_inheritance, args=(store, data_dir)
    )
    child.start()
    join_or_kill(child)
    assert child.exitcode == 0
    assert store.load(skey("a")).blob == b"data"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="C-level fork via libc")
def test_fork_that_skips_python_hooks_still_gets_a_fresh_environment(store, data_dir):
    # uWSGI-style: libc fork() runs no os.register_at_fork hooks, so the child
    # holds the parent's open environment and must not use it.
    store.create(skey("a"), b"data", T0 + TTL)
    held = store._environment().begin()  # a reader slot the child must leave alone
    try:
        pid = ctypes.CDLL(None, use_errno=True).fork()
        if pid == 0:
            del held  # the application holds none of the store's transactions
            code = 1
            try:
                fresh = store.load(skey("a")).blob == b"data"
                wrote = isinstance(store.create(skey("child"), b"c", T0 + TTL), int)
                code = 0 if fresh and wrote else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert str(os.getpid()) in store._environment().readers()
        assert held.get(skey("a"), db=store._shared().meta) is not None
    finally:
        held.abort()
    assert store.load(skey("child")).blob == b"c"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="C-level fork via libc")
@pytest.mark.parametrize("how", ["os.fork", "libc fork"])
def test_the_process_id_the_store_checks_is_the_childs_after_any_fork(how):
    # Compiled, the id is cached in a page the kernel zeroes in a forked child;
    # a stale one would have the child use its parent's environment.
    parent = lmdb_store._getpid()
    assert parent == os.getpid()
    read, write = os.pipe()
    pid = os.fork() if how == "os.fork" else ctypes.CDLL(None, use_errno=True).fork()
    if pid == 0:
        try:
            os.write(write, f"{lmdb_store._getpid()} {os.getpid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    seen = os.read(read, 100).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert seen == [str(pid), str(pid)] and parent == lmdb_store._getpid() != pid


def test_the_process_id_is_cached_exactly_with_the_c_kernel_on_a_kernel_that_wipes_pages_on_fork():
    from fastsess import core

    advice = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform.startswith("linux") else None)  # 18: Linux's value
    try:
        mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE).madvise(advice)  # anonymous, as the cache
        wipes = True
    except (TypeError, OSError):  # not Linux, or before 4.14
        wipes = False
    lmdb_store._getpid()  # the first call sets the cache up
    assert lmdb_store._fast_path.pid_is_cached() is (core.IMPLEMENTATION == "c" and wipes)


class _ReportsCorruption:
    """Stands in for an environment that starts failing with MDB_CORRUPTED."""

    def __init__(self, env) -> None:
        self.env = env

    def begin(self, *args, **kwargs):
        raise lmdb.CorruptedError("mdb_txn_begin: MDB_CORRUPTED: Located page was wrong type")

    def close(self) -> None:
        self.env.close()


def test_environment_reporting_corruption_in_use_is_replaced(store, data_dir, caplog):
    store.create(skey("a"), b"data", T0 + TTL)
    shared = store._shared()
    shared.env = _ReportsCorruption(shared.env)
    with caplog.at_level(logging.ERROR, logger="fastsess"):
        assert store.load(skey("a")) is None
    assert [r.fastsess_event for r in caplog.records] == ["store_error"]
    assert any(name.startswith("data.mdb.corrupt-") for name in os.listdir(data_dir))
    assert isinstance(store.create(skey("a"), b"fresh", T0 + TTL), int)


def test_files_moved_aside_by_another_process_are_followed(store, data_dir):
    store.create(skey("a"), b"data", T0 + TTL)
    for name in ("data.mdb", "lock.mdb"):
        os.rename(os.path.join(data_dir, name), os.path.join(data_dir, name + ".corrupt-elsewhere"))
    store._shared().maintain()  # runs every _MAINTAIN_EVERY operations
    assert store.load(skey("a")) is None
    assert os.path.exists(os.path.join(data_dir, "data.mdb"))


def _write_and_increment(store: LmdbStore, tag: str, times: int) -> None:
    for i in range(times):
        store.create(skey(f"{tag}-{i}"), b"j" * 2000, T0 + TTL)  # keeps the small map growing
        increment(store, skey("counter"), 1)


def test_forks_and_threads_writing_while_the_map_grows_lose_nothing(data_dir):
    # Threads keep writing (and growing a tiny map) while this process forks
    # writers: growth, reopening around forks and adopting other processes'
    # growth all happen under load.
    store = LmdbStore(data_dir, map_size=64 * 1024, clock=FakeClock())
    stop = threading.Event()
    done, errors = [0, 0], []

    def background(slot: int) -> None:
        try:
            while not stop.is_set():
                _write_and_increment(store, f"thread{slot}-{done[slot]}", 1)
                done[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=background, args=(slot,), daemon=True) for slot in range(2)]
    for thread in threads:
        thread.start()
    try:
        context = multiprocessing.get_context("fork")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: that is the point
            children = [
                context.Process(target=_write_and_increment, args=(store, f"child{n}", 25)) for n in range(3)
            ]
            for child in children:
                child.start()
        for child in children:
            join_or_kill(child)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    try:
        assert [child.exitcode for child in children] == [0, 0, 0]
        assert not errors, errors
        assert int(store.load(skey("counter")).blob) == 3 * 25 + sum(done)
    finally:
        store.close()


# The writes' common case runs in one straight function; these pin that it files
# the expiry index, recovers and keeps up maintenance exactly as the general path.


def _granule_key(seconds: float, key: bytes) -> bytes:
    """Where the expiry index files a record expiring at `seconds` (out-of-range values clamp)."""
    ms = seconds * 1000
    ms = 2**64 - 1 if not ms < 2**64 - 1 else int(ms) if ms > 0 else 0
    return struct.pack(">Q", ms - ms % 10_000) + key


EDGE = T0 + 10  # a granule starts here


@pytest.mark.parametrize("old", [T0 + 1, math.nextafter(EDGE, 0), EDGE, (2**53 - 2) / 1000, 1e300, math.inf, math.nan])
@pytest.mark.parametrize(
    "new",
    [T0 + 9.9, math.nextafter(EDGE, 0), EDGE, EDGE + 0.001, (2**53 - 2) / 1000, 2**53 / 1000, 1e300, math.inf,
     math.nan, 0.0, -5.0],
)
def test_writes_file_the_record_in_its_new_expiry_granule(store, old, new):
    version = store.create(skey("cas"), b"x", old)
    assert isinstance(store.cas(skey("cas"), b"y", version, new), int)
    store.create(skey("touch"), b"x", old)
    assert store.touch(skey("touch"), new) is True
    assert sorted(_index_keys(store)) == sorted(_granule_key(new, skey(name)) for name in ("cas", "touch"))


def _write(store: LmdbStore, operation: str, version: int):
    if operation == "create":
        return store.create(skey("other"), b"new", T0 + TTL)
    if operation == "cas":
        return store.cas(skey("a"), b"new", version, T0 + TTL)
    return store.touch(skey("a"), T0 + TTL)


@pytest.mark.parametrize("operation", ["create", "cas", "touch"])
def test_writes_recover_from_an_environment_reporting_corruption(store, data_dir, caplog, operation):
    version = store.create(skey("a"), b"data", T0 + TTL)
    shared = store._shared()
    shared.env = _ReportsCorruption(shared.env)
    with caplog.at_level(logging.ERROR, logger="fastsess"):
        result = _write(store, operation, version)
    assert [r.fastsess_event for r in caplog.records] == ["store_error"]
    assert any(name.startswith("data.mdb.corrupt-") for name in os.listdir(data_dir))
    # The replacement starts empty: only create finds something to do.
    if operation == "create":
        assert type(result) is int
    else:
        assert result is {"cas": GONE, "touch": False}[operation]
    assert store.load(skey("a")) is None


@pytest.mark.parametrize("operation", ["create", "cas", "touch"])
def test_writes_open_a_closed_environment(store, operation):
    version = store.create(skey("a"), b"data", T0 + TTL)
    shared = store._shared()
    shared.exclusively(shared.close_env)  # as after a fork: the next use opens it
    result = _write(store, operation, version)
    if operation == "touch":
        assert result is True
    else:
        assert type(result) is int
    assert store.load(skey("a")).blob == (b"new" if operation == "cas" else b"data")


@pytest.mark.parametrize("operation", ["load", "create", "cas", "touch"])
def test_every_operation_counts_towards_maintenance(store, data_dir, monkeypatch, operation):
    # load() and cas() read it in the fast path module (compiled with the C kernel), the others here
    monkeypatch.setattr(lmdb_store, "_MAINTAIN_EVERY", 3)
    monkeypatch.setattr(lmdb_store._fast_path, "_MAINTAIN_EVERY", 3)
    version = store.create(skey("a"), b"data", T0 + TTL)  # the first operation since opening
    for name in ("data.mdb", "lock.mdb"):
        os.rename(os.path.join(data_dir, name), os.path.join(data_dir, name + ".corrupt-elsewhere"))
    for _ in range(2):  # the third operation maintains: it finds the files moved and follows them
        if operation == "load":
            assert store.load(skey("a")).blob == b"data"
        else:
            result = _write(store, operation, version)
            version = result if operation == "cas" else version
    assert store.load(skey("a")) is None


def test_the_fast_path_is_compiled_exactly_when_the_c_kernel_is_selected(store):
    """LmdbStore.load() and cas() are _lmdb_fast_py.py's, compiled as fastsess.stores._lmdb_fast with the C kernel."""
    import types

    from fastsess import core
    from fastsess.stores import _lmdb_fast_py

    if core.IMPLEMENTATION == "python":
        assert lmdb_store._fast_path is _lmdb_fast_py
    else:
        try:
            from fastsess.stores import _lmdb_fast
        except ImportError:
            assert not core.REQUIRE_EXTENSIONS, "FASTSESS_REQUIRE_EXTENSIONS=1 but fastsess.stores._lmdb_fast is not built"
            assert lmdb_store._fast_path is _lmdb_fast_py
        else:
            assert lmdb_store._fast_path is _lmdb_fast
            assert not isinstance(LmdbStore.load, types.FunctionType)  # compiled: no Python frame
            assert not isinstance(LmdbStore.cas, types.FunctionType)
    assert LmdbStore.__mro__[1] is lmdb_store.LmdbFastPath
    assert store.clock is not None and store._shared_env is None  # set by the Python __init__s; opened on first use


class _PausingEnvironment:
    """Stands in for the open environment: a transaction's get() waits until `release` is set."""

    def __init__(self, shared) -> None:
        self.shared = shared
        self.entered = threading.Event()
        self.release = threading.Event()
        self.events: list[str] = []
        self.active_seen: int | None = None

    def begin(self, *args):
        return self

    def get(self, *args):
        self.active_seen = self.shared.active
        self.entered.set()
        assert self.release.wait(10)
        return None  # no entry

    def abort(self) -> None:
        self.events.append("transaction ended")

    commit = abort


def _run_on_pausing_environment(store: LmdbStore, operation: str) -> None:
    if operation == "load":
        store.load(skey("a"))
    else:
        store.cas(skey("a"), b"new", 1, T0 + TTL)


@pytest.mark.parametrize("operation", ["load", "cas"])
def test_a_map_resize_or_reopen_waits_for_a_transaction_load_or_cas_is_running(store, operation):
    # Compiled, load() and cas() count their transactions instead of taking the
    # thread's gate lock; the exclusive holder (resize, reopen, fork) must still
    # wait for them, and only then work.
    store.load(skey("a"))  # opens the environment
    shared = store._shared_env
    real, pausing = shared.env, _PausingEnvironment(shared)
    shared.env = pausing
    try:
        worker = threading.Thread(target=_run_on_pausing_environment, args=(store, operation), daemon=True)
        worker.start()
        assert pausing.entered.wait(10)

        def exclusive() -> None:
            shared.acquire_exclusive()
            pausing.events.append("exclusive")
            shared.release_exclusive()

        holder = threading.Thread(target=exclusive, daemon=True)
        holder.start()
        holder.join(0.3)
        assert holder.is_alive(), "the exclusive holder did not wait for the running transaction"
        pausing.release.set()
        worker.join(10)
        holder.join(10)
        assert not worker.is_alive() and not holder.is_alive()
    finally:
        pausing.release.set()
        shared.env = real
    assert pausing.events == ["transaction ended", "exclusive"]
    assert pausing.active_seen == (1 if core.IMPLEMENTATION == "c" else 0)  # pure Python locks instead
    assert shared.active == 0 and not shared.draining


@pytest.mark.parametrize("operation", ["load", "cas"])
def test_a_load_or_cas_that_starts_during_a_resize_or_reopen_waits_for_its_end(store, operation):
    store.load(skey("a"))
    shared = store._shared_env
    real, pausing = shared.env, _PausingEnvironment(shared)
    pausing.release.set()  # get() answers at once
    shared.acquire_exclusive()
    try:
        shared.env = pausing
        worker = threading.Thread(target=_run_on_pausing_environment, args=(store, operation), daemon=True)
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and not pausing.entered.is_set(), "a transaction ran during exclusive work"
    finally:
        shared.release_exclusive()
    worker.join(10)
    shared.env = real
    assert not worker.is_alive() and pausing.events == ["transaction ended"]
    assert shared.active == 0


def test_an_entry_in_the_older_split_format_loads_and_a_write_moves_it_into_one_entry(store, clock):
    # Format 1, written by older releases: the 32-byte header alone, the blob in
    # the data sub-database under the same key. load() finds it by the header's
    # first byte; a write replaces it with a format-2 entry and drops the old blob.
    store.load(skey("a"))  # opens the environment
    shared = store._shared_env
    header = lmdb_store._pack_meta(lmdb_store._FORMAT_SPLIT, lmdb_store._RECORD, 5, 7, T0 + TTL, T0)
    with shared.env.begin(write=True) as txn:
        txn.put(skey("a"), header, db=shared.meta)
        txn.put(skey("a"), b"split", db=shared.data)
    assert store.load(skey("a")) == StoredRecord(b"split", 7, T0 + TTL, T0)

    version = store.cas(skey("a"), b"joined", 7, T0 + TTL)
    assert isinstance(version, int) and version != 7
    assert store.load(skey("a")) == StoredRecord(b"joined", version, T0 + TTL, clock())
    with shared.env.begin() as txn:
        assert txn.get(skey("a"), db=shared.data) is None
        assert txn.get(skey("a"), db=shared.meta)[0] == lmdb_store._FORMAT
