"""Where server-side records live; open_store() builds the one a Config names."""

from __future__ import annotations

import logging
import os

from ..errors import ConfigError, StoreError
from .base import CONFLICT, EXISTS, EXPIRED, GONE, TOMBSTONE, Store, StoredRecord

__all__ = ["CONFLICT", "EXISTS", "EXPIRED", "GONE", "TOMBSTONE", "Store", "StoredRecord", "open_store", "prepare_data_dir"]


def prepare_data_dir(path: str) -> str:
    """Create data_dir with its parents and check it is writable; ConfigError otherwise.

    Writable means permitted: the probe creates an empty file and writes no
    data, so a full disk is not a ConfigError. It is an outage, which the
    store reports per request as a StoreError, under on_store_error.
    """
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"session.data_dir {path!r} cannot be created: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise ConfigError(f"session.data_dir {path!r} is not a directory")
    probe = os.path.join(path, f".fastsess-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"session.data_dir {path!r} is not writable: {exc.strerror}") from None
    return path


_EXTRAS = {"memcached": "memcached", "redis": "redis", "sql": "sql"}
#: what the sql extra installs; any other missing module is a database driver the URL names
_SQL_EXTRA_MODULES = ("sqlalchemy", "psycopg")


def open_store(config, *, boot_during_outage: bool | None = None) -> Store | None:
    """The store config.store_type names, opened and checked at startup; None for cookie sessions.

    boot_during_outage: an sql store whose database does not answer is still
    built, and serves anonymous sessions until it does (by default, when
    on_store_error = anonymous). Commands pass False: they need the database now.
    """
    try:
        return _open(config, config.on_store_error == "anonymous" if boot_during_outage is None else boot_during_outage)
    except ImportError as exc:
        if config.store_type == "sql" and (exc.name or "").split(".")[0] not in _SQL_EXTRA_MODULES:
            raise ConfigError(
                f"session.url names the database driver {exc.name}, which is not installed: install it, "
                "or name a driver that is (postgresql+psycopg://, sqlite://)"
            ) from None
        extra = _EXTRAS.get(config.store_type, "all")
        raise ConfigError(
            f"session.type = {config.store_type} needs a client library that is not installed "
            f"({exc.name}): pip install 'fastsess[{extra}]'"
        ) from None


def _open(config, boot_during_outage: bool) -> Store | None:
    kind = config.store_type
    if kind == "cookie":
        return None  # the session travels in the cookie
    if kind == "memory":
        from .memory import MemoryStore

        return MemoryStore(max_sessions=config.max_sessions)
    if kind == "file":
        from .file import FileStore

        return FileStore(prepare_data_dir(config.data_dir))
    if kind == "lmdb":
        from .lmdb import LmdbStore

        return LmdbStore(prepare_data_dir(config.data_dir), map_size=config.lmdb_map_size, sync=config.lmdb_sync)
    if kind == "memcached":
        from .memcached import MemcachedStore

        if not config.url:
            raise ConfigError("session.type = memcached needs session.url (host:port;host:port)")
        return MemcachedStore(
            config.url, key_prefix=config.key_prefix,
            connect_timeout=config.connect_timeout, socket_timeout=config.socket_timeout,
        )
    if kind == "redis":
        from .redis import RedisStore

        if not config.url and not config.urls:
            raise ConfigError("session.type = redis needs session.url, or session.urls for a cluster")
        return RedisStore(
            url=config.url, urls=config.urls, key_prefix=config.key_prefix,
            connect_timeout=config.connect_timeout, socket_timeout=config.socket_timeout,
        )
    if kind == "sql":
        from .sql import SqlStore

        # As Beaker's ext:database: session.url, else session.sa.url (the engine's own option).
        sa_opts = dict(config.sa_opts)
        url = config.url or sa_opts.get("url")
        sa_opts.pop("url", None)
        if not url and config.bind is None and config.data_dir:
            url = "sqlite:///" + os.path.join(prepare_data_dir(config.data_dir), "sessions.sqlite")
        if not url and config.bind is None:
            raise ConfigError(
                "session.type = sql needs session.url (an SQLAlchemy URL; session.sa.url also works) or session.bind"
            )
        store = SqlStore(
            url=url, bind=config.bind, table_name=config.table_name, schema_name=config.schema_name,
            sa_opts=sa_opts, table=config.table, create_table=False,
            connect_timeout=max(config.connect_timeout or 2.0, 2.0), socket_timeout=config.socket_timeout or 5.0,
        )
        try:
            store.table_created = store.create_table()
        except StoreError as exc:
            if not boot_during_outage:
                store.close()
                raise
            # Workers must boot during a database outage: requests get anonymous
            # sessions until the database (and the table) are there.
            store.startup_events = (("store_error", logging.ERROR,
                "sql store: could not check or create the sessions table at startup; "
                f"serving anonymous sessions until the database answers: {exc}"),)
        else:
            store.startup_events = (
                ("table_created", logging.INFO, "sql store: created the sessions table") if store.table_created
                else ("table_found", logging.DEBUG, "sql store: the sessions table is in place"),
            )
        return store
    raise ConfigError(f"no store for session.type {kind!r}")
