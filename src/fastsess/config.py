"""Reads Beaker-style `session.*` settings into a validated Config, once, at startup.

Keys may carry the prefix `session.` or `beaker.session.`; unprefixed keys in the
config dict are ignored (TurboGears and Pylons pass their whole configuration).
Strings from INI files are coerced per option type. Every error is a ConfigError
raised here, never at request time.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import mmap
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

log = logging.getLogger("fastsess")

MIN_SECRET_CHARS = 32
DEFAULT_ABSOLUTE_TIMEOUT = 30 * 24 * 3600
DEFAULT_MAX_RECORD_SIZE = 64 * 1024
TOMBSTONE_SECONDS = 60.0
#: connect_timeout and socket_timeout of the network stores, in seconds.
DEFAULT_NETWORK_TIMEOUT = 1.0
#: The cookie name Beaker uses, and fastsess's default with beaker_compat = true.
BEAKER_COOKIE_NAME = "beaker.session.id"
#: Beaker's default encrypt_nonce_bits.
BEAKER_NONCE_BITS = 128
#: Beaker's "far future" for cookie_expires = false: 2038-01-19.
FAR_FUTURE = 0x7FFFFFFF
#: The last moment an HTTP date can name, 9999-12-31 23:59:59 UTC: the kernels' http_date stops there.
MAX_HTTP_DATE = 253402300799
#: The longest cookie lifetime max_age or a cookie_expires duration may ask for: 1000 (Gregorian)
#: years. Browsers keep a cookie 400 days at most anyway; the bound keeps every expiry an HTTP
#: date can name (MAX_HTTP_DATE) for millennia, so no request can fail to write one.
MAX_COOKIE_LIFETIME = 1000 * 31556952

_PREFIXES = ("beaker.session.", "session.")

# Option kinds: how a value (often a string from an INI file) is coerced.
STR, BOOL, INT, NUMBER, KEYS, URLS, EXPIRES, DATE, OBJECT, IGNORED, REFUSED = (
    "str", "bool", "int", "number", "keys", "urls", "expires", "date", "object", "ignored", "refused",
)

#: Every option fastsess knows: Beaker 1.14's, then fastsess's own.
OPTIONS: dict[str, str] = {
    # Beaker 1.14
    "type": STR,
    "data_dir": STR,
    "lock_dir": IGNORED,
    "file_dir": IGNORED,
    "dbm_dir": IGNORED,
    "key": STR,
    "secret": KEYS,
    "validate_key": KEYS,
    "encrypt_key": KEYS,
    "encrypt_nonce_bits": INT,
    "crypto_type": STR,
    "timeout": NUMBER,
    "save_accessed_time": BOOL,
    "cookie_expires": EXPIRES,
    "cookie_domain": STR,
    "cookie_path": STR,
    "secure": STR,  # true / false / auto, coerced below
    "httponly": BOOL,
    "samesite": STR,
    "data_serializer": OBJECT,
    "invalidate_corrupt": BOOL,
    "auto": BOOL,
    "use_cookies": BOOL,
    "id": IGNORED,
    "namespace_class": REFUSED,
    "session_class": REFUSED,
    "webtest_varname": STR,
    "log_file": IGNORED,
    "memcache_module": IGNORED,
    "url": STR,
    "urls": URLS,
    "table_name": STR,
    "schema_name": STR,
    "sa_opts": OBJECT,
    "bind": OBJECT,
    "table": OBJECT,
    "enabled": BOOL,
    # fastsess's own
    "absolute_timeout": NUMBER,
    "touch_interval": NUMBER,
    "on_conflict": STR,
    "on_store_error": STR,
    "save_on_error": BOOL,
    "max_record_size": INT,
    "beaker_compat": BOOL,
    "beaker_compat_secrets": KEYS,
    "beaker_compat_encrypt_key": KEYS,
    "beaker_compat_until": DATE,
    "strict_config": BOOL,
    "max_age": INT,
    "partitioned": BOOL,
    "cookie_mode": STR,
    "max_sessions": INT,
    "lmdb_sync": BOOL,
    "lmdb_map_size": INT,
    "key_prefix": STR,
    "socket_timeout": NUMBER,
    "connect_timeout": NUMBER,
    "on_event": OBJECT,
}

#: Beaker's type names and ours, mapped to a fastsess store.
STORE_TYPES = {
    "memory": "memory",
    "file": "file",
    "lmdb": "lmdb",
    "memcached": "memcached",
    "ext:memcached": "memcached",
    "redis": "redis",
    "ext:redis": "redis",
    "ext:rediscluster": "redis",
    "sql": "sql",
    "ext:database": "sql",
    "ext:sqla": "sql",
    "cookie": "cookie",
}

#: Stores this release ships; the other names are recognised and refused clearly.
AVAILABLE_STORES = ("memory", "file", "lmdb", "memcached", "redis", "sql", "cookie")

REFUSED_TYPES = {
    "dbm": "dbm files corrupt under concurrent writers and cannot expire entries; use type = lmdb",
    "ext:mongodb": "MongoDB is not supported; use type = redis, or type = sql with your database",
    "ext:google": "the Google App Engine datastore is not supported; use type = redis or type = sql",
}

#: Where a short key that Beaker used belongs, when it is kept only to read what Beaker wrote.
_SHORT_BEAKER_KEY_HINTS = {
    "secret": "; generate one with `fastsess gen-secret` (a Beaker secret kept only to read Beaker's "
              "signed cookies goes in session.beaker_compat_secrets, of any length)",
    "validate_key": " (a Beaker validate_key kept only to read Beaker's sessions goes in "
                    "session.beaker_compat_secrets, of any length)",
    "encrypt_key": " (a Beaker encrypt_key kept only to read Beaker's sessions goes in "
                   "session.beaker_compat_encrypt_key, of any length)",
}

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance; option names are short, so the quadratic table is fine."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def closest_option(name: str) -> str | None:
    """The real option a name of 4+ characters is a typo of (edit distance <= 2), if any."""
    if len(name) < 4:
        return None
    best = min(OPTIONS, key=lambda option: _edit_distance(name, option))
    return best if _edit_distance(name, best) <= 2 else None


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"session.{name} must be a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"session.{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"session.{name} must be an integer, got {value!r}")


def _as_number(name: str, value: Any) -> float | None:
    """A non-negative number of seconds; empty or "none" means unset."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"session.{name} must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise ConfigError(f"session.{name} must be a non-negative number of seconds, got {value!r}")
    if value == float("inf"):
        raise ConfigError(f"session.{name} must be finite")
    return float(value)


def _as_str(name: str, value: Any) -> str | None:
    """A text option: a str, or None when unset; any other type is a ConfigError naming the option.

    Beaker would turn 123 into "123"; a number where a name, a path or a URL belongs
    is a mistake to report, not a directory to create.
    """
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"session.{name} must be a string, not {type(value).__name__}")


def _as_url(value: Any, store_type: str) -> Any:
    """session.url: a string; also a list of host:port strings (memcached) or an SQLAlchemy URL (sql)."""
    if value is None or isinstance(value, str):
        return value
    if store_type == "memcached" and isinstance(value, (list, tuple)) and all(isinstance(u, str) for u in value):
        return list(value)
    if store_type == "sql" and type(value).__module__.startswith("sqlalchemy.") and type(value).__name__ == "URL":
        return value
    raise ConfigError(f"session.url must be a string, not {type(value).__name__}")


def _as_timeout(name: str, value: Any) -> float:
    """A network store's connect or socket timeout: a positive, finite number of seconds.

    Empty means the default. None, "none" and 0 are refused: with no timeout a hung
    server blocks a worker forever, and 0 fails every request.
    """
    if isinstance(value, str) and not value.strip():
        return DEFAULT_NETWORK_TIMEOUT
    try:
        seconds = _as_number(name, value) if value is not None else None
    except ConfigError:
        seconds = None
    if not seconds:
        raise ConfigError(
            f"session.{name} must be a positive, finite number of seconds, got {value!r} "
            "(a network store never waits without a limit)"
        )
    return seconds


def _resolve_secret(name: str, text: str) -> str:
    """`env:NAME` and `file:/path` keep secrets out of INI files.

    One that holds nothing is an error: dropping it would silently leave a
    rotation without its old key, or fall back to "secret is required".
    """
    if text.startswith("env:"):
        var = text[4:]
        if var not in os.environ:
            raise ConfigError(f"session.{name} names environment variable {var!r}, which is not set")
        value = os.environ[var].strip()
        if not value:
            raise ConfigError(f"session.{name} names environment variable {var!r}, which is empty")
        return value
    if text.startswith("file:"):
        path = text[5:]
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"session.{name}: cannot read secret file {path!r}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"session.{name}: secret file {path!r} is empty")
        return value
    return text


def _as_keys(name: str, value: Any) -> list[str]:
    """One key per line (a comma never splits a key); env: and file: resolved per line."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.splitlines()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"session.{name} must be a string or a list of strings")
    keys = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if not isinstance(item, str):
            raise ConfigError(f"session.{name} must be a string or a list of strings")
        item = item.strip()
        if item:
            resolved = _resolve_secret(name, item)
            keys.extend(k.strip() for k in resolved.splitlines() if k.strip())
    return keys


def _as_urls(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [u.strip() for u in value.replace("\n", ",").split(",") if u.strip()]
    if isinstance(value, (list, tuple)):
        return [str(u).strip() for u in value if str(u).strip()]
    raise ConfigError(f"session.{name} must be comma- or newline-separated URLs")


def _check_cookie_lifetime(name: str, seconds: float) -> None:
    """A persistent cookie's lifetime: positive, and at most MAX_COOKIE_LIFETIME."""
    if seconds <= 0:
        raise ConfigError(
            f"session.{name} must be a positive number of seconds, got {seconds:g}: the browser would "
            "delete every session cookie on arrival"
        )
    if seconds > MAX_COOKIE_LIFETIME:
        raise ConfigError(
            f"session.{name} is {int(seconds)} seconds; at most {MAX_COOKIE_LIFETIME} (1000 years) is accepted "
            "(browsers keep a cookie 400 days at most)"
        )


def _as_expires(value: Any):
    """Beaker's cookie_expires: True (browser session), False (far future), seconds, timedelta, datetime."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        try:
            value = int(text)
        except ValueError:
            pass
    if isinstance(value, int):  # checked before timedelta() can overflow
        _check_cookie_lifetime("cookie_expires", value)
        return _dt.timedelta(seconds=value)
    if isinstance(value, _dt.timedelta):
        _check_cookie_lifetime("cookie_expires", value.total_seconds())
        return value
    if isinstance(value, _dt.datetime):
        _check_expiry_date(value)
        return value
    raise ConfigError(f"session.cookie_expires must be true, false, seconds, a timedelta or a datetime, got {value!r}")


def _check_expiry_date(when: _dt.datetime) -> None:
    """A fixed cookie expiry: in the future, and no later than an HTTP date can name."""
    if when.tzinfo is None:  # read as UTC, as the middleware (and Beaker) writes it
        when = when.replace(tzinfo=_dt.timezone.utc)
    try:
        timestamp = when.timestamp()
    except (OverflowError, ValueError):
        timestamp = None
    if timestamp is None or int(timestamp) > MAX_HTTP_DATE:
        raise ConfigError("session.cookie_expires is a date after 9999-12-31 23:59:59 UTC, the last an HTTP date "
                          "can name")
    if timestamp <= time.time():
        raise ConfigError(f"session.cookie_expires ({when.isoformat()}) has passed: the browser would delete every "
                          "session cookie on arrival")


def _as_hook(name: str, value: Any) -> Callable[..., Any] | None:
    """A callable, or from an INI file its `module:attribute` name, which is imported (as Paste's `call:`)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        module_name, _, attribute = value.strip().partition(":")
        if not module_name or not attribute:
            raise ConfigError(f"session.{name} = {value!r}: give module:function, as in mypackage.metrics:on_event")
        try:
            found: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
        except ImportError as exc:
            raise ConfigError(f"session.{name}: cannot import {module_name!r} ({exc})") from None
        except AttributeError:
            raise ConfigError(f"session.{name}: module {module_name!r} has no {attribute!r}") from None
        value = found
    if not callable(value):
        raise ConfigError(f"session.{name} must be a callable {name}(name, **fields)")
    return value


def _can_map(size: int) -> bool:
    """Whether this process can reserve `size` bytes of address space, as LMDB's map needs.

    The environment opens lazily in each worker, so a size no mmap can take would
    otherwise fail every request; an inaccessible private mapping commits no memory.
    """
    if not hasattr(mmap, "MAP_ANONYMOUS"):  # not a POSIX mmap: LMDB reports it when it opens
        return True
    try:
        mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0).close()
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _as_date(value: Any) -> _dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"session.beaker_compat_until must be a date (YYYY-MM-DD), got {value!r}")


def collect_options(config: Mapping | None = None, kwargs: Mapping | None = None) -> dict[str, Any]:
    """Strip prefixes: config keys need one; keyword arguments may be plain names."""
    options: dict[str, Any] = {}
    for source, plain_allowed in ((config or {}), False), ((kwargs or {}), True):
        for raw_key, value in source.items():
            if not isinstance(raw_key, str):
                continue
            for prefix in _PREFIXES:
                if raw_key.startswith(prefix):
                    options[raw_key[len(prefix):]] = value
                    break
            else:
                if plain_allowed:
                    options[raw_key] = value
                elif raw_key.startswith("sa.") is False and raw_key.startswith("session_"):
                    log.warning(
                        "ignoring %r: session options start with 'session.'", raw_key,
                        extra={"fastsess_event": "config_warning", "sid": None},
                    )
    return options


class Config:
    """The validated settings every layer reads; built once per middleware."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        opts = dict(options)
        self.strict_config = as_bool("strict_config", opts.pop("strict_config", False))
        self.sa_opts: dict[str, Any] = {}
        self._check_names(opts)
        get = opts.get

        # Store
        raw_type = get("type")
        data_dir = get("data_dir")
        if isinstance(data_dir, os.PathLike):  # a pathlib.Path, which Beaker takes too
            data_dir = os.fspath(data_dir)
        self.data_dir: str | None = _as_str("data_dir", data_dir) or None
        if raw_type in (None, ""):
            if self.data_dir:
                store_type = "file"
            else:
                store_type = "memory"
                log.warning(
                    "session.type is not set: using the memory store, whose sessions live in one process "
                    "(set session.type = lmdb)",
                    extra={"fastsess_event": "config_warning", "sid": None},
                )
        else:
            _as_str("type", raw_type)
            name = raw_type.strip().lower()
            if name in REFUSED_TYPES:
                raise ConfigError(f"session.type = {raw_type} is not supported: {REFUSED_TYPES[name]}")
            if name not in STORE_TYPES:
                raise ConfigError(
                    f"unknown session.type {raw_type!r}; choose one of memory, file, lmdb, memcached, "
                    "redis, sql or cookie"
                )
            store_type = STORE_TYPES[name]
        if store_type not in AVAILABLE_STORES:
            raise ConfigError(
                f"session.type = {raw_type} needs the {store_type} store, which this release of fastsess "
                f"does not include yet; available: {', '.join(AVAILABLE_STORES)}"
            )
        self.store_type = store_type
        if store_type in ("file", "lmdb") and not self.data_dir:
            raise ConfigError(f"session.type = {store_type} needs session.data_dir")
        self.max_sessions = _as_int("max_sessions", get("max_sessions", 10000))
        if self.max_sessions < 1:
            raise ConfigError("session.max_sessions must be at least 1")
        self.lmdb_sync = as_bool("lmdb_sync", get("lmdb_sync", False))
        self.lmdb_map_size = _as_int("lmdb_map_size", get("lmdb_map_size", 1 << 30))
        if self.lmdb_map_size < 1 << 16:
            raise ConfigError("session.lmdb_map_size must be at least 65536 bytes")
        if self.lmdb_map_size > sys.maxsize:  # LMDB takes a size_t, and could never map more
            raise ConfigError(
                f"session.lmdb_map_size must be at most {sys.maxsize} bytes, got {self.lmdb_map_size} "
                "(it is address space, not disk: the default, 1 GiB, grows as needed)"
            )
        if store_type == "lmdb" and not _can_map(self.lmdb_map_size):
            raise ConfigError(
                f"session.lmdb_map_size is {self.lmdb_map_size} bytes, more address space than this process "
                "can map; the map grows by itself when it fills, so the default (1 GiB) is enough to start"
            )
        self.url = _as_url(get("url"), store_type)
        self.urls = _as_urls("urls", get("urls")) if get("urls") is not None else []
        key_prefix = _as_str("key_prefix", get("key_prefix"))
        self.key_prefix = "fastsess:" if key_prefix is None else key_prefix
        self.table_name = _as_str("table_name", get("table_name")) or "fastsess_sessions"
        self.schema_name = _as_str("schema_name", get("schema_name")) or None
        sa_opts = get("sa_opts") or {}
        if not isinstance(sa_opts, Mapping):
            raise ConfigError("session.sa_opts must be a dict")
        self.sa_opts.update(sa_opts)
        self.bind = get("bind")
        self.table = get("table")
        self.socket_timeout = _as_timeout("socket_timeout", get("socket_timeout", DEFAULT_NETWORK_TIMEOUT))
        self.connect_timeout = _as_timeout("connect_timeout", get("connect_timeout", DEFAULT_NETWORK_TIMEOUT))

        # Codec
        serializer = get("data_serializer", "json")
        if not isinstance(serializer, str) or serializer.strip().lower() != "json":
            raise ConfigError(
                f"session.data_serializer = {serializer!r} is refused: fastsess stores only JSON (with tagged "
                "datetime, bytes, set, tuple, Decimal and UUID) so that loading a session can never run code, "
                "as unpickling can; remove the option or set it to json"
            )
        crypto_type = (_as_str("crypto_type", get("crypto_type")) or "default").strip().lower()
        if crypto_type not in ("default", "cryptography"):
            raise ConfigError("session.crypto_type must be default or cryptography (AES-GCM comes from cryptography)")
        #: Beaker's encrypt_nonce_bits: how long a nonce starts its encrypted values (fastsess's own
        #: AES-GCM always uses a random 96-bit nonce).
        self.encrypt_nonce_bits = _as_int("encrypt_nonce_bits", get("encrypt_nonce_bits", BEAKER_NONCE_BITS))

        # Keys
        self.secrets = _as_keys("secret", get("secret"))
        self.validate_keys = _as_keys("validate_key", get("validate_key"))
        self.encrypt_keys = _as_keys("encrypt_key", get("encrypt_key"))
        if not self.secrets:
            raise ConfigError(
                "session.secret is required: at least 32 characters of random text "
                "(generate one with `fastsess gen-secret`)"
            )
        for option, keys in (
            ("secret", self.secrets), ("validate_key", self.validate_keys), ("encrypt_key", self.encrypt_keys)
        ):
            for position, key in enumerate(keys, 1):
                if len(key) < MIN_SECRET_CHARS:
                    raise ConfigError(
                        f"session.{option} (key {position}) is {len(key)} characters; at least "
                        f"{MIN_SECRET_CHARS} are required{_SHORT_BEAKER_KEY_HINTS.get(option, '')}"
                    )
        # Normalised before anything reads it: "Encrypted" must not skip the check for cryptography.
        cookie_mode = _as_str("cookie_mode", get("cookie_mode")) or ("encrypted" if self.encrypt_keys else "signed")
        self.cookie_mode = cookie_mode.strip().lower()
        if self.cookie_mode not in ("signed", "encrypted"):
            raise ConfigError("session.cookie_mode must be signed or encrypted")
        if self.encrypt_keys or (store_type == "cookie" and self.cookie_mode == "encrypted"):
            try:
                import cryptography  # noqa: F401 - AES-GCM comes from it
            except ImportError:
                raise ConfigError(
                    "encryption (session.encrypt_key or cookie_mode = encrypted) needs the cryptography "
                    "package: pip install 'fastsess[crypto]'"
                ) from None
        self._beaker_options(get)
        if self.encrypt_keys and self.cookie_mode == "signed" and store_type == "cookie":
            raise ConfigError("session.encrypt_key is set, so cookie sessions are encrypted: drop cookie_mode = signed")

        # Timeouts
        self.timeout = _as_number("timeout", get("timeout"))
        if self.timeout == 0:
            self.timeout = None
        absolute = _as_number("absolute_timeout", get("absolute_timeout", DEFAULT_ABSOLUTE_TIMEOUT))
        self.absolute_timeout = absolute or None
        if store_type == "cookie" and not self.absolute_timeout:
            raise ConfigError(
                "session.absolute_timeout cannot be switched off for type = cookie: a cookie session has no "
                "server record to delete, so only its own expiry ends it"
            )
        self.save_accessed_time = as_bool("save_accessed_time", get("save_accessed_time", True))
        interval = _as_number("touch_interval", get("touch_interval"))
        if interval is None:
            base = self.timeout or self.absolute_timeout or DEFAULT_ABSOLUTE_TIMEOUT
            interval = base / 10.0
        self.touch_interval = interval
        if self.timeout is not None and self.save_accessed_time and interval >= self.timeout:
            log.warning(
                "session.touch_interval (%g s) is not shorter than session.timeout (%g s): a session that "
                "requests only read times out while in use",
                interval, self.timeout,
                extra={"fastsess_event": "config_warning", "sid": None},
            )
        if self.timeout is None:
            log.warning(
                "session.timeout is not set (or is 0): sessions expire only after absolute_timeout (%s s)",
                int(self.absolute_timeout) if self.absolute_timeout else "never",
                extra={"fastsess_event": "config_warning", "sid": None},
            )

        # Cookie
        self.use_cookies = as_bool("use_cookies", get("use_cookies", True))
        self.cookie_name = _as_str("key", get("key")) or (BEAKER_COOKIE_NAME if self.beaker_compat else "session")
        if not _is_token(self.cookie_name):
            raise ConfigError(f"session.key {self.cookie_name!r} is not a valid cookie name")
        self.cookie_domain = _as_str("cookie_domain", get("cookie_domain")) or None
        self.cookie_path = _as_str("cookie_path", get("cookie_path")) or "/"
        if self.cookie_domain is not None and not COOKIE_DOMAIN.fullmatch(self.cookie_domain):
            raise ConfigError(
                f"session.cookie_domain {self.cookie_domain!r} is not a domain name: letters, digits, '-' and '.', "
                "with an optional leading dot; no port, spaces, ';' or ','; an internationalised name in its "
                "xn-- form"
            )
        if any(c == ";" or c < " " or c > "~" for c in self.cookie_path):
            raise ConfigError("session.cookie_path contains a character not allowed in a cookie")
        if not self.cookie_path.startswith("/"):
            # A browser ignores such a Path and scopes the cookie to the request's directory instead.
            raise ConfigError(f"session.cookie_path {self.cookie_path!r} must start with '/'")
        secure = get("secure", True)
        if isinstance(secure, str) and secure.strip().lower() == "auto":
            self.secure: Any = "auto"
        else:
            self.secure = as_bool("secure", secure)
        self.httponly = as_bool("httponly", get("httponly", True))
        samesite = get("samesite", "Lax")
        if isinstance(samesite, str) and not samesite.strip():
            samesite = "Lax"  # an empty INI value means the default, as for the other options
        if samesite in (None, False) or (isinstance(samesite, str) and samesite.strip().lower() == "false"):
            self.samesite = None
        else:
            normalized = str(samesite).strip().capitalize()
            if normalized not in ("Lax", "Strict", "None"):
                raise ConfigError(f"session.samesite must be Lax, Strict or None, got {samesite!r}")
            self.samesite = normalized
        if self.samesite == "None" and self.secure is not True:
            raise ConfigError("session.samesite = None needs session.secure = true: browsers drop such a cookie")
        prefix = cookie_name_prefix(self.cookie_name)
        if prefix is not None and self.secure is not True:
            raise ConfigError(f"a cookie named {prefix}... (in any case) needs session.secure = true")
        if prefix == "__Host-" and (self.cookie_domain or self.cookie_path != "/"):
            raise ConfigError("a __Host- cookie may not have a Domain, and its Path must be /")
        self.cookie_expires = _as_expires(get("cookie_expires", True))
        max_age = get("max_age")
        self.max_age = _as_int("max_age", max_age) if max_age not in (None, "") else None
        if self.max_age is not None:
            _check_cookie_lifetime("max_age", self.max_age)
        self.partitioned = as_bool("partitioned", get("partitioned", False))
        if self.partitioned and self.secure is not True:
            raise ConfigError("session.partitioned needs session.secure = true: browsers drop such a cookie")

        # Behaviour
        self.auto = as_bool("auto", get("auto", False))
        self.invalidate_corrupt = as_bool("invalidate_corrupt", get("invalidate_corrupt", True))
        self.save_on_error = as_bool("save_on_error", get("save_on_error", False))
        self.max_record_size = _as_int("max_record_size", get("max_record_size", DEFAULT_MAX_RECORD_SIZE))
        if self.max_record_size < 256:
            raise ConfigError("session.max_record_size must be at least 256 bytes")
        self.on_conflict = (_as_str("on_conflict", get("on_conflict")) or "merge").strip().lower()
        if self.on_conflict not in ("merge", "raise"):
            raise ConfigError("session.on_conflict must be merge or raise")
        self.on_store_error = (_as_str("on_store_error", get("on_store_error")) or "raise").strip().lower()
        if self.on_store_error not in ("raise", "anonymous"):
            raise ConfigError("session.on_store_error must be raise or anonymous")
        self.webtest_varname = _as_str("webtest_varname", get("webtest_varname")) or None
        self.enabled = as_bool("enabled", get("enabled", True))
        self.on_event: Callable[..., Any] | None = _as_hook("on_event", get("on_event"))

    def _beaker_options(self, get: Callable[..., Any]) -> None:
        """beaker_compat and its beaker_compat_* options (SPEC 3, "Beaker migration").

        The keys that verify Beaker's HMAC-SHA1 tags are beaker_compat_secrets, of
        any length since Beaker never required one; without them, the configured
        secret and validate_key, which is what Beaker itself signed with. The
        until date is inclusive: Beaker cookies are accepted through the end of
        that day (UTC).
        """
        self.beaker_compat = as_bool("beaker_compat", get("beaker_compat", False))
        self.beaker_compat_until = _as_date(get("beaker_compat_until"))
        self.beaker_compat_secrets = _as_keys("beaker_compat_secrets", get("beaker_compat_secrets"))
        self._beaker_encryption(get)
        #: HMAC-SHA1 keys for Beaker's tags, as bytes; empty unless beaker_compat is on.
        self.beaker_keys: list[bytes] = []
        #: Unix time after which Beaker cookies are refused; None for no end.
        self.beaker_compat_deadline: float | None = None
        if not self.beaker_compat:
            if self.beaker_compat_secrets or self.beaker_compat_until is not None:
                log.warning(
                    "session.beaker_compat_secrets and beaker_compat_until are ignored: beaker_compat is off",
                    extra={"fastsess_event": "config_warning", "sid": None},
                )
            return
        keys = self.beaker_compat_secrets or self.secrets + self.validate_keys
        for key in dict.fromkeys(keys):  # once each, in order
            self.beaker_keys.append(key.encode("utf-8"))
        if self.beaker_compat_until is not None:
            end = _dt.datetime.combine(self.beaker_compat_until, _dt.time(), _dt.timezone.utc)
            self.beaker_compat_deadline = (end + _dt.timedelta(days=1)).timestamp()
            if self.beaker_compat_deadline <= _dt.datetime.now(_dt.timezone.utc).timestamp():
                log.warning(
                    "session.beaker_compat_until (%s) has passed: Beaker cookies are no longer accepted",
                    self.beaker_compat_until.isoformat(),
                    extra={"fastsess_event": "config_warning", "sid": None},
                )

    def _beaker_encryption(self, get: Callable[..., Any]) -> None:
        """The keys that open what Beaker encrypted with its encrypt_key.

        Beaker derives each AES key from its encrypt_key, salted with its
        validate_key and a per-value nonce. The encrypt keys are
        beaker_compat_encrypt_key, of any length, or else the configured
        encrypt_key. The salt is Beaker's validate_key: the key that verified a
        cookie's tag, or, for the records migrate-beaker reads, each of
        beaker_compat_secrets, validate_key and secret in turn. They are kept
        whether or not beaker_compat is on, since migrate-beaker needs them too.
        """
        self.beaker_compat_encrypt_keys = _as_keys("beaker_compat_encrypt_key", get("beaker_compat_encrypt_key"))
        keys = self.beaker_compat_encrypt_keys or self.encrypt_keys
        #: AES key material for Beaker's encrypted values, as bytes; empty when none is configured.
        self.beaker_encrypt_keys: list[bytes] = [key.encode("utf-8") for key in dict.fromkeys(keys)]
        salts = self.beaker_compat_secrets + self.validate_keys + self.secrets
        #: Candidates for Beaker's validate_key, which salts its key derivation.
        self.beaker_validate_keys: list[bytes] = [key.encode("utf-8") for key in dict.fromkeys(salts)]
        if not self.beaker_encrypt_keys:
            return
        bits = self.encrypt_nonce_bits
        if bits <= 0 or bits % 8:
            raise ConfigError(f"session.encrypt_nonce_bits must be a positive multiple of 8, as in Beaker, got {bits}")
        try:
            import cryptography  # noqa: F401 - Beaker's AES comes from it here too
        except ImportError:
            raise ConfigError(
                "reading Beaker's encrypted sessions (session.beaker_compat_encrypt_key) needs the "
                "cryptography package: pip install 'fastsess[crypto]'"
            ) from None

    def _check_names(self, opts: dict) -> None:
        for name in list(opts):
            if name.startswith("sa."):
                self.sa_opts[name[3:]] = opts.pop(name)
                continue
            kind = OPTIONS.get(name)
            if kind == REFUSED:
                raise ConfigError(
                    f"session.{name} is refused: fastsess has no pluggable session or namespace classes; "
                    "stores are the extension point (fastsess.stores.base.Store)"
                )
            if kind is not None:
                continue
            meant = closest_option(name)
            if meant is not None:
                raise ConfigError(f"unknown option session.{name}: did you mean session.{meant}?")
            if self.strict_config:
                raise ConfigError(f"unknown option session.{name} (strict_config is on)")
            log.warning(
                "ignoring unknown option session.%s", name, extra={"fastsess_event": "config_warning", "sid": None}
            )
            del opts[name]


#: A Domain attribute: dot-separated labels of letters, digits, '-' (and '_', which some hosts
#: use), with the optional leading dot Beaker users write.
COOKIE_DOMAIN = re.compile(r"\.?[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def cookie_name_prefix(name: str) -> str | None:
    """The prefix browsers enforce that the cookie name carries, in any case: "__Host-", "__Secure-" or None.

    Browsers enforce the prefixes case-insensitively (RFC 6265bis): a cookie named
    __host-session without Secure is dropped just as __Host-session would be.
    """
    lowered = name[:9].lower()
    if lowered.startswith("__host-"):
        return "__Host-"
    if lowered == "__secure-":
        return "__Secure-"
    return None


def _is_token(name: str) -> bool:
    return bool(name) and all("!" <= c <= "~" and c not in '()<>@,;:\\"/[]?={}' for c in name)


def load_config(config: Mapping | None = None, **kwargs: Any) -> Config:
    """Build a Config from a (prefixed) config dict and keyword arguments; kwargs win."""
    return Config(collect_options(config, kwargs))


def cookie_attribute(what: str, value: str | None, cookie_name: str) -> str | None:
    """A per-session domain or path, held to the rules the configured one meets: browsers drop the rest."""
    if value is None:
        return None
    if not isinstance(value, str) or any(c == ";" or c < " " or c > "~" for c in value):
        raise ValueError(f"invalid cookie {what}")
    if len(value) > 255:  # the record holds it behind a 1-byte length (docs/FORMATS.md, "Record")
        raise ValueError(f"cookie {what} longer than 255 characters")
    if what == "domain" and not COOKIE_DOMAIN.fullmatch(value):
        raise ValueError("a cookie domain is a host name: letters, digits, '-', '_' and '.', no port")
    if what == "path" and not value.startswith("/"):
        raise ValueError("a cookie path must start with '/'")
    if cookie_name_prefix(cookie_name) == "__Host-" and (what == "domain" or value != "/"):
        raise ValueError("a __Host- cookie may not have a Domain, and its Path must be /")
    return value
