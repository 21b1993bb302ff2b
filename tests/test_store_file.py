"""FileStore specifics beyond the contract: on-disk layout, locks, mtime expiry, I/O errors."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import resource
import shutil
import threading
from pathlib import Path

import pytest
import webtest

from fastsess import SessionMiddleware
from fastsess.errors import CorruptRecord, StoreError
from fastsess.stores import file as file_module
from fastsess.stores.base import EXISTS, EXPIRED, StoredRecord
from fastsess.stores.file import FileStore
from test_store_contract import T0, TTL, FakeClock, skey


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock):
    made = FileStore(str(tmp_path / "sessions"), clock=clock)
    yield made
    made.close()


def record_path(store: FileStore, key: bytes) -> Path:
    name = key.hex()
    return Path(store.data_dir, name[:2], name)


def two_level_path(store: FileStore, key: bytes) -> Path:
    """Where earlier versions of the store kept a record."""
    name = key.hex()
    return Path(store.data_dir, name[:2], name[2:4], name)


def session_files(store: FileStore) -> list[Path]:
    root = Path(store.data_dir)
    return [p for p in root.rglob("*") if p.is_file() and p.parent != root / "locks"]


def _two_level_store(store: FileStore, keys: list, expires_at: float) -> None:
    """Put records where an earlier version kept them, data_dir/K[0:2]/K[2:4]/K."""
    for key in keys:
        store.create(key, f"data of {key.hex()[:6]}".encode(), expires_at)
        two_level_path(store, key).parent.mkdir(parents=True, exist_ok=True)
        record_path(store, key).rename(two_level_path(store, key))


def test_records_of_the_two_level_layout_are_moved_up_when_first_looked_for(store):
    keys = [skey(f"old-{i}") for i in range(4)]
    _two_level_store(store, keys, T0 + TTL)
    a, b, c, d = keys
    loaded = store.load(a)
    assert loaded.blob == f"data of {a.hex()[:6]}".encode()
    assert record_path(store, a).exists() and not two_level_path(store, a).exists()
    version = store.load(b).version
    assert store.cas(b, b"changed", version, T0 + TTL) == version + 1  # a write finds it as well
    assert store.load(b).blob == b"changed" and not two_level_path(store, b).exists()
    assert store.create(c, b"new", T0 + TTL) is EXISTS  # never replaced by a create
    store.delete(d)
    assert store.load(d) is None and not two_level_path(store, d).exists()


def test_cleanup_removes_expired_records_of_the_two_level_layout(store, clock):
    expired, live = [skey(f"old-{i}") for i in range(3)], [skey(f"kept-{i}") for i in range(3)]
    _two_level_store(store, expired, T0 + 10)
    _two_level_store(store, live, T0 + TTL)
    clock.advance(20)
    assert store.cleanup(clock(), 100) == len(expired)
    assert not any(two_level_path(store, k).exists() for k in expired)
    assert all(store.load(k).blob for k in live)


def test_records_are_sharded_by_hex_key_and_named_only_in_hex(store):
    keys = [skey(f"user-{i}") for i in range(20)]
    for key in keys:
        store.create(key, b"data", T0 + TTL)
    store.rotate(keys[0], skey("rotated"), b"data", T0 + TTL, 60)
    files = session_files(store)
    assert len(files) == 21  # no temporary files left behind
    for path in files:
        relative = path.relative_to(store.data_dir).as_posix()
        assert re.fullmatch(r"([0-9a-f]{2})/\1[0-9a-f]{62}", relative), relative
    assert {p.name for p in files} == {k.hex() for k in keys} | {skey("rotated").hex()}


def test_lock_files_are_at_most_256_stripes_under_locks(store):
    for i in range(600):
        key = skey(f"k{i}")
        store.create(key, b"x", T0 + TTL)
        store.touch(key, T0 + TTL)
    locks = os.listdir(Path(store.data_dir, "locks"))
    assert 0 < len(locks) <= 256
    assert all(re.fullmatch(r"[0-9a-f]{2}", name) for name in locks)
    assert len(session_files(store)) == 600  # and no lock file anywhere else


def test_touch_moves_mtime_without_rewriting_the_file(store, clock):
    store.create(skey("a"), b"data", T0 + TTL)
    path = record_path(store, skey("a"))
    before = path.stat()
    content = path.read_bytes()
    clock.advance(60)
    store.touch(skey("a"), clock.now + TTL)
    after = path.stat()
    assert after.st_ino == before.st_ino
    assert path.read_bytes() == content
    assert after.st_mtime_ns == int((clock.now + TTL) * 1e9)


def test_cleanup_goes_by_mtime(store, clock):
    store.create(skey("a"), b"data", T0 + TTL)
    past = int((T0 - 1) * 1e9)
    os.utime(record_path(store, skey("a")), ns=(past, past))
    assert store.load(skey("a")) is EXPIRED
    assert store.cleanup(clock.now, 10) == 1
    assert not record_path(store, skey("a")).exists()


def test_cleanup_resumes_where_the_budget_ran_out(store, clock):
    for i in range(40):
        store.create(skey(f"k{i}"), b"x", T0 + 10)
    clock.advance(20)
    counts = [store.cleanup(clock.now, 7) for _ in range(7)]
    assert counts == [7, 7, 7, 7, 7, 5, 0]
    assert session_files(store) == []


def test_truncated_file_raises_corrupt_record_without_the_key(store):
    store.create(skey("a"), b"some session data", T0 + TTL)
    path = record_path(store, skey("a"))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CorruptRecord, match="damaged") as raised:
        store.load(skey("a"))
    assert skey("a").hex()[:8] not in str(raised.value)


def test_flipped_bit_in_the_blob_raises_corrupt_record(store):
    store.create(skey("a"), b"some session data", T0 + TTL)
    path = record_path(store, skey("a"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRecord):
        store.load(skey("a"))


def test_write_over_a_damaged_file_is_logged_without_the_key(store, caplog):
    store.create(skey("a"), b"some session data", T0 + TTL)
    path = record_path(store, skey("a"))
    path.write_bytes(path.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, logger="fastsess"):
        assert isinstance(store.create(skey("a"), b"fresh", T0 + TTL), int)
    assert [(r.fastsess_event, r.sid) for r in caplog.records] == [("store_error", None)]
    assert skey("a").hex() not in caplog.text
    assert store.load(skey("a")).blob == b"fresh"


def test_cleanup_removes_a_damaged_file_by_its_mtime(store, clock):
    store.create(skey("a"), b"data", T0 + 10)
    path = record_path(store, skey("a"))
    path.write_bytes(b"garbage")
    past = int((T0 + 10) * 1e9)
    os.utime(path, ns=(past, past))
    assert store.cleanup(T0 + 20, 10) == 1
    assert not path.exists()


def test_data_dir_and_locks_are_created_with_parents(tmp_path):
    FileStore(str(tmp_path / "a" / "b" / "c")).close()
    assert (tmp_path / "a" / "b" / "c" / "locks").is_dir()


def test_unwritable_data_dir_raises_store_error(tmp_path):
    # Root ignores permission bits, so provoke the failure with a file in the way.
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(StoreError, match="data directory"):
        FileStore(str(tmp_path / "plain-file" / "sessions"))


def test_write_failure_raises_store_error_without_the_key(store):
    key = skey("a")
    # A file where the shard directory should be makes the write fail.
    Path(store.data_dir, key.hex()[:2]).write_text("in the way")
    with pytest.raises(StoreError) as raised:
        store.create(key, b"data", T0 + TTL)
    message = str(raised.value)
    assert key.hex() not in message and key.hex()[:8] not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_fsync_option_still_reads_back(tmp_path, clock):
    store = FileStore(str(tmp_path / "s"), clock=clock, fsync=True)
    version = store.create(skey("a"), b"durable", T0 + TTL)
    assert store.load(skey("a")).version == version


# -- lock failures never leak a lock


@contextlib.contextmanager
def no_free_descriptors():
    """Every new descriptor of this process fails with EMFILE until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    # Every descriptor below the lowest free one is taken: a limit there leaves none.
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        with pytest.raises(OSError):
            os.close(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def finishes(fn, timeout: float = 20.0):
    """fn's result, run in a thread that must finish within timeout (a leaked lock blocks it)."""
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "still blocked: a stripe lock was never released"
    assert outcome, "the call raised; see the thread's traceback above"
    return outcome[0]


def held_thread_locks(store: FileStore) -> list[int]:
    return [stripe for stripe, lock in enumerate(store._thread_locks) if lock.locked()]


def free_for_other_processes(store: FileStore, stripe: int) -> bool:
    """True when no description holds the stripe's flock (a second open file conflicts like a process)."""
    fd = os.open(os.path.join(store.data_dir, "locks", f"{stripe:02x}"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_lock_file_that_cannot_be_opened_raises_store_error_and_leaks_no_lock(store):
    key = skey("a")
    with no_free_descriptors():
        with pytest.raises(StoreError, match="lock.*EMFILE") as raised:
            store.create(key, b"data", T0 + TTL)
    assert key.hex()[:8] not in str(raised.value)
    assert held_thread_locks(store) == []
    version = finishes(lambda: store.create(key, b"data", T0 + TTL))
    assert store.load(key).version == version


def test_failing_second_stripe_releases_the_first_for_threads_and_processes(store):
    low, high = sorted([skey("a"), skey("b")], key=lambda key: key[0])
    assert low[0] != high[0]
    version = store.create(low, b"data", T0 + TTL)  # opens the lower stripe's lock file only
    with no_free_descriptors():
        with pytest.raises(StoreError, match="lock"):
            store.rotate(low, high, b"data", T0 + TTL, 60)
    assert held_thread_locks(store) == []
    assert free_for_other_processes(store, low[0])
    assert finishes(lambda: store.rotate(low, high, b"data", T0 + TTL, 60, version)) == store.load(high).version


def test_failing_unlock_raises_store_error_and_still_frees_the_stripe(store, monkeypatch):
    real_flock = fcntl.flock

    def flock(fd, operation):
        if operation == fcntl.LOCK_UN:
            raise OSError(5, os.strerror(5))
        return real_flock(fd, operation)

    key = skey("a")
    monkeypatch.setattr(file_module.fcntl, "flock", flock)
    with pytest.raises(StoreError, match="release a lock.*EIO"):
        store.create(key, b"data", T0 + TTL)
    monkeypatch.setattr(file_module.fcntl, "flock", real_flock)
    assert held_thread_locks(store) == []
    assert free_for_other_processes(store, key[0])  # closing the descriptor dropped its flock
    assert store.load(key).blob == b"data"  # the write itself had happened
    finishes(lambda: store.touch(key, T0 + TTL))


def test_failing_flock_releases_the_thread_lock(store, monkeypatch):
    def flock(fd, operation):
        raise OSError(37, os.strerror(37))  # ENOLCK, as NFS may say

    monkeypatch.setattr(file_module.fcntl, "flock", flock)
    with pytest.raises(StoreError, match="ENOLCK"):
        store.create(skey("a"), b"data", T0 + TTL)
    monkeypatch.undo()
    assert held_thread_locks(store) == []
    finishes(lambda: store.create(skey("a"), b"data", T0 + TTL))


@pytest.mark.parametrize("policy", ["raise", "anonymous"])
def test_requests_while_out_of_descriptors_fail_cleanly_and_later_ones_complete(tmp_path, policy):
    def counter(environ, start_response):
        session = environ["beaker.session"]
        session["n"] = session.get("n", 0) + 1
        session.save()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(session["n"]).encode()]

    mw = SessionMiddleware(
        counter, type="file", data_dir=str(tmp_path / "sessions"), secret="f" * 32, timeout=600,
        on_store_error=policy,
    )

    def request() -> list:
        """Serve one request without a cookie; its headers."""
        environ = {
            "REQUEST_METHOD": "GET", "PATH_INFO": "/", "SCRIPT_NAME": "", "SERVER_NAME": "localhost",
            "SERVER_PORT": "443", "HTTP_HOST": "localhost", "wsgi.url_scheme": "https",
        }
        response: list = []
        body = mw(environ, lambda status, headers, exc_info=None: response.extend(headers))
        try:
            b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()
        return response

    def set_cookies(headers: list) -> list:
        return [value for name, value in headers if name.lower() == "set-cookie"]

    assert len(set_cookies(request())) == 1
    # New sessions land on new stripes, whose lock files cannot be opened now.
    with no_free_descriptors():
        for _ in range(20):
            if policy == "raise":
                with pytest.raises(StoreError):
                    request()
            else:
                assert set_cookies(request()) == []  # an anonymous session: nothing saved
    assert held_thread_locks(mw.store) == []
    # Enough new sessions to cover every stripe, almost surely the ones that failed too.
    served = finishes(lambda: [request() for _ in range(2000)], timeout=60)
    assert all(len(set_cookies(headers)) == 1 for headers in served)


# -- sessions cleared by hand while the store runs


def _clear_by_hand(data_dir: str, how: str) -> None:
    """What an operator does to log everybody out: rm -rf data_dir, or rm -rf data_dir/*."""
    if how == "directory":
        shutil.rmtree(data_dir)
        return
    for entry in os.scandir(data_dir):
        shutil.rmtree(entry.path) if entry.is_dir() else os.unlink(entry.path)


@pytest.mark.parametrize("how", ["directory", "contents"])
def test_sessions_cleared_by_hand_while_running_leave_the_middleware_working(tmp_path, how):
    def counter(environ, start_response):
        session = environ["beaker.session"]
        session["n"] = session.get("n", 0) + 1
        session.save()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(session["n"]).encode()]

    data_dir = str(tmp_path / "sessions")
    mw = SessionMiddleware(counter, type="file", data_dir=data_dir, secret="f" * 32, timeout=600)
    clients = [webtest.TestApp(mw, extra_environ={"wsgi.url_scheme": "https"}) for _ in range(40)]
    try:
        assert [client.get("/").text for client in clients[:5]] == ["1"] * 5
        _clear_by_hand(data_dir, how)
        # The cleared sessions start again; new ones (on any stripe) are stored as before.
        assert [client.get("/").text for client in clients] == ["1"] * 40
        assert [client.get("/").text for client in clients] == ["2"] * 40
    finally:
        mw.close()


def test_a_lock_file_removed_by_hand_is_replaced_and_still_excludes_other_processes(store):
    key = skey("a")
    store.create(key, b"v1", T0 + TTL)  # this process now holds the stripe's lock file open
    _clear_by_hand(store.data_dir, "contents")
    assert isinstance(store.create(key, b"v2", T0 + TTL), int)
    excluded: list = []

    def check(record: StoredRecord):
        # Another process opens the lock file now at the stripe's path: it must wait for us.
        excluded.append(not free_for_other_processes(store, key[0]))
        return None

    store.locked_update(key, check)
    assert excluded == [True]


# ---------------------------------------------------------------- moving a written file in place


def _count_calls(monkeypatch, module, name: str) -> list:
    calls: list = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


@pytest.mark.skipif(file_module._renameat2 is None, reason="renameat2 is Linux-only")
def test_a_rewrite_exchanges_names_instead_of_replacing(store, monkeypatch):
    # os.replace over an existing file makes ext4 write the data out first (~150 us).
    version = store.create(skey("a"), b"one", T0 + TTL)
    replaces = _count_calls(monkeypatch, os, "replace")
    version = store.cas(skey("a"), b"two", version, T0 + TTL)
    store.touch(skey("a"), T0 + TTL / 2)  # a capped expiry: touch rewrites the file
    assert replaces == []
    assert store.load(skey("a")).blob == b"two"
    assert store.load(skey("a")).version == version
    assert [p.name for p in record_path(store, skey("a")).parent.iterdir()] == [record_path(store, skey("a")).name]


def test_a_new_record_is_renamed_into_place(store, monkeypatch):
    replaces = _count_calls(monkeypatch, os, "replace")
    store.create(skey("a"), b"one", T0 + TTL)
    assert len(replaces) == 1  # nothing to exchange with: a plain rename, which costs no flush
    assert store.load(skey("a")).blob == b"one"


@pytest.mark.skipif(file_module._renameat2 is None, reason="renameat2 is Linux-only")
def test_a_create_renames_without_asking_for_an_exchange_first(store, monkeypatch):
    exchanges = []
    renameat2, get_errno = file_module._renameat2

    def counting(*args):
        exchanges.append(args)
        return renameat2(*args)

    monkeypatch.setattr(file_module, "_renameat2", (counting, get_errno))
    version = store.create(skey("a"), b"one", T0 + TTL)
    assert exchanges == []  # nothing at the path: an exchange would only fail with ENOENT
    store.cas(skey("a"), b"two", version, T0 + TTL)
    assert len(exchanges) == 1  # a rewrite still exchanges


def test_a_create_over_an_expired_record_replaces_it(store, clock):
    store.create(skey("a"), b"old", T0 + 10)
    clock.now = T0 + 20
    version = store.create(skey("a"), b"new", T0 + TTL)
    assert isinstance(version, int) and store.load(skey("a")).blob == b"new"
    assert [p.name for p in record_path(store, skey("a")).parent.iterdir()] == [record_path(store, skey("a")).name]


def test_a_filesystem_that_refuses_the_exchange_falls_back_to_replace(store, monkeypatch):
    def refuse(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(file_module, "_renameat2", (refuse, ctypes.get_errno))
    store._exchange = True
    replaces = _count_calls(monkeypatch, os, "replace")
    version = store.create(skey("a"), b"one", T0 + TTL)
    store.cas(skey("a"), b"two", version, T0 + TTL)
    assert store.load(skey("a")).blob == b"two"
    assert store._exchange is False  # asked once, then never again
    assert len(replaces) == 2


def test_an_exchange_failure_is_a_store_error_and_leaves_no_temporary_file(store, monkeypatch):
    version = store.create(skey("a"), b"one", T0 + TTL)

    def fail(*args):
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(file_module, "_renameat2", (fail, ctypes.get_errno))
    store._exchange = True
    with pytest.raises(StoreError):
        store.cas(skey("a"), b"two", version, T0 + TTL)
    assert store.load(skey("a")).blob == b"one"
    assert [p.name for p in record_path(store, skey("a")).parent.iterdir()] == [record_path(store, skey("a")).name]


def test_readers_never_miss_a_record_while_it_is_rewritten(store):
    version = store.create(skey("a"), b"0", T0 + TTL)
    seen: list = []
    reading = threading.Event()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            record = store.load(skey("a"))
            seen.append(None if record is None else record.blob)
            reading.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert reading.wait(10)  # the reader is in its loop before the first write
        for i in range(1, 100):
            version = store.cas(skey("a"), str(i).encode(), version, T0 + TTL)
    finally:
        done.set()
        reader.join()
    assert None not in seen


def _key_in_stripe(stripe: int, label: str) -> bytes:
    return bytes([stripe]) + skey(label)[1:]


def test_cleanup_step_looks_at_one_top_level_shard_per_call(store, clock, monkeypatch):
    # cleanup() keeps looking until its budget is spent; the step a write pays for never does.
    keys = [_key_in_stripe(stripe, str(stripe)) for stripe in (5, 6, 200)]
    for key in keys:
        store.create(key, b"x", T0 + 10)
    clock.advance(20)
    shards = _count_calls(monkeypatch, store, "_cleanup_shard")
    store._cleanup_cursor = 5
    assert store.cleanup_step(clock.now, 100) == 1
    assert store.cleanup_step(clock.now, 100) == 1
    assert len(shards) == 2
    assert [store.load(key) is None and not record_path(store, key).exists() for key in keys[:2]] == [True, True]
    assert record_path(store, keys[2]).exists()
    removed = sum(store.cleanup_step(clock.now, 100) for _ in range(254))
    assert removed == 1 and session_files(store) == []
    assert store._cleanup_cursor == 5  # a full turn
