"""beaker_compat with a server-side store: a Beaker cookie session moves into the store, once.

TurboGears' quickstart keeps its sessions in Beaker cookies (`type = cookie`,
`validate_key`, `data_serializer = json`). An operator who moves such an app to
fastsess with a server-side store logs nobody out: the verified Beaker cookie
becomes a record under the id derived from Beaker's `_id`, and the response
carries a fastsess id cookie. The Beaker cookies here are made by Beaker 1.14
itself.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import time
import zlib

import pytest
from beaker.session import SignedCookie
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
from fastsess import SessionMiddleware, core
from fastsess.beaker_compat import converted_key, cookie_session_id
from fastsess.config import TOMBSTONE_SECONDS
from fastsess.errors import StoreError
from fastsess.session import Session
from fastsess.stores.base import EXPIRED, TOMBSTONE, StoredRecord

TIMEOUT = 3600
STORES = ["memory", "file", "lmdb"]


def app(environ, start_response):
    session = environ["beaker.session"]
    path = environ["PATH_INFO"]
    body = ""
    if path == "/inc":
        session["n"] = session.get("n", 0) + 1
        session.save()
    elif path == "/cart":
        session.setdefault("cart", []).append(len(session.get("cart", [])))
        session.save()
    elif path == "/login":
        session.regenerate_id()
    elif path == "/logout":
        session.delete()
    elif path == "/id":
        body = session.id
    elif path == "/meta":
        body = json.dumps([session.created, session.last_accessed, session.path, session.is_new])
    if not body:
        body = repr(sorted(dict(session.items()).items()))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


@pytest.fixture
def make(tmp_path):
    """make(store_type, clock=None, **options): a fastsess middleware with beaker_compat on; closed after the test."""
    made = []

    def make(store_type: str = "memory", clock=None, **options) -> SessionMiddleware:
        settings = {
            "session.type": store_type, "session.secret": SECRET, "session.timeout": TIMEOUT,
            "session.beaker_compat": "true", "session.beaker_compat_secrets": BEAKER_SECRET,
        }
        if store_type in ("file", "lmdb"):
            settings["session.data_dir"] = str(tmp_path / f"{store_type}-{len(made)}")
        settings.update({f"session.{k}": v for k, v in options.items()})
        mw = SessionMiddleware(app, settings)
        if clock is not None:
            mw.service.clock = clock
            mw.store.clock = clock
        made.append(mw)
        return mw

    yield make
    for mw in made:
        mw.close()


def beaker_cookie_session(data: dict | None = None, path: str | None = None, **options) -> str:
    """A cookie session made by Beaker 1.14's middleware, configured as TurboGears' quickstart is."""
    return beaker_cookie(quickstart_cookie_settings(**options), data, path).strip('"')


def beaker_contents(cookie: str) -> dict:
    """What Beaker put in its cookie (the test reads it; fastsess verifies before it looks)."""
    return json.loads(zlib.decompress(base64.b64decode(cookie[40:])))


def get(mw, path: str, cookie: str | None = None, extra: dict | None = None):
    headers = {"Cookie": f"{NAME}={cookie}"} if cookie is not None else {}
    return TestApp(mw, extra_environ={**HTTPS, **(extra or {})}).get(path, headers=headers)


def set_cookie_value(response) -> str | None:
    values = [h for h in response.headers.getall("Set-Cookie") if h.startswith(NAME + "=")]
    assert len(values) <= 1
    return values[0].split(";")[0].split("=", 1)[1] if values else None


def cookie_id(mw, value: str) -> str:
    opened = core.open_id_cookie(value, mw.service.keys.id_keys, NAME)
    assert opened is not None, "not a fastsess id cookie"
    return opened[0]


def stored(mw, session_id: str):
    return mw.store.load(core.store_key(session_id))


def flip(value: str, i: int) -> str:
    return value[:i] + ("1" if value[i] == "0" else "0") + value[i + 1 :]


# ---------------------------------------------------------------- the move


@pytest.mark.parametrize("store_type", STORES)
def test_a_beaker_cookie_session_moves_into_the_store_and_carries_on(make, store_type):
    mw = make(store_type)
    cookie = beaker_cookie_session({"user": "ada", "n": 1, "cart": [1, {"~t": "looks like a tag"}]})
    first = get(mw, "/", cookie)
    assert first.text == "[('cart', [1, {'~t': 'looks like a tag'}]), ('n', 1), ('user', 'ada')]"
    issued = set_cookie_value(first)
    assert issued is not None and "Cache-Control" in first.headers
    session_id = cookie_id(mw, issued)
    assert session_id == cookie_session_id(beaker_contents(cookie)["_id"])
    assert isinstance(stored(mw, session_id), StoredRecord)
    assert mw.service.events.counts["beaker_cookie_accepted"] == 1
    # The fastsess cookie reads the same data from the store, and changes to it stick.
    assert get(mw, "/", issued).text == first.text
    assert get(mw, "/inc", issued).text == "[('cart', [1, {'~t': 'looks like a tag'}]), ('n', 2), ('user', 'ada')]"
    assert get(mw, "/cart", issued).text.startswith("[('cart', [1, {'~t': 'looks like a tag'}, 2]), ('n', 2)")
    assert get(mw, "/", issued).text == "[('cart', [1, {'~t': 'looks like a tag'}, 2]), ('n', 2), ('user', 'ada')]"
    assert mw.service.events.counts["beaker_cookie_accepted"] == 1


@pytest.mark.parametrize("store_type", STORES)
def test_a_change_on_the_first_request_is_stored_with_the_moved_session(make, store_type):
    mw = make(store_type)
    response = get(mw, "/inc", beaker_cookie_session())
    assert response.text == "[('n', 2), ('user', 'ada')]"
    assert get(mw, "/", set_cookie_value(response)).text == "[('n', 2), ('user', 'ada')]"


def test_beakers_bookkeeping_moves_into_the_record_header(make):
    mw = make()
    before = time.time()
    cookie = beaker_cookie_session(path="/app")
    contents = beaker_contents(cookie)
    response = get(mw, "/meta", cookie)
    created, last_accessed, path, is_new = json.loads(response.text)
    assert before - 1 <= created == contents["_creation_time"] and last_accessed == contents["_accessed_time"]
    assert path == "/app" and is_new is False
    assert "Path=/app" in [h for h in response.headers.getall("Set-Cookie") if h.startswith(NAME)][0]
    issued = set_cookie_value(response)
    assert get(mw, "/", issued).text == "[('n', 1), ('user', 'ada')]"  # no _id, _creation_time, _path
    blob = stored(mw, cookie_id(mw, issued)).blob
    record_created, _, _, domain, record_path, _, _ = core.unpack_record(blob)
    assert record_created == created and domain is None and record_path == "/app"


def test_records_at_rest_are_encrypted_when_moved(make):
    pytest.importorskip("cryptography")
    mw = make(encrypt_key="an-encryption-key-of-32-characters-or-more")
    response = get(mw, "/inc", beaker_cookie_session())
    issued = set_cookie_value(response)
    assert b"ada" not in stored(mw, cookie_id(mw, issued)).blob
    assert get(mw, "/", issued).text == "[('n', 2), ('user', 'ada')]"


def test_a_read_only_request_sees_the_beaker_session_and_writes_nothing(make):
    mw = make()
    counting = CountingStore(mw.store)
    mw.service.store = counting
    cookie = beaker_cookie_session()
    response = get(mw, "/inc", cookie, extra={"fastsess.no_touch": True})
    assert response.text == "[('n', 2), ('user', 'ada')]"
    assert set_cookie_value(response) is None and counting.creates == 0
    # The next ordinary request moves it.
    response = get(mw, "/", cookie)
    assert response.text == "[('n', 1), ('user', 'ada')]"
    assert counting.creates == 2  # the record and its marker


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda v: flip(v, 3), id="tag-flipped"),
        pytest.param(lambda v: v[:-3] + ("A" if v[-3] != "A" else "B") + v[-2:], id="body-flipped"),
        pytest.param(lambda v: v[40:], id="unsigned"),
    ],
)
@pytest.mark.parametrize("store_type", STORES)
def test_a_tampered_beaker_cookie_session_gives_a_fresh_session_without_a_store_lookup(make, store_type, forge):
    mw = make(store_type)
    counting = CountingStore(mw.store)
    mw.service.store = counting
    cookie = beaker_cookie_session()
    response = get(mw, "/", forge(cookie))
    assert response.status_int == 200 and response.text == "[]"
    assert counting.loads == 0 and counting.creates == 0
    assert mw.service.events.counts["invalid_cookie"] == 1
    assert mw.service.events.counts["beaker_cookie_accepted"] == 0


def test_a_fresh_session_after_a_refusal_gets_a_random_id(make):
    mw = make()
    cookie = beaker_cookie_session()
    response = get(mw, "/inc", flip(cookie, 3))
    assert response.text == "[('n', 1)]"
    session_id = cookie_id(mw, set_cookie_value(response))
    assert session_id != cookie_session_id(beaker_contents(cookie)["_id"])


def test_a_beaker_cookie_session_signed_with_another_key_is_refused(make):
    mw = make(beaker_compat_secrets="not-the-key")
    assert get(mw, "/", beaker_cookie_session()).text == "[]"
    assert mw.service.events.counts["invalid_cookie"] == 1


def test_a_pickled_beaker_cookie_session_is_refused_never_unpickled(make):
    mw = make()
    response = get(mw, "/", beaker_cookie_session(data_serializer="pickle"))
    assert response.status_int == 200 and response.text == "[]"
    assert mw.service.events.counts["invalid_cookie"] == 1


def test_an_expired_beaker_cookie_session_is_not_moved(make):
    mw = make(clock=Clock(time.time() + TIMEOUT + 1))
    counting = CountingStore(mw.store)
    mw.service.store = counting
    assert get(mw, "/", beaker_cookie_session()).text == "[]"
    assert mw.service.events.counts["expired"] == 1
    assert counting.loads == 0 and counting.creates == 0


def test_a_beaker_cookie_session_past_absolute_timeout_is_not_moved(make):
    clock = Clock(time.time() + 100)
    mw = make(clock=clock, absolute_timeout=50)
    assert get(mw, "/", beaker_cookie_session()).text == "[]"
    assert mw.service.events.counts["expired"] == 1


def test_a_beaker_cookie_session_without_an_id_is_refused(make):
    """Beaker always writes `_id`; without one a replay could not be told from a new session."""
    mw = make()
    body = base64.b64encode(zlib.compress(json.dumps({"user": "ada", "_accessed_time": time.time()}).encode()))
    cookie = SignedCookie(BEAKER_SECRET).value_encode(body.decode())[1]
    assert get(mw, "/", cookie).text == "[]"
    assert mw.service.events.counts["invalid_cookie"] == 1


def test_a_beaker_cookie_session_larger_than_max_record_size_is_refused_not_an_error(make):
    mw = make(max_record_size=4096)
    response = get(mw, "/", beaker_cookie_session({"blob": "ab" * 4096}))
    assert response.status_int == 200 and response.text == "[]"


def test_beaker_cookie_sessions_are_not_read_without_beaker_compat(make):
    mw = make(beaker_compat="false", key=NAME)
    response = get(mw, "/", beaker_cookie_session())
    assert response.text == "[]" and set_cookie_value(response) is None


def test_beaker_compat_until_in_the_past_refuses_without_a_store_lookup(make):
    mw = make(beaker_compat_until="2001-01-01")
    counting = CountingStore(mw.store)
    mw.service.store = counting
    assert get(mw, "/", beaker_cookie_session()).text == "[]"
    assert counting.loads == 0 and counting.creates == 0


def test_a_refused_beaker_cookie_does_not_hide_a_valid_fastsess_cookie(make):
    mw = make()
    issued = set_cookie_value(get(mw, "/inc"))
    header = f"{NAME}={flip(beaker_cookie_session(), 3)}; {NAME}={issued}"
    assert TestApp(mw, extra_environ=HTTPS).get("/", headers={"Cookie": header}).text == "[('n', 1)]"


class FailingStore(CountingStore):
    def load(self, key):
        raise StoreError("store unreachable")


def test_a_store_failure_while_moving_follows_on_store_error(make):
    cookie = beaker_cookie_session()
    mw = make(on_store_error="anonymous")
    mw.service.store = FailingStore(mw.store)
    response = get(mw, "/inc", cookie)
    assert response.status_int == 200 and response.text == "[('n', 1)]" and set_cookie_value(response) is None
    assert mw.service.events.counts["store_error"] == 1
    mw = make()
    mw.service.store = FailingStore(mw.store)
    with pytest.raises(StoreError):
        get(mw, "/", cookie)


# ---------------------------------------------------------------- replaying the old Beaker cookie


def test_parallel_requests_with_one_beaker_cookie_share_one_record(make):
    """During cutover a browser fires several requests with the Beaker cookie before the new one lands."""
    mw = make()
    cookie = beaker_cookie_session()
    first = get(mw, "/inc", cookie)
    second = get(mw, "/inc", cookie)  # fired before the first response arrived
    assert (first.text, second.text) == ("[('n', 2), ('user', 'ada')]", "[('n', 3), ('user', 'ada')]")
    assert set_cookie_value(first) == set_cookie_value(second)
    assert get(mw, "/", set_cookie_value(first)).text == "[('n', 3), ('user', 'ada')]"
    assert len(mw.store._entries) == 2  # the record and its marker, nothing forked


def test_two_requests_with_one_beaker_cookie_merge_into_one_record(make):
    """Both loaded before either saved: the second save merges into the record the first moved."""
    mw = make()
    cookie = beaker_cookie_session()
    a, b = (Session(mw.service, f"{NAME}={cookie}") for _ in range(2))
    a["a"] = 1  # both load here: neither has written yet
    b["b"] = 2
    a.save()
    b.save()
    a.persist()
    b.persist()
    assert a.id == b.id
    issued = mw.service.sign(a.id)
    assert get(mw, "/", issued).text == "[('a', 1), ('b', 2), ('n', 1), ('user', 'ada')]"


def test_a_request_that_loses_the_race_to_move_loads_the_winners_record(make):
    """A parallel request created the record between this one's marker lookup and its create."""
    mw = make()
    cookie = beaker_cookie_session()
    session_id = cookie_session_id(beaker_contents(cookie)["_id"])
    now = time.time()
    blob = core.pack_record(now, now, 0, None, None, None, core.encode_data({"n": 5, "user": "ada"}))
    mw.store.create(core.store_key(session_id), blob, now + TIMEOUT)
    response = get(mw, "/inc", cookie)
    assert response.text == "[('n', 6), ('user', 'ada')]"
    assert cookie_id(mw, set_cookie_value(response)) == session_id
    assert isinstance(mw.store.load(converted_key(beaker_contents(cookie)["_id"])), StoredRecord)
    assert len(mw.store._entries) == 2


def test_replaying_the_beaker_cookie_after_the_move_sees_the_current_data(make):
    mw = make()
    cookie = beaker_cookie_session()
    issued = set_cookie_value(get(mw, "/", cookie))
    get(mw, "/inc", issued)
    get(mw, "/inc", issued)
    replay = get(mw, "/", cookie)
    assert replay.text == "[('n', 3), ('user', 'ada')]"  # not the n = 1 the cookie carried
    assert set_cookie_value(replay) == issued  # the same session, reissued
    assert get(mw, "/inc", cookie).text == "[('n', 4), ('user', 'ada')]"
    assert get(mw, "/", issued).text == "[('n', 4), ('user', 'ada')]"
    assert len(mw.store._entries) == 2


@pytest.mark.parametrize("invalidate_corrupt", ["true", "false"])
@pytest.mark.parametrize("store_type", ["file", "lmdb"])
def test_a_damaged_marker_counts_as_missing_and_the_session_is_not_moved_again(make, store_type, invalidate_corrupt):
    from test_store_contract import STORE_KINDS

    mw = make(store_type, invalidate_corrupt=invalidate_corrupt)
    cookie = beaker_cookie_session()
    issued = set_cookie_value(get(mw, "/", cookie))
    get(mw, "/inc", issued)
    STORE_KINDS[store_type].damage(mw.store, converted_key(beaker_contents(cookie)["_id"]))
    replay = get(mw, "/", cookie)
    assert replay.text == "[('n', 2), ('user', 'ada')]"  # the moved record, not the cookie's n = 1
    assert set_cookie_value(replay) == issued
    assert isinstance(mw.store.load(converted_key(beaker_contents(cookie)["_id"])), StoredRecord)  # rewritten


@pytest.mark.parametrize("store_type", STORES)
def test_replaying_the_beaker_cookie_after_logout_loads_nothing(make, store_type):
    mw = make(store_type)
    cookie = beaker_cookie_session()
    issued = set_cookie_value(get(mw, "/", cookie))
    get(mw, "/logout", issued)
    for _ in range(2):
        replay = get(mw, "/", cookie)
        assert replay.text == "[]" and set_cookie_value(replay) is None
    written = get(mw, "/inc", cookie)  # a write starts a new session, without the old data
    assert written.text == "[('n', 1)]"
    assert cookie_id(mw, set_cookie_value(written)) != cookie_id(mw, issued)
    assert stored(mw, cookie_id(mw, issued)) is None
    assert mw.service.events.counts["beaker_cookie_accepted"] == 1


def test_replaying_the_beaker_cookie_after_regenerate_id_loads_nothing(make):
    clock = Clock()
    mw = make(clock=clock)
    cookie = beaker_cookie_session()
    issued = set_cookie_value(get(mw, "/", cookie))
    login = get(mw, "/login", issued)
    new = set_cookie_value(login)
    assert cookie_id(mw, new) != cookie_id(mw, issued)
    assert stored(mw, cookie_id(mw, issued)) is TOMBSTONE
    replay = get(mw, "/inc", cookie)  # within the tombstone: empty, read-only, no cookie
    assert replay.text == "[('n', 1)]" and set_cookie_value(replay) is None
    clock.now += TOMBSTONE_SECONDS + 1  # the tombstone is gone; the marker is not
    replay = get(mw, "/", cookie)
    assert replay.text == "[]" and set_cookie_value(replay) is None
    assert get(mw, "/", new).text == "[('n', 1), ('user', 'ada')]"


def test_the_marker_outlives_every_beaker_cookie_of_the_session(make):
    """Kept until the Beaker cookie would have expired anyway: after that it is refused as expired."""
    cookie = beaker_cookie_session()
    clock = Clock()
    mw = make(clock=clock)
    issued = set_cookie_value(get(mw, "/", cookie))
    get(mw, "/logout", issued)
    marker = mw.store.load(converted_key(beaker_contents(cookie)["_id"]))
    assert isinstance(marker, StoredRecord)
    assert marker.expires_at >= beaker_contents(cookie)["_accessed_time"] + TIMEOUT
    clock.now = marker.expires_at + 1
    assert mw.store.load(converted_key(beaker_contents(cookie)["_id"])) in (None, EXPIRED)
    assert get(mw, "/inc", cookie).text == "[('n', 1)]"
    assert mw.service.events.counts["expired"] == 1


def test_beaker_compat_until_ends_replays_but_not_the_reissued_cookie(make):
    cookie = beaker_cookie_session()
    today = _dt.datetime.now(_dt.timezone.utc).date()
    end = _dt.datetime(today.year, today.month, today.day, tzinfo=_dt.timezone.utc).timestamp() + 86400
    clock = Clock(max(time.time(), end - 1))
    mw = make(clock=clock, beaker_compat_until=today.isoformat(), timeout=2 * 86400)
    issued = set_cookie_value(get(mw, "/", cookie))
    assert get(mw, "/", cookie).text == "[('n', 1), ('user', 'ada')]"
    clock.now = end
    assert get(mw, "/", cookie).text == "[]"
    assert mw.service.events.counts["invalid_cookie"] == 1 and mw.service.events.counts["expired"] == 0
    assert get(mw, "/", issued).text == "[('n', 1), ('user', 'ada')]"


def test_events_never_carry_the_beaker_id_or_the_cookie(make, caplog):
    seen = []
    mw = make(on_event=lambda name, **fields: seen.append((name, fields)))
    cookie = beaker_cookie_session()
    with caplog.at_level(logging.DEBUG, logger="fastsess"):
        get(mw, "/", cookie)
        get(mw, "/", flip(cookie, 3))
    assert [name for name, _ in seen] == ["beaker_cookie_accepted", "invalid_cookie"]
    assert seen[0][1]["beaker_format"] == "cookie"
    beaker_id = beaker_contents(cookie)["_id"]
    text = caplog.text + repr(seen) + repr([r.__dict__ for r in caplog.records])
    assert beaker_id not in text and cookie[:40] not in text and cookie[40:80] not in text
