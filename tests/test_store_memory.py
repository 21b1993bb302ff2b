"""MemoryStore specifics beyond the contract: the LRU bound and a cleanup step that stays short."""

from __future__ import annotations

import pytest

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
    assert store.load(skey("late")) is None  # a load still never returns an expired record
    assert len(store) == 100
