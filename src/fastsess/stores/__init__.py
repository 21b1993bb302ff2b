"""Where server-side records live; open_store() builds the one a Config names."""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import CONFLICT, EXISTS, GONE, TOMBSTONE, Store, StoredRecord

__all__ = ["CONFLICT", "EXISTS", "GONE", "TOMBSTONE", "Store", "StoredRecord", "open_store", "prepare_data_dir"]


def prepare_data_dir(path: str) -> str:
    """Create data_dir with its parents and check it is writable; ConfigError otherwise."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"session.data_dir {path!r} cannot be created: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise ConfigError(f"session.data_dir {path!r} is not a directory")
    probe = os.path.join(path, f".fastsess-probe-{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"session.data_dir {path!r} is not writable: {exc.strerror}") from None
    return path


def open_store(config) -> Store:
    """The store config.store_type names, opened and checked at startup."""
    kind = config.store_type
    if kind == "memory":
        from .memory import MemoryStore

        return MemoryStore(max_sessions=config.max_sessions)
    if kind == "file":
        from .file import FileStore

        return FileStore(prepare_data_dir(config.data_dir))
    if kind == "lmdb":
        from .lmdb import LmdbStore

        return LmdbStore(prepare_data_dir(config.data_dir), map_size=config.lmdb_map_size, sync=config.lmdb_sync)
    raise ConfigError(f"no store for session.type {kind!r}")
