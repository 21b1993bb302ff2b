"""beaker_compat: Beaker's signed id cookies and cookie sessions are read, verified first, and reissued.

The Beaker cookies here are made by Beaker 1.14 itself (its middleware, or its
SignedCookie), so the tests pin what real deployments carry.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import logging
import re
import time
import uuid
from pathlib import Path

import pytest
from beaker.middleware import SessionMiddleware as BeakerMiddleware
from beaker.session import SignedCookie
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webtest import TestApp

from beaker_side import (
    BEAKER_SECRET,
    HTTPS,
    NAME,
    SECRET,
    Clock,
    CountingStore,
    beaker_cookie,
    quickstart_cookie_settings,
)
from fastsess import ConfigError, SessionMiddleware, core
from fastsess._core_py import _id_mac_input
from fastsess.beaker_compat import is_beaker_value
from fastsess.beaker_compat import open_id_cookie as open_beaker_id_cookie
from fastsess.config import load_config
from fastsess.events import RATE_LIMIT_PER_SECOND
from fastsess.session import MAX_COOKIE_BYTES


def app(environ, start_response):
    session = environ["beaker.session"]
    path = environ["PATH_INFO"]
    body = ""
    if path == "/inc":
        session["n"] = session.get("n", 0) + 1
        session.save()
    elif path == "/login":
        session.regenerate_id()
    elif path == "/id":
        body = session.id
    elif path == "/csrf":
        body = session.get_csrf_token()
    elif path == "/logout":
        session.invalidate()
    if not body:
        body = repr(sorted(dict(session.items()).items()))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


def make(store_type: str = "memory", clock=None, **options) -> SessionMiddleware:
    settings = {
        "session.type": store_type, "session.secret": SECRET, "session.timeout": 3600,
        "session.beaker_compat": "true", "session.beaker_compat_secrets": BEAKER_SECRET,
    }
    settings.update({f"session.{k}": v for k, v in options.items()})
    mw = SessionMiddleware(app, settings)
    if clock is not None:
        mw.service.clock = clock
        if mw.store is not None:
            mw.store.clock = clock
    return mw


def beaker_id_cookie(beaker_id: str, secret: str = BEAKER_SECRET) -> str:
    """The value Beaker 1.14 puts in its signed id cookie, made by Beaker's own SignedCookie."""
    return SignedCookie(secret).value_encode(beaker_id)[1]


def seed(mw: SessionMiddleware, beaker_id: str, data: dict, created: float | None = None) -> None:
    """A record where migrate-beaker puts it: under store_key(Beaker id)."""
    now = mw.service.clock()
    created = now - 100 if created is None else created
    blob = core.pack_record(created, now - 50, 0, None, None, None, core.encode_data(data))
    key = core.store_key(beaker_id)
    mw.store.create(key, mw.service.seal_record(key, blob), mw.service.expires_at(created, now))


def get(mw, path: str, cookie: str | None = None, **kw):
    headers = {"Cookie": f"{NAME}={cookie}"} if cookie is not None else {}
    return TestApp(mw, extra_environ=HTTPS).get(path, headers=headers, **kw)


def flip(value: str, i: int) -> str:
    """value with the hex digit at i changed."""
    return value[:i] + ("1" if value[i] == "0" else "0") + value[i + 1 :]


def set_cookie_value(response) -> str | None:
    values = [h for h in response.headers.getall("Set-Cookie") if h.startswith(NAME + "=")]
    assert len(values) <= 1
    return values[0].split(";")[0].split("=", 1)[1] if values else None


# ---------------------------------------------------------------- the kernel: kept Beaker ids


def test_a_beaker_id_is_re_tagged_in_a_67_character_id_cookie(core):
    beaker_id = uuid.uuid4().hex
    key = b"k" * 32
    value = core.sign_id(beaker_id, key, 7, NAME)
    assert len(value) == 67 and not is_beaker_value(value)
    raw = core.b64url_decode(value)
    assert raw[0] == 0x41 and raw[1] == 7 and raw[2:34] == beaker_id.encode("ascii")
    tag = hmac.new(key, _id_mac_input(0x41, 7, NAME, beaker_id.encode("ascii")), hashlib.sha256).digest()[:16]
    assert raw[34:] == tag
    assert core.open_id_cookie(value, [(7, key)], NAME) == (beaker_id, 0)
    assert core.open_id_cookie(value, [(7, key)], "session") is None  # the cookie name is bound


def test_both_kernels_re_tag_a_beaker_id_identically():
    from fastsess import _core_py

    c_core = pytest.importorskip("fastsess._core")
    beaker_id = uuid.uuid4().hex
    assert c_core.sign_id(beaker_id, b"k" * 32, 3, NAME) == _core_py.sign_id(beaker_id, b"k" * 32, 3, NAME)


@pytest.mark.parametrize("bad", ["A" * 32, "0123456789abcdef0123456789abcdeF", "g" * 32, "a" * 31, "a" * 33])
def test_only_beaker_1_14_ids_are_re_tagged(core, bad):
    with pytest.raises(ValueError):
        core.sign_id(bad, b"k" * 32, 7, NAME)


def test_a_kept_id_cookie_is_checked_like_any_id_cookie(core):
    beaker_id = uuid.uuid4().hex
    key = b"k" * 32
    raw = bytearray(core.b64url_decode(core.sign_id(beaker_id, key, 7, NAME)))
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        assert core.open_id_cookie(core.b64url_encode(bytes(flipped)), [(7, key)], NAME) is None, i
    # A well-tagged 0x41 cookie whose id is not lowercase hex is still refused.
    odd = b"G" * 32
    tag = hmac.new(key, _id_mac_input(0x41, 7, NAME, odd), hashlib.sha256).digest()[:16]
    assert core.open_id_cookie(core.b64url_encode(b"\x41\x07" + odd + tag), [(7, key)], NAME) is None
    # The version byte is bound: the same bytes tagged as a version-1 cookie do not open as a kept id.
    ascii_id = beaker_id.encode("ascii")
    tag1 = hmac.new(key, _id_mac_input(1, 7, NAME, ascii_id), hashlib.sha256).digest()[:16]
    assert core.open_id_cookie(core.b64url_encode(b"\x41\x07" + ascii_id + tag1), [(7, key)], NAME) is None


def test_kept_id_vectors_in_formats_md_hold(core):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "FORMATS.md").read_text(encoding="utf-8")

    def vector(label: str) -> str:
        match = re.search(r"^" + re.escape(label) + r"\s+(\S+)\s*$", doc, re.MULTILINE)
        assert match, f"FORMATS.md has no vector {label!r}"
        return match.group(1)

    prk = core.secret_prk("correct horse battery staple, 32+ chars!")
    key, kid = core.derive_subkey(prk, "fastsess/v1/id-tag"), core.derive_key_id(prk)
    beaker_id = vector("beaker id")
    assert core.store_key(beaker_id).hex() == vector("beaker store key")
    assert core.sign_id(beaker_id, key, kid, NAME) == vector("kept id cookie")
    assert core.open_id_cookie(vector("kept id cookie"), [(kid, key)], NAME) == (beaker_id, 0)
    assert beaker_id_cookie(beaker_id, "beaker secret") == vector("beaker id cookie")
    config = load_config({"session.secret": SECRET, "session.beaker_compat": "true",
                          "session.beaker_compat_secrets": "beaker secret"})
    assert open_beaker_id_cookie(vector("beaker id cookie"), config, time.time()) == beaker_id


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.binary(min_size=32, max_size=32),
    hex_id=st.binary(min_size=16, max_size=16).map(bytes.hex),
    kid=st.integers(0, 255),
    name=st.text(min_size=1, max_size=20),
    flip=st.integers(0, 49),
)
def test_the_twin_kernels_agree_on_kept_id_cookies(raw, hex_id, kid, name, flip):
    from fastsess import _core_py

    c_core = pytest.importorskip("fastsess._core")
    key = b"k" * 32
    value = c_core.sign_id(hex_id, key, kid, name)
    assert value == _core_py.sign_id(hex_id, key, kid, name)
    for kernel in (c_core, _core_py):
        assert kernel.open_id_cookie(value, [(kid, key)], name) == (hex_id, 0)
    forged = bytearray(c_core.b64url_decode(value))
    forged[flip] ^= 0x20
    candidates = [c_core.b64url_encode(bytes(forged)), c_core.b64url_encode(b"\x41" + bytes([kid]) + raw + raw[:16])]
    for candidate in candidates:
        assert c_core.open_id_cookie(candidate, [(kid, key)], name) == _core_py.open_id_cookie(
            candidate, [(kid, key)], name
        )


# ---------------------------------------------------------------- configuration


def test_beaker_compat_defaults_the_cookie_name_to_beakers():
    assert load_config({"session.secret": SECRET, "session.beaker_compat": "true"}).cookie_name == NAME
    assert load_config({"session.secret": SECRET}).cookie_name == "session"
    config = load_config({"session.secret": SECRET, "session.beaker_compat": "true", "session.key": "sid"})
    assert config.cookie_name == "sid"


def test_beaker_compat_secrets_may_be_short_and_default_to_secret_and_validate_key():
    config = load_config({"session.secret": SECRET, "session.beaker_compat": "yes",
                          "session.beaker_compat_secrets": "old\nolder"})
    assert config.beaker_keys == [b"old", b"older"]
    config = load_config({"session.secret": SECRET, "session.validate_key": SECRET + "!",
                          "session.beaker_compat": "on"})
    assert config.beaker_keys == [SECRET.encode(), (SECRET + "!").encode()]


def test_a_short_beaker_secret_in_secret_says_where_it_belongs():
    """Beaker signed its id cookies with `secret` and never required a length."""
    with pytest.raises(ConfigError, match="is 13 characters.*session.beaker_compat_secrets, of any length"):
        load_config({"session.secret": BEAKER_SECRET, "session.beaker_compat": "true", "session.type": "memory"})


def test_beaker_compat_until_is_a_date_and_inclusive():
    config = load_config({"session.secret": SECRET, "session.beaker_compat": "true",
                          "session.beaker_compat_until": "2031-03-04"})
    assert config.beaker_compat_until == _dt.date(2031, 3, 4)
    assert config.beaker_compat_deadline == _dt.datetime(2031, 3, 5, tzinfo=_dt.timezone.utc).timestamp()
    with pytest.raises(ConfigError, match="beaker_compat_until"):
        load_config({"session.secret": SECRET, "session.beaker_compat": "true",
                     "session.beaker_compat_until": "soon"})


def test_beaker_options_without_beaker_compat_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fastsess"):
        config = load_config({"session.secret": SECRET, "session.beaker_compat_secrets": "old"})
    assert config.beaker_keys == [] and "beaker_compat is off" in caplog.text


def test_a_past_beaker_compat_until_warns_at_startup(caplog):
    with caplog.at_level(logging.WARNING, logger="fastsess"):
        load_config({"session.secret": SECRET, "session.beaker_compat": "true",
                     "session.beaker_compat_until": "2001-01-01"})
    assert "has passed" in caplog.text


# ---------------------------------------------------------------- legacy signed id cookies


def test_a_beaker_id_cookie_from_beaker_itself_loads_the_migrated_session_and_is_reissued(tmp_path):
    def beaker_app(environ, start_response):
        environ["beaker.session"]["user"] = "ada"
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    beaker = TestApp(BeakerMiddleware(beaker_app, {
        "session.type": "file", "session.data_dir": str(tmp_path), "session.secret": BEAKER_SECRET,
    }))
    cookie = beaker.get("/").headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    beaker_id = cookie[40:]
    mw = make()
    seed(mw, beaker_id, {"user": "ada"})
    response = get(mw, "/", cookie)
    assert response.text == "[('user', 'ada')]"
    reissued = set_cookie_value(response)
    assert reissued is not None and not is_beaker_value(reissued)
    assert core.open_id_cookie(reissued, mw.service.keys.id_keys, NAME) == (beaker_id, 0)
    assert get(mw, "/id", reissued).text == beaker_id  # the Beaker id is kept
    assert mw.service.events.counts["beaker_cookie_accepted"] == 1


def test_the_reissued_cookie_carries_the_session_on():
    mw = make()
    beaker_id = uuid.uuid4().hex
    seed(mw, beaker_id, {"n": 1})
    reissued = set_cookie_value(get(mw, "/inc", beaker_id_cookie(beaker_id)))
    assert get(mw, "/inc", reissued).text == "[('n', 3)]"
    assert set_cookie_value(get(mw, "/", reissued)) is None  # fastsess format now: nothing to reissue


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda bid: flip(beaker_id_cookie(bid), 5), id="tag-flipped"),
        pytest.param(lambda bid: beaker_id_cookie(bid)[:-1] + "0", id="id-flipped"),
        pytest.param(lambda bid: beaker_id_cookie(bid, "another-secret"), id="other-secret"),
        pytest.param(lambda bid: "0" * 40 + bid, id="zero-tag"),
        pytest.param(lambda bid: bid, id="unsigned"),
        pytest.param(lambda bid: beaker_id_cookie(bid)[:40], id="tag-only"),
        pytest.param(lambda bid: beaker_id_cookie(bid).upper(), id="upper-case"),
    ],
)
def test_a_forged_or_unsigned_beaker_id_makes_no_store_lookup(forge):
    mw = make()
    counting = CountingStore(mw.store)
    mw.service.store = counting
    beaker_id = uuid.uuid4().hex
    if beaker_id[-1] == "0":
        beaker_id = beaker_id[:-1] + "1"
    seed(mw, beaker_id, {"user": "ada"})
    response = get(mw, "/", forge(beaker_id))
    assert response.text == "[]"
    assert counting.loads == 0
    assert set_cookie_value(response) is None
    assert mw.service.events.counts["invalid_cookie"] == 1
    assert mw.service.events.counts["beaker_cookie_accepted"] == 0


def test_a_beaker_id_that_is_not_migrated_gives_a_fresh_session():
    mw = make()
    response = get(mw, "/inc", beaker_id_cookie(uuid.uuid4().hex))
    assert response.text == "[('n', 1)]"
    value = set_cookie_value(response)
    assert value is not None and len(core.open_id_cookie(value, mw.service.keys.id_keys, NAME)[0]) == 43


def test_beaker_compat_until_in_the_past_refuses_beaker_cookies():
    beaker_id = uuid.uuid4().hex
    mw = make(beaker_compat_until="2001-01-01")
    counting = CountingStore(mw.store)
    mw.service.store = counting
    seed(mw, beaker_id, {"user": "ada"})
    assert get(mw, "/", beaker_id_cookie(beaker_id)).text == "[]"
    assert counting.loads == 0


def test_beaker_compat_until_ends_at_the_end_of_that_day_utc():
    beaker_id = uuid.uuid4().hex
    end = _dt.datetime(2031, 3, 5, tzinfo=_dt.timezone.utc).timestamp()
    clock = Clock(end - 1)
    mw = make(clock=clock, beaker_compat_until="2031-03-04")
    seed(mw, beaker_id, {"user": "ada"})
    assert get(mw, "/", beaker_id_cookie(beaker_id)).text == "[('user', 'ada')]"
    clock.now = end
    assert get(mw, "/", beaker_id_cookie(beaker_id)).text == "[]"


def test_a_re_tagged_cookie_outlives_beaker_compat():
    """Once reissued, the cookie is fastsess's own: ending beaker_compat logs nobody out."""
    beaker_id = uuid.uuid4().hex
    clock = Clock(_dt.datetime(2031, 3, 4, 12, tzinfo=_dt.timezone.utc).timestamp())
    mw = make(clock=clock, beaker_compat_until="2031-03-04", timeout=30 * 86400)
    seed(mw, beaker_id, {"user": "ada"})
    reissued = set_cookie_value(get(mw, "/", beaker_id_cookie(beaker_id)))
    clock.now += 7 * 86400
    assert get(mw, "/", reissued).text == "[('user', 'ada')]"
    assert get(mw, "/", beaker_id_cookie(beaker_id)).text == "[]"


def test_beaker_cookies_are_not_read_without_beaker_compat():
    beaker_id = uuid.uuid4().hex
    mw = make(beaker_compat="false", key=NAME)
    seed(mw, beaker_id, {"user": "ada"})
    assert get(mw, "/", beaker_id_cookie(beaker_id)).text == "[]"


def test_a_parallel_request_with_the_old_beaker_cookie_keeps_the_session():
    """During cutover a browser may fire requests with the Beaker cookie before the reissued one lands."""
    mw = make()
    beaker_id = uuid.uuid4().hex
    seed(mw, beaker_id, {"n": 1})
    old = beaker_id_cookie(beaker_id)
    first = get(mw, "/inc", old)
    second = get(mw, "/inc", old)  # fired before the first response arrived
    assert (first.text, second.text) == ("[('n', 2)]", "[('n', 3)]")
    assert set_cookie_value(first) == set_cookie_value(second)  # the same id, re-tagged alike
    assert get(mw, "/", set_cookie_value(first)).text == "[('n', 3)]"


def test_regenerate_id_replaces_the_beaker_id():
    mw = make()
    beaker_id = uuid.uuid4().hex
    seed(mw, beaker_id, {"user": "ada"})
    old = beaker_id_cookie(beaker_id)
    retagged = set_cookie_value(get(mw, "/", old))
    login = get(mw, "/login", retagged)
    new = set_cookie_value(login)
    new_id = core.open_id_cookie(new, mw.service.keys.id_keys, NAME)[0]
    assert len(new_id) == 43 and new_id != beaker_id
    assert get(mw, "/", new).text == "[('user', 'ada')]"
    for stale in (old, retagged):  # the Beaker id is now a tombstone: empty, read-only, no cookie
        response = get(mw, "/inc", stale)
        assert response.text == "[('n', 1)]" and set_cookie_value(response) is None
    assert get(mw, "/", new).text == "[('user', 'ada')]"


def test_the_beaker_id_cookie_works_on_a_server_side_store(tmp_path):
    mw = make("lmdb", data_dir=str(tmp_path / "lmdb"))
    beaker_id = uuid.uuid4().hex
    seed(mw, beaker_id, {"user": "ada"})
    assert get(mw, "/", beaker_id_cookie(beaker_id)).text == "[('user', 'ada')]"
    mw.close()


def test_events_never_carry_the_beaker_id_or_the_cookie(caplog):
    seen = []
    mw = make(on_event=lambda name, **fields: seen.append((name, fields)))
    beaker_id = uuid.uuid4().hex
    seed(mw, beaker_id, {"user": "ada"})
    cookie = beaker_id_cookie(beaker_id)
    with caplog.at_level(logging.DEBUG, logger="fastsess"):
        get(mw, "/", cookie)
        get(mw, "/", "0" * 40 + beaker_id)
    assert [name for name, _ in seen] == ["beaker_cookie_accepted", "invalid_cookie"]
    text = caplog.text + repr(seen) + repr([r.__dict__ for r in caplog.records])
    assert beaker_id not in text and cookie[:40] not in text


def test_replaying_a_beaker_cookie_cannot_flood_the_logs(caplog):
    # Until beaker_compat_until a client may send its Beaker cookie on every request:
    # each one is counted, but the log lines are rate-limited like bad cookies.
    mw = make()
    beaker_id = uuid.uuid4().hex
    seed(mw, beaker_id, {"user": "ada"})
    cookie = beaker_id_cookie(beaker_id)
    with caplog.at_level(logging.DEBUG, logger="fastsess"):
        for _ in range(50):
            get(mw, "/", cookie)
    assert mw.service.events.counts["beaker_cookie_accepted"] == 50
    logged = [r for r in caplog.records if getattr(r, "fastsess_event", None) == "beaker_cookie_accepted"]
    assert len(logged) <= 2 * RATE_LIMIT_PER_SECOND  # the replays may span two seconds


# ---------------------------------------------------------------- Beaker cookie sessions


def beaker_cookie_session(data: dict | None = None, path: str | None = None, **options) -> str:
    """A cookie session made by Beaker 1.14's middleware: signed zlib-compressed JSON, TurboGears' default."""
    return beaker_cookie(quickstart_cookie_settings(**options), data, path)


def test_a_beaker_cookie_session_is_read_and_resealed_in_fastsess_format():
    mw = make("cookie")
    cookie = beaker_cookie_session({"user": "ada", "n": 1, "cart": [1, {"~t": "looks like a tag"}]})
    response = get(mw, "/inc", cookie)
    assert response.text == "[('cart', [1, {'~t': 'looks like a tag'}]), ('n', 2), ('user', 'ada')]"
    sealed = set_cookie_value(response)
    opened = mw.service.open_sealed(sealed)
    assert opened is not None and opened[4] == 0
    assert get(mw, "/inc", sealed).text.startswith("[('cart', [1, {'~t': 'looks like a tag'}]), ('n', 3)")
    assert mw.service.events.counts["beaker_cookie_accepted"] == 1


def test_a_read_alone_reseals_the_beaker_cookie_session_on_the_same_response():
    mw = make("cookie")
    response = get(mw, "/", beaker_cookie_session())
    assert response.text == "[('n', 1), ('user', 'ada')]"
    sealed = set_cookie_value(response)
    assert sealed is not None and mw.service.open_sealed(sealed) is not None


def test_beakers_bookkeeping_keys_move_into_the_record_header():
    clock = Clock()
    mw = make("cookie", clock=clock)
    before = time.time()
    cookie = beaker_cookie_session(path="/app")
    response = get(mw, "/", cookie)
    assert response.text == "[('n', 1), ('user', 'ada')]"  # no _creation_time, _accessed_time, _id, _path
    header = [h for h in response.headers.getall("Set-Cookie") if h.startswith(NAME)][0]
    assert "Path=/app" in header
    issued_at, _, _, payload, _ = mw.service.open_sealed(set_cookie_value(response))
    created, _, _, domain, path, _, _ = core.unpack_record(payload[core.ID_BYTES:])
    assert before - 1 <= created == issued_at <= time.time() and domain is None and path == "/app"


@pytest.mark.parametrize("field, value", [
    ("_path", "noslash"),  # Beaker takes any path; browsers treat this one as no Path at all
    ("_path", "/a b\u00e9"),
    ("_domain", "example.com:8080"),  # a port is no part of a cookie domain
    ("_domain", "a;b"),
])
def test_a_beaker_cookie_scope_fastsess_would_refuse_gives_way_to_the_configured_one(field, value):
    mw = make("cookie")
    response = get(mw, "/", beaker_cookie_session({"user": "ada", "n": 1, field: value}))
    assert response.text == "[('n', 1), ('user', 'ada')]"
    header = [h for h in response.headers.getall("Set-Cookie") if h.startswith(NAME)][0]
    assert "Path=/;" in header + ";" and "Domain" not in header
    _, _, _, payload, _ = mw.service.open_sealed(set_cookie_value(response))
    _, _, _, domain, path, _, _ = core.unpack_record(payload[core.ID_BYTES:])
    assert domain is None and path is None


def test_logging_out_of_a_beaker_cookie_session_expires_the_cookie_and_issues_no_new_one():
    # invalidate() without a write leaves a new, empty, unsaved session: it gets no
    # cookie of its own, and the Beaker cookie is expired rather than resealed.
    mw = make("cookie")
    response = get(mw, "/logout", beaker_cookie_session({"user": "ada"}))
    [header] = response.headers.getall("Set-Cookie")
    assert header.startswith(f"{NAME}=;") and "01 Jan 1970" in header


@pytest.mark.parametrize("quoted", [False, True])
def test_a_padded_beaker_cookie_session_is_read_bare_or_quoted(quoted):
    """Beaker writes base64 with '=', '+' and '/' bare; http.cookies (and what follows its lead) quotes it."""
    for size in range(40):
        cookie = beaker_cookie_session({"user": "x" * size})
        if cookie.endswith("="):
            break
    else:
        pytest.fail("no padded value in 40 tries")
    if quoted:
        cookie = f'"{cookie}"'
    assert get(make("cookie"), "/", cookie).text == f"[('user', '{'x' * size}')]"


def test_parallel_requests_with_one_beaker_cookie_session_get_the_same_id():
    mw = make("cookie")
    cookie = beaker_cookie_session()
    assert get(mw, "/csrf", cookie).text == get(mw, "/csrf", cookie).text


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda v: flip(v, 3), id="tag-flipped"),
        pytest.param(lambda v: v[:-3] + ("A" if v[-3] != "A" else "B") + v[-2:], id="body-flipped"),
        pytest.param(lambda v: v[40:], id="unsigned"),
    ],
)
def test_a_forged_beaker_cookie_session_gives_a_fresh_session(forge):
    mw = make("cookie")
    cookie = beaker_cookie_session().strip('"')
    response = get(mw, "/", forge(cookie))
    assert response.status_int == 200 and response.text == "[]"
    assert mw.service.events.counts["beaker_cookie_accepted"] == 0


def test_a_beaker_cookie_session_signed_with_another_key_gives_a_fresh_session():
    mw = make("cookie", beaker_compat_secrets="not-the-key")
    assert get(mw, "/", beaker_cookie_session()).text == "[]"


def test_a_pickled_beaker_cookie_session_is_refused_never_unpickled():
    mw = make("cookie")
    cookie = beaker_cookie_session(data_serializer="pickle")
    response = get(mw, "/", cookie)
    assert response.status_int == 200 and response.text == "[]"
    assert mw.service.events.counts["invalid_cookie"] == 1


def test_an_idle_beaker_cookie_session_has_expired():
    clock = Clock(time.time() + 3601)  # timeout is 3600 s
    mw = make("cookie", clock=clock)
    assert get(mw, "/", beaker_cookie_session()).text == "[]"
    assert mw.service.events.counts["expired"] == 1


def test_a_beaker_cookie_session_after_beaker_compat_until_gives_a_fresh_session():
    mw = make("cookie", beaker_compat_until="2001-01-01")
    assert get(mw, "/", beaker_cookie_session()).text == "[]"


def test_a_beaker_cookie_session_too_large_to_reseal_gives_a_fresh_session_not_an_error():
    # zlib packs a repetitive value into a small Beaker cookie; uncompressed it would not fit.
    mw = make("cookie")
    cookie = beaker_cookie_session({"blob": "ab" * MAX_COOKIE_BYTES})
    response = get(mw, "/", cookie)
    assert response.status_int == 200 and response.text == "[]"


def test_a_beaker_cookie_session_is_read_by_encrypted_fastsess_cookies():
    pytest.importorskip("cryptography")
    mw = make("cookie", encrypt_key="an-encryption-key-of-32-characters-or-more")
    response = get(mw, "/inc", beaker_cookie_session())
    assert response.text == "[('n', 2), ('user', 'ada')]"
    assert get(mw, "/", set_cookie_value(response)).text == "[('n', 2), ('user', 'ada')]"
