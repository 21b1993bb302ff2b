"""Beaker sessions encrypted with `encrypt_key`: AES cookie sessions and encrypted stored records.

Everything Beaker-side is made by Beaker 1.14 itself: its middleware writes the
cookies and the file and database records, and the few hand-made variants
(hostile pickles, other ciphers) go through Beaker's own key derivation and
AES functions, so the tests pin what real deployments hold.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import os
import pickle
import sys
import time
import types
import uuid
from decimal import Decimal

import pytest

pytest.importorskip("cryptography")

from beaker import crypto as beaker_crypto  # noqa: E402
from beaker.crypto import pyca_cryptography  # noqa: E402
from beaker.middleware import SessionMiddleware as BeakerMiddleware  # noqa: E402
from beaker.session import SignedCookie  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from webtest import TestApp  # noqa: E402

from beaker_side import HTTPS, NAME, SECRET, beaker_cookie  # noqa: E402
from fastsess import ConfigError, SessionMiddleware, beaker_compat, core  # noqa: E402
from fastsess.cli import main, read_ini  # noqa: E402
from fastsess.config import load_config  # noqa: E402
from fastsess.migrate import SessionRefused, decode_session  # noqa: E402

VALIDATE_KEY = "tg-validate"  # Beaker never required a length
ENCRYPT_KEY = "tg-encrypt"
BEAKER_SECRET = "pylons-era-secret"

RICH = {
    "user": "ada",
    "when": _dt.datetime(2026, 1, 2, 3, 4, 5, 600),
    "day": _dt.date(2026, 1, 2),
    "raw": b"\x00\xff\x80bytes",
    "tags": {"a", "b", 3},
    "pair": (1, "two"),
    "price": Decimal("9.99"),
    "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "cart": [{"sku": 1, "qty": 2}, None, True, 1.5],
}


# ---------------------------------------------------------------- Beaker's side


def _ctr_encrypt(data: bytes, key: bytes) -> bytes:
    """AES-256-CTR from a zero counter: what Beaker's pycryptodome backend writes, with no tag."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


#: Beaker's pycryptodome backend, for installs without pycryptodome: registered under its own name.
CTR_BACKEND = types.SimpleNamespace(
    aesEncrypt=_ctr_encrypt, aesDecrypt=_ctr_encrypt, has_aes=True, getKeyLength=lambda: 32
)
beaker_crypto.register_crypto_module("test-ctr", CTR_BACKEND)


def beaker_aes_cookie(data: dict | None = None, seen: dict | None = None, **options) -> str:
    """An AES cookie session made by Beaker 1.14's middleware (type = cookie, encrypt_key, validate_key)."""
    settings = {
        "session.type": "cookie", "session.validate_key": VALIDATE_KEY, "session.encrypt_key": ENCRYPT_KEY,
        "session.data_serializer": "json",
    }
    settings.update({f"session.{k}": v for k, v in options.items()})
    return beaker_cookie(settings, data, seen=seen)


def beaker_encrypt(serialized: bytes, encrypt_key: str = ENCRYPT_KEY, validate_key: str = VALIDATE_KEY,
                   nonce_bits: int = 128, backend=pyca_cryptography) -> str:
    """`nonce + base64(AES(serialized))`, with Beaker's own key derivation and AES functions."""
    nonce_len, nonce_chars = beaker_crypto.get_nonce_size(nonce_bits)
    nonce = base64.b64encode(os.urandom(nonce_len)).decode("ascii")[:nonce_chars]
    key = beaker_crypto.generateCryptoKeys(encrypt_key, validate_key + nonce, 1, 32)
    return nonce + base64.b64encode(backend.aesEncrypt(serialized, key)).decode("ascii")


def signed(body: str, key: str = VALIDATE_KEY) -> str:
    """A cookie value Beaker's SignedCookie would carry for `body`."""
    return SignedCookie(key).value_encode(body)[1]


class Hostile:
    """Unpickling this would create a marker file: it must never happen."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------- fastsess's side


def app(environ, start_response):
    session = environ["beaker.session"]
    path = environ["PATH_INFO"]
    body = ""
    if path == "/inc":
        session["n"] = session.get("n", 0) + 1
        session.save()
    elif path == "/id":
        body = session.id
    elif path == "/csrf":
        body = session.get_csrf_token()
    if not body:
        body = repr(sorted(dict(session.items()).items()))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


def make(**options) -> SessionMiddleware:
    settings = {
        "session.type": "cookie", "session.secret": SECRET, "session.timeout": 3600,
        "session.beaker_compat": "true", "session.beaker_compat_secrets": VALIDATE_KEY,
        "session.beaker_compat_encrypt_key": ENCRYPT_KEY,
    }
    settings.update({f"session.{k}": v for k, v in options.items() if v is not None})
    for k, v in options.items():
        if v is None:
            settings.pop(f"session.{k}")
    return SessionMiddleware(app, settings)


def get(mw, path: str, cookie: str | None = None):
    headers = {"Cookie": f"{NAME}={cookie}"} if cookie is not None else {}
    return TestApp(mw, extra_environ=HTTPS).get(path, headers=headers)


def set_cookie_value(response) -> str | None:
    values = [h for h in response.headers.getall("Set-Cookie") if h.startswith(NAME + "=")]
    assert len(values) <= 1
    return values[0].split(";")[0].split("=", 1)[1] if values else None


def refused(mw, cookie: str, caplog) -> str:
    """Serve `cookie`; assert it gave a fresh session and no error; the reason logged."""
    with caplog.at_level(logging.INFO, logger="fastsess"):
        response = get(mw, "/", cookie)
    assert response.status_int == 200 and response.text == "[]"
    assert mw.service.events.counts["beaker_cookie_accepted"] == 0
    assert mw.service.events.counts["invalid_cookie"] == 1
    reasons = [r.getMessage() for r in caplog.records if getattr(r, "fastsess_event", "") == "invalid_cookie"]
    assert reasons
    return reasons[-1]


# ---------------------------------------------------------------- the key derivation


@pytest.mark.parametrize("bits", [8, 16, 48, 64, 96, 128, 192, 256])
def test_the_nonce_length_follows_encrypt_nonce_bits_as_in_beaker(bits):
    assert beaker_compat.nonce_chars(bits) == beaker_crypto.get_nonce_size(bits)[1]


def test_the_aes_key_is_derived_as_beaker_derives_it():
    nonce = "QfV0c9lBBon+6Zk7vITvPQ=="
    expected = beaker_crypto.generateCryptoKeys(ENCRYPT_KEY, VALIDATE_KEY + nonce, 1, 32)
    assert beaker_compat.aes_key(ENCRYPT_KEY.encode(), VALIDATE_KEY.encode(), nonce.encode()) == expected


# ---------------------------------------------------------------- configuration


def test_beaker_compat_encrypt_key_may_be_short_and_several():
    config = load_config({"session.secret": SECRET, "session.beaker_compat": "true",
                          "session.beaker_compat_encrypt_key": "new\nold"})
    assert config.beaker_encrypt_keys == [b"new", b"old"]
    assert config.encrypt_keys == [] and config.cookie_mode == "signed"  # fastsess's own cookies stay signed


def test_without_beaker_compat_encrypt_key_the_encrypt_key_opens_beakers_values():
    key = "a-beaker-encrypt-key-of-32-characters-or-more"
    config = load_config({"session.secret": SECRET, "session.beaker_compat": "true", "session.encrypt_key": key})
    assert config.beaker_encrypt_keys == [key.encode()]
    assert load_config({"session.secret": SECRET}).beaker_encrypt_keys == []


def test_beakers_validate_key_candidates_are_the_compat_secrets_then_validate_key_then_secret():
    config = load_config({"session.secret": SECRET, "session.beaker_compat": "true",
                          "session.beaker_compat_secrets": "vk\nsigner", "session.validate_key": SECRET + "!",
                          "session.beaker_compat_encrypt_key": "ek"})
    assert config.beaker_validate_keys == [b"vk", b"signer", (SECRET + "!").encode(), SECRET.encode()]


def test_a_short_beaker_encrypt_key_in_encrypt_key_says_where_it_belongs():
    with pytest.raises(ConfigError, match="beaker_compat_encrypt_key"):
        load_config({"session.secret": SECRET, "session.encrypt_key": ENCRYPT_KEY})


def test_encrypt_nonce_bits_must_be_a_multiple_of_8_when_beaker_values_are_decrypted():
    base = {"session.secret": SECRET, "session.beaker_compat": "true", "session.encrypt_nonce_bits": "100"}
    with pytest.raises(ConfigError, match="encrypt_nonce_bits"):
        load_config({**base, "session.beaker_compat_encrypt_key": "ek"})
    assert load_config(base).encrypt_nonce_bits == 100  # accepted, unused, without a Beaker encrypt key


def test_beaker_compat_encrypt_key_without_cryptography_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(ConfigError, match="cryptography"):
        load_config({"session.secret": SECRET, "session.beaker_compat": "true",
                     "session.beaker_compat_encrypt_key": "ek"})


def test_a_typo_of_beaker_compat_encrypt_key_names_the_option(caplog):
    with pytest.raises(ConfigError, match="did you mean session.beaker_compat_encrypt_key"):
        load_config({"session.secret": SECRET, "session.beaker_compat_encrypt_kye": "ek"})
    with caplog.at_level(logging.WARNING, logger="fastsess"):
        load_config({"beaker.session.secret": SECRET, "beaker.session.beaker_compat_encrypt_key": "ek",
                     "beaker.session.type": "memory", "beaker.session.timeout": "60"})
    assert "unknown" not in caplog.text


# ---------------------------------------------------------------- AES cookie sessions, end to end


def test_a_beaker_aes_cookie_session_is_decrypted_and_resealed_in_fastsess_format():
    mw = make()
    cookie = beaker_aes_cookie({"user": "ada", "n": 1, "cart": [1, {"~t": "looks like a tag"}]})
    assert not cookie[40:].startswith("eJ")  # not Beaker's plain zlib-compressed JSON
    response = get(mw, "/inc", cookie)
    assert response.text == "[('cart', [1, {'~t': 'looks like a tag'}]), ('n', 2), ('user', 'ada')]"
    sealed = set_cookie_value(response)
    assert not beaker_compat.is_beaker_value(sealed)
    opened = mw.service.open_sealed(sealed)
    assert opened is not None and opened[4] == 0
    assert get(mw, "/inc", sealed).text.startswith("[('cart', [1, {'~t': 'looks like a tag'}]), ('n', 3)")
    assert mw.service.events.counts["beaker_cookie_accepted"] == 1


def test_a_read_alone_reseals_the_aes_cookie_session_on_the_same_response():
    mw = make()
    response = get(mw, "/", beaker_aes_cookie())
    assert response.text == "[('n', 1), ('user', 'ada')]"
    sealed = set_cookie_value(response)
    assert sealed is not None and mw.service.open_sealed(sealed) is not None


def test_the_fastsess_id_comes_from_beakers_id_so_parallel_requests_share_it():
    mw = make()
    seen: dict = {}
    cookie = beaker_aes_cookie(seen=seen)
    assert get(mw, "/id", cookie).text == beaker_compat.cookie_session_id(seen["id"])
    assert get(mw, "/csrf", cookie).text == get(mw, "/csrf", cookie).text


def test_beakers_bookkeeping_keys_move_into_the_record_header():
    def beaker_app(environ, start_response):
        session = environ["beaker.session"]
        session["user"] = "ada"
        session.path = "/app"
        session.save()
        start_response("200 OK", [])
        return [b""]

    settings = {"session.type": "cookie", "session.validate_key": VALIDATE_KEY,
                "session.encrypt_key": ENCRYPT_KEY, "session.data_serializer": "json"}
    before = time.time()
    header = TestApp(BeakerMiddleware(beaker_app, settings)).get("/").headers["Set-Cookie"]
    mw = make()
    response = get(mw, "/", header.split(";")[0].split("=", 1)[1])
    assert response.text == "[('user', 'ada')]"
    assert "Path=/app" in [h for h in response.headers.getall("Set-Cookie") if h.startswith(NAME)][0]
    issued_at, _, _, payload, _ = mw.service.open_sealed(set_cookie_value(response))
    created, _, _, _, path, _, _ = core.unpack_record(payload[core.ID_BYTES:])
    assert before - 1 <= created == issued_at <= time.time() and path == "/app"


@pytest.mark.parametrize("quoted", [False, True])
def test_an_aes_cookie_session_is_read_bare_or_quoted(quoted):
    cookie = beaker_aes_cookie()
    assert "=" in cookie[40:]  # the 128-bit nonce ends in padding
    assert get(make(), "/", f'"{cookie}"' if quoted else cookie).text == "[('n', 1), ('user', 'ada')]"


@pytest.mark.parametrize("bits", [64, 96, 256])
def test_other_nonce_sizes_are_read_with_the_same_encrypt_nonce_bits(bits):
    cookie = beaker_aes_cookie(encrypt_nonce_bits=bits)
    assert get(make(encrypt_nonce_bits=bits), "/", cookie).text == "[('n', 1), ('user', 'ada')]"


def test_aes_ctr_cookie_sessions_of_beakers_pycryptodome_backend_are_read():
    cookie = beaker_aes_cookie(crypto_type="test-ctr")
    assert get(make(), "/", cookie).text == "[('n', 1), ('user', 'ada')]"


def test_every_beaker_encrypt_key_is_tried():
    cookie = beaker_aes_cookie()
    mw = make(beaker_compat_encrypt_key="a-newer-key\n" + ENCRYPT_KEY)
    assert get(mw, "/", cookie).text == "[('n', 1), ('user', 'ada')]"


def test_the_encrypt_key_opens_beaker_cookies_when_it_is_long_enough():
    key = "a-beaker-encrypt-key-of-32-characters-or-more"
    mw = make(beaker_compat_encrypt_key=None, encrypt_key=key)
    response = get(mw, "/inc", beaker_aes_cookie(encrypt_key=key))
    assert response.text == "[('n', 2), ('user', 'ada')]"
    assert get(mw, "/", set_cookie_value(response)).text == "[('n', 2), ('user', 'ada')]"


def test_plain_beaker_cookie_sessions_are_still_read_with_an_encrypt_key_configured():
    cookie = beaker_aes_cookie(encrypt_key=None)
    assert cookie[40:].startswith("eJ")
    assert get(make(), "/", cookie).text == "[('n', 1), ('user', 'ada')]"


# ---------------------------------------------------------------- refused, with a reason, never a crash


def test_an_aes_cookie_session_without_beaker_compat_encrypt_key_is_refused_saying_what_to_set(caplog):
    reason = refused(make(beaker_compat_encrypt_key=None), beaker_aes_cookie(), caplog)
    assert "beaker_compat_encrypt_key" in reason


def test_a_tampered_aes_cookie_session_fails_beakers_tag_before_any_decryption(caplog, monkeypatch):
    cookie = beaker_aes_cookie()
    i = len(cookie) - 10
    tampered = cookie[:i] + ("A" if cookie[i] != "A" else "B") + cookie[i + 1:]
    monkeypatch.setattr(beaker_compat, "open_encrypted", lambda *a, **k: pytest.fail("decrypted before the MAC"))
    assert "tag does not verify" in refused(make(), tampered, caplog)


def test_a_re_signed_aes_cookie_with_a_flipped_ciphertext_fails_the_gcm_tag(caplog):
    body = beaker_aes_cookie()[40:]
    i = len(body) - 10
    assert "does not decrypt" in refused(make(), signed(body[:i] + ("A" if body[i] != "A" else "B") + body[i + 1:]),
                                         caplog)


@pytest.mark.parametrize("cut", [4, 40, 80, 120])
def test_a_truncated_aes_cookie_session_re_signed_is_refused(cut, caplog):
    body = beaker_aes_cookie()[40:]
    refused(make(), signed(body[: len(body) - cut]), caplog)


def test_an_aes_cookie_session_cut_short_by_the_browser_fails_beakers_tag(caplog):
    cookie = beaker_aes_cookie()
    assert "tag does not verify" in refused(make(), cookie[:-8], caplog)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        pytest.param({"beaker_compat_encrypt_key": "not-the-encrypt-key"}, "does not decrypt", id="wrong-encrypt-key"),
        pytest.param({"encrypt_nonce_bits": 64}, "encrypt_nonce_bits", id="wrong-nonce-bits"),
    ],
)
def test_an_aes_cookie_session_with_the_wrong_key_is_refused(options, reason, caplog):
    assert reason in refused(make(**options), beaker_aes_cookie(), caplog)


def test_an_aes_cookie_session_with_the_wrong_validate_key_is_refused(caplog):
    cookie = beaker_aes_cookie(validate_key="another-validate-key")
    assert "tag does not verify" in refused(make(), cookie, caplog)
    # Signed with the right key, but encrypted under another validate_key's salt.
    body = beaker_encrypt(zlib_json({"user": "ada"}), validate_key="another-validate-key")
    assert "does not decrypt" in refused(make(), signed(body), caplog)


def test_a_ctr_cookie_with_the_wrong_key_is_refused_not_misread(caplog):
    cookie = beaker_aes_cookie(crypto_type="test-ctr", encrypt_key="not-the-encrypt-key")
    assert "does not decrypt" in refused(make(), cookie, caplog)


def zlib_json(data: dict) -> bytes:
    import zlib

    return zlib.compress(json.dumps(data).encode("utf-8"))


@pytest.mark.parametrize("backend", [pyca_cryptography, CTR_BACKEND], ids=["gcm", "ctr"])
def test_a_pickled_aes_cookie_session_is_refused_never_unpickled(backend, tmp_path, caplog):
    marker = tmp_path / "pwned"
    body = beaker_encrypt(pickle.dumps({"user": Hostile(marker)}, 2), backend=backend)
    assert "pickled" in refused(make(), signed(body), caplog)
    assert not marker.exists()


def test_beakers_own_pickled_aes_cookie_session_is_refused(caplog):
    cookie = beaker_aes_cookie(data_serializer="pickle")
    assert "pickled" in refused(make(), cookie, caplog)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("QfV0c9lBBon+6Zk7vITvPQ==", id="nonce-only"),
        pytest.param("QfV0c9lBBon+6Zk7vITvPQ==not*base64", id="not-base64"),
        pytest.param("QfV0c9lBBon+6Zk7vITvPQ==" + base64.b64encode(os.urandom(60)).decode(), id="random"),
        pytest.param("QfV0c9lBBon+6Zk7vITvPQ==" + base64.b64encode(os.urandom(20)).decode(), id="short"),
        pytest.param("", id="empty"),
    ],
)
def test_signed_garbage_is_refused_not_an_error(body, caplog):
    refused(make(), signed(body), caplog)


def test_a_value_that_decrypts_to_something_fastsess_cannot_store_is_refused(caplog):
    body = beaker_encrypt(zlib_json({"user": "ada", "nan": float("nan")}))
    refused(make(), signed(body), caplog)
    body = beaker_encrypt(zlib_json(["not", "a", "dict"]))
    refused(make(), signed(body), caplog)


# ---------------------------------------------------------------- migrate-beaker of encrypted records


def beaker_write(settings: dict, data: dict) -> str:
    """One request through Beaker 1.14's middleware; the Beaker id cookie it set."""

    def beaker_app(environ, start_response):
        environ["beaker.session"].update(data)
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    return TestApp(BeakerMiddleware(beaker_app, settings)).get("/").headers["Set-Cookie"].split(";")[0].split("=", 1)[1]


def beaker_settings(kind: str, where: str, **options) -> dict:
    """A Beaker server-side store with encrypt_key: Beaker needs a validate_key for it too."""
    settings = {"session.type": kind, "session.secret": BEAKER_SECRET,
                "session.validate_key": VALIDATE_KEY, "session.encrypt_key": ENCRYPT_KEY}
    settings["session.data_dir" if kind == "file" else "session.url"] = where
    settings.update({f"session.{k}": v for k, v in options.items() if v is not None})
    for k, v in options.items():
        if v is None:
            settings.pop(f"session.{k}")
    return settings


def write_ini(tmp_path, store: str = "lmdb", **extra) -> str:
    """The fastsess INI; an option given as None is left out."""
    options = {
        "type": store,
        "secret": SECRET,
        "timeout": "3600",
        "beaker_compat": "true",
        # Beaker's secret signs its id cookies; its validate_key salts its encryption.
        "beaker_compat_secrets": f"\n    {BEAKER_SECRET}\n    {VALIDATE_KEY}",
        "beaker_compat_encrypt_key": ENCRYPT_KEY,
    }
    if store in ("lmdb", "file"):
        options["data_dir"] = "%(here)s/fastsess"
    options.update(extra)
    lines = ["[app:main]"] + [f"session.{k} = {v}" for k, v in options.items() if v is not None]
    path = tmp_path / "app.ini"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def migrate(capsys, ini: str, *args: str) -> dict:
    assert main(["migrate-beaker", "--config", ini, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def fastsess_read(ini: str, cookie: str) -> dict:
    seen: dict = {}

    def read_app(environ, start_response):
        seen.update(environ["beaker.session"].items())
        start_response("200 OK", [])
        return [b""]

    mw = SessionMiddleware(read_app, read_ini(ini))
    try:
        TestApp(mw, extra_environ=HTTPS).get("/", headers={"Cookie": f"{NAME}={cookie}"})
    finally:
        mw.close()
    return seen


def beaker_file(data_dir, beaker_id: str):
    return data_dir / "container_file" / beaker_id[0] / beaker_id[:2] / f"{beaker_id}.cache"


def test_beakers_encrypted_records_are_what_this_migration_decrypts(tmp_path):
    beaker_dir = tmp_path / "beaker"
    cookie = beaker_write(beaker_settings("file", str(beaker_dir)), {"user": "ada"})
    with open(beaker_file(beaker_dir, cookie[40:]), "rb") as f:
        stored = pickle.load(f)["session"]
    with pytest.raises(SessionRefused, match="beaker_compat_encrypt_key"):
        decode_session(stored)
    config = read_ini(write_ini(tmp_path))
    opened = decode_session(stored, load_config(config))
    assert opened["user"] == "ada" and "_creation_time" in opened


def test_a_plain_hostile_pickle_is_reported_as_such_with_or_without_beaker_keys(tmp_path):
    marker = tmp_path / "pwned"
    stored = base64.b64encode(pickle.dumps({"user": Hostile(marker)}, 2)).decode()
    for config in (None, load_config(read_ini(write_ini(tmp_path)))):
        with pytest.raises(SessionRefused, match="refused global") as refusal:
            decode_session(stored, config)
        assert "beaker_compat_encrypt_key" not in str(refusal.value)
    assert not marker.exists()


@pytest.mark.parametrize("serializer", ["pickle", "json"])
def test_encrypted_beaker_file_sessions_migrate_and_load_with_the_beaker_cookie(serializer, tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir), data_serializer=serializer)
    data = RICH if serializer == "pickle" else {"user": "ada", "cart": [1, 2]}
    cookie = beaker_write(settings, data)
    plain = beaker_write(beaker_settings("file", str(beaker_dir), encrypt_key=None), {"user": "grace"})
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["seen"], report["migrated"], report["refused"]) == (2, 2, 0), report
    assert fastsess_read(ini, cookie) == data
    assert fastsess_read(ini, plain) == {"user": "grace"}  # records from before encrypt_key was set


def test_encrypted_records_of_beakers_ctr_backend_migrate(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    cookie = beaker_write(beaker_settings("file", str(beaker_dir), crypto_type="test-ctr"), RICH)
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["migrated"], report["refused"]) == (1, 0), report
    assert fastsess_read(ini, cookie) == RICH


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        pytest.param({"beaker_compat_encrypt_key": None}, "beaker_compat_encrypt_key", id="no-key"),
        pytest.param({"beaker_compat_encrypt_key": "wrong"}, "does not decrypt", id="wrong-key"),
        pytest.param({"beaker_compat_secrets": BEAKER_SECRET}, "does not decrypt", id="no-validate-key"),
    ],
)
def test_encrypted_records_without_the_right_keys_are_refused_with_the_reason(extra, reason, tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    beaker_write(beaker_settings("file", str(beaker_dir)), {"user": "ada"})
    report = migrate(capsys, write_ini(tmp_path, **extra), "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["migrated"], report["refused"]) == (0, 1)
    assert reason in report["refusals"][0]["reason"]


def test_a_hostile_pickle_inside_an_encrypted_record_is_refused_and_never_run(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    cookie = beaker_write(beaker_settings("file", str(beaker_dir)), {"user": "ada"})
    marker = tmp_path / "pwned"
    path = beaker_file(beaker_dir, cookie[40:])
    with open(path, "rb") as f:
        container = pickle.load(f)
    container["session"] = beaker_encrypt(pickle.dumps({"user": Hostile(marker)}, 2))
    with open(path, "wb") as f:
        pickle.dump(container, f, 2)
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["migrated"], report["refused"]) == (0, 1)
    assert "refused global" in report["refusals"][0]["reason"] and not marker.exists()


def test_encrypted_beaker_database_sessions_migrate_into_the_sql_store(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'beaker.sqlite'}"
    cookie = beaker_write(beaker_settings("ext:database", url), RICH)
    ini = write_ini(tmp_path, store="sql", url=f"sqlite:///{tmp_path / 'fastsess.sqlite'}")
    report = migrate(capsys, ini, "--from-type", "ext:database", "--from-url", url)
    assert (report["seen"], report["migrated"], report["refused"]) == (1, 1, 0), report
    assert fastsess_read(ini, cookie) == RICH


@pytest.mark.servers
def test_encrypted_beaker_redis_sessions_migrate(tmp_path, capsys, redis_server):
    cookie = beaker_write(beaker_settings("ext:redis", redis_server.url), RICH)
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:redis", "--from-url", redis_server.url)
    assert (report["seen"], report["migrated"], report["refused"]) == (1, 1, 0), report
    assert fastsess_read(ini, cookie) == RICH


# ---------------------------------------------------------------- into a server-side store


@pytest.mark.parametrize("store_type", ["memory", "lmdb"])
def test_a_beaker_aes_cookie_session_moves_into_a_server_side_store(tmp_path, store_type):
    options = {"data_dir": str(tmp_path / "data")} if store_type == "lmdb" else {}
    mw = make(type=store_type, **options)
    first = get(mw, "/inc", beaker_aes_cookie({"user": "ada", "n": 1}))
    assert first.text == repr([("n", 2), ("user", "ada")])
    value = set_cookie_value(first)
    assert value is not None and not beaker_compat.is_beaker_value(value)
    assert mw.service.events.counts["beaker_cookie_accepted"] == 1
    # The new id cookie reads the record from the store, not from the old cookie.
    assert get(mw, "/inc", value).text == repr([("n", 3), ("user", "ada")])
    mw.close()


@pytest.mark.servers
def test_encrypted_beaker_memcached_sessions_migrate(tmp_path, capsys):
    pytest.importorskip("pymemcache")
    import server_memcached

    server = server_memcached.MemcachedServer(tmp_path / "mc").start()
    try:
        url = server.address
        cookie = beaker_write(beaker_settings("ext:memcached", url), RICH)
        ini = write_ini(tmp_path)
        report = migrate(capsys, ini, "--from-type", "ext:memcached", "--from-url", url)
        assert (report["seen"], report["migrated"], report["refused"]) == (1, 1, 0), report
        assert fastsess_read(ini, cookie) == RICH
    finally:
        server.stop()
