"""Cookie-only sessions (type = cookie), signed and AES-GCM encrypted, and records encrypted at rest."""

from __future__ import annotations

import logging

import pytest
from webtest import TestApp

from fastsess import ConfigError, SessionMiddleware, SessionTooLarge, core

SECRET = "a-secret-of-at-least-32-characters!!"
OLD_KEY = "an-old-validate-key-32-characters-long"
NEW_KEY = "a-new-validate-key-32-characters-long!"
ENC_KEY = "an-encryption-key-of-32-characters-or-more"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def counter_app(environ, start_response):
    session = environ["beaker.session"]
    path = environ["PATH_INFO"]
    if path == "/inc":
        session["n"] = session.get("n", 0) + 1
        session.save()
    elif path == "/big":
        session["blob"] = "x" * int(environ["QUERY_STRING"])
        session.save()
    elif path == "/delete":
        session.delete()
    elif path == "/invalidate":
        session.invalidate()
    elif path == "/csrf":
        token = session.get_csrf_token()
        session.save()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [token.encode()]
    elif path == "/check":
        ok = session.check_csrf_token(environ["QUERY_STRING"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(ok).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session.get("n", 0)).encode()]


def make(clock=None, **options):
    settings = {"session.type": "cookie", "session.secret": SECRET, "session.timeout": 600, "session.secure": "false"}
    settings.update({f"session.{k}": v for k, v in options.items()})
    mw = SessionMiddleware(counter_app, settings)
    if clock is not None:
        mw.service.clock = clock
    return mw


def cookie_value(response) -> str:
    headers = response.headers.getall("Set-Cookie")
    assert len(headers) == 1
    return headers[0].split(";")[0].split("=", 1)[1]


@pytest.mark.parametrize("mode", [{}, {"encrypt_key": ENC_KEY}, {"cookie_mode": "encrypted"}])
def test_cookie_session_counts_across_requests_without_a_store(mode):
    app = TestApp(make(**mode))
    assert [app.get("/inc").text for _ in range(3)] == ["1", "2", "3"]
    assert app.get("/").text == "3"


def test_encrypted_cookie_does_not_show_the_data():
    app = TestApp(make(encrypt_key=ENC_KEY))
    value = cookie_value(app.get("/big?40"))
    assert "xxxx" not in core.b64url_decode(value).decode("latin-1")


def test_signed_cookie_is_tamper_evident():
    app = TestApp(make())
    value = cookie_value(app.get("/inc"))
    raw = bytearray(core.b64url_decode(value))
    raw[-40] ^= 1  # a payload byte
    app.reset()
    app.set_cookie("session", core.b64url_encode(bytes(raw)))
    assert app.get("/").text == "0"


@pytest.mark.parametrize("mode", [{}, {"encrypt_key": ENC_KEY}])
def test_garbage_and_oversized_cookies_give_a_fresh_session(mode):
    app = TestApp(make(**mode))
    for value in ("garbage", "A" * 5000, "AAAA", '"quoted"'):
        app.set_cookie("session", value)
        assert app.get("/").text == "0"


def test_a_cookie_sealed_for_another_cookie_name_does_not_open():
    value = cookie_value(TestApp(make()).get("/inc"))
    other = TestApp(make(key="other"))
    other.set_cookie("other", value)
    assert other.get("/").text == "0"


def test_unchanged_request_sets_no_cookie_until_the_touch_interval():
    clock = Clock()
    app = TestApp(make(clock, touch_interval=60))
    app.get("/inc")
    assert app.get("/").headers.getall("Set-Cookie") == []
    clock.now += 61
    refreshed = app.get("/")
    assert len(refreshed.headers.getall("Set-Cookie")) == 1  # the expiry slides
    assert app.get("/").text == "1"


def test_idle_and_absolute_timeouts_are_enforced_from_the_sealed_timestamps():
    clock = Clock()
    app = TestApp(make(clock, timeout=100, touch_interval=10, absolute_timeout=250))
    app.get("/inc")
    clock.now += 101
    assert app.get("/").text == "0"  # idle
    app.reset()
    app.get("/inc")
    for _ in range(6):  # active every 50 s: never idle, but older than 250 s in the end
        clock.now += 50
        app.get("/")
    assert app.get("/").text == "0"


def test_key_rotation_opens_old_cookies_and_reseals_with_the_first_key(caplog):
    old_app = TestApp(make(validate_key=OLD_KEY))
    old_value = cookie_value(old_app.get("/inc"))
    rotated = make(validate_key=NEW_KEY + "\n" + OLD_KEY)
    events = []
    rotated.service.events.hook = lambda name, **fields: events.append(name)
    app = TestApp(rotated)
    app.set_cookie("session", old_value)
    response = app.get("/")
    assert response.text == "1"
    assert "old_key_used" in events
    resealed = cookie_value(response)
    fresh = TestApp(make(validate_key=NEW_KEY))
    fresh.set_cookie("session", resealed)
    assert fresh.get("/").text == "1"


@pytest.mark.parametrize("sealed_with", ["current key", "old key"])
def test_invalidate_without_a_write_expires_the_cookie_whichever_key_sealed_it(sealed_with):
    # A cookie that needed resealing (an old key) must not turn the new, empty and
    # unsaved session after invalidate() into a new cookie: it is expired, as any other is.
    sealing = make(validate_key=OLD_KEY if sealed_with == "old key" else NEW_KEY)
    value = cookie_value(TestApp(sealing).get("/inc"))
    rotated = make(validate_key=NEW_KEY + "\n" + OLD_KEY)
    events = []
    rotated.service.events.hook = lambda name, **fields: events.append(name)
    app = TestApp(rotated)
    app.set_cookie("session", value)
    [header] = app.get("/invalidate").headers.getall("Set-Cookie")
    assert header.startswith("session=;")
    assert "created" not in events


def test_the_same_string_as_secret_and_validate_key_still_separates_purposes():
    mw = make(validate_key=SECRET)
    assert mw.service.keys.cookie_mac_keys[0][1] != mw.service.keys.id_keys[0][1]
    assert TestApp(mw).get("/inc").text == "1"


def test_delete_expires_the_cookie():
    app = TestApp(make())
    app.get("/inc")
    response = app.get("/delete")
    assert "Max-Age=0" in response.headers["Set-Cookie"]


def test_a_cookie_over_4093_bytes_raises_session_too_large():
    with pytest.raises(SessionTooLarge):
        TestApp(make()).get("/big?5000")


def test_a_cookie_of_exactly_4093_bytes_name_plus_value_is_set_and_one_more_is_refused():
    # SPEC 3: name plus value over 4093 bytes raises; 4093 itself is allowed. The sealed
    # value grows by 4 characters per 3 payload bytes, so some cookie name lands on 4093.
    accepted, refused = set(), set()
    for name in ("s", "se", "ses"):
        app = TestApp(make(key=name))
        for n in range(2900, 3100):
            try:
                accepted.add(len(name) + len(cookie_value(app.get(f"/big?{n}"))))
            except SessionTooLarge as exc:
                refused.add(int(str(exc).split(" would be ")[1].split()[0]))
    assert max(accepted) == 4093
    assert min(refused) == 4094


def test_a_cookie_session_changed_after_the_headers_are_out_is_logged_not_lost_silently(caplog):
    def streaming(environ, start_response):
        session = environ["beaker.session"]
        session["n"] = 1
        session.save()
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        session["n"] = 2  # the cookie carrying this is already out
        session.save()
        yield b"b"

    settings = {"session.type": "cookie", "session.secret": SECRET, "session.timeout": 600, "session.secure": "false"}
    app = TestApp(SessionMiddleware(streaming, settings))
    with caplog.at_level(logging.DEBUG, logger="fastsess"):
        response = app.get("/")
    assert response.body == b"ab"
    assert [r.fastsess_event for r in caplog.records].count("write_dropped") == 1


def test_max_record_size_applies_to_cookie_sessions_too():
    app = TestApp(make(max_record_size=1000))
    app.get("/big?800")
    with pytest.raises(SessionTooLarge, match="max_record_size"):
        app.get("/big?1200")
    assert app.get("/").status_int == 200  # the cookie from before still opens


def test_a_cookie_session_over_2kb_warns_once(caplog):
    app = TestApp(make())
    with caplog.at_level(logging.WARNING, logger="fastsess"):
        app.get("/big?2500")
        app.get("/big?2600")
    assert [r.fastsess_event for r in caplog.records].count("cookie_too_large") == 1


def test_csrf_tokens_work_in_cookie_sessions():
    app = TestApp(make())
    token = app.get("/csrf").text
    assert app.get("/check?" + token).text == "True"
    assert app.get("/check?" + "x" * 43).text == "False"


def test_absolute_timeout_cannot_be_switched_off_for_cookie_sessions():
    with pytest.raises(ConfigError, match="absolute_timeout"):
        make(absolute_timeout=0)


def test_records_are_encrypted_at_rest_with_encrypt_key_and_bound_to_their_key():
    mw = SessionMiddleware(
        counter_app,
        {"session.type": "memory", "session.secret": SECRET, "session.timeout": 600,
         "session.secure": "false", "session.encrypt_key": ENC_KEY},
    )
    app = TestApp(mw)
    app.get("/big?50")
    assert app.get("/inc").text == "1"
    (key, entry), = mw.store._entries.items()
    assert b"xxxxx" not in entry[0]
    other = core.store_key(core.new_session_id())
    with pytest.raises(ValueError):
        mw.service.open_record(other, entry[0])  # a ciphertext cannot move to another session
    assert mw.service.open_record(key, entry[0]).startswith(b"\x01")


def test_a_remembered_cookie_still_expires_and_a_forged_one_is_not_remembered():
    clock = Clock()
    mw = make(clock)
    app = TestApp(mw)
    value = cookie_value(app.get("/inc"))
    assert app.get("/").text == "1"
    assert app.get("/").text == "1"  # the second read opens the remembered value
    assert mw.service.open_sealed(value) is not None
    forged = value[:-2] + ("AA" if value[-2:] != "AA" else "BB")
    assert mw.service.open_sealed(forged) is None
    assert all(entry[0] != forged for entry in mw.service._opened_sealed.values())
    clock.now += 601
    assert app.get("/").text == "0"


@pytest.mark.parametrize("mode", [{}, {"encrypt_key": ENC_KEY}])
def test_a_cookie_this_process_sealed_is_remembered_exactly_as_opening_it_would_give(mode):
    mw = make(**mode)
    value = cookie_value(TestApp(mw).get("/inc"))
    remembered = mw.service.open_sealed_record(value)  # its record parsed from what was sealed
    assert [opened for whole, opened in mw.service._opened_sealed.values() if whole == value] == [remembered]
    mw.service._opened_sealed.clear()
    assert mw.service.open_sealed_record(value) == remembered
    assert mw.service.open_sealed(value) == remembered[:5]


@pytest.mark.parametrize("mode", [{}, {"encrypt_key": ENC_KEY}])
def test_a_forged_cookie_ending_like_a_remembered_one_is_refused_and_leaves_it_remembered(mode):
    # Remembered values are found by their last characters and compared whole.
    mw = make(**mode)
    app = TestApp(mw)
    value = cookie_value(app.get("/inc"))
    remembered = mw.service.open_sealed_record(value)
    forged = ("A" if value[0] != "A" else "B") + value[1:]  # the same last characters
    assert mw.service.open_sealed_record(forged) is None
    assert mw.service.open_sealed_record(value) is remembered  # still remembered, not opened again
    assert TestApp(mw).get("/", headers={"Cookie": f"session={forged}"}).text == "0"  # fresh, never the remembered
    assert TestApp(mw).get("/", headers={"Cookie": f"session={value}"}).text == "1"


def test_a_verified_cookie_holding_a_malformed_record_is_refused_on_every_request():
    """The parsed record is remembered with the value, as None when malformed: never a session."""
    clock = Clock()
    mw = make(clock)
    service, now = mw.service, clock.now
    short = service.seal_cookie(now, now, now + 600, b"too short for an id")
    malformed = service.seal_cookie(now, now, now + 600, core.random_bytes(core.ID_BYTES) + b"\x09not a record")
    for value in (short, malformed):
        for _ in range(2):  # sealed here, then remembered
            response = TestApp(mw).get("/", headers={"Cookie": f"session={value}"})
            assert response.text == "0"
            assert service.open_sealed_record(value)[5] is None
