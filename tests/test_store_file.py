"""FileStore specifics beyond the contract: on-disk layout, locks, mtime expiry, I/O errors."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from fastsess.errors import StoreError
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
    return Path(store.data_dir, name[:2], name[2:4], name)


def session_files(store: FileStore) -> list[Path]:
    root = Path(store.data_dir)
    return [p for p in root.rglob("*") if p.is_file() and p.parent != root / "locks"]


def test_records_are_sharded_by_hex_key_and_named_only_in_hex(store):
    keys = [skey(f"user-{i}") for i in range(20)]
    for key in keys:
        store.create(key, b"data", T0 + TTL)
    store.rotate(keys[0], skey("rotated"), b"data", T0 + TTL, 60)
    files = session_files(store)
    assert len(files) == 21  # no temporary files left behind
    for path in files:
        relative = path.relative_to(store.data_dir).as_posix()
        assert re.fullmatch(r"([0-9a-f]{2})/([0-9a-f]{2})/\1\2[0-9a-f]{60}", relative), relative
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
    assert store.load(skey("a")) is None
    assert store.cleanup(clock.now, 10) == 1
    assert not record_path(store, skey("a")).exists()


def test_cleanup_resumes_where_the_budget_ran_out(store, clock):
    for i in range(40):
        store.create(skey(f"k{i}"), b"x", T0 + 10)
    clock.advance(20)
    counts = [store.cleanup(clock.now, 7) for _ in range(7)]
    assert counts == [7, 7, 7, 7, 7, 5, 0]
    assert session_files(store) == []


def test_truncated_file_is_treated_as_missing_and_logged(store, caplog):
    store.create(skey("a"), b"some session data", T0 + TTL)
    path = record_path(store, skey("a"))
    path.write_bytes(path.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, logger="fastsess"):
        assert store.load(skey("a")) is None
    events = [(r.fastsess_event, r.sid) for r in caplog.records]
    assert events == [("store_error", None)]
    assert skey("a").hex() not in caplog.text


def test_flipped_bit_in_the_blob_is_treated_as_missing(store):
    store.create(skey("a"), b"some session data", T0 + TTL)
    path = record_path(store, skey("a"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert store.load(skey("a")) is None


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
