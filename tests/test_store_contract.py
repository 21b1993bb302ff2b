"""The store contract (SPEC section 6): one suite, run against every store.

To add a store, add a StoreKind to STORE_KINDS: how to build one on a
directory and a clock, how to damage one record's stored bytes (or None when
the store holds objects), and whether separate processes share its records.
Stores that need a server add their kinds from a module of their own,
tests/contract_kinds_<store>.py, whose KINDS dict is merged in below.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastsess.errors import CorruptRecord, StoreError
from fastsess.stores.base import CONFLICT, EXISTS, EXPIRED, GONE, TOMBSTONE, Store, StoredRecord
from fastsess.stores.file import FileStore
from fastsess.stores.lmdb import LmdbStore
from fastsess.stores.memory import MemoryStore

T0 = 1_700_000_000.0
TTL = 1800.0


class FakeClock:
    """A clock tests move by hand; stores call it for "now"."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _damage_file_record(store: FileStore, key: bytes) -> None:
    name = key.hex()
    Path(store.data_dir, name[:2], name).write_bytes(b"not a session file, just garbage bytes" * 3)


def _damage_lmdb_record(store: LmdbStore, key: bytes) -> None:
    shared = store._shared()
    with store._environment().begin(write=True) as txn:
        txn.put(key, b"garbage", db=shared.meta)


@dataclass(frozen=True)
class StoreKind:
    make: Callable[[Path, FakeClock], Store]
    #: overwrite one record's stored bytes with garbage; None when the store holds objects
    damage: Callable[[Store, bytes], None] | None
    #: separate processes (and forked children) see the same records
    shared_across_processes: bool
    #: the server expires records in real time (memcached, redis): the fake
    #: clock cannot move its TTLs, so tests that advance time skip; the store's
    #: own test file covers expiry with short real TTLs
    server_time: bool = False


STORE_KINDS: dict[str, StoreKind] = {
    "memory": StoreKind(
        make=lambda tmp, clock: MemoryStore(clock=clock),
        damage=None,
        shared_across_processes=False,
    ),
    "file": StoreKind(
        make=lambda tmp, clock: FileStore(str(tmp / "sessions"), clock=clock),
        damage=_damage_file_record,
        shared_across_processes=True,
    ),
    "lmdb": StoreKind(
        make=lambda tmp, clock: LmdbStore(str(tmp / "sessions"), clock=clock),
        damage=_damage_lmdb_record,
        shared_across_processes=True,
    ),
}


for _path in sorted(Path(__file__).parent.glob("contract_kinds_*.py")):
    STORE_KINDS.update(importlib.import_module(_path.stem).KINDS)


@pytest.fixture(params=list(STORE_KINDS), ids=list(STORE_KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(kind: str, tmp_path: Path, clock: FakeClock):
    if STORE_KINDS[kind].server_time:
        def advance(seconds: float) -> None:
            pytest.skip("the server expires records in real time; see this store's own TTL tests")

        clock.advance = advance
    made = STORE_KINDS[kind].make(tmp_path, clock)
    yield made
    made.close()


def skey(label: str) -> bytes:
    """A store key as the session layer makes them: SHA-256 of an id."""
    return hashlib.sha256(label.encode()).digest()


def close_to(value: float):
    # File stores keep expiry in mtime (nanoseconds); a touch may shift
    # last_access by up to a millisecond.
    return pytest.approx(value, abs=1e-3)


def assert_record(got, blob: bytes, expires_at: float, last_access: float) -> StoredRecord:
    assert isinstance(got, StoredRecord), got
    assert got.blob == blob
    assert isinstance(got.version, int)
    assert got.expires_at == close_to(expires_at)
    assert got.last_access == close_to(last_access)
    return got


# -- load and create


def test_load_missing_returns_none(store):
    assert store.load(skey("nobody")) is None


def test_create_then_load_returns_blob_version_expiry_and_access(store, clock):
    version = store.create(skey("a"), b"data", T0 + TTL)
    assert isinstance(version, int)
    record = assert_record(store.load(skey("a")), b"data", T0 + TTL, T0)
    assert record.version == version


def test_create_on_existing_record_returns_exists_and_keeps_it(store):
    version = store.create(skey("a"), b"first", T0 + TTL)
    assert store.create(skey("a"), b"second", T0 + TTL) is EXISTS
    record = store.load(skey("a"))
    assert (record.blob, record.version) == (b"first", version)


def test_create_on_expired_record_succeeds(store, clock):
    store.create(skey("a"), b"old", T0 + 10)
    clock.advance(11)
    version = store.create(skey("a"), b"new", clock.now + TTL)
    assert isinstance(version, int)
    assert_record(store.load(skey("a")), b"new", clock.now + TTL, clock.now)


def test_record_is_live_until_its_expiry_and_gone_after(store, clock):
    store.create(skey("a"), b"data", T0 + 100)
    clock.advance(100)  # live while now <= expires_at, as a session is for now - last_access <= timeout
    assert store.load(skey("a")) is not None
    clock.advance(0.5)
    assert store.load(skey("a")) is EXPIRED  # stores that keep time on the server say None instead


# -- compare-and-set


def test_cas_with_current_version_writes_a_new_version(store, clock):
    v1 = store.create(skey("a"), b"one", T0 + TTL)
    clock.advance(5)
    v2 = store.cas(skey("a"), b"two", v1, clock.now + TTL)
    assert isinstance(v2, int) and v2 != v1
    record = assert_record(store.load(skey("a")), b"two", clock.now + TTL, clock.now)
    assert record.version == v2


def test_cas_with_stale_version_conflicts_and_keeps_data(store):
    v1 = store.create(skey("a"), b"one", T0 + TTL)
    v2 = store.cas(skey("a"), b"two", v1, T0 + TTL)
    assert store.cas(skey("a"), b"lost", v1, T0 + TTL) is CONFLICT
    record = store.load(skey("a"))
    assert (record.blob, record.version) == (b"two", v2)


def test_cas_on_missing_record_is_gone_and_inserts_nothing(store):
    assert store.cas(skey("a"), b"data", 1, T0 + TTL) is GONE
    assert store.load(skey("a")) is None


def test_cas_on_deleted_record_is_gone(store):
    version = store.create(skey("a"), b"data", T0 + TTL)
    store.delete(skey("a"))
    assert store.cas(skey("a"), b"again", version, T0 + TTL) is GONE
    assert store.load(skey("a")) is None


def test_cas_on_expired_record_is_gone_and_inserts_nothing(store, clock):
    version = store.create(skey("a"), b"data", T0 + 10)
    clock.advance(10.5)
    assert store.cas(skey("a"), b"again", version, clock.now + TTL) is GONE
    assert store.load(skey("a")) in (None, EXPIRED)


def test_cas_on_tombstone_is_gone_and_keeps_the_tombstone(store):
    version = store.create(skey("old"), b"data", T0 + TTL)
    store.rotate(skey("old"), skey("new"), b"data", T0 + TTL, 60)
    assert store.cas(skey("old"), b"again", version, T0 + TTL) is GONE
    assert store.load(skey("old")) is TOMBSTONE


def test_stale_cas_fails_against_a_recreated_record(store):
    stale = store.create(skey("a"), b"first life", T0 + TTL)
    store.delete(skey("a"))
    store.create(skey("a"), b"second life", T0 + TTL)
    assert store.cas(skey("a"), b"stale write", stale, T0 + TTL) is CONFLICT
    assert store.load(skey("a")).blob == b"second life"


# -- touch and delete


def test_touch_refreshes_expiry_and_access_without_new_version(store, clock):
    version = store.create(skey("a"), b"data", T0 + TTL)
    clock.advance(300)
    assert store.touch(skey("a"), clock.now + TTL) is True
    record = assert_record(store.load(skey("a")), b"data", clock.now + TTL, clock.now)
    assert record.version == version


def test_touch_to_a_capped_expiry_keeps_blob_and_version(store, clock):
    # An absolute timeout caps expiry: the new expiry is not now + the old idle time.
    version = store.create(skey("a"), b"data", T0 + TTL)
    clock.advance(100)
    cap = clock.now + 50
    store.touch(skey("a"), cap)
    assert_record(store.load(skey("a")), b"data", cap, clock.now)
    clock.advance(20)
    store.touch(skey("a"), cap)
    record = assert_record(store.load(skey("a")), b"data", cap, clock.now)
    assert record.version == version


def test_touch_on_missing_record_does_not_create_it(store):
    assert store.touch(skey("a"), T0 + TTL) is False
    assert store.load(skey("a")) is None
    assert isinstance(store.create(skey("a"), b"data", T0 + TTL), int)


def test_touch_on_expired_record_does_not_revive_it(store, clock):
    store.create(skey("a"), b"data", T0 + 10)
    clock.advance(10.5)
    assert store.touch(skey("a"), clock.now + TTL) is False
    assert store.load(skey("a")) in (None, EXPIRED)


def test_touch_on_tombstone_keeps_the_tombstone(store, clock):
    store.create(skey("old"), b"data", T0 + TTL)
    store.rotate(skey("old"), skey("new"), b"data", T0 + TTL, 60)
    assert store.touch(skey("old"), T0 + TTL) is False  # the session layer then keeps the old cookie back
    clock.advance(61)
    assert store.load(skey("old")) is None


def test_touch_after_a_delete_reports_no_record(store):
    store.create(skey("a"), b"data", T0 + TTL)
    store.delete(skey("a"))
    assert store.touch(skey("a"), T0 + TTL) is False


def test_delete_removes_the_record_and_ignores_missing_keys(store):
    store.create(skey("a"), b"data", T0 + TTL)
    store.delete(skey("a"))
    assert store.load(skey("a")) is None
    store.delete(skey("a"))
    store.delete(skey("never"))


# -- rotate


def test_rotate_writes_new_key_and_tombstones_old_key(store, clock):
    store.create(skey("old"), b"data", T0 + TTL)
    clock.advance(5)
    version = store.rotate(skey("old"), skey("new"), b"moved", clock.now + TTL, 60)
    assert isinstance(version, int)
    record = assert_record(store.load(skey("new")), b"moved", clock.now + TTL, clock.now)
    assert record.version == version
    assert store.load(skey("old")) is TOMBSTONE


def test_tombstone_expires_after_tombstone_seconds(store, clock):
    store.create(skey("old"), b"data", T0 + TTL)
    store.rotate(skey("old"), skey("new"), b"data", T0 + TTL, 60)
    clock.advance(59)
    assert store.load(skey("old")) is TOMBSTONE
    clock.advance(1.5)
    assert store.load(skey("old")) is None
    assert store.load(skey("new")) is not None


def test_rotate_from_missing_record_is_gone(store):
    assert store.rotate(skey("old"), skey("new"), b"data", T0 + TTL, 60) is GONE
    assert store.load(skey("new")) is None


def test_rotate_from_tombstone_is_gone(store):
    store.create(skey("old"), b"data", T0 + TTL)
    store.rotate(skey("old"), skey("new"), b"data", T0 + TTL, 60)
    assert store.rotate(skey("old"), skey("third"), b"data", T0 + TTL, 60) is GONE
    assert store.load(skey("third")) is None


def test_rotate_with_stale_expected_version_conflicts_and_changes_nothing(store):
    v1 = store.create(skey("old"), b"one", T0 + TTL)
    v2 = store.cas(skey("old"), b"two", v1, T0 + TTL)
    assert store.rotate(skey("old"), skey("new"), b"x", T0 + TTL, 60, expected_version=v1) is CONFLICT
    assert store.load(skey("old")).version == v2
    assert store.load(skey("new")) is None
    assert isinstance(store.rotate(skey("old"), skey("new"), b"x", T0 + TTL, 60, expected_version=v2), int)


def test_rotate_onto_an_existing_key_conflicts(store):
    store.create(skey("old"), b"one", T0 + TTL)
    store.create(skey("new"), b"taken", T0 + TTL)
    assert store.rotate(skey("old"), skey("new"), b"x", T0 + TTL, 60) is CONFLICT
    assert store.load(skey("new")).blob == b"taken"
    assert store.load(skey("old")).blob == b"one"


def locked_rotate_or_skip(store):
    if not store.has_locked_rotate:
        pytest.skip("store has no locked_rotate")
    return store.locked_rotate


def test_locked_rotate_computes_the_new_record_from_the_live_old_one(store, clock):
    locked_rotate = locked_rotate_or_skip(store)
    v1 = store.create(skey("old"), b"one", T0 + TTL)
    clock.advance(5)
    seen = []
    version = locked_rotate(
        skey("old"), skey("new"), lambda record: (seen.append(record) or record.blob + b"+", clock.now + TTL), 60
    )
    assert [(r.blob, r.version) for r in seen] == [(b"one", v1)]
    assert assert_record(store.load(skey("new")), b"one+", clock.now + TTL, clock.now).version == version
    assert store.load(skey("old")) is TOMBSTONE


def test_locked_rotate_from_missing_or_tombstoned_record_is_gone(store):
    locked_rotate = locked_rotate_or_skip(store)
    assert locked_rotate(skey("old"), skey("new"), lambda r: (b"x", T0 + TTL), 60) is GONE
    store.create(skey("old"), b"one", T0 + TTL)
    store.rotate(skey("old"), skey("mid"), b"one", T0 + TTL, 60)
    assert locked_rotate(skey("old"), skey("new"), lambda r: (b"x", T0 + TTL), 60) is GONE
    assert store.load(skey("new")) is None


def test_locked_rotate_onto_an_existing_key_conflicts_and_changes_nothing(store):
    locked_rotate = locked_rotate_or_skip(store)
    store.create(skey("old"), b"one", T0 + TTL)
    store.create(skey("new"), b"taken", T0 + TTL)
    assert locked_rotate(skey("old"), skey("new"), lambda r: (b"x", T0 + TTL), 60) is CONFLICT
    assert store.load(skey("new")).blob == b"taken"
    assert store.load(skey("old")).blob == b"one"


def test_locked_rotate_writes_nothing_when_fn_raises(store):
    locked_rotate = locked_rotate_or_skip(store)
    store.create(skey("old"), b"one", T0 + TTL)

    def fail(record):
        raise ValueError("merge refused")

    with pytest.raises(ValueError):
        locked_rotate(skey("old"), skey("new"), fail, 60)
    assert store.load(skey("old")).blob == b"one"
    assert store.load(skey("new")) is None


# -- cleanup


def test_cleanup_removes_at_most_budget_expired_records_and_keeps_live_ones(store, clock):
    for i in range(5):
        store.create(skey(f"short{i}"), b"x", T0 + 10)
    for i in range(3):
        store.create(skey(f"long{i}"), b"y", T0 + 1000)
    clock.advance(100)
    assert store.cleanup(clock.now, 2) == 2
    assert store.cleanup(clock.now, 10) == 3
    assert store.cleanup(clock.now, 10) == 0
    for i in range(3):
        assert store.load(skey(f"long{i}")).blob == b"y"
    for i in range(5):
        assert store.load(skey(f"short{i}")) is None


def test_cleanup_removes_expired_tombstones(store, clock):
    store.create(skey("old"), b"data", T0 + TTL)
    store.rotate(skey("old"), skey("new"), b"data", T0 + TTL, 60)
    assert store.cleanup(clock.now, 10) == 0
    clock.advance(61)
    assert store.cleanup(clock.now, 10) == 1
    assert store.load(skey("new")) is not None


def test_cleanup_with_zero_budget_removes_nothing(store, clock):
    store.create(skey("a"), b"x", T0 + 10)
    clock.advance(20)
    assert store.cleanup(clock.now, 0) == 0



def test_cleanup_steps_stay_within_budget_and_cover_the_store(store, clock):
    # The automatic cleanup a write pays for: bounded steps that, repeated, remove every expired record.
    for i in range(5):
        store.create(skey(f"short{i}"), b"x", T0 + 10)
    store.create(skey("long"), b"y", T0 + 1000)
    clock.advance(100)
    removed = []
    for _ in range(600):  # the file store needs a turn over its 256 shards
        removed.append(store.cleanup_step(clock.now, 2))
        if sum(removed) == 5:
            break
    assert max(removed) <= 2 and sum(removed) == 5
    assert store.cleanup_step(clock.now, 0) == 0
    assert store.load(skey("long")).blob == b"y"
    assert all(store.load(skey(f"short{i}")) is None for i in range(5))


# -- damaged records


@pytest.fixture
def damage(kind: str) -> Callable[[Store, bytes], None]:
    """This kind's way to overwrite one record's stored bytes; skips for a store that holds objects."""
    damage = STORE_KINDS[kind].damage
    if damage is None:
        pytest.skip("memory store holds objects, cannot be corrupted")
    return damage


def test_damaged_record_raises_corrupt_record_on_load(store, damage):
    """The session layer, not the store, decides what a damaged record means (invalidate_corrupt)."""
    store.create(skey("a"), b"data", T0 + TTL)
    damage(store, skey("a"))
    with pytest.raises(CorruptRecord) as raised:
        store.load(skey("a"))
    assert isinstance(raised.value, StoreError)
    assert skey("a").hex()[:8] not in str(raised.value)
    assert store.load(skey("other")) is None  # one damaged record spoils no other


def test_damaged_record_is_missing_to_writes_and_cleanup(store, damage, clock):
    version = store.create(skey("a"), b"data", T0 + TTL)
    damage(store, skey("a"))
    store.touch(skey("a"), T0 + TTL)
    with pytest.raises(CorruptRecord):
        store.load(skey("a"))  # a touch does not make it a record
    assert store.cas(skey("a"), b"x", version, T0 + TTL) is GONE
    if store.has_locked_update:
        assert store.locked_update(skey("a"), lambda record: (b"x", T0 + TTL)) is GONE
    assert store.rotate(skey("a"), skey("b"), b"x", T0 + TTL, 60) is GONE
    assert store.load(skey("b")) is None
    assert isinstance(store.cleanup(clock.now + 2 * TTL, 10), int)
    assert isinstance(store.create(skey("a"), b"fresh", T0 + TTL), int)
    assert store.load(skey("a")).blob == b"fresh"


def test_create_replaces_a_damaged_record(store, damage):
    store.create(skey("a"), b"data", T0 + TTL)
    damage(store, skey("a"))
    version = store.create(skey("a"), b"fresh", T0 + TTL)
    assert isinstance(version, int)
    assert assert_record(store.load(skey("a")), b"fresh", T0 + TTL, T0).version == version


# -- locked_update


def test_locked_update_sees_the_record_and_writes_a_new_version(store, clock):
    if not store.has_locked_update:
        pytest.skip("store has no locked_update")
    v1 = store.create(skey("a"), b"1", T0 + TTL)
    seen = []

    def bump(record: StoredRecord):
        seen.append(record)
        return str(int(record.blob) + 1).encode(), record.expires_at + 60

    clock.advance(5)
    v2 = store.locked_update(skey("a"), bump)
    assert [(r.blob, r.version) for r in seen] == [(b"1", v1)]
    assert isinstance(v2, int) and v2 != v1
    record = assert_record(store.load(skey("a")), b"2", T0 + TTL + 60, clock.now)
    assert record.version == v2


def test_locked_update_returning_none_writes_nothing(store):
    if not store.has_locked_update:
        pytest.skip("store has no locked_update")
    v1 = store.create(skey("a"), b"1", T0 + TTL)
    assert store.locked_update(skey("a"), lambda record: None) == v1
    record = store.load(skey("a"))
    assert (record.blob, record.version) == (b"1", v1)


def test_locked_update_on_missing_record_is_gone(store):
    if not store.has_locked_update:
        pytest.skip("store has no locked_update")
    called = []
    assert store.locked_update(skey("a"), called.append) is GONE
    assert called == []
    assert store.load(skey("a")) is None


def test_locked_update_that_raises_writes_nothing(store):
    if not store.has_locked_update:
        pytest.skip("store has no locked_update")
    v1 = store.create(skey("a"), b"1", T0 + TTL)

    def fail(record):
        raise RuntimeError("application error")

    with pytest.raises(RuntimeError):
        store.locked_update(skey("a"), fail)
    assert store.load(skey("a")).version == v1
    assert isinstance(store.cas(skey("a"), b"2", v1, T0 + TTL), int)


# -- concurrency: compare-and-set loses no update

WRITERS = 4
INCREMENTS = 50


def increment(store: Store, key: bytes, times: int) -> None:
    """Add one to the counter in the blob, `times` times, with load/create/cas retries."""
    for _ in range(times):
        while True:
            record = store.load(key)
            if record is None:
                result = store.create(key, b"1", T0 + TTL)
            else:
                result = store.cas(key, str(int(record.blob) + 1).encode(), record.version, T0 + TTL)
            if isinstance(result, int):
                break


def _increment_in_child(store: Store, key: bytes, times: int) -> None:
    increment(store, key, times)


def run_in_threads(store: Store, key: bytes) -> None:
    errors = []

    def work():
        try:
            increment(store, key, INCREMENTS)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # Daemons with a bounded wait: a deadlocked store fails the test, not the run.
    threads = [threading.Thread(target=work, daemon=True) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "writers deadlocked"
    assert not errors, errors


def run_in_processes(store: Store, key: bytes) -> None:
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_increment_in_child, args=(store, key, INCREMENTS)) for _ in range(WRITERS)
    ]
    for child in children:
        child.start()
    for child in children:
        join_or_kill(child)
    assert [child.exitcode for child in children] == [0] * WRITERS


def join_or_kill(child, timeout: float = 30) -> None:
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()


def test_concurrent_writers_lose_no_updates(kind, store):
    # Separate processes where the store is shared by them; the memory store
    # lives in one process, so it gets threads.
    if STORE_KINDS[kind].shared_across_processes:
        run_in_processes(store, skey("counter"))
    else:
        run_in_threads(store, skey("counter"))
    assert store.load(skey("counter")).blob == str(WRITERS * INCREMENTS).encode()


def test_concurrent_threads_lose_no_updates(store):
    run_in_threads(store, skey("counter"))
    assert store.load(skey("counter")).blob == str(WRITERS * INCREMENTS).encode()


# -- forks (gunicorn --preload): a store used before the fork works on both sides


def _child_after_fork(store: Store, key: bytes, version: int) -> None:
    record = store.load(key)
    assert record is not None and record.blob == b"from parent"
    assert isinstance(store.cas(key, b"from child", version, T0 + TTL), int)
    assert isinstance(store.create(skey(f"child-{os.getpid()}"), b"child record", T0 + TTL), int)


def test_store_used_before_fork_works_in_children_and_parent(kind, store):
    if not STORE_KINDS[kind].shared_across_processes:
        pytest.skip("memory store lives in one process")
    version = store.create(skey("a"), b"from parent", T0 + TTL)
    assert store.load(skey("a")).version == version
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_child_after_fork, args=(store, skey("a"), version))
    child.start()
    join_or_kill(child)
    assert child.exitcode == 0
    record = store.load(skey("a"))
    assert record.blob == b"from child"
    assert store.load(skey(f"child-{child.pid}")).blob == b"child record"
    # The parent keeps writing, and a second generation of children still works.
    assert isinstance(store.cas(skey("a"), b"from parent", record.version, T0 + TTL), int)
    second = context.Process(target=_child_after_fork, args=(store, skey("a"), store.load(skey("a")).version))
    second.start()
    join_or_kill(second)
    assert second.exitcode == 0
    assert store.load(skey("a")).blob == b"from child"
