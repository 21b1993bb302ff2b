"""The kernel's SHA-256 and HMAC-SHA256: store keys, HMAC, id-cookie tags, signed cookies.

The C kernel calls OpenSSL's SHA-256 directly where it can find it through the
standard library's _hashlib, and goes through hashlib otherwise;
FASTSESS_NO_LIBCRYPTO=1 forces hashlib. Every test runs against both kernels
through the `core` fixture, and one runs the kernel tests again in a fresh
interpreter with FASTSESS_NO_LIBCRYPTO=1, so that both C paths stay tested.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsess
from fastsess import _core_py as reference

TESTS = Path(__file__).resolve().parent
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = bytes(range(32))

#: the kernel test files that the hashlib path runs again (test_core_sha.py included)
KERNEL_TESTS = ("test_core.py", "test_core_seal.py", "test_core_sha.py")


@pytest.fixture(scope="session")
def c_core(core):
    """The C kernel, for the tests of its SHA-256 dispatch."""
    if core is reference:
        pytest.skip("the SHA-256 dispatch is the C kernel's")
    return core


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the comparison is the point
        return ("raised", type(exc), str(exc))


# ---------------------------------------------------------------- SHA-256: FIPS 180-4 examples

NIST_SHA256 = [
    ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (
        "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",  # 448 bits
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (
        "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"  # 896 bits
        "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
    ),
]


@pytest.mark.parametrize("message, expected", NIST_SHA256, ids=["abc", "empty", "448-bit", "896-bit"])
def test_store_key_is_sha256_on_the_nist_examples(core, message, expected):
    assert core.store_key(message).hex() == expected


def test_store_key_is_sha256_of_a_million_as(core):
    expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    assert core.store_key("a" * 1_000_000).hex() == expected


def test_store_key_is_sha256_for_every_length_across_two_blocks(core):
    # Lengths around 55/56 and 64 are where the padding needs a second block.
    for n in range(301):
        for text in ("".join(chr(48 + (i * 7 + n) % 75) for i in range(n)), "é" * n, "\U0001f600" * (n // 4)):
            assert core.store_key(text) == hashlib.sha256(text.encode("utf-8")).digest(), (n, text[:4])


def test_store_key_of_a_str_subclass_hashes_its_text(core):
    class Id(str):
        pass

    assert core.store_key(Id("abc")) == hashlib.sha256(b"abc").digest()


def test_store_key_fails_like_the_reference_on_what_utf8_cannot_encode(core):
    for bad in ("\ud800", "id-\udfff", b"abc", None):
        ours = outcome(core.store_key, bad)
        assert ours[0] == "raised"
        assert ours == outcome(reference.store_key, bad), bad


# ---------------------------------------------------------------- HMAC-SHA256 against the stdlib
# (RFC 4231's cases are in test_core.py, which the OpenSSL path below runs too.)


@pytest.mark.parametrize("key_len", [0, 1, 20, 32, 55, 63, 64, 65, 100, 131, 200])
def test_hmac_sha256_for_every_message_length(core, key_len):
    key = bytes((i * 29 + key_len) % 256 for i in range(key_len))
    for n in range(301):
        msg = bytes((i * 7 + n) % 256 for i in range(n))
        assert core.hmac_sha256(key, msg) == hmac.new(key, msg, "sha256").digest(), (key_len, n)


@SETTINGS
@given(key=st.binary(max_size=200), msg=st.binary(max_size=300))
def test_hmac_sha256_matches_the_stdlib(core, key, msg):
    expected = hmac.new(key, msg, "sha256").digest()
    assert core.hmac_sha256(key, msg) == expected
    # Keys and messages in other buffers take the same result.
    assert core.hmac_sha256(key, bytearray(msg)) == expected
    assert core.hmac_sha256(key, memoryview(msg)) == expected
    assert core.hmac_sha256(bytearray(key), msg) == expected


def test_hmac_sha256_is_right_for_more_keys_than_it_caches(core):
    keys = [i.to_bytes(2, "big") * 16 for i in range(300)]
    for _ in range(2):
        for key in keys:
            assert core.hmac_sha256(key, b"msg") == hmac.new(key, b"msg", "sha256").digest()


def test_hmac_sha256_refuses_what_the_reference_refuses(core):
    strided = memoryview(bytes(range(10)))[::2]  # not contiguous
    for key, msg in ((KEY, "text"), (KEY, None), (KEY, 12), (KEY, strided), ("text", b"msg"), (None, b"msg")):
        ours = outcome(core.hmac_sha256, key, msg)
        assert ours[0] == "raised"
        assert ours == outcome(reference.hmac_sha256, key, msg), (key, msg)


# ---------------------------------------------------------------- the tags built on it


def test_id_cookie_and_signed_cookie_tags_are_the_documented_hmacs(core):
    # bytes and bytearray keys give one tag: the second takes the hashlib path.
    for key in (KEY, bytes(100), b""):
        for name in ("session", "s" * 300):
            value = core.sign_id("A" * 43, key, 3, name)
            assert value == reference.sign_id("A" * 43, key, 3, name)
            assert value == core.sign_id("A" * 43, bytearray(key), 3, name)
            assert core.open_id_cookie(value, [(3, bytearray(key))], name) == ("A" * 43, 0)
            assert core.open_id_cookie(value, [(3, b"other"), (3, key)], name) == ("A" * 43, 1)
            sealed = core.seal_signed(name, 3, key, 1.0, 2.0, 3.0, b"payload")
            assert sealed == reference.seal_signed(name, 3, key, 1.0, 2.0, 3.0, b"payload")
            assert sealed == core.seal_signed(name, 3, bytearray(key), 1.0, 2.0, 3.0, b"payload")
            assert core.open_signed(sealed, [(3, bytearray(key))], name) == (1.0, 2.0, 3.0, b"payload", 0)
            assert core.open_signed(sealed, [(3, b"other"), (3, key)], name) == (1.0, 2.0, 3.0, b"payload", 1)


def test_every_bit_of_a_signed_cookie_tag_counts(core):
    sealed = core.seal_signed("session", 3, KEY, 1.0, 2.0, 3.0, b"payload")
    raw = core.b64url_decode(sealed)
    for i in range(len(raw) - 32, len(raw)):
        for bit in range(8):
            forged = core.b64url_encode(raw[:i] + bytes((raw[i] ^ (1 << bit),)) + raw[i + 1 :])
            assert core.open_signed(forged, [(3, KEY)], "session") is None, (i, bit)


def test_every_bit_of_an_id_cookie_tag_counts(core):
    raw = core.b64url_decode(core.sign_id("A" * 43, KEY, 3, "session"))
    for i in range(len(raw) - 16, len(raw)):
        for bit in range(8):
            forged = core.b64url_encode(raw[:i] + bytes((raw[i] ^ (1 << bit),)) + raw[i + 1 :])
            assert core.open_id_cookie(forged, [(3, KEY)], "session") is None, (i, bit)


# ---------------------------------------------------------------- which SHA-256 the C kernel runs


def libcrypto_reachable() -> bool:
    """Whether OpenSSL's SHA256_Init can be found through the standard library's _hashlib, asked of ctypes."""
    import _hashlib

    path = getattr(_hashlib, "__file__", None)
    if not path:
        return False
    try:
        return hasattr(ctypes.CDLL(path), "SHA256_Init")
    except OSError:
        return False


def forced_off() -> bool:
    return os.environ.get("FASTSESS_NO_LIBCRYPTO", "") not in ("", "0")


def run_through_hashlib(code: str, **environ: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with FASTSESS_NO_LIBCRYPTO=1 (unless environ says otherwise)
    and this fastsess first on the path."""
    src = str(Path(fastsess.__file__).resolve().parents[1])
    env = {**os.environ, "FASTSESS_NO_LIBCRYPTO": "1", **environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=TESTS.parent, env=env, timeout=300
    )


def test_the_c_kernel_calls_openssl_directly_where_the_standard_library_links_it(c_core):
    if libcrypto_reachable() and not forced_off():
        assert c_core._sha256_backend() == "libcrypto"
    else:
        assert c_core._sha256_backend() == "hashlib"


def test_fastsess_no_libcrypto_forces_hashlib(c_core):
    result = run_through_hashlib("from fastsess import _core\nprint(_core._sha256_backend())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hashlib"


def test_the_c_kernel_carries_no_sha256_of_its_own(c_core):
    # SPEC 1: no hand-written crypto. A SHA-256 compression needs the 64 round
    # constants of FIPS 180-4; the first four, as 32-bit words in either byte order,
    # appear nowhere in the built extension.
    binary = Path(c_core.__file__).read_bytes()
    words = (0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5)
    for order in ("little", "big"):
        assert b"".join(w.to_bytes(4, order) for w in words) not in binary


def test_the_c_kernel_hashes_right_with_the_cpus_sha_extensions_turned_off_in_openssl(c_core):
    code = "from fastsess import _core\nprint(_core._sha256_backend(), _core.store_key('abc').hex())"
    result = run_through_hashlib(code, OPENSSL_ia32cap=":~0x20000000", FASTSESS_NO_LIBCRYPTO="")
    assert result.returncode == 0, result.stderr
    backend, digest = result.stdout.split()
    assert backend == ("libcrypto" if libcrypto_reachable() else "hashlib")
    assert digest == NIST_SHA256[0][1]


def test_the_kernel_tests_pass_through_hashlib(c_core):
    if c_core._sha256_backend() == "hashlib":
        pytest.skip("this run goes through hashlib already")
    files = [str(TESTS / name) for name in KERNEL_TESTS]
    args = files + ["-q", "-m", "c_extension", "-p", "no:cacheprovider", "-p", "no:randomly"]
    result = run_through_hashlib(f"import pytest\nraise SystemExit(pytest.main({args!r}))\n")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
    assert " failed" not in result.stdout
