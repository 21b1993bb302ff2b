"""The test vectors of docs/FORMATS.md hold for both kernels, so the document cannot drift."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

DOC = (Path(__file__).resolve().parent.parent / "docs" / "FORMATS.md").read_text(encoding="utf-8")
SECRET = "correct horse battery staple, 32+ chars!"


def vector(label: str) -> str:
    match = re.search(r"^" + re.escape(label) + r"\s+(\S+)\s*$", DOC, re.MULTILINE)
    assert match, f"FORMATS.md has no vector {label!r}"
    return match.group(1)


@pytest.fixture
def counting_random(core):
    core._set_random_source(lambda n: bytes(range(n)))
    yield
    core._set_random_source(None)


def test_key_derivation_matches_documented_vectors(core):
    prk = core.secret_prk(SECRET)
    assert prk.hex() == vector("PRK")
    for label in ("fastsess/v1/id-tag", "fastsess/v1/cookie-mac", "fastsess/v1/csrf", "fastsess/v1/log"):
        assert core.derive_subkey(prk, label).hex() == vector(label)
    assert core.derive_key_id(prk) == int(vector("key id"))


def test_id_and_id_cookie_match_documented_vectors(core, counting_random):
    prk = core.secret_prk(SECRET)
    session_id = core.new_session_id()
    assert session_id == vector("id")
    assert core.store_key(session_id).hex() == vector("store key")
    key = core.derive_subkey(prk, "fastsess/v1/id-tag")
    cookie = core.sign_id(session_id, key, core.derive_key_id(prk), "session")
    assert cookie == vector("id cookie")
    assert core.open_id_cookie(cookie, [(core.derive_key_id(prk), key)], "session") == (session_id, 0)


def test_records_match_documented_vectors(core):
    plain = core.pack_record(1767225600.0, 1767225601.5, 0, None, None, None, b'{"n":1}')
    assert plain.hex() == vector("plain")
    full = core.pack_record(
        1767225600.0, 1767225601.5, 7, ".example.com", "/app", b'{"":[["AAECAwQFBgcI","hi"]]}', b'{"n":1}'
    )
    wrapped = re.search(r"^domain, path,\s+(\S+)\s*\nflash, csrf 7\s+(\S+)\s*$", DOC, re.MULTILINE)
    assert full.hex() == wrapped.group(1) + wrapped.group(2)
    assert core.unpack_record(full) == (
        1767225600.0, 1767225601.5, 7, ".example.com", "/app", b'{"":[["AAECAwQFBgcI","hi"]]}', b'{"n":1}'
    )


def test_tagged_data_matches_documented_encoding(core):
    data = {
        "user": "ada",
        "n": 1,
        "t": (1, 2),
        "s": {"b", "a"},
        "b": b"\x00\xff",
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "d": dt.date(2026, 1, 2),
        "tm": dt.time(12, 30),
        "price": Decimal("9.99"),
        "u": uuid.UUID(int=1),
        "look": {"~t": "not a tag"},
    }
    documented = re.search(r'^(\{"user":"ada".*\})$', DOC, re.MULTILINE).group(1).encode()
    assert core.encode_data(data) == documented
    assert core.decode_data(documented) == data


SEALED_TIMES = (1767225600.0, 1767225601.5, 1769817600.0)
SEALED_PAYLOAD = b'{"n":1}'


def test_signed_cookie_matches_documented_vector(core):
    prk = core.secret_prk(SECRET)
    kid = core.derive_key_id(prk)
    key = core.derive_subkey(prk, "fastsess/v1/cookie-mac")
    assert core.seal_signed("session", kid, key, *SEALED_TIMES, SEALED_PAYLOAD) == vector("signed cookie")
    opened = core.open_signed(vector("signed cookie"), [(kid, key)], "session")
    assert opened == (*SEALED_TIMES, SEALED_PAYLOAD, 0)


def test_encrypted_cookie_matches_documented_vector(core, counting_random):
    pytest.importorskip("cryptography")
    prk = core.secret_prk(SECRET)
    kid = core.derive_key_id(prk)
    label = "fastsess/v1/cookie-enc/20454"
    assert core.derive_subkey(prk, label).hex() == vector(label)
    sealed = core.seal_encrypted("session", kid, prk, 20454, *SEALED_TIMES, SEALED_PAYLOAD)
    assert sealed == vector("encrypted cookie")
    opened = core.open_encrypted(vector("encrypted cookie"), [(kid, prk)], "session")
    assert opened == (*SEALED_TIMES, SEALED_PAYLOAD, 0)


def test_encrypted_record_matches_documented_vector(core, counting_random):
    pytest.importorskip("cryptography")
    prk = core.secret_prk(SECRET)
    label = "fastsess/v1/record-enc/20454"
    assert core.derive_subkey(prk, label).hex() == vector(label)
    plain = bytes.fromhex(vector("plain"))
    store_key = bytes.fromhex(vector("store key"))
    wrapped = re.search(r"^encrypted record\s+(\S+)\s*\n\s+(\S+)\s*$", DOC, re.MULTILINE)
    documented = bytes.fromhex(wrapped.group(1) + wrapped.group(2))
    assert core.record_encrypt(prk, 20454, store_key, plain) == documented
    assert core.record_decrypt([(core.derive_key_id(prk), prk)], store_key, documented) == plain
