"""Configuration: Beaker-style `session.*` options read, coerced and checked once, at startup (SPEC 2, appendix)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys

import pytest

from fastsess import ConfigError, SessionMiddleware
from fastsess.config import MAX_COOKIE_LIFETIME, Config, collect_options, load_config
from fastsess.stores import prepare_data_dir

SECRET = "s3cr3t-" + "k" * 25  # exactly 32 characters
OTHER_SECRET = "0ther-" + "q" * 30
BASE = {"type": "memory", "secret": SECRET, "timeout": 600}


def config(**options) -> Config:
    """A Config from plain keyword arguments, on top of a valid memory setup."""
    return load_config(None, **{**BASE, **options})


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fastsess" and r.levelno >= logging.WARNING]


def import_store(kind: str) -> None:
    """Skip when the store module of this release is not written yet."""
    pytest.importorskip(f"fastsess.stores.{kind}", reason=f"fastsess.stores.{kind} does not import yet")


# ---------------------------------------------------------------- prefixes and sources


@pytest.mark.parametrize("prefix", ["session.", "beaker.session."])
def test_config_keys_with_either_prefix_are_read(prefix):
    cfg = load_config({prefix + "type": "memory", prefix + "secret": SECRET, prefix + "timeout": "900"})
    assert cfg.store_type == "memory"
    assert cfg.secrets == [SECRET]
    assert cfg.timeout == 900.0


@pytest.mark.parametrize("prefix", ["", "session.", "beaker.session."])
def test_keyword_arguments_may_be_plain_or_prefixed(prefix):
    cfg = load_config(None, **{prefix + "type": "memory", prefix + "secret": SECRET, prefix + "timeout": 60})
    assert cfg.store_type == "memory"
    assert cfg.timeout == 60.0


def test_middleware_accepts_beaker_style_prefixed_keyword_arguments():
    mw = SessionMiddleware(app, **{"session.type": "memory", "session.secret": SECRET, "session.timeout": "60"})
    assert mw.config.store_type == "memory"
    assert mw.config.timeout == 60.0


def test_keyword_arguments_win_over_the_config_dict():
    cfg = load_config({"session.secret": SECRET, "session.timeout": "100", "session.type": "memory"}, timeout=200)
    assert cfg.timeout == 200.0


def test_unprefixed_config_keys_are_ignored_silently(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    whole_app_config = {
        "debug": "true",
        "sqlalchemy.url": "sqlite://",
        "timeout": "not a number",  # would be a ConfigError if it were read
        "type": "ext:mongodb",
        "cache.type": "memory",
        "session.type": "memory",
        "session.secret": SECRET,
        "session.timeout": "600",
    }
    cfg = load_config(whole_app_config)
    assert cfg.store_type == "memory"
    assert cfg.timeout == 600.0
    assert not any("debug" in m or "sqlalchemy" in m or "cache.type" in m for m in warnings_of(caplog))


def test_a_beaker_style_session_underscore_key_is_a_config_warning_event(caplog):
    """Beaker still reads session_type (deprecated); fastsess says it ignores it, as every config warning."""
    caplog.set_level(logging.DEBUG, logger="fastsess")
    load_config({"session_type": "file", "session.type": "memory", "session.secret": SECRET, "session.timeout": "60"})
    [record] = [r for r in caplog.records if "session_type" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert (record.fastsess_event, record.sid) == ("config_warning", None)


def test_unprefixed_secret_in_the_config_dict_does_not_count():
    with pytest.raises(ConfigError, match="secret"):
        load_config({"secret": SECRET, "session.type": "memory", "session.timeout": "60"})


# ---------------------------------------------------------------- coercion of INI strings


@pytest.mark.parametrize(
    "text, expected",
    [
        ("true", True), ("True", True), ("yes", True), ("YES", True), ("on", True), ("1", True),
        ("false", False), ("False", False), ("no", False), ("off", False), ("OFF", False), ("0", False),
        (" true ", True), (True, True), (False, False), (1, True), (0, False),
    ],
)
def test_boolean_options_accept_ini_spellings(text, expected):
    cfg = config(httponly=text, auto=text, invalidate_corrupt=text, save_on_error=text, use_cookies=text)
    assert (cfg.httponly, cfg.auto, cfg.invalidate_corrupt, cfg.save_on_error, cfg.use_cookies) == (expected,) * 5


@pytest.mark.parametrize("text", ["maybe", "2", "", "truthy", "-1"])
def test_a_boolean_option_that_is_not_a_boolean_is_a_config_error(text):
    with pytest.raises(ConfigError, match="httponly"):
        config(httponly=text)


def test_integer_options_are_coerced_from_strings():
    cfg = config(max_age="3600", max_sessions=" 25 ", max_record_size="4096")
    assert (cfg.max_age, cfg.max_sessions, cfg.max_record_size) == (3600, 25, 4096)
    assert all(type(v) is int for v in (cfg.max_age, cfg.max_sessions, cfg.max_record_size))


@pytest.mark.parametrize("option", ["max_age", "max_sessions", "max_record_size"])
def test_an_integer_option_given_text_is_a_config_error_naming_it(option):
    with pytest.raises(ConfigError, match=option):
        config(**{option: "lots"})


@pytest.mark.parametrize("text, expected", [("1800", 1800.0), ("1800.5", 1800.5), (" 90 ", 90.0), (45, 45.0)])
def test_number_options_are_coerced_to_float_seconds(text, expected):
    cfg = config(timeout=text, absolute_timeout=text, touch_interval=text)
    assert (cfg.timeout, cfg.absolute_timeout, cfg.touch_interval) == (expected,) * 3
    assert type(cfg.timeout) is float


@pytest.mark.parametrize("text", ["half an hour", "-5", "nan", "inf"])
def test_a_timeout_that_is_not_a_non_negative_finite_number_is_a_config_error(text):
    with pytest.raises(ConfigError, match="timeout"):
        config(timeout=text)


NETWORK_STORES = {
    "redis": {"type": "redis", "url": "redis://127.0.0.1:9/0"},
    "memcached": {"type": "memcached", "url": "127.0.0.1:9"},
    "sql": {"type": "sql", "url": "sqlite://"},
}


@pytest.mark.parametrize("store", sorted(NETWORK_STORES))
@pytest.mark.parametrize("option", ["socket_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [None, "none", " None ", 0, "0", 0.0, -1, "-0.5", "inf", "nan", "soon"])
def test_a_network_timeout_that_is_not_positive_and_finite_is_a_config_error_at_build(store, option, value):
    """None or "none" would block a worker forever on a hung server; 0 fails every request."""
    import_store(store)
    with pytest.raises(ConfigError, match=f"session.{option} must be a positive, finite number of seconds"):
        SessionMiddleware(app, secret=SECRET, timeout=60, **NETWORK_STORES[store], **{option: value})


@pytest.mark.parametrize("value, expected", [("", 1.0), ("  ", 1.0), ("2.5", 2.5), (0.25, 0.25), (3, 3.0)])
def test_a_network_timeout_is_positive_seconds_and_empty_means_the_default(value, expected):
    cfg = config(socket_timeout=value, connect_timeout=value)
    assert (cfg.socket_timeout, cfg.connect_timeout) == (expected, expected)


@pytest.mark.parametrize("value", [None, 0, -1, float("inf"), "1"])
@pytest.mark.parametrize("store", ["redis", "memcached", "sql"])
def test_a_network_store_built_directly_refuses_a_timeout_that_is_not_positive(store, value):
    import_store(store)
    if store == "redis":
        from fastsess.stores.redis import RedisStore as build
        where = {"url": "redis://127.0.0.1:9/0", "connect_timeout": 1.0}
    elif store == "memcached":
        from fastsess.stores.memcached import MemcachedStore as build
        where = {"url": "127.0.0.1:9", "connect_timeout": 1.0}
    else:
        from fastsess.stores.sql import SqlStore as build
        where = {"url": "sqlite://", "connect_timeout": 1.0}
    with pytest.raises(ConfigError, match="session.socket_timeout must be a positive"):
        build(**where, socket_timeout=value)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("true", True),
        ("yes", True),
        ("false", False),
        ("off", False),
        (True, True),
        (False, False),
        ("3600", dt.timedelta(seconds=3600)),
        (3600, dt.timedelta(seconds=3600)),
        (dt.timedelta(days=2), dt.timedelta(days=2)),
        (dt.datetime(2040, 1, 2, 3, 4, 5), dt.datetime(2040, 1, 2, 3, 4, 5)),
    ],
)
def test_cookie_expires_takes_beaker_bool_seconds_timedelta_or_datetime(value, expected):
    assert config(cookie_expires=value).cookie_expires == expected


@pytest.mark.parametrize("value", ["next week", 1.5j, [3600]])
def test_cookie_expires_of_another_kind_is_a_config_error(value):
    with pytest.raises(ConfigError, match="cookie_expires"):
        config(cookie_expires=value)


def set_cookie_of(mw) -> str:
    """The Set-Cookie header of a request that writes the session."""
    def writer(environ, start_response):
        environ["beaker.session"]["user"] = "ada"
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    mw.wrap_app = writer
    headers: dict = {}
    mw({"REQUEST_METHOD": "GET", "wsgi.url_scheme": "https"}, lambda s, h, e=None: headers.update(h))
    return headers["Set-Cookie"]


@pytest.mark.parametrize(
    "options",
    [
        {"max_age": 10**12},
        {"max_age": 10**20},
        {"max_age": "99999999999999"},
        {"max_age": MAX_COOKIE_LIFETIME + 1},
        {"cookie_expires": 10**12},
        {"cookie_expires": 10**20},
        {"cookie_expires": "99999999999999"},
        {"cookie_expires": MAX_COOKIE_LIFETIME + 1},
        {"cookie_expires": dt.timedelta.max},
        {"cookie_expires": dt.datetime.max},
        {"cookie_expires": dt.datetime.max.replace(tzinfo=dt.timezone.utc)},
        {"cookie_expires": dt.datetime(9999, 12, 31, 20, tzinfo=dt.timezone(dt.timedelta(hours=-5)))},
    ],
    ids=repr,
)
def test_a_cookie_lifetime_past_the_last_http_date_is_a_config_error_at_build(options):
    """It used to be accepted, then fail every request that set a cookie (or overflow raw at build)."""
    with pytest.raises(ConfigError, match="session.(max_age|cookie_expires) is .*(1000 years|9999-12-31)"):
        SessionMiddleware(app, **BASE, **options)


@pytest.mark.parametrize(
    "options, expires",
    [
        ({"max_age": MAX_COOKIE_LIFETIME}, None),
        ({"cookie_expires": MAX_COOKIE_LIFETIME}, None),
        ({"cookie_expires": dt.datetime(9999, 12, 31, 23, 59, 59)}, "expires=Fri, 31 Dec 9999 23:59:59 GMT"),
    ],
    ids=repr,
)
def test_the_longest_cookie_lifetime_accepted_is_written_at_request_time(options, expires):
    header = set_cookie_of(SessionMiddleware(app, **BASE, **options))
    assert "expires=" in header
    if expires:
        assert expires in header


@pytest.mark.parametrize(
    "options",
    [
        {"max_age": 0},
        {"max_age": "-10"},
        {"cookie_expires": -1},
        {"cookie_expires": "-3600"},
        {"cookie_expires": dt.timedelta(0)},
        {"cookie_expires": dt.timedelta(days=-1)},
    ],
    ids=repr,
)
def test_a_cookie_lifetime_that_is_not_positive_is_a_config_error(options):
    """The browser would delete every session cookie on arrival."""
    with pytest.raises(ConfigError, match="must be a positive number of seconds.*delete every session cookie"):
        config(**options)


@pytest.mark.parametrize(
    "when", [dt.datetime(2000, 1, 1), dt.datetime(1969, 7, 20, tzinfo=dt.timezone.utc), dt.datetime.min]
)
def test_a_cookie_expires_date_that_has_passed_is_a_config_error(when):
    with pytest.raises(ConfigError, match="cookie_expires .* has passed"):
        config(cookie_expires=when)


def test_secure_accepts_auto_and_booleans():
    assert config(secure="auto").secure == "auto"
    assert config(secure="AUTO").secure == "auto"
    assert config(secure="false").secure is False
    assert config(secure="on").secure is True
    assert config().secure is True
    assert config().httponly is True


# ---------------------------------------------------------------- secrets


def test_several_secrets_are_given_one_per_line_and_the_first_signs():
    cfg = config(secret=f"\n  {SECRET}\n{OTHER_SECRET}  \n\n")
    assert cfg.secrets == [SECRET, OTHER_SECRET]


def test_a_comma_never_splits_a_secret():
    joined = SECRET + "," + OTHER_SECRET
    assert config(secret=joined).secrets == [joined]


def test_a_short_secret_with_a_comma_is_not_split_into_valid_looking_halves():
    with pytest.raises(ConfigError, match="secret"):
        config(secret="short,also-short")


def test_secrets_may_be_given_as_a_list():
    assert config(secret=[SECRET, OTHER_SECRET]).secrets == [SECRET, OTHER_SECRET]


def test_secret_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("FASTSESS_TEST_SECRET", SECRET)
    cfg = load_config({"session.secret": "env:FASTSESS_TEST_SECRET", "session.type": "memory", "session.timeout": "60"})
    assert cfg.secrets == [SECRET]


def test_secret_from_an_unset_environment_variable_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.delenv("FASTSESS_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError, match="FASTSESS_TEST_MISSING"):
        config(secret="env:FASTSESS_TEST_MISSING")


def test_secret_from_a_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    assert config(secret=f"file:{path}").secrets == [SECRET]


def test_secret_file_with_several_lines_gives_several_secrets(tmp_path):
    path = tmp_path / "secrets.txt"
    path.write_text(f"{SECRET}\n{OTHER_SECRET}\n")
    assert config(secret=f"file:{path}").secrets == [SECRET, OTHER_SECRET]


def test_env_and_file_secrets_mix_with_literal_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSESS_TEST_SECRET", OTHER_SECRET)
    path = tmp_path / "secret"
    path.write_text("f" * 40)
    cfg = config(secret=f"{SECRET}\nenv:FASTSESS_TEST_SECRET\nfile:{path}")
    assert cfg.secrets == [SECRET, OTHER_SECRET, "f" * 40]


@pytest.mark.parametrize("option", ["secret", "validate_key"])
def test_an_old_key_from_an_empty_environment_variable_is_a_config_error_naming_it(option, monkeypatch):
    """Dropping it would silently log out everyone whose cookie that old key sealed."""
    monkeypatch.setenv("FASTSESS_TEST_OLD_KEY", "  \n")
    with pytest.raises(ConfigError, match=f"session.{option} .*'FASTSESS_TEST_OLD_KEY', which is empty"):
        config(**{option: f"{OTHER_SECRET}\nenv:FASTSESS_TEST_OLD_KEY"})


def test_a_secret_from_an_empty_environment_variable_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.setenv("FASTSESS_TEST_SECRET", "")
    with pytest.raises(ConfigError, match="'FASTSESS_TEST_SECRET', which is empty"):
        load_config({"session.secret": "env:FASTSESS_TEST_SECRET", "session.type": "memory", "session.timeout": "60"})


def test_a_secret_from_an_empty_file_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "old-secret"
    path.write_text("\n")
    with pytest.raises(ConfigError, match=f"secret file '{path}' is empty"):
        config(secret=f"{SECRET}\nfile:{path}")


def test_unreadable_secret_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="secret"):
        config(secret=f"file:{tmp_path / 'missing'}")


def test_missing_secret_is_a_config_error():
    with pytest.raises(ConfigError, match="secret is required"):
        load_config(None, type="memory", timeout=60)


@pytest.mark.parametrize("blank", ["", "\n\n", "   ", []])
def test_blank_secret_is_a_config_error(blank):
    with pytest.raises(ConfigError, match="secret is required"):
        config(secret=blank)


@pytest.mark.parametrize(
    "secrets, position",
    [
        (["x" * 31], 1),
        (["short"], 1),
        ([SECRET, "x" * 31], 2),
        (["x" * 31, SECRET], 1),
        ([SECRET, OTHER_SECRET, "tiny"], 3),
    ],
)
def test_every_secret_must_have_at_least_32_characters(secrets, position):
    with pytest.raises(ConfigError, match=rf"secret \(key {position}\).*at least 32"):
        config(secret="\n".join(secrets))


def test_a_secret_of_exactly_32_characters_is_accepted():
    assert len(SECRET) == 32
    assert config(secret=SECRET).secrets == [SECRET]


def test_validate_key_shorter_than_32_characters_is_a_config_error():
    with pytest.raises(ConfigError, match="validate_key"):
        config(validate_key=f"{OTHER_SECRET}\nshort")


# ---------------------------------------------------------------- every Beaker option


BEAKER_OPTIONS = {
    "type": "memory",
    "data_dir": "/tmp/fastsess-test-unused",
    "lock_dir": "/tmp/fastsess-test-locks",
    "file_dir": "/tmp/fastsess-test-files",
    "dbm_dir": "/tmp/fastsess-test-dbm",
    "key": "beaker_session_id",
    "secret": SECRET,
    "validate_key": OTHER_SECRET,
    "encrypt_nonce_bits": "128",
    "crypto_type": "default",
    "timeout": "1800",
    "save_accessed_time": "false",
    "cookie_expires": "false",
    "cookie_domain": ".example.com",
    "cookie_path": "/app",
    "secure": "true",
    "httponly": "true",
    "samesite": "Strict",
    "data_serializer": "json",
    "invalidate_corrupt": "true",
    "auto": "true",
    "use_cookies": "true",
    "id": "ignored",
    "webtest_varname": "session",
    "log_file": "/tmp/fastsess-test.log",
    "memcache_module": "pylibmc",
    "url": "127.0.0.1:11211",
    "urls": "127.0.0.1:7000, 127.0.0.1:7001\n127.0.0.1:7002",
    "table_name": "beaker_cache",
    "schema_name": "public",
    "sa_opts": {"pool_recycle": 3600},
    "bind": None,
    "table": None,
    "enabled": "true",
}


@pytest.mark.parametrize("prefix", ["session.", "beaker.session."])
@pytest.mark.parametrize("option", sorted(BEAKER_OPTIONS))
def test_every_beaker_option_is_accepted_without_a_warning(option, prefix, caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    given = {prefix + k: v for k, v in BASE.items()}
    given[prefix + option] = BEAKER_OPTIONS[option]
    load_config(given)
    assert not [m for m in warnings_of(caplog) if "unknown" in m or "ignoring" in m]


def test_all_beaker_options_together_are_accepted(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    cfg = load_config({"beaker.session." + k: v for k, v in BEAKER_OPTIONS.items()})
    assert not [m for m in warnings_of(caplog) if "unknown" in m or "ignoring" in m]
    assert cfg.cookie_name == "beaker_session_id"
    assert cfg.cookie_domain == ".example.com"
    assert cfg.cookie_path == "/app"
    assert cfg.samesite == "Strict"
    assert cfg.save_accessed_time is False
    assert cfg.cookie_expires is False
    assert cfg.auto is True
    assert cfg.urls == ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
    assert cfg.webtest_varname == "session"
    assert cfg.validate_keys == [OTHER_SECRET]


def test_crypto_type_other_than_default_or_cryptography_is_a_config_error():
    assert config(crypto_type="cryptography")
    with pytest.raises(ConfigError, match="crypto_type"):
        config(crypto_type="pycrypto")


@pytest.mark.parametrize("mode", ["encrypted", "Encrypted", " ENCRYPTED "])
def test_cookie_mode_is_normalised_before_the_check_for_cryptography(mode, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)  # installed without fastsess[crypto]
    with pytest.raises(ConfigError, match="needs the cryptography package"):
        config(type="cookie", cookie_mode=mode)


@pytest.mark.parametrize("mode", ["Signed", " signed", "ENCRYPTED"])
def test_cookie_mode_is_case_and_space_insensitive(mode):
    assert config(type="cookie", cookie_mode=mode).cookie_mode == mode.strip().lower()


@pytest.mark.parametrize("size", [10**20, "100000000000000000000", sys.maxsize + 1])
def test_an_lmdb_map_size_beyond_what_lmdb_takes_is_a_config_error(size, tmp_path):
    # Not an OverflowError from the first request's lmdb.open(), past on_store_error.
    with pytest.raises(ConfigError, match="lmdb_map_size must be at most"):
        SessionMiddleware(app, type="lmdb", data_dir=str(tmp_path), secret=SECRET, timeout=60, lmdb_map_size=size)


@pytest.mark.parametrize(
    "option, value, setup",
    [
        ("data_dir", 123, {"type": "file"}),
        ("data_dir", b"/tmp/sessions", {"type": "file"}),
        ("url", 123, NETWORK_STORES["redis"]),
        ("url", 123, NETWORK_STORES["memcached"]),
        ("url", ["redis://127.0.0.1:9/0"], NETWORK_STORES["redis"]),
        ("key_prefix", 123, NETWORK_STORES["redis"]),
        ("key_prefix", 123, NETWORK_STORES["memcached"]),
        ("table_name", 1, NETWORK_STORES["sql"]),
        ("schema_name", 1, NETWORK_STORES["sql"]),
        ("type", 1, {}),
        ("key", 1, {}),
        ("cookie_domain", 1, {}),
        ("cookie_path", 1, {}),
        ("crypto_type", 1, {}),
        ("cookie_mode", 1, {"type": "cookie"}),
        ("on_conflict", 1, {}),
        ("on_store_error", 1, {}),
        ("webtest_varname", 1, {}),
    ],
)
def test_a_string_option_given_another_type_is_a_config_error_naming_it(option, value, setup):
    """Not a raw TypeError or AttributeError from deep inside a store."""
    if setup.get("type") in NETWORK_STORES:
        import_store(setup["type"])
    with pytest.raises(ConfigError, match=f"session.{option} must be a string, not {type(value).__name__}"):
        SessionMiddleware(app, **{**BASE, **setup, option: value})


def test_data_dir_may_be_a_path_object(tmp_path):
    assert config(type="file", data_dir=tmp_path / "sessions").data_dir == str(tmp_path / "sessions")


def test_memcached_url_may_be_a_list_of_servers():
    assert config(type="memcached", url=["127.0.0.1:9", "127.0.0.1:10"]).url == [
        "127.0.0.1:9", "127.0.0.1:10"
    ]


def test_sql_url_may_be_an_sqlalchemy_url():
    sa = pytest.importorskip("sqlalchemy")
    url = sa.make_url("sqlite://")
    assert config(type="sql", url=url).url is url


def test_sa_dotted_options_are_collected_into_sa_opts():
    cfg = config(**{"sa.pool_recycle": "3600", "sa_opts": {"echo": False}})
    assert cfg.sa_opts == {"pool_recycle": "3600", "echo": False}


# ---------------------------------------------------------------- store types


@pytest.mark.parametrize("name", ["memory", "MEMORY", " Memory "])
def test_type_names_are_case_and_space_insensitive(name):
    assert config(type=name).store_type == "memory"


def test_type_file_and_lmdb_are_known_names(tmp_path):
    assert config(type="file", data_dir=str(tmp_path)).store_type == "file"
    assert config(type="lmdb", data_dir=str(tmp_path)).store_type == "lmdb"


@pytest.mark.parametrize("kind", ["file", "lmdb"])
def test_file_and_lmdb_without_data_dir_are_a_config_error(kind):
    with pytest.raises(ConfigError, match="data_dir"):
        config(type=kind)


@pytest.mark.parametrize("size", [str(1 << 62), str(1 << 70)])
def test_an_lmdb_map_size_no_process_can_map_is_a_config_error_at_build(size, tmp_path):
    """The environment opens lazily in each worker: unchecked, every request would fail instead."""
    # Beyond a size_t it is refused for any store type; below, when no mmap can take it.
    with pytest.raises(ConfigError, match=rf"session.lmdb_map_size (is|must be at most \d+ bytes, got) {size}"):
        SessionMiddleware(app, {**{f"session.{k}": v for k, v in BASE.items()}, "session.type": "lmdb",
                                "session.data_dir": str(tmp_path / "sessions"), "session.lmdb_map_size": size})


def test_a_large_lmdb_map_size_that_can_be_mapped_is_accepted(tmp_path):
    cfg = config(type="lmdb", data_dir=str(tmp_path), lmdb_map_size=str(1 << 40))
    assert cfg.lmdb_map_size == 1 << 40


@pytest.mark.parametrize(
    "name, store",
    [
        ("ext:memcached", "memcached"),
        ("memcached", "memcached"),
        ("ext:redis", "redis"),
        ("ext:rediscluster", "redis"),
        ("redis", "redis"),
        ("ext:database", "sql"),
        ("ext:sqla", "sql"),
        ("sql", "sql"),
    ],
)
def test_beaker_type_names_map_to_fastsess_stores(name, store):
    assert Config(collect_options({"session.type": name, "session.secret": SECRET, "session.timeout": 60})
                  ).store_type == store


@pytest.mark.parametrize(
    "name, alternative",
    [("dbm", "lmdb"), ("ext:mongodb", "redis"), ("ext:google", "redis"), ("ext:mongodb", "sql")],
)
def test_refused_type_names_the_alternative(name, alternative):
    with pytest.raises(ConfigError, match="not supported") as info:
        config(type=name)
    assert f"type = {alternative}" in str(info.value)


def test_an_unknown_type_lists_the_choices():
    with pytest.raises(ConfigError, match="memory, file, lmdb"):
        config(type="postgres")


def test_type_unset_with_data_dir_is_file_without_the_memory_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fastsess")
    cfg = load_config(None, secret=SECRET, timeout=60, data_dir=str(tmp_path))
    assert cfg.store_type == "file"
    assert not [m for m in warnings_of(caplog) if "memory" in m]


def test_type_unset_without_data_dir_is_memory_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="fastsess")
    cfg = load_config(None, secret=SECRET, timeout=60)
    assert cfg.store_type == "memory"
    assert [m for m in warnings_of(caplog) if "memory" in m and "one process" in m]


def test_type_set_explicitly_gives_no_memory_warning(caplog):
    caplog.set_level(logging.WARNING, logger="fastsess")
    config(type="memory")
    assert not warnings_of(caplog)


# ---------------------------------------------------------------- refused options


@pytest.mark.parametrize("serializer", ["pickle", "PICKLE", object()])
def test_data_serializer_other_than_json_is_refused_with_the_reason(serializer):
    with pytest.raises(ConfigError, match="data_serializer") as info:
        config(data_serializer=serializer)
    message = str(info.value)
    assert "json" in message.lower()
    assert "unpickling" in message and "run code" in message


def test_data_serializer_json_is_accepted():
    assert config(data_serializer="json")
    assert config(data_serializer=" JSON ")


def on_event_hook(name, **fields):
    """An on_event hook an INI file can name as test_config:on_event_hook."""


def test_on_event_from_an_ini_file_is_a_module_and_attribute_that_is_imported():
    assert config(on_event=f"{__name__}:on_event_hook").on_event is on_event_hook
    assert config(on_event=" ").on_event is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("on_event_hook", "give module:function"),
        ("fastsess_no_such_module:hook", "cannot import 'fastsess_no_such_module'"),
        (f"{__name__}:no_such_hook", f"module '{__name__}' has no 'no_such_hook'"),
        (f"{__name__}:SECRET", "must be a callable"),
        (42, "must be a callable"),
    ],
)
def test_an_on_event_that_names_no_callable_is_a_config_error_saying_what_is_wrong(value, message):
    with pytest.raises(ConfigError, match=f"session.on_event.*{message}"):
        config(on_event=value)


@pytest.mark.parametrize("option", ["namespace_class", "session_class"])
def test_namespace_and_session_classes_are_refused(option):
    with pytest.raises(ConfigError, match=option) as info:
        config(**{option: "myapp.sessions.MySession"})
    assert "stores are the extension point" in str(info.value)


# ---------------------------------------------------------------- unknown options and typos


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("timout", "timeout"),
        ("secert", "secret"),
        ("cookie_expire", "cookie_expires"),
        ("http_only", "httponly"),
        ("samesit", "samesite"),
        ("datadir", "data_dir"),
        ("on_store_eror", "on_store_error"),
    ],
)
def test_a_typo_in_a_prefixed_key_names_the_option_meant(typo, meant):
    with pytest.raises(ConfigError) as info:
        load_config({**{"session." + k: v for k, v in BASE.items()}, "session." + typo: "1"})
    message = str(info.value)
    assert f"session.{typo}" in message
    assert f"did you mean session.{meant}?" in message


def test_a_typo_in_a_keyword_argument_names_the_option_meant():
    with pytest.raises(ConfigError, match=r"did you mean session\.timeout\?"):
        config(timout=60)


def test_a_typo_with_the_beaker_prefix_names_the_option_meant():
    with pytest.raises(ConfigError, match=r"session\.secert.*did you mean session\.secret\?"):
        load_config({"beaker.session.secert": SECRET, "session.secret": SECRET, "session.type": "memory"})


def test_a_typo_is_raised_even_without_strict_config():
    with pytest.raises(ConfigError, match="did you mean"):
        config(timout=60, strict_config="false")


@pytest.mark.parametrize("name", ["frobnicate_everything", "my_custom_flag", "foo", "kye"])
def test_an_unknown_key_that_is_not_a_typo_warns_and_is_ignored(name, caplog):
    caplog.set_level(logging.WARNING, logger="fastsess")
    config(**{name: "1"})
    assert [m for m in warnings_of(caplog) if f"session.{name}" in m]


@pytest.mark.parametrize("strict", ["true", "yes", True])
def test_an_unknown_key_raises_with_strict_config(strict):
    with pytest.raises(ConfigError, match="frobnicate_everything.*strict_config"):
        load_config({"session.frobnicate_everything": "1", "session.strict_config": strict}, **BASE)


def test_strict_config_accepts_a_clean_configuration():
    assert config(strict_config="true", cookie_expires="false")


# ---------------------------------------------------------------- cookie attribute rules


@pytest.mark.parametrize("secure", ["false", "auto"])
def test_samesite_none_without_secure_true_is_a_config_error(secure):
    with pytest.raises(ConfigError, match="samesite = None needs session.secure = true"):
        config(samesite="None", secure=secure)


def test_samesite_none_with_secure_is_accepted():
    assert config(samesite="none", secure="true").samesite == "None"


@pytest.mark.parametrize("text, expected", [("lax", "Lax"), ("STRICT", "Strict"), ("false", None), (False, None)])
def test_samesite_is_normalised(text, expected):
    assert config(samesite=text).samesite == expected


@pytest.mark.parametrize("text", ["", "  "])
def test_an_empty_samesite_means_the_default_lax_not_no_attribute(text):
    """`session.samesite =` in an INI file is unset, as for every other option; `false` drops SameSite."""
    assert config(samesite=text).samesite == "Lax"
    assert "SameSite=Lax" in set_cookie_of(SessionMiddleware(app, **BASE, samesite=text))


@pytest.mark.parametrize("path", ["app", "app/", "*", " /app"])
def test_a_cookie_path_that_does_not_start_with_a_slash_is_a_config_error(path):
    with pytest.raises(ConfigError, match="session.cookie_path .* must start with '/'"):
        SessionMiddleware(app, **BASE, cookie_path=path)


@pytest.mark.parametrize("path", ["/", "/app", "/app/", "/a b"])
def test_a_cookie_path_starting_with_a_slash_is_accepted(path):
    assert config(cookie_path=path).cookie_path == path


@pytest.mark.parametrize(
    "domain",
    ["exa mple.com", "example.com;", "a.com,b.com", "example.com:8080", " example.com", "b\u00fccher.de",
     "..example.com", "example..com", "example.com.", ".", "exam/ple.com", "[::1]"],
)
def test_a_cookie_domain_that_is_not_a_domain_name_is_a_config_error(domain):
    with pytest.raises(ConfigError, match="session.cookie_domain .* is not a domain name"):
        SessionMiddleware(app, **BASE, cookie_domain=domain)


@pytest.mark.parametrize("domain", ["example.com", ".example.com", "localhost", "127.0.0.1", "xn--bcher-kva.de",
                                    "my-host_1.internal"])
def test_a_cookie_domain_that_is_a_domain_name_is_accepted(domain):
    assert config(cookie_domain=domain).cookie_domain == domain


def test_samesite_of_another_value_is_a_config_error():
    with pytest.raises(ConfigError, match="samesite"):
        config(samesite="sometimes")


@pytest.mark.parametrize("name", ["__Host-session", "__Secure-session"])
@pytest.mark.parametrize("secure", ["false", "auto", "no"])
def test_prefixed_cookie_name_without_secure_true_is_a_config_error(name, secure):
    with pytest.raises(ConfigError, match="secure = true"):
        config(key=name, secure=secure)


@pytest.mark.parametrize("name", ["__Host-session", "__Secure-session"])
def test_prefixed_cookie_name_with_secure_is_accepted(name):
    assert config(key=name, secure="true").cookie_name == name


def test_host_prefixed_cookie_with_a_domain_is_a_config_error():
    with pytest.raises(ConfigError, match="__Host-"):
        config(key="__Host-session", cookie_domain=".example.com")


@pytest.mark.parametrize("path", ["/app", "/app/", "//"])
def test_host_prefixed_cookie_with_a_path_other_than_root_is_a_config_error(path):
    with pytest.raises(ConfigError, match="__Host-"):
        config(key="__Host-session", cookie_path=path)


def test_host_prefixed_cookie_with_root_path_is_accepted():
    assert config(key="__Host-session", cookie_path="/").cookie_path == "/"


@pytest.mark.parametrize("name", ["__host-session", "__HOST-session", "__secure-session", "__SeCuRe-session"])
def test_prefixed_cookie_name_in_any_case_without_secure_true_is_a_config_error(name):
    # Browsers match the prefixes in any case (RFC 6265bis) and drop such a cookie
    # without Secure: the session would silently never come back.
    with pytest.raises(ConfigError, match="secure = true"):
        config(key=name, secure="auto")


@pytest.mark.parametrize("option", [{"cookie_domain": ".example.com"}, {"cookie_path": "/app"}])
def test_host_prefix_in_another_case_still_refuses_a_domain_or_path(option):
    with pytest.raises(ConfigError, match="__Host-"):
        config(key="__host-session", secure="true", **option)


@pytest.mark.parametrize("secure", ["false", "auto"])
def test_partitioned_without_secure_true_is_a_config_error(secure):
    # Browsers drop a Partitioned cookie that lacks Secure (CHIPS), as they drop SameSite=None.
    with pytest.raises(ConfigError, match="partitioned needs session.secure = true"):
        config(partitioned="true", secure=secure)


def test_partitioned_with_secure_is_accepted():
    assert config(partitioned="true").partitioned is True


def test_secure_prefixed_cookie_may_have_a_domain_and_path():
    cfg = config(key="__Secure-session", cookie_domain=".example.com", cookie_path="/app")
    assert (cfg.cookie_domain, cfg.cookie_path) == (".example.com", "/app")


@pytest.mark.parametrize("name", ["bad name", "semi;colon", "quo\"te", "a=b", "caf\u00e9"])
def test_an_invalid_cookie_name_is_a_config_error(name):
    with pytest.raises(ConfigError, match="cookie name"):
        config(key=name)


def test_cookie_name_defaults_to_session():
    assert config().cookie_name == "session"
    assert config(key="").cookie_name == "session"


def test_errors_are_raised_when_the_middleware_is_built():
    with pytest.raises(ConfigError, match="samesite"):
        SessionMiddleware(app, type="memory", secret=SECRET, timeout=60, samesite="None", secure="false")


# ---------------------------------------------------------------- timeouts


def test_timeout_unset_logs_a_startup_warning(caplog):
    caplog.set_level(logging.WARNING, logger="fastsess")
    cfg = load_config(None, type="memory", secret=SECRET)
    assert cfg.timeout is None
    assert [m for m in warnings_of(caplog) if "timeout is not set" in m]


def test_timeout_set_gives_no_timeout_warning(caplog):
    caplog.set_level(logging.WARNING, logger="fastsess")
    config(timeout="1800")
    assert not [m for m in warnings_of(caplog) if "timeout" in m]


def test_touch_interval_defaults_to_a_tenth_of_the_timeout():
    assert config(timeout="600").touch_interval == 60.0


@pytest.mark.parametrize("interval", ["600", "900"])
def test_a_touch_interval_not_shorter_than_the_timeout_logs_a_startup_warning(interval, caplog):
    """Reads would never slide the expiry in time: the session times out while in use."""
    config(timeout="600", touch_interval=interval)
    assert [m for m in warnings_of(caplog) if "touch_interval" in m and "times out while in use" in m]


@pytest.mark.parametrize("options", [{"touch_interval": "599"}, {"touch_interval": "900", "save_accessed_time": "false"}])
def test_a_touch_interval_that_slides_in_time_or_is_unused_gives_no_warning(options, caplog):
    config(timeout="600", **options)
    assert not [m for m in warnings_of(caplog) if "touch_interval" in m]


def test_absolute_timeout_defaults_to_30_days():
    assert config().absolute_timeout == 30 * 24 * 3600


# ---------------------------------------------------------------- data_dir


def test_prepare_data_dir_creates_missing_parents(tmp_path):
    target = tmp_path / "a" / "b" / "sessions"
    assert prepare_data_dir(str(target)) == str(target)
    assert target.is_dir()


def test_prepare_data_dir_under_a_regular_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="data_dir"):
        prepare_data_dir(str(blocker / "sessions"))


def test_prepare_data_dir_that_is_a_regular_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="data_dir"):
        prepare_data_dir(str(blocker))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_prepare_data_dir_that_is_not_writable_is_a_config_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            prepare_data_dir(str(locked))
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("kind", ["file", "lmdb"])
def test_middleware_creates_a_missing_data_dir_with_parents(kind, tmp_path):
    import_store(kind)
    target = tmp_path / "var" / "lib" / "sessions"
    mw = SessionMiddleware(app, type=kind, secret=SECRET, timeout=60, data_dir=str(target))
    try:
        assert target.is_dir()
    finally:
        mw.close()


@pytest.mark.parametrize("kind", ["file", "lmdb"])
def test_middleware_with_a_data_dir_that_cannot_be_created_is_a_config_error(kind, tmp_path):
    import_store(kind)
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="data_dir"):
        SessionMiddleware(app, type=kind, secret=SECRET, timeout=60, data_dir=str(blocker / "sessions"))
