"""MemoryStore specifics beyond the contract: the LRU bound and a cleanup step that stays short."""

from __future__ import annotations

import random
import sys
import threading
import time
import types

import pytest

from fastsess.stores import memory
from fastsess.stores.base import EXPIRED, StoredRecord
from fastsess.stores.memory import MemoryStore
from test_store_contract import T0, TTL, FakeClock, skey


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_the_least_recently_used_record_goes_when_max_sessions_is_reached(clock):
    store = MemoryStore(max_sessions=3, clock=clock)
    for name in "abc":
        store.create(skey(name), name.encode(), T0 + TTL)
    assert store.load(skey("a")).blob == b"a"  # now the most recently used
    store.create(skey("d"), b"d", T0 + TTL)
    assert store.load(skey("b")) is None
    assert [store.load(skey(name)).blob for name in "acd"] == [b"a", b"c", b"d"]
    assert len(store) == 3


def test_max_sessions_below_one_is_refused():
    with pytest.raises(ValueError):
        MemoryStore(max_sessions=0)


def test_cleanup_step_looks_only_at_the_least_recently_used_entries(clock):
    store = MemoryStore(clock=clock)
    for i in range(3):
        store.create(skey(f"idle{i}"), b"x", T0 + 10)  # least recently used: the front
    for i in range(100):
        store.create(skey(f"busy{i}"), b"x", T0 + 1000)
    store.create(skey("late"), b"x", T0 + 10)  # expired too, but behind 100 live entries
    clock.advance(100)
    assert store.cleanup_step(clock.now, 5) == 3  # 20 entries looked at: the late one is not reached
    assert store.load(skey("late")) is EXPIRED  # a load still never returns an expired record
    assert len(store) == 100


@pytest.fixture(params=["gil", "free-threaded"])
def load_path(request, monkeypatch):
    """load() without the lock where the GIL makes each step atomic, and with it where there is none."""
    table_module = sys.modules[memory.MemoryTable.__module__]  # the compiled table with the C kernel
    monkeypatch.setattr(table_module, "_GIL", request.param == "gil")
    return request.param


def test_an_expired_record_is_removed_by_the_load_that_finds_it(clock, load_path):
    store = MemoryStore(clock=clock)
    store.create(skey("a"), b"a", T0 + 10)
    clock.advance(11)
    assert store.load(skey("a")) is EXPIRED
    assert len(store) == 0
    assert store.load(skey("a")) is None


def test_loads_racing_writes_deletes_and_evictions_see_whole_records(load_path):
    """Every load returns None, a tombstone, or a record one write stored whole; none raises."""
    store = MemoryStore(max_sessions=8)
    keys = [skey(f"k{i}") for i in range(12)]  # more keys than max_sessions: evictions too
    far = time.time() + 3600
    stop = threading.Event()
    seen: list = []
    errors: list = []

    def writer(n: int) -> None:
        rng = random.Random(n)
        try:
            while not stop.is_set():
                key = rng.choice(keys)
                blob = key + rng.choice(keys)  # the record names its own key: a mix-up shows
                action = rng.random()
                if action < 0.4:
                    store.create(key, blob, far)
                elif action < 0.7:
                    current = store.load(key)
                    if isinstance(current, StoredRecord):
                        store.cas(key, blob, current.version, far)
                elif action < 0.8:
                    store.touch(key, far)
                elif action < 0.9:
                    new_key = rng.choice(keys)
                    store.rotate(key, new_key, new_key + key, far, 60)
                else:
                    store.delete(key)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                for key in keys:
                    record = store.load(key)
                    if isinstance(record, StoredRecord):
                        seen.append(record.blob[:32] == key and record.version > 0)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert seen and all(seen)
    assert len(store) <= 8


def test_the_memory_table_is_compiled_exactly_when_the_c_kernel_is_selected():
    """MemoryStore is the table of _memory_py.py plus Store; the table compiled as
    fastsess.stores._memory with the C kernel, so a session calls load() and cas() as C."""
    from fastsess import core
    from fastsess.stores import _memory_py
    from fastsess.stores.base import Store

    if core.IMPLEMENTATION == "python":
        assert memory.MemoryTable is _memory_py.MemoryTable
    else:
        try:
            from fastsess.stores import _memory
        except ImportError:
            assert not core.REQUIRE_EXTENSIONS, "FASTSESS_REQUIRE_EXTENSIONS=1 but fastsess.stores._memory is not built"
            assert memory.MemoryTable is _memory_py.MemoryTable
        else:
            assert memory.MemoryTable is _memory.MemoryTable
            assert not isinstance(MemoryStore.load, types.FunctionType)  # compiled: no Python frame
    store = MemoryStore()
    assert isinstance(store, Store) and MemoryStore.__mro__[1] is memory.MemoryTable
    assert store.has_locked_update


def test_a_blob_given_as_a_buffer_is_kept_as_bytes(clock):
    store = MemoryStore(clock=clock)
    buffer = bytearray(b"first")
    version = store.create(skey("a"), buffer, T0 + TTL)
    buffer[:] = b"later"  # the caller reuses its buffer: the record keeps what was written
    assert store.load(skey("a")).blob == b"first"
    view = memoryview(bytearray(b"second"))
    assert store.cas(skey("a"), view, version, T0 + TTL) != version
    record = store.load(skey("a"))
    assert type(record.blob) is bytes and record.blob == b"second"
    assert type(record) is StoredRecord
