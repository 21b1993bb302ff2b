"""Sealed cookie sessions and encrypted records (SPEC 3 "Cookie-only sessions", SPEC 5).

Every test runs against both kernels through the `core` fixture. The envelopes
are checked against independent re-implementations built from the standard
library and `cryptography`, AES-GCM itself against the GCM specification's
test cases, and the twins against each other on generated inputs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsess import _core_py as reference

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PRK = hashlib.sha256(b"a PRK for the tests").digest()
OTHER_PRK = hashlib.sha256(b"another PRK for the tests").digest()
STORE_KEY = hashlib.sha256(b"an id").digest()
OTHER_STORE_KEY = hashlib.sha256(b"another id").digest()
TIMES = (1767225600.0, 1767225601.5, 1769817600.0)
PAYLOAD = b'{"n":1}'
EPOCH = 20454
PURPOSE = b"fastsess/v1/cookie-session"

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def aesgcm():
    """cryptography's AESGCM; encrypted mode needs the `crypto` extra."""
    return pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead").AESGCM


@pytest.fixture
def fixed_nonce(core):
    """Every nonce is 00 01 02 ... 0b; the CSPRNG comes back afterwards."""
    core._set_random_source(lambda n: bytes(range(n)))
    yield bytes(range(12))
    core._set_random_source(None)


@pytest.fixture(scope="session")
def c_core(core):
    """The C kernel, for tests that compare it with the reference."""
    if core is reference:
        pytest.skip("compares the C kernel with the pure-Python reference")
    return core


def bound(name: str) -> bytes:
    raw = name.encode("utf-8")
    return PURPOSE + b"\x00" + struct.pack(">H", len(raw)) + raw


def flipped(raw: bytes, i: int) -> bytes:
    return raw[:i] + bytes((raw[i] ^ 0x01,)) + raw[i + 1 :]


def seal(core, mode: str, name="session", payload=PAYLOAD, times=TIMES, kid=7):
    """A sealed value in either mode, with the keys the tests open it with."""
    if mode == "signed":
        return core.seal_signed(name, kid, KEY, *times, payload)
    return core.seal_encrypted(name, kid, PRK, EPOCH, *times, payload)


def opener(core, mode: str):
    return core.open_signed if mode == "signed" else core.open_encrypted


def keys_for(mode: str, kid=7):
    return [(kid, KEY if mode == "signed" else PRK)]


@pytest.fixture(params=["signed", "encrypted"])
def mode(request):
    """Signed, then encrypted mode; encrypted mode needs the `crypto` extra."""
    if request.param == "encrypted":
        pytest.importorskip("cryptography")
    return request.param


# ---------------------------------------------------------------- both modes


@pytest.mark.parametrize("payload", [b"", PAYLOAD, bytes(range(256)) * 4])
@pytest.mark.parametrize("name", ["session", "__Host-séssion", "名前", ""])
def test_round_trip(core, mode, payload, name):
    value = seal(core, mode, name=name, payload=payload)
    assert value.isascii() and "=" not in value
    assert opener(core, mode)(value, keys_for(mode), name) == (*TIMES, payload, 0)


@pytest.mark.parametrize("times", [(0.0, -0.0, 1e308), (0.1, 5e-324, -1.5), (1, 2, True)])
def test_timestamps_keep_every_bit(core, mode, times):
    opened = opener(core, mode)(seal(core, mode, times=times), keys_for(mode), "session")
    assert struct.pack(">ddd", *opened[:3]) == struct.pack(">ddd", *times)
    assert all(type(t) is float for t in opened[:3])


def test_every_tampered_byte_is_rejected(core, mode):
    value = seal(core, mode)
    raw = core.b64url_decode(value)
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            forged = core.b64url_encode(raw[:i] + bytes((raw[i] ^ bit,)) + raw[i + 1 :])
            assert opener(core, mode)(forged, keys_for(mode), "session") is None, (i, bit)


def test_every_tampered_character_is_rejected(core, mode):
    value = seal(core, mode)
    for i, ch in enumerate(value):
        for other in ("A", "B", "-", "_", "z"):
            if other != ch:
                forged = value[:i] + other + value[i + 1 :]
                assert opener(core, mode)(forged, keys_for(mode), "session") is None, (i, other)


def test_the_cookie_name_is_bound(core, mode):
    value = seal(core, mode, name="session")
    for other in ("Session", "session ", "sessio", "other", "__Host-session", ""):
        assert opener(core, mode)(value, keys_for(mode), other) is None, other


def test_the_modes_do_not_open_each_other(core, mode):
    other = "encrypted" if mode == "signed" else "signed"
    if other == "encrypted":
        pytest.importorskip("cryptography")
    value = seal(core, mode)
    assert opener(core, other)(value, keys_for(other), "session") is None
    assert opener(core, other)(value, keys_for(mode), "session") is None


def test_a_key_not_in_the_list_is_rejected(core, mode):
    value = seal(core, mode)
    other_key = OTHER_KEY if mode == "signed" else OTHER_PRK
    assert opener(core, mode)(value, [(7, other_key)], "session") is None
    assert opener(core, mode)(value, [], "session") is None


def test_rotation_first_key_seals_every_key_opens(core, mode):
    old, new = (KEY, OTHER_KEY) if mode == "signed" else (PRK, OTHER_PRK)
    if mode == "signed":
        old_value = core.seal_signed("session", 7, old, *TIMES, PAYLOAD)
        new_value = core.seal_signed("session", 9, new, *TIMES, PAYLOAD)
    else:
        old_value = core.seal_encrypted("session", 7, old, EPOCH, *TIMES, PAYLOAD)
        new_value = core.seal_encrypted("session", 9, new, EPOCH, *TIMES, PAYLOAD)
    ring = [(9, new), (7, old)]
    assert opener(core, mode)(new_value, ring, "session") == (*TIMES, PAYLOAD, 0)
    assert opener(core, mode)(old_value, ring, "session") == (*TIMES, PAYLOAD, 1)
    assert opener(core, mode)(old_value, iter(ring), "session") == (*TIMES, PAYLOAD, 1)


def test_keys_with_another_key_id_are_skipped_and_every_sharing_key_is_tried(core, mode):
    right, wrong = (KEY, OTHER_KEY) if mode == "signed" else (PRK, OTHER_PRK)
    value = seal(core, mode, kid=7)
    assert opener(core, mode)(value, [(8, right)], "session") is None
    assert opener(core, mode)(value, [(8, right), (7, right)], "session") == (*TIMES, PAYLOAD, 1)
    assert opener(core, mode)(value, [(7, wrong), (7, right)], "session") == (*TIMES, PAYLOAD, 1)


def test_bad_values_are_rejected(core, mode, fixed_nonce):
    value = seal(core, mode)
    raw = core.b64url_decode(value)
    open_ = opener(core, mode)
    assert base64.b64encode(raw).decode() != value  # holds "+" or "/", so it tests the alphabet
    for bad in [
        value[:-1],  # truncated
        value[:-4],
        value[:78],  # shorter than any sealed cookie
        core.b64url_encode(raw[:58]),
        "",
        value + "A",
        "A" * 5000,  # oversized
        value + "A" * 4100,
        value[:-1] + "é",  # non-ASCII
        value[:-2] + "\u0100\u0100",
        value + "=",  # padded
        base64.urlsafe_b64encode(raw).decode() + "==",
        base64.b64encode(raw).decode(),  # standard alphabet
        '"' + value + '"',
        " " + value,
        value.encode(),
        bytearray(value.encode()),
        None,
        123,
    ]:
        assert open_(bad, keys_for(mode), "session") is None, bad


def sealed_by_hand(core, mode: str, version: int, mode_byte: int, name: str = "session") -> str:
    """A value sealed correctly, but with any version and mode byte: what another format would send."""
    plain = struct.pack(">ddd", *TIMES) + PAYLOAD
    if mode == "signed":
        body = bytes((version, mode_byte, 7)) + plain
        return core.b64url_encode(body + hmac.new(KEY, bound(name) + body, "sha256").digest())
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    head = bytes((version, mode_byte, 7)) + struct.pack(">I", EPOCH)
    key = core.hkdf_expand(PRK, b"fastsess/v1/cookie-enc/20454", 32)
    nonce = bytes(12)
    return core.b64url_encode(head + nonce + AESGCM(key).encrypt(nonce, plain, bound(name) + head))


def test_values_sealed_by_hand_open(core, mode):
    value = sealed_by_hand(core, mode, 1, 1 if mode == "signed" else 2)
    assert opener(core, mode)(value, keys_for(mode), "session") == (*TIMES, PAYLOAD, 0)


@pytest.mark.parametrize("version, other_mode", [(0, False), (2, False), (0x81, False), (1, True)])
def test_another_version_or_mode_is_rejected_even_when_correctly_sealed(core, mode, version, other_mode):
    mode_byte = 1 if mode == "signed" else 2
    if other_mode:
        mode_byte = 3 - mode_byte
    value = sealed_by_hand(core, mode, version, mode_byte)
    assert opener(core, mode)(value, keys_for(mode), "session") is None


@pytest.mark.parametrize("byte, value", [(0, 0), (0, 2), (0, 0x81), (1, 0), (1, 3)])
def test_unknown_version_or_mode_bytes_are_rejected(core, mode, byte, value):
    raw = bytearray(core.b64url_decode(seal(core, mode)))
    raw[byte] = value
    assert opener(core, mode)(core.b64url_encode(bytes(raw)), keys_for(mode), "session") is None


def test_values_up_to_4096_characters_open_and_longer_ones_are_rejected_before_decoding(core):
    longest = core.seal_signed("session", 7, KEY, *TIMES, b"x" * (3072 - 59))
    assert len(longest) == 4096
    assert core.open_signed(longest, [(7, KEY)], "session") == (*TIMES, b"x" * (3072 - 59), 0)
    too_long = core.seal_signed("session", 7, KEY, *TIMES, b"x" * (3072 - 58))
    assert len(too_long) > 4096
    assert core.open_signed(too_long, [(7, KEY)], "session") is None


def test_open_with_a_cookie_name_that_is_not_str_is_a_type_error(core, mode):
    for name in (b"session", None, 5):
        with pytest.raises(TypeError):
            opener(core, mode)(seal(core, mode), keys_for(mode), name)
        with pytest.raises(TypeError):
            opener(core, mode)("not a cookie", keys_for(mode), name)


@pytest.mark.parametrize(
    "change, error",
    [
        ({"name": b"session"}, TypeError),
        ({"name": "n" * 70000}, ValueError),
        ({"kid": 256}, ValueError),
        ({"kid": -1}, ValueError),
        ({"kid": "7"}, TypeError),
        ({"kid": 7.0}, TypeError),
        ({"times": ("x", 0.0, 0.0)}, TypeError),
        ({"times": (0.0, None, 0.0)}, TypeError),
        ({"times": (0.0, 0.0, 10**400)}, TypeError),
        ({"payload": "text"}, TypeError),
        ({"payload": bytearray(b"x")}, TypeError),
        ({"payload": memoryview(b"x")}, TypeError),
    ],
)
def test_seal_refuses_bad_arguments(core, mode, change, error):
    args = {"name": "session", "kid": 7, "times": TIMES, "payload": PAYLOAD} | change
    with pytest.raises(error):
        seal(core, mode, **args)


# ---------------------------------------------------------------- signed mode


def test_signed_is_the_documented_hmac(core):
    name = "__Host-séssion"
    body = b"\x01\x01\x07" + struct.pack(">ddd", *TIMES) + PAYLOAD
    tag = hmac.new(KEY, bound(name) + body, "sha256").digest()
    expected = base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()
    assert core.seal_signed(name, 7, KEY, *TIMES, PAYLOAD) == expected
    assert len(tag) == 32  # all 256 bits travel


def test_signed_needs_no_cryptography(core, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    value = core.seal_signed("session", 7, os.urandom(32), *TIMES, PAYLOAD)
    assert core.open_signed(value, [(7, KEY)], "session") is None


# ---------------------------------------------------------------- AES-256-GCM itself: the GCM specification

# McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 13-16,
# the AES-256 ones (also in NIST's GCM validation data): key, IV, plaintext, AAD,
# ciphertext, tag.
_K16 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
_P16 = (
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
_C16 = (
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
)
GCM_SPEC_CASES = {
    "case13": ("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    "case14": (
        "00" * 32,
        "00" * 12,
        "00" * 16,
        "",
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
    ),
    "case15": (
        _K16,
        "cafebabefacedbaddecaf888",
        _P16 + "1aafd255",
        "",
        _C16 + "898015ad",
        "b094dac5d93471bdec1a502270e3cc6c",
    ),
    "case16": (
        _K16,
        "cafebabefacedbaddecaf888",
        _P16,
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        _C16,
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
}


@pytest.mark.parametrize("case", GCM_SPEC_CASES.values(), ids=GCM_SPEC_CASES.keys())
def test_aes_256_gcm_matches_the_gcm_specification(aesgcm, case):
    key, iv, plain, aad, ciphertext, tag = (bytes.fromhex(x) for x in case)
    # The call the kernels make: encrypt(nonce, plaintext, aad) -> ciphertext | 16-byte tag.
    assert aesgcm(key).encrypt(iv, plain, aad or None) == ciphertext + tag
    assert aesgcm(key).encrypt(iv, plain, aad) == ciphertext + tag
    assert aesgcm(key).decrypt(iv, ciphertext + tag, aad) == plain


# ---------------------------------------------------------------- encrypted mode


def test_encrypted_is_the_documented_aes_gcm(core, aesgcm, fixed_nonce):
    name = "__Host-séssion"
    value = core.seal_encrypted(name, 7, PRK, EPOCH, *TIMES, PAYLOAD)
    raw = core.b64url_decode(value)
    head = b"\x01\x02\x07" + struct.pack(">I", EPOCH)
    key = core.hkdf_expand(PRK, b"fastsess/v1/cookie-enc/20454", 32)
    plain = struct.pack(">ddd", *TIMES) + PAYLOAD
    assert raw == head + fixed_nonce + aesgcm(key).encrypt(fixed_nonce, plain, bound(name) + head)
    assert len(raw) == 7 + 12 + len(plain) + 16


def test_encrypted_nonce_comes_from_the_random_source(core, aesgcm):
    calls = []

    def source(n):
        calls.append(n)
        return bytes([len(calls)]) * n

    core._set_random_source(source)
    try:
        first = core.b64url_decode(seal(core, "encrypted"))
        second = core.b64url_decode(seal(core, "encrypted"))
    finally:
        core._set_random_source(None)
    assert calls == [12, 12]
    assert first[7:19] == b"\x01" * 12 and second[7:19] == b"\x02" * 12
    assert first[19:] != second[19:]


def test_encrypted_nonces_are_fresh(core, aesgcm):
    values = {seal(core, "encrypted") for _ in range(50)}
    assert len(values) == 50
    assert len({core.b64url_decode(v)[7:19] for v in values}) == 50


def test_each_epoch_has_its_own_key(core, aesgcm, fixed_nonce):
    today = core.b64url_decode(core.seal_encrypted("session", 7, PRK, EPOCH, *TIMES, PAYLOAD))
    tomorrow = core.b64url_decode(core.seal_encrypted("session", 7, PRK, EPOCH + 1, *TIMES, PAYLOAD))
    assert today[7:19] == tomorrow[7:19]  # same nonce
    assert today[19:] != tomorrow[19:]
    assert today[:-16] != tomorrow[:-16]
    # A value whose epoch is rewritten does not open: the key and the AAD both change.
    forged = today[:3] + struct.pack(">I", EPOCH + 1) + today[7:]
    assert core.open_encrypted(core.b64url_encode(forged), [(7, PRK)], "session") is None
    assert core.open_encrypted(core.b64url_encode(tomorrow), [(7, PRK)], "session") == (*TIMES, PAYLOAD, 0)


def test_cookie_and_record_keys_are_separate(core, aesgcm, fixed_nonce):
    cookie_key = core.hkdf_expand(PRK, b"fastsess/v1/cookie-enc/20454", 32)
    record_key = core.hkdf_expand(PRK, b"fastsess/v1/record-enc/20454", 32)
    assert cookie_key != record_key
    assert cookie_key == core.derive_subkey(PRK, "fastsess/v1/cookie-enc/20454")


@pytest.mark.parametrize("epoch", [0, 1, 2**32 - 1, True])
def test_epochs_span_an_unsigned_32_bit_number(core, aesgcm, epoch):
    value = core.seal_encrypted("session", 7, PRK, epoch, *TIMES, PAYLOAD)
    assert core.b64url_decode(value)[3:7] == struct.pack(">I", epoch)
    assert core.open_encrypted(value, [(7, PRK)], "session") == (*TIMES, PAYLOAD, 0)


@pytest.mark.parametrize(
    "epoch, error", [(-1, ValueError), (2**32, ValueError), ("1", TypeError), (1.0, TypeError)]
)
def test_epochs_out_of_range_are_refused(core, aesgcm, epoch, error):
    with pytest.raises(error):
        core.seal_encrypted("session", 7, PRK, epoch, *TIMES, PAYLOAD)
    with pytest.raises(error):
        core.record_encrypt(PRK, epoch, STORE_KEY, b"x")


def test_a_forged_epoch_is_not_cached():
    """Opening caches a key only after it decrypted something: forged epochs cannot evict real keys."""
    pytest.importorskip("cryptography")
    reference._aeads.clear()
    value = reference.seal_encrypted("session", 7, PRK, EPOCH, *TIMES, PAYLOAD)
    assert list(reference._aeads) == [(reference.COOKIE_ENC_LABEL, PRK, EPOCH)]
    raw = reference.b64url_decode(value)
    for epoch in range(100):
        forged = reference.b64url_encode(raw[:3] + struct.pack(">I", epoch) + raw[7:])
        assert reference.open_encrypted(forged, [(7, PRK)], "session") is None
    assert list(reference._aeads) == [(reference.COOKIE_ENC_LABEL, PRK, EPOCH)]
    assert reference.open_encrypted(value, [(7, OTHER_PRK), (7, PRK)], "session") == (*TIMES, PAYLOAD, 1)
    assert (reference.COOKIE_ENC_LABEL, OTHER_PRK, EPOCH) not in reference._aeads


def test_missing_cryptography_is_an_import_error_naming_the_extra(core, monkeypatch):
    pytest.importorskip("cryptography")
    prk = os.urandom(32)  # a key no cache has seen, so the kernel has to load AESGCM
    sealed_before = core.seal_encrypted("session", 7, PRK, EPOCH, *TIMES, PAYLOAD)
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ImportError, match=r"pip install 'fastsess\[crypto\]'"):
        core.seal_encrypted("session", 7, prk, EPOCH, *TIMES, PAYLOAD)
    with pytest.raises(ImportError, match=r"fastsess\[crypto\]"):
        core.open_encrypted(sealed_before, [(7, prk)], "session")
    with pytest.raises(ImportError, match=r"fastsess\[crypto\]"):
        core.record_encrypt(prk, EPOCH, STORE_KEY, b"x")
    # Input rejected before any decryption needs no cipher.
    assert core.open_encrypted("garbage", [(7, prk)], "session") is None
    assert core.open_encrypted(sealed_before, [(8, prk)], "session") is None


# ---------------------------------------------------------------- records encrypted at rest


def test_record_round_trip(core, aesgcm):
    kid = core.derive_key_id(PRK)
    for blob in (b"", b"\x01\x00record", bytes(70000)):
        sealed = core.record_encrypt(PRK, EPOCH, STORE_KEY, blob)
        assert sealed[0] == 0x81 and sealed[1] == kid and sealed[2:6] == struct.pack(">I", EPOCH)
        assert len(sealed) == 6 + 12 + len(blob) + 16
        assert core.record_decrypt([(kid, PRK)], STORE_KEY, sealed) == blob


def test_record_is_the_documented_aes_gcm(core, aesgcm, fixed_nonce):
    kid = core.derive_key_id(PRK)
    blob = b"\x01\x00a record"
    sealed = core.record_encrypt(PRK, EPOCH, STORE_KEY, blob)
    head = bytes((0x81, kid)) + struct.pack(">I", EPOCH)
    aad = b"fastsess/v1/record\x00" + struct.pack(">H", 32) + STORE_KEY + head
    key = core.hkdf_expand(PRK, b"fastsess/v1/record-enc/20454", 32)
    assert sealed == head + fixed_nonce + aesgcm(key).encrypt(fixed_nonce, blob, aad)


def test_record_cannot_move_to_another_store_key(core, aesgcm):
    kid = core.derive_key_id(PRK)
    sealed = core.record_encrypt(PRK, EPOCH, STORE_KEY, b"\x01\x00secret")
    assert core.record_decrypt([(kid, PRK)], OTHER_STORE_KEY, sealed) is None
    assert core.record_decrypt([(kid, PRK)], STORE_KEY[:31], sealed) is None
    assert core.record_decrypt([(kid, PRK)], b"", sealed) is None


def test_record_every_tampered_byte_is_rejected(core, aesgcm):
    kid = core.derive_key_id(PRK)
    sealed = core.record_encrypt(PRK, EPOCH, STORE_KEY, b"\x01\x00secret")
    for i in range(len(sealed)):
        assert core.record_decrypt([(kid, PRK)], STORE_KEY, flipped(sealed, i)) is None, i
    for n in range(len(sealed)):
        assert core.record_decrypt([(kid, PRK)], STORE_KEY, sealed[:n]) is None, n


def test_record_rotation_and_wrong_keys(core, aesgcm):
    kid, other_kid = core.derive_key_id(PRK), core.derive_key_id(OTHER_PRK)
    sealed = core.record_encrypt(PRK, EPOCH, STORE_KEY, b"blob")
    assert core.record_decrypt([(other_kid, OTHER_PRK), (kid, PRK)], STORE_KEY, sealed) == b"blob"
    assert core.record_decrypt([(kid, OTHER_PRK)], STORE_KEY, sealed) is None
    assert core.record_decrypt([(other_kid, OTHER_PRK)], STORE_KEY, sealed) is None
    assert core.record_decrypt([], STORE_KEY, sealed) is None


def test_plain_records_and_cookies_are_not_encrypted_records(core, aesgcm):
    kid = core.derive_key_id(PRK)
    plain = core.pack_record(*TIMES[:2], 0, None, None, None, b'{"n":1}' * 10)
    assert core.record_decrypt([(kid, PRK)], STORE_KEY, plain) is None
    cookie = core.b64url_decode(core.seal_encrypted("session", kid, PRK, EPOCH, *TIMES, PAYLOAD))
    assert core.record_decrypt([(kid, PRK)], STORE_KEY, cookie) is None


@pytest.mark.parametrize("magic", [0x01, 0x80, 0x82, 0xFF])
def test_record_with_another_magic_is_rejected_even_when_correctly_sealed(core, aesgcm, magic):
    kid = core.derive_key_id(PRK)
    head = bytes((magic, kid)) + struct.pack(">I", EPOCH)
    aad = b"fastsess/v1/record\x00" + struct.pack(">H", 32) + STORE_KEY + head
    key = core.hkdf_expand(PRK, b"fastsess/v1/record-enc/20454", 32)
    sealed = head + bytes(12) + aesgcm(key).encrypt(bytes(12), b"blob", aad)
    assert core.record_decrypt([(kid, PRK)], STORE_KEY, sealed) is None
    assert core.record_decrypt([(kid, PRK)], STORE_KEY, b"\x81" + sealed[1:]) is None  # the AAD binds it


def test_record_argument_errors(core, aesgcm):
    sealed = core.record_encrypt(PRK, EPOCH, STORE_KEY, b"blob")
    kid = core.derive_key_id(PRK)
    for store_key in ("k" * 32, bytearray(STORE_KEY), None):
        with pytest.raises(TypeError):
            core.record_encrypt(PRK, EPOCH, store_key, b"blob")
        with pytest.raises(TypeError):
            core.record_decrypt([(kid, PRK)], store_key, sealed)
    for blob in ("blob", bytearray(b"blob"), memoryview(b"blob"), None):
        with pytest.raises(TypeError):
            core.record_encrypt(PRK, EPOCH, STORE_KEY, blob)
        with pytest.raises(TypeError):
            core.record_decrypt([(kid, PRK)], STORE_KEY, blob)
    with pytest.raises(ValueError):
        core.record_encrypt(PRK, EPOCH, bytes(70000), b"blob")


# ---------------------------------------------------------------- the twins agree; open never fails badly


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the comparison is the point
        return ("raised", type(exc), str(exc))


def with_nonce(kernel, nonce: bytes, fn, *args):
    kernel._set_random_source(lambda n: nonce[:n])
    try:
        return outcome(fn, *args)
    finally:
        kernel._set_random_source(None)


names = st.text(max_size=20)
kids = st.integers(0, 255) | st.sampled_from([-1, 256, "7"])
timestamps = st.floats() | st.integers(-(2**60), 2**60) | st.sampled_from([None, "1"])
payloads = st.binary(max_size=300) | st.sampled_from(["text", None])
epochs = st.integers(0, 2**32 - 1) | st.sampled_from([-1, 2**32])
nonces = st.binary(min_size=12, max_size=12)


times3 = st.tuples(timestamps, timestamps, timestamps)


@SETTINGS
@given(name=names, kid=kids, key=st.binary(max_size=80), times=times3, payload=payloads)
def test_seal_signed_agrees(c_core, name, kid, key, times, payload):
    ours = outcome(c_core.seal_signed, name, kid, key, *times, payload)
    assert ours == outcome(reference.seal_signed, name, kid, key, *times, payload)
    if ours[0] == "ok":
        opened = c_core.open_signed(ours[1], [(kid, key)], name)
        assert opened[3:] == reference.open_signed(ours[1], [(kid, key)], name)[3:] == (payload, 0)
        assert struct.pack(">ddd", *opened[:3]) == struct.pack(">ddd", *times)


@SETTINGS
@given(name=names, kid=kids, epoch=epochs, times=times3, payload=payloads, nonce=nonces)
def test_seal_encrypted_agrees(c_core, aesgcm, name, kid, epoch, times, payload, nonce):
    args = (name, kid, PRK, epoch, *times, payload)
    ours = with_nonce(c_core, nonce, c_core.seal_encrypted, *args)
    assert ours == with_nonce(reference, nonce, reference.seal_encrypted, *args)
    if ours[0] == "ok":
        opened = c_core.open_encrypted(ours[1], [(kid, PRK)], name)
        assert opened[3:] == reference.open_encrypted(ours[1], [(kid, PRK)], name)[3:] == (payload, 0)
        assert struct.pack(">ddd", *opened[:3]) == struct.pack(">ddd", *times)


@SETTINGS
@given(epoch=epochs, store_key=st.binary(max_size=40), blob=st.binary(max_size=300), nonce=nonces)
def test_record_encrypt_agrees(c_core, aesgcm, epoch, store_key, blob, nonce):
    ours = with_nonce(c_core, nonce, c_core.record_encrypt, PRK, epoch, store_key, blob)
    assert ours == with_nonce(reference, nonce, reference.record_encrypt, PRK, epoch, store_key, blob)
    if ours[0] == "ok":
        ring = [(reference.derive_key_id(PRK), PRK)]
        assert c_core.record_decrypt(ring, store_key, ours[1]) == blob
        assert reference.record_decrypt(ring, store_key, ours[1]) == blob


@SETTINGS
@given(data=st.data())
def test_open_agrees_on_mutated_values(c_core, aesgcm, data):
    mode = data.draw(st.sampled_from(["signed", "encrypted"]))
    value = seal(reference, mode, payload=data.draw(st.binary(max_size=40)))
    position = data.draw(st.integers(0, len(value) - 1))
    candidate = data.draw(
        st.just(value)
        | st.sampled_from("A_-z0é=").map(lambda ch: value[:position] + ch + value[position + 1 :])
        | st.integers(0, len(value)).map(lambda n: value[:n])
        | st.text(alphabet=B64_ALPHABET, max_size=120)
    )
    name = data.draw(st.sampled_from(["session", "Session"]))
    ring = keys_for(mode) + [(7, OTHER_KEY if mode == "signed" else OTHER_PRK)]
    assert outcome(opener(c_core, mode), candidate, ring, name) == outcome(
        opener(reference, mode), candidate, ring, name
    )


B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
anything = (
    st.text(max_size=120)
    | st.text(alphabet=B64_ALPHABET, min_size=70, max_size=200)
    | st.binary(max_size=100)
    | st.none()
    | st.integers()
)


def only_none_or_type_error(fn, *args):
    try:
        result = fn(*args)
    except TypeError:
        return
    assert result is None


@FUZZ_SETTINGS
@given(value=anything)
def test_open_fuzz_only_none_or_type_error(core, aesgcm, value):
    all_kids = [(kid, KEY) for kid in range(256)]
    all_prks = [(kid, PRK) for kid in range(256)]
    only_none_or_type_error(core.open_signed, value, all_kids, "session")
    only_none_or_type_error(core.open_encrypted, value, all_prks, "session")


@FUZZ_SETTINGS
@given(kid=st.integers(0, 255), tail=st.binary(max_size=120))
def test_open_fuzz_well_formed_headers(core, aesgcm, kid, tail):
    """Values that pass every check but the cryptographic one."""
    signed = core.b64url_encode(b"\x01\x01" + bytes((kid,)) + tail)
    encrypted = core.b64url_encode(b"\x01\x02" + bytes((kid,)) + tail)
    assert core.open_signed(signed, [(kid, KEY)], "session") is None
    assert core.open_encrypted(encrypted, [(kid, PRK)], "session") is None
    assert core.record_decrypt([(kid, PRK)], STORE_KEY, b"\x81" + bytes((kid,)) + tail) is None
    assert core.record_decrypt([(kid, PRK)], STORE_KEY, tail) is None
