# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The C kernel: ids, keys, id-cookie tags, cookie parsing, the record codec, sealing.

The Cython twin of `_core_py.py`: the same functions with the same signatures,
exceptions and byte-identical output, so the two read side by side. The hot
paths work on str and bytes buffers directly (base64url, the Cookie header
scan, the codec walk, the sealed envelopes); SHA-256 and HMAC are OpenSSL's,
called directly where the standard library's libcrypto allows it (_libcrypto.h),
else through hashlib; AES-GCM is `cryptography`'s and JSON orjson's. Byte layouts
are documented in docs/FORMATS.md.
"""

import datetime as _dt
import hashlib
import hmac
import os
import sys
import uuid
from decimal import Decimal

import orjson as _orjson
import xxhash as _xxhash

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Copy, PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_AsDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_GetSlice
from cpython.long cimport (
    PyLong_AsLongLongAndOverflow,
    PyLong_AsUnsignedLongLong,
    PyLong_AsUnsignedLongLongMask,
)
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject
from cpython.unicode cimport (
    Py_UCS1,
    PyUnicode_1BYTE_DATA,
    PyUnicode_AsUTF8AndSize,
    PyUnicode_DATA,
    PyUnicode_DecodeUTF8,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_New,
    PyUnicode_READ,
    PyUnicode_Substring,
)
from libc.math cimport isfinite
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyNumber_AsSsize_t(object o, PyObject* exc) except? -1
    # Strings made by the legacy Py_UNICODE API are "ready" only after this (Python 3.11).
    int __Pyx_PyUnicode_READY(object o) except -1

cdef extern from "_libcrypto.h":
    ctypedef struct fs_hmac_key:
        pass
    int fs_libcrypto_load(const char* hashlib_path) noexcept
    void fs_sha256(const uint8_t* msg, size_t length, uint8_t* out) noexcept nogil
    void fs_hmac_key_init(fs_hmac_key* k, const uint8_t* key, size_t length) noexcept nogil
    void fs_hmac_sha256(const fs_hmac_key* k, const uint8_t* msg, size_t length, uint8_t* out) noexcept nogil
    bint fs_hmac_sha256_verify(
        const fs_hmac_key* k, const uint8_t* msg, size_t length, const uint8_t* tag, size_t tag_len
    ) noexcept nogil

try:
    # What hmac.digest calls for a hash name, minus the Python frames of the hmac module.
    from _hashlib import hmac_digest as _stdlib_hmac_digest
except ImportError:  # a CPython built without OpenSSL's _hashlib
    _stdlib_hmac_digest = hmac.digest

FORMAT_VERSION = 1
ID_BYTES = 32
ID_TAG_BYTES = 16
ID_COOKIE_BYTES = 2 + ID_BYTES + ID_TAG_BYTES
MAX_COOKIE_CHARS = 4096
MAX_CANDIDATES = 3
HKDF_SALT = b"fastsess"
ID_COOKIE_PURPOSE = b"fastsess/v1/id-cookie"
#: The first byte of an id cookie carrying a Beaker id (32 lowercase hex
#: characters) kept through migration: 0x40 | FORMAT_VERSION, never a format version.
LEGACY_ID_VERSION = 0x40 | FORMAT_VERSION
LEGACY_ID_CHARS = 32

MAX_DEPTH = 64  # nesting limit for session values, below every JSON library's own
_INT_MAX = (1 << 64) - 1  # and the minimum, -2**63, is where long long overflows
FLAG_DOMAIN = 1
FLAG_PATH = 2
FLAG_FLASH = 4
_KNOWN_FLAGS = FLAG_DOMAIN | FLAG_PATH | FLAG_FLASH

# The same numbers as C constants, for the typed code below.
cdef enum:
    C_FORMAT_VERSION = 1
    C_LEGACY_ID_VERSION = 0x41  # LEGACY_ID_VERSION
    C_LEGACY_ID_CHARS = 32
    C_ID_BYTES = 32
    C_ID_TAG_BYTES = 16
    C_ID_COOKIE_BYTES = 50
    C_ID_COOKIE_CHARS = 67  # unpadded base64url of 50 bytes
    C_MAX_COOKIE_CHARS = 4096
    C_MAX_DEPTH = 64
    C_RECORD_HEADER_SIZE = 22  # >BBIdd: version, flags, csrf generation, created, last write
    C_KNOWN_FLAGS = 7

cdef const char* C_PURPOSE = b"fastsess/v1/id-cookie"  # ID_COOKIE_PURPOSE
cdef Py_ssize_t C_PURPOSE_LEN = 21

# Hot callables held in C variables: no module-dict lookup per call.
cdef object _hmac_digest = _stdlib_hmac_digest
cdef object _compare_digest = hmac.compare_digest
cdef object _dumps = _orjson.dumps
cdef object _loads = _orjson.loads
cdef object _xxh3_64 = _xxhash.xxh3_64_intdigest
cdef object _sha256 = hashlib.sha256
cdef type _DATETIME = _dt.datetime
cdef type _DATE = _dt.date
cdef type _TIME = _dt.time
cdef type _DECIMAL = Decimal
cdef type _UUID = uuid.UUID
cdef object _UUID_LIMIT = 1 << 128

# How the kernel's own hashing reaches OpenSSL's SHA-256, chosen once, at import:
#
# - directly (_libcrypto.h): SHA256_Init, _Update and _Final of the libcrypto
#   that the standard library's _hashlib is linked with, found through that
#   module: the hash of a session id, or an HMAC tag, with no hash object at
#   all. The same OpenSSL code runs either way; what this saves is hashlib's
#   per-call object setup, most of the cost at these sizes;
# - otherwise through hashlib, where the functions cannot be found (a
#   _hashlib built into the interpreter, or with OpenSSL linked in statically).
#
# FASTSESS_NO_LIBCRYPTO=1 in the environment forces the second, so that tests
# can run the kernel on both paths on one machine. HKDF stays on hashlib's
# HMAC: it runs once per key and day, not per request.
cdef bint _load_libcrypto():
    """True when OpenSSL's SHA-256 is now callable directly (and not switched off)."""
    if os.environ.get("FASTSESS_NO_LIBCRYPTO", "") not in ("", "0"):
        return False
    path = getattr(sys.modules.get("_hashlib"), "__file__", None)  # hashlib, imported above, loaded it
    return bool(path) and fs_libcrypto_load(os.fsencode(path)) == 1


cdef bint _direct_sha256 = _load_libcrypto()


def _sha256_backend() -> str:
    """How the C kernel's hashing and HMAC reach OpenSSL: "libcrypto" (directly) or "hashlib"."""
    return "libcrypto" if _direct_sha256 else "hashlib"


cdef object _urandom = os.urandom


def _set_random_source(source) -> None:
    """Replace the CSPRNG with `source(n) -> bytes`; tests only. None restores os.urandom."""
    global _urandom
    _urandom = os.urandom if source is None else source


cdef bytes _random_bytes(Py_ssize_t n):
    data = _urandom(n)
    if type(data) is not bytes or PyBytes_GET_SIZE(data) != n:
        raise ValueError("random source returned the wrong number of bytes")
    return <bytes>data


def random_bytes(Py_ssize_t n) -> bytes:
    """n bytes from the OS CSPRNG (or the injected test source)."""
    return _random_bytes(n)


# ---------------------------------------------------------------- base64url

cdef const char* _B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
cdef signed char _B64_VALUES[256]  # -1 outside the alphabet
cdef uint8_t _B64_PAIRS[4096][2]  # the two characters of each 12-bit group


cdef void _fill_b64_values() noexcept:
    cdef int i
    for i in range(256):
        _B64_VALUES[i] = -1
    for i in range(64):
        _B64_VALUES[<uint8_t>_B64_CHARS[i]] = i
    for i in range(4096):
        _B64_PAIRS[i][0] = <uint8_t>_B64_CHARS[i >> 6]
        _B64_PAIRS[i][1] = <uint8_t>_B64_CHARS[i & 63]


_fill_b64_values()


cdef str _b64_encode(const uint8_t* src, Py_ssize_t n):
    """Unpadded base64url of n bytes at src."""
    cdef Py_ssize_t rem = n % 3
    cdef Py_ssize_t size = (n // 3) * 4 + (rem + 1 if rem else 0)
    cdef str out = PyUnicode_New(size, 127)
    cdef Py_UCS1* dst = PyUnicode_1BYTE_DATA(out)
    cdef Py_ssize_t i = 0, o = 0
    cdef uint32_t v
    while i + 3 <= n:  # 3 bytes are two 12-bit groups: two table reads give 4 characters
        v = (<uint32_t>src[i] << 16) | (<uint32_t>src[i + 1] << 8) | src[i + 2]
        memcpy(dst + o, _B64_PAIRS[v >> 12], 2)
        memcpy(dst + o + 2, _B64_PAIRS[v & 4095], 2)
        i += 3
        o += 4
    if rem == 1:
        v = <uint32_t>src[i] << 16
        dst[o] = _B64_CHARS[v >> 18]
        dst[o + 1] = _B64_CHARS[(v >> 12) & 63]
    elif rem == 2:
        v = (<uint32_t>src[i] << 16) | (<uint32_t>src[i + 1] << 8)
        dst[o] = _B64_CHARS[v >> 18]
        dst[o + 1] = _B64_CHARS[(v >> 12) & 63]
        dst[o + 2] = _B64_CHARS[(v >> 6) & 63]
    return out


cdef Py_ssize_t _b64_decode_into(const Py_UCS1* src, Py_ssize_t n, uint8_t* dst) noexcept nogil:
    """Decode n base64url characters into dst, which holds (n * 3) // 4 bytes.

    Returns the decoded length, or -1 for a character outside the alphabet, a
    length of 4k+1 or set unused bits (a non-canonical encoding).
    """
    cdef Py_ssize_t i = 0, o = 0, rem = n % 4
    cdef int a, b, c, d
    if rem == 1:
        return -1
    while i + 4 <= n:
        a = _B64_VALUES[src[i]]
        b = _B64_VALUES[src[i + 1]]
        c = _B64_VALUES[src[i + 2]]
        d = _B64_VALUES[src[i + 3]]
        if (a | b | c | d) < 0:
            return -1
        dst[o] = <uint8_t>((a << 2) | (b >> 4))
        dst[o + 1] = <uint8_t>(((b & 15) << 4) | (c >> 2))
        dst[o + 2] = <uint8_t>(((c & 3) << 6) | d)
        i += 4
        o += 3
    if rem == 2:
        a = _B64_VALUES[src[i]]
        b = _B64_VALUES[src[i + 1]]
        if (a | b) < 0 or (b & 15):
            return -1
        dst[o] = <uint8_t>((a << 2) | (b >> 4))
        o += 1
    elif rem == 3:
        a = _B64_VALUES[src[i]]
        b = _B64_VALUES[src[i + 1]]
        c = _B64_VALUES[src[i + 2]]
        if (a | b | c) < 0 or (c & 3):
            return -1
        dst[o] = <uint8_t>((a << 2) | (b >> 4))
        dst[o + 1] = <uint8_t>(((b & 15) << 4) | (c >> 2))
        o += 2
    return o


def b64url_encode(data) -> str:
    """Unpadded base64url."""
    cdef Py_buffer view
    if type(data) is bytes:
        return _b64_encode(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _b64_encode(<const uint8_t*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef bytes _b64url_decode(str text):
    cdef Py_ssize_t n
    __Pyx_PyUnicode_READY(text)
    n = PyUnicode_GET_LENGTH(text)
    if n % 4 == 1 or not PyUnicode_IS_ASCII(text):
        raise ValueError("invalid base64url")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, (n // 4) * 3 + (n % 4 - 1 if n % 4 else 0))
    if _b64_decode_into(PyUnicode_1BYTE_DATA(text), n, <uint8_t*>PyBytes_AS_STRING(out)) < 0:
        raise ValueError("invalid base64url")
    return out


def b64url_decode(text) -> bytes:
    """Strict unpadded base64url: any other character, a bad length or stray bits is ValueError."""
    if type(text) is not str:
        raise TypeError("expected str")
    return _b64url_decode(<str>text)


def new_session_id() -> str:
    """A fresh 256-bit session id from the CSPRNG, in unpadded base64url (43 characters)."""
    cdef bytes raw = _random_bytes(C_ID_BYTES)
    return _b64_encode(<const uint8_t*>PyBytes_AS_STRING(raw), C_ID_BYTES)


def store_key(session_id) -> bytes:
    """SHA-256 of the id: what stores see instead of the id itself."""
    cdef Py_ssize_t n
    cdef const char* utf8
    if type(session_id) is str and _direct_sha256:
        utf8 = PyUnicode_AsUTF8AndSize(session_id, &n)
        out = PyBytes_FromStringAndSize(NULL, 32)
        fs_sha256(<const uint8_t*>utf8, <size_t>n, <uint8_t*>PyBytes_AS_STRING(out))
        return out
    if not isinstance(session_id, str):
        raise TypeError("session id must be str")
    return _sha256(session_id.encode("utf-8")).digest()


# ---------------------------------------------------------------- HMAC and HKDF


# HMAC (RFC 2104) from two SHA-256 states keyed once per key, the inner one
# after key XOR ipad and the outer one after key XOR opad: a tag copies both
# and hashes the message, then the inner digest. Called directly, the two
# states are an fs_hmac_key held in a bytes object; through hashlib, two
# hash objects, whose copies cost less than copying OpenSSL's HMAC context
# (0.8 against 1.2 us for a 400-byte message). Neither repeats the key setup
# of a one-shot digest.
cdef Py_ssize_t _KEYED_LIMIT = 64
cdef dict _keyed = {}  # key -> (inner state, outer state)
cdef dict _keyed_direct = {}  # key -> fs_hmac_key as bytes


cdef tuple _hmac_states(bytes key):
    if len(key) > 64:  # SHA-256's block size: longer keys are hashed first
        key = _sha256(key).digest()
    cdef bytes padded = key + bytes(64 - len(key))
    return (
        _sha256(bytes([b ^ 0x36 for b in padded])),
        _sha256(bytes([b ^ 0x5C for b in padded])),
    )


cdef bytes _direct_key(bytes key):
    """The fs_hmac_key of key, from the cache or made and cached."""
    k = _keyed_direct.get(key)
    if k is None:
        if len(_keyed_direct) >= _KEYED_LIMIT:
            _keyed_direct.clear()
        k = PyBytes_FromStringAndSize(NULL, sizeof(fs_hmac_key))
        fs_hmac_key_init(
            <fs_hmac_key*>PyBytes_AS_STRING(k),
            <const uint8_t*>PyBytes_AS_STRING(key),
            <size_t>PyBytes_GET_SIZE(key),
        )
        _keyed_direct[key] = k
    return <bytes>k


cdef bytes _mac_direct(bytes key, object msg):
    """HMAC-SHA256 on OpenSSL's SHA-256 called directly; msg is bytes or another buffer."""
    cdef Py_buffer view
    cdef bytes k = _direct_key(key)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 32)
    if type(msg) is bytes:
        fs_hmac_sha256(
            <const fs_hmac_key*>PyBytes_AS_STRING(k),
            <const uint8_t*>PyBytes_AS_STRING(msg),
            <size_t>PyBytes_GET_SIZE(msg),
            <uint8_t*>PyBytes_AS_STRING(out),
        )
        return out
    PyObject_GetBuffer(msg, &view, PyBUF_SIMPLE)
    try:
        fs_hmac_sha256(
            <const fs_hmac_key*>PyBytes_AS_STRING(k),
            <const uint8_t*>view.buf,
            <size_t>view.len,
            <uint8_t*>PyBytes_AS_STRING(out),
        )
    finally:
        PyBuffer_Release(&view)
    return out


cdef inline object _direct_key_for(object key):
    """The fs_hmac_key of key when SHA-256 is called directly, or None: through hashlib, or for a
    key that is not bytes, the caller takes _mac's path."""
    if not _direct_sha256 or type(key) is not bytes:
        return None
    return _direct_key(<bytes>key)


cdef inline const fs_hmac_key* _hmac_key_of(object k) noexcept:
    """The fs_hmac_key inside a bytes object from _direct_key."""
    return <const fs_hmac_key*>PyBytes_AS_STRING(k)


cdef object _mac(object key, object msg):
    if type(key) is not bytes:
        return _hmac_digest(key, msg, "sha256")
    # Anything but a buffer takes hashlib's path, for hashlib's error.
    if _direct_sha256 and (type(msg) is bytes or PyObject_CheckBuffer(msg)):
        return _mac_direct(<bytes>key, msg)
    states = _keyed.get(key)
    if states is None:
        if len(_keyed) >= _KEYED_LIMIT:
            _keyed.clear()
        states = _hmac_states(key)
        _keyed[key] = states
    inner = (<tuple>states)[0].copy()
    inner.update(msg)
    outer = (<tuple>states)[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def hmac_sha256(key, msg) -> bytes:
    """HMAC-SHA256 on OpenSSL's SHA-256: called directly, else through the standard library."""
    return _mac(key, msg)


def constant_time_equal(a, b) -> bool:
    """Compare two byte strings in time independent of where they differ."""
    return _compare_digest(a, b)


def hkdf_extract(salt, ikm) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256."""
    return _hmac_digest(salt or b"\x00" * 32, ikm, "sha256")


def hkdf_expand(prk, info, length=32) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    if length < 0 or length > 255 * 32:
        raise ValueError("HKDF-Expand length out of range")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = _hmac_digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


def secret_prk(secret) -> bytes:
    """PRK = HKDF-Extract(salt=b"fastsess", UTF-8 secret), computed once per configured secret."""
    return hkdf_extract(HKDF_SALT, secret.encode("utf-8"))


def derive_subkey(prk, label) -> bytes:
    """A 256-bit subkey for one purpose, e.g. label "fastsess/v1/id-tag"."""
    return hkdf_expand(prk, label.encode("ascii"), 32)


def derive_key_id(prk) -> int:
    """The 1-byte key id: derived from the key itself, never from its position in a list."""
    return hkdf_expand(prk, b"fastsess/v1/key-id", 1)[0]


# ---------------------------------------------------------------- id cookie


cdef int _byte_value(object value) except -1:
    """value as one byte, with the errors bytes((value,)) raises."""
    cdef Py_ssize_t n = PyNumber_AsSsize_t(value, NULL)
    if n < 0 or n > 255:
        raise ValueError("bytes must be in range(0, 256)")
    return <int>n


cdef bytes _id_mac_input(int version, int kid, object name, const uint8_t* raw_id):
    cdef Py_ssize_t name_len
    cdef const char* name_utf8
    if not isinstance(name, str):
        raise TypeError("cookie name must be str")
    name_utf8 = PyUnicode_AsUTF8AndSize(name, &name_len)
    if name_len > 0xFFFF:
        raise ValueError("cookie name too long")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, C_PURPOSE_LEN + 5 + name_len + C_ID_BYTES)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(p, C_PURPOSE, C_PURPOSE_LEN)
    p += C_PURPOSE_LEN
    p[0] = 0
    p[1] = <uint8_t>version
    p[2] = <uint8_t>kid
    p[3] = <uint8_t>(name_len >> 8)
    p[4] = <uint8_t>name_len
    memcpy(p + 5, name_utf8, name_len)
    memcpy(p + 5 + name_len, raw_id, C_ID_BYTES)
    return out


cdef bint _is_legacy_id(const uint8_t* raw_id, Py_ssize_t n) noexcept nogil:
    """32 lowercase hex digits: the shape of a Beaker 1.14 session id (uuid4().hex)."""
    cdef Py_ssize_t i
    if n != C_LEGACY_ID_CHARS:
        return False
    for i in range(n):
        if not ((raw_id[i] >= 48 and raw_id[i] <= 57) or (raw_id[i] >= 97 and raw_id[i] <= 102)):
            return False
    return True


def sign_id(session_id, key, kid, name) -> str:
    """The id-cookie value: base64url(version | key id | raw id | 128-bit tag).

    A Beaker id kept through migration (32 lowercase hex characters) travels as
    its ASCII bytes under LEGACY_ID_VERSION, in a value of the same length.
    """
    cdef uint8_t raw[C_ID_COOKIE_BYTES]
    cdef int version = C_FORMAT_VERSION
    cdef bytes raw_id
    if type(session_id) is not str:
        raise TypeError("expected str")
    __Pyx_PyUnicode_READY(session_id)
    if (
        PyUnicode_GET_LENGTH(session_id) == C_LEGACY_ID_CHARS and PyUnicode_IS_ASCII(session_id)
        and _is_legacy_id(PyUnicode_1BYTE_DATA(session_id), C_LEGACY_ID_CHARS)
    ):
        version = C_LEGACY_ID_VERSION
        raw_id = PyBytes_FromStringAndSize(<char*>PyUnicode_1BYTE_DATA(session_id), C_LEGACY_ID_CHARS)
    else:
        raw_id = _b64url_decode(<str>session_id)
        if PyBytes_GET_SIZE(raw_id) != C_ID_BYTES:
            raise ValueError("session id must be 32 bytes")
    cdef int key_id = _byte_value(kid)
    raw[0] = <uint8_t>version
    raw[1] = <uint8_t>key_id
    memcpy(&raw[2], PyBytes_AS_STRING(raw_id), C_ID_BYTES)
    cdef bytes msg = _id_mac_input(version, key_id, name, &raw[2])
    cdef uint8_t mac[32]
    keyed = _direct_key_for(key)
    if keyed is not None:
        fs_hmac_sha256(
            _hmac_key_of(keyed), <const uint8_t*>PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg), mac
        )
        memcpy(&raw[2 + C_ID_BYTES], mac, C_ID_TAG_BYTES)
    else:
        tag = _mac(key, msg)
        memcpy(&raw[2 + C_ID_BYTES], PyBytes_AS_STRING(tag), C_ID_TAG_BYTES)
    return _b64_encode(raw, C_ID_COOKIE_BYTES)


def open_id_cookie(value, keys, name):
    """Verify an id-cookie value against (key id, key) pairs, first key first.

    Returns (session_id, index of the key that verified), or None for anything
    malformed, oversized or forged. Never raises on bad input. The session id
    is base64url, or a kept Beaker id under LEGACY_ID_VERSION.
    """
    cdef uint8_t raw[C_ID_COOKIE_BYTES + 2]  # room for what 67 characters could decode to
    cdef Py_ssize_t n
    cdef bint verified
    if type(value) is not str:
        return None
    __Pyx_PyUnicode_READY(value)
    n = PyUnicode_GET_LENGTH(value)
    if n > C_MAX_COOKIE_CHARS or n != C_ID_COOKIE_CHARS or not PyUnicode_IS_ASCII(value):
        return None
    if _b64_decode_into(PyUnicode_1BYTE_DATA(value), n, raw) != C_ID_COOKIE_BYTES:
        return None
    cdef int version = raw[0]
    if version != C_FORMAT_VERSION and (
        version != C_LEGACY_ID_VERSION or not _is_legacy_id(&raw[2], C_ID_BYTES)
    ):
        return None
    cdef int kid = raw[1]
    msg = None
    for index, (key_kid, key) in enumerate(keys):
        if key_kid != kid:
            continue
        if msg is None:
            msg = _id_mac_input(version, kid, name, &raw[2])
        keyed = _direct_key_for(key)
        if keyed is not None:
            verified = fs_hmac_sha256_verify(
                _hmac_key_of(keyed), <const uint8_t*>PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg),
                &raw[2 + C_ID_BYTES], C_ID_TAG_BYTES,
            )
        else:
            mac = _mac(key, msg)
            verified = _compare_digest(
                PyBytes_FromStringAndSize(PyBytes_AS_STRING(mac), C_ID_TAG_BYTES),
                PyBytes_FromStringAndSize(<char*>&raw[2 + C_ID_BYTES], C_ID_TAG_BYTES),
            )
        if verified:
            if version == C_FORMAT_VERSION:
                return _b64_encode(&raw[2], C_ID_BYTES), index
            return PyBytes_FromStringAndSize(<char*>&raw[2], C_ID_BYTES).decode("ascii"), index
    return None


# ---------------------------------------------------------------- Cookie header


cdef inline Py_ssize_t _find_char(
    int kind, const void* data, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t stop
) noexcept:
    """Index of the first ch in data[start:stop], or stop."""
    cdef const char* hit
    if kind == 1:
        if start >= stop:
            return stop
        hit = <const char*>memchr(<const char*>data + start, <int>ch, <size_t>(stop - start))
        return stop if hit == NULL else hit - <const char*>data
    while start < stop and PyUnicode_READ(kind, <void*>data, start) != ch:
        start += 1
    return start


cdef inline bint _is_blank(Py_UCS4 ch) noexcept nogil:
    return ch == 32 or ch == 9


def parse_cookie(header, name, limit=MAX_CANDIDATES) -> list:
    """Values of cookie `name` in a Cookie header, in order, at most `limit`.

    Splits on ";" only, trims spaces and tabs, compares names exactly, strips
    one pair of double quotes. Values are returned unvalidated.
    """
    cdef list found = []
    if not header or limit <= 0:
        return found
    if not isinstance(header, str) or not isinstance(name, str):
        raise TypeError("Cookie header and cookie name must be str")
    cdef Py_ssize_t cap = PyNumber_AsSsize_t(limit, NULL)  # a huge limit is no limit
    __Pyx_PyUnicode_READY(header)
    __Pyx_PyUnicode_READY(name)
    cdef Py_ssize_t size = PyUnicode_GET_LENGTH(header)
    cdef Py_ssize_t name_len = PyUnicode_GET_LENGTH(name)
    cdef int kind = PyUnicode_KIND(header)
    cdef int name_kind = PyUnicode_KIND(name)
    cdef const void* data = PyUnicode_DATA(header)
    cdef const void* name_data = PyUnicode_DATA(name)
    cdef Py_ssize_t start = 0, end, eq, a, b, j
    while start <= size:
        end = _find_char(kind, data, 59, start, size)  # ';'
        eq = _find_char(kind, data, 61, start, end)  # '='
        if eq < end:
            a = start
            b = eq
            while a < b and _is_blank(PyUnicode_READ(kind, <void*>data, a)):
                a += 1
            while b > a and _is_blank(PyUnicode_READ(kind, <void*>data, b - 1)):
                b -= 1
            if b - a == name_len:
                j = 0
                while j < name_len and (
                    PyUnicode_READ(kind, <void*>data, a + j) == PyUnicode_READ(name_kind, <void*>name_data, j)
                ):
                    j += 1
                if j == name_len:
                    a = eq + 1
                    b = end
                    while a < b and _is_blank(PyUnicode_READ(kind, <void*>data, a)):
                        a += 1
                    while b > a and _is_blank(PyUnicode_READ(kind, <void*>data, b - 1)):
                        b -= 1
                    if (
                        b - a >= 2
                        and PyUnicode_READ(kind, <void*>data, a) == 34  # '"'
                        and PyUnicode_READ(kind, <void*>data, b - 1) == 34
                    ):
                        a += 1
                        b -= 1
                    found.append(PyUnicode_Substring(header, a, b))
                    if len(found) >= cap:
                        break
        start = end + 1
    return found


# ---------------------------------------------------------------- Set-Cookie

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = (None, "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
cdef const char* C_WEEKDAYS = b"MonTueWedThuFriSatSun"
cdef const char* C_MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"
cdef long long C_MAX_HTTP_DATE = 253402300799  # 9999-12-31 23:59:59 UTC, the last datetime can hold


cdef inline void _put_digits(Py_UCS1* dst, long long value, int width) noexcept nogil:
    while width > 0:
        width -= 1
        dst[width] = <Py_UCS1>(48 + value % 10)
        value //= 10


def http_date(timestamp) -> str:
    """RFC 1123 date, as http.cookies.Morsel writes an `expires=` attribute."""
    cdef long long secs, days, era, doe, yoe, year, doy, mp, day, month, rest
    seconds = int(timestamp)
    if type(seconds) is not int or seconds < 0 or seconds > C_MAX_HTTP_DATE:
        # Before 1970 or past year 9999: datetime decides, with its own errors.
        t = _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
        return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
            _WEEKDAYS[t.weekday()], t.day, _MONTHS[t.month], t.year, t.hour, t.minute, t.second
        )
    secs = seconds
    days = secs // 86400
    rest = secs % 86400
    # Civil date from a day count (days since 1970-01-01), proleptic Gregorian.
    era = (days + 719468) // 146097
    doe = days + 719468 - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    cdef str out = PyUnicode_New(29, 127)
    cdef Py_UCS1* p = PyUnicode_1BYTE_DATA(out)
    memcpy(p, C_WEEKDAYS + 3 * ((days + 3) % 7), 3)  # 1970-01-01 was a Thursday
    p[3] = 44  # ','
    p[4] = 32
    _put_digits(p + 5, day, 2)
    p[7] = 32
    memcpy(p + 8, C_MONTHS + 3 * (month - 1), 3)
    p[11] = 32
    _put_digits(p + 12, year, 4)
    p[16] = 32
    _put_digits(p + 17, rest // 3600, 2)
    p[19] = 58  # ':'
    _put_digits(p + 20, rest // 60 % 60, 2)
    p[22] = 58
    _put_digits(p + 23, rest % 60, 2)
    memcpy(p + 25, b" GMT", 4)
    return out


cdef uint64_t _EVERY_BYTE = 0x0101010101010101  # times c: c in every byte of a 64-bit word


cdef int _check_attribute(str what, object text) except -1:
    cdef Py_ssize_t i, n
    cdef const Py_UCS1* chars
    cdef Py_UCS1 ch
    if not isinstance(text, str):
        raise TypeError(f"cookie {what} must be str")
    __Pyx_PyUnicode_READY(text)
    n = PyUnicode_GET_LENGTH(text)
    if PyUnicode_KIND(text) != 1:  # holds a character above U+00FF, so above "~"
        raise ValueError(f"invalid character in cookie {what}")
    chars = PyUnicode_1BYTE_DATA(text)
    cdef uint64_t word, semis, bad = 0
    i = 0
    while i + 8 <= n:  # eight characters per step: a value is hundreds long
        memcpy(&word, chars + i, 8)
        semis = word ^ _EVERY_BYTE * 59
        bad |= (
            ((word - _EVERY_BYTE * 32) & ~word)  # a byte below ' '
            | ((word + _EVERY_BYTE) | word)  # a byte above '~'
            | ((semis - _EVERY_BYTE) & ~semis)  # a ';'
        )
        i += 8
    for i in range(i, n):
        ch = chars[i]
        if ch == 59 or ch < 32 or ch > 126:  # ';', controls, DEL and beyond
            raise ValueError(f"invalid character in cookie {what}")
    if bad & (_EVERY_BYTE * 128):  # each test sets a byte's top bit exactly when that byte is bad
        raise ValueError(f"invalid character in cookie {what}")
    return 0


cdef object _attribute_or_none(str what, object text):
    """A set optional attribute, checked; None for an unset (empty or missing) one."""
    if not text:
        return None
    _check_attribute(what, text)
    return text


cdef inline Py_ssize_t _put(Py_UCS1* out, Py_ssize_t at, const char* label, Py_ssize_t label_len, object text):
    """Write label, then text (a str or subclass, ASCII, checked by the caller; or None), at out + at.

    Returns where that ends. With out NULL nothing is written: the same calls measure.
    """
    cdef Py_ssize_t n = 0 if text is None else PyUnicode_GET_LENGTH(text)
    if out != NULL:
        memcpy(out + at, label, label_len)
        if n:
            memcpy(out + at + label_len, PyUnicode_1BYTE_DATA(text), n)
    return at + label_len + n


cdef Py_ssize_t _put_cookie(
    Py_UCS1* out, object name, object value, object domain, object date, bint httponly, object age,
    bint partitioned, object path, object samesite, bint secure,
):
    """The Set-Cookie value in Morsel's order, at out (or only its length, with out NULL)."""
    cdef Py_ssize_t at = _put(out, 0, "", 0, name)
    at = _put(out, at, "=", 1, value)
    if domain is not None:
        at = _put(out, at, "; Domain=", 9, domain)
    if date is not None:
        at = _put(out, at, "; expires=", 10, date)
    if httponly:
        at = _put(out, at, "; HttpOnly", 10, None)
    if age is not None:
        at = _put(out, at, "; Max-Age=", 10, age)
    if partitioned:
        at = _put(out, at, "; Partitioned", 13, None)
    if path is not None:
        at = _put(out, at, "; Path=", 7, path)
    if samesite is not None:
        at = _put(out, at, "; SameSite=", 11, samesite)
    if secure:
        at = _put(out, at, "; Secure", 8, None)
    return at


def build_set_cookie(
    name,
    value,
    path=None,
    domain=None,
    expires=None,
    max_age=None,
    secure=True,
    httponly=True,
    samesite=None,
    partitioned=False,
) -> str:
    """A Set-Cookie value with attributes spelled and ordered as http.cookies.Morsel does."""
    _check_attribute("name", name)
    _check_attribute("value", value)
    cdef str date = None, age = None
    domain = _attribute_or_none("domain", domain)
    if expires is not None:
        date = http_date(expires)
        if not PyUnicode_IS_ASCII(date):
            raise ValueError("invalid cookie expires")
    if max_age is not None:
        age = "%d" % max_age
    path = _attribute_or_none("path", path)
    samesite = _attribute_or_none("samesite", samesite)
    # Every piece is ASCII (the attributes are checked above; dates and numbers are
    # letters, digits and punctuation): measure the value, then write it in one go.
    cdef bint flags[3]
    flags[0], flags[1], flags[2] = bool(httponly), bool(partitioned), bool(secure)
    cdef Py_ssize_t size = _put_cookie(
        NULL, name, value, domain, date, flags[0], age, flags[1], path, samesite, flags[2]
    )
    cdef str out = PyUnicode_New(size, 127)
    _put_cookie(PyUnicode_1BYTE_DATA(out), name, value, domain, date, flags[0], age, flags[1], path, samesite, flags[2])
    return out


# ---------------------------------------------------------------- the value codec
#
# Session values are exact instances of JSON types plus tagged round-trips.
# A tag is a one-key object whose key starts with "~"; a user dict of that
# shape is escaped as {"~~": dict}. Everything else is refused.

cdef str _TAG_TUPLE = "~t"
cdef str _TAG_SET = "~s"
cdef str _TAG_FROZENSET = "~fs"
cdef str _TAG_BYTES = "~b"
cdef str _TAG_DATETIME = "~dt"
cdef str _TAG_DATE = "~d"
cdef str _TAG_TIME = "~tm"
cdef str _TAG_DECIMAL = "~dec"
cdef str _TAG_UUID = "~u"
cdef str _TAG_ESCAPE = "~~"


cdef int _refuse(object value, str why="") except -1:
    raise TypeError(f"{type(value).__name__} is not a session value{why}")


cdef inline bint _is_tag_key(object key) except -1:
    """True when key is a str starting with "~"."""
    if type(key) is not str:
        return False
    __Pyx_PyUnicode_READY(key)
    return PyUnicode_GET_LENGTH(key) > 0 and PyUnicode_READ(PyUnicode_KIND(key), PyUnicode_DATA(key), 0) == 126


cdef object _first_key(dict value):
    cdef PyObject* key = NULL
    cdef Py_ssize_t pos = 0
    if not PyDict_Next(value, &pos, &key, NULL):
        return None
    return <object>key


cdef list _set_items(object value, int depth):
    cdef list items = [_to_plain(v, depth) for v in value]
    items.sort(key=_dumps)
    return items


cdef str _uuid_text(object value):
    """str(value) for a UUID, formatted here rather than by UUID.__str__."""
    cdef uint64_t hi, lo
    cdef int i
    n = value.int
    if type(n) is not int or n < 0 or n >= _UUID_LIMIT:
        return str(value)
    hi = PyLong_AsUnsignedLongLong(n >> 64)
    lo = PyLong_AsUnsignedLongLongMask(n)
    cdef str out = PyUnicode_New(36, 127)
    cdef Py_UCS1* p = PyUnicode_1BYTE_DATA(out)
    cdef const char* hexdigits = b"0123456789abcdef"
    cdef int pos = 36
    for i in range(32):  # from the last hex digit back; groups 8-4-4-4-12
        pos -= 1
        if pos == 23 or pos == 18 or pos == 13 or pos == 8:
            p[pos] = 45  # '-'
            pos -= 1
        if i < 16:
            p[pos] = hexdigits[lo & 15]
            lo >>= 4
        else:
            p[pos] = hexdigits[hi & 15]
            hi >>= 4
    return out


cdef object _dict_to_plain(dict value, int depth):
    out = None
    for k, v in value.items():
        if type(k) is not str:
            raise TypeError(f"dict keys must be str, not {type(k).__name__}")
        pv = _to_plain(v, depth)
        if pv is not v and out is None:
            out = dict(value)
        if out is not None:
            out[k] = pv
    result = value if out is None else out
    if len(value) == 1 and _is_tag_key(_first_key(value)):
        return {_TAG_ESCAPE: result}
    return result


cdef object _list_to_plain(list value, int depth):
    cdef Py_ssize_t i = 0
    out = None
    while i < PyList_GET_SIZE(value):  # re-read: a tzinfo hook may shrink the list
        v = <object>PyList_GET_ITEM(value, i)
        pv = _to_plain(v, depth)
        if pv is not v and out is None:
            out = list(value)
        if out is not None:
            if i >= PyList_GET_SIZE(out):
                raise IndexError("list assignment index out of range")
            out[i] = pv
        i += 1
    return value if out is None else out


cdef object _to_plain(object value, int depth):
    """The JSON tree for value, refusing anything SPEC 4 does not allow.

    Returns value itself when nothing needs a tag, so plain data is not copied.
    """
    cdef type t = type(value)
    cdef int overflow = 0
    if depth > C_MAX_DEPTH:
        raise TypeError(f"value is nested more than {MAX_DEPTH} levels deep")
    depth += 1
    if t is str or t is bool or value is None:
        return value
    if t is int:
        PyLong_AsLongLongAndOverflow(value, &overflow)  # overflow < 0: below -2**63
        if overflow < 0 or (overflow > 0 and value > _INT_MAX):
            _refuse(value, " (int out of 64-bit range)")
        return value
    if t is float:
        if not isfinite(PyFloat_AS_DOUBLE(value)):
            _refuse(value, " (NaN and infinities are refused)")
        return value
    if t is dict:
        return _dict_to_plain(<dict>value, depth)
    if t is list:
        return _list_to_plain(<list>value, depth)
    if t is tuple:
        return {_TAG_TUPLE: [_to_plain(v, depth) for v in <tuple>value]}
    if t is set:
        return {_TAG_SET: _set_items(value, depth)}
    if t is frozenset:
        return {_TAG_FROZENSET: _set_items(value, depth)}
    if t is bytes:
        return {_TAG_BYTES: _b64_encode(<const uint8_t*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))}
    if t is _DATETIME:
        return {_TAG_DATETIME: value.isoformat()}
    if t is _DATE:
        return {_TAG_DATE: value.isoformat()}
    if t is _TIME:
        return {_TAG_TIME: value.isoformat()}
    if t is _DECIMAL:
        if not value.is_finite():
            _refuse(value, " (NaN and infinities are refused)")
        return {_TAG_DECIMAL: str(value)}
    if t is _UUID:
        return {_TAG_UUID: _uuid_text(value)}
    _refuse(value)


cdef object _from_tag(str tag, object payload, int depth):
    if tag == _TAG_ESCAPE:
        if type(payload) is not dict:
            raise ValueError("malformed escaped dict")
        return {k: _from_plain(v, depth) for k, v in (<dict>payload).items()}
    if tag == _TAG_TUPLE or tag == _TAG_SET or tag == _TAG_FROZENSET:
        if type(payload) is not list:
            raise ValueError("malformed tagged collection")
        items = [_from_plain(v, depth) for v in <list>payload]
        if tag == _TAG_TUPLE:
            return tuple(items)
        try:
            return set(items) if tag == _TAG_SET else frozenset(items)
        except TypeError as exc:
            raise ValueError("unhashable set element") from exc
    if type(payload) is not str:
        raise ValueError("malformed tagged value")
    try:
        if tag == _TAG_BYTES:
            return _b64url_decode(<str>payload)
        if tag == _TAG_DATETIME:
            return _DATETIME.fromisoformat(payload)
        if tag == _TAG_DATE:
            return _DATE.fromisoformat(payload)
        if tag == _TAG_TIME:
            return _TIME.fromisoformat(payload)
        if tag == _TAG_DECIMAL:
            value = _DECIMAL(payload)
            if not value.is_finite():
                raise ValueError("non-finite Decimal")
            return value
        if tag == _TAG_UUID:
            return _UUID(payload)
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed {tag} value") from exc
    raise ValueError(f"unknown tag {tag!r}")


cdef object _from_plain(object value, int depth):
    cdef type t = type(value)
    cdef Py_ssize_t i = 0
    if depth > C_MAX_DEPTH:
        raise ValueError(f"record data is nested more than {MAX_DEPTH} levels deep")
    depth += 1
    if t is dict:
        if len(<dict>value) == 1:
            k = _first_key(<dict>value)
            if _is_tag_key(k):
                return _from_tag(<str>k, (<dict>value)[k], depth)
        for k, v in (<dict>value).items():
            pv = _from_plain(v, depth)
            if pv is not v:
                (<dict>value)[k] = pv
        return value
    if t is list:
        while i < PyList_GET_SIZE(value):
            v = <object>PyList_GET_ITEM(value, i)
            pv = _from_plain(v, depth)
            if pv is not v and i < PyList_GET_SIZE(value):
                (<list>value)[i] = pv
            i += 1
        return value
    return value


def check_value(key, value) -> None:
    """Raise TypeError naming `key` unless value is a session value (SPEC 4)."""
    try:
        _dumps(_to_plain(value, 1))
    except TypeError as exc:
        raise TypeError(f"session[{key!r}]: {exc}") from None
    except RecursionError:
        raise TypeError(f"session[{key!r}]: value is nested too deeply") from None


def encode_data(data) -> bytes:
    """Encode a session's data dict; TypeError names the first refused key."""
    if type(data) is not dict:
        raise TypeError("session data must be a dict")
    try:
        return _dumps(_to_plain(data, 0))
    except (TypeError, RecursionError):
        pass
    for k, v in (<dict>data).items():
        if type(k) is not str:
            raise TypeError(f"session keys must be str, not {type(k).__name__}")
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            raise TypeError(f"session key {k!r} is not valid UTF-8") from None
        check_value(k, v)
    raise TypeError("session data cannot be encoded")


cdef bint _may_hold_tag(bytes blob) noexcept:
    """The test b'"~' in blob, scanning for the rare "~" with memchr and looking one byte back."""
    cdef const char* start = PyBytes_AS_STRING(blob)
    cdef const char* end = start + PyBytes_GET_SIZE(blob)
    cdef const char* p = start
    while p < end:
        p = <const char*>memchr(p, 126, <size_t>(end - p))  # '~'
        if p == NULL:
            return False
        if p > start and (p - 1)[0] == 34:  # the byte before is a quote
            return True
        p += 1
    return False


def decode_data(blob) -> dict:
    """Decode what encode_data wrote; ValueError for anything malformed."""
    if type(blob) is not bytes:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError("record data must be bytes")
        blob = bytes(blob)
    try:
        tree = _loads(blob)
    except RecursionError as exc:
        raise ValueError("invalid record data") from exc
    if type(tree) is not dict:
        raise ValueError("record data is not an object")
    if not _may_hold_tag(<bytes>blob):  # no tag can be present: skip the walk
        return tree
    try:
        result = _from_plain(tree, 0)
    except RecursionError as exc:
        raise ValueError("invalid record data") from exc
    if type(result) is not dict:
        raise ValueError("record data is not an object")
    return result


cdef object _fresh(object value):
    cdef type t = type(value)
    cdef Py_ssize_t i, pos = 0
    cdef PyObject* k
    cdef PyObject* v
    cdef bint changed
    if t is dict:
        out = PyDict_Copy(value)
        while PyDict_Next(value, &pos, &k, &v):
            t = type(<object>v)
            if t is dict or t is list or t is set or t is tuple:
                (<dict>out)[<object>k] = _fresh(<object>v)
        return out
    if t is list:
        out = PyList_GetSlice(value, 0, PyList_GET_SIZE(value))
        for i in range(PyList_GET_SIZE(out)):
            t = type(<object>PyList_GET_ITEM(out, i))
            if t is dict or t is list or t is set or t is tuple:
                (<list>out)[i] = _fresh(<object>PyList_GET_ITEM(out, i))
        return out
    if t is set:
        return set(value)  # the elements are hashable, so immutable (SPEC 4)
    if t is tuple:
        changed = False
        items = []
        for v2 in <tuple>value:
            fv = _fresh(v2)
            changed = changed or fv is not v2
            items.append(fv)
        return tuple(items) if changed else value
    return value


#: what _native_copy answers for data holding a value JSON does not carry as itself
cdef object _NOT_NATIVE = object()


cdef object _native_copy(object value):
    """A copy of value made of JSON's own types (str, int, float, bool, None, list, dict), else _NOT_NATIVE.

    Exactly what decode_data would give for encode_data's bytes of such a value.
    """
    cdef type t = type(value)
    cdef Py_ssize_t i, pos = 0
    cdef PyObject* k
    cdef PyObject* v
    if t is str or t is int or t is float or t is bool or value is None:
        return value
    if t is dict:
        out = PyDict_Copy(value)
        while PyDict_Next(value, &pos, &k, &v):
            t = type(<object>v)
            if t is dict or t is list:
                item = _native_copy(<object>v)
                if item is _NOT_NATIVE:
                    return _NOT_NATIVE
                (<dict>out)[<object>k] = item
            elif not (t is str or t is int or t is float or t is bool or <object>v is None):
                return _NOT_NATIVE
        return out
    if t is list:
        out = PyList_GetSlice(value, 0, PyList_GET_SIZE(value))
        for i in range(PyList_GET_SIZE(out)):
            item = <object>PyList_GET_ITEM(out, i)
            t = type(item)
            if t is dict or t is list:
                item = _native_copy(item)
                if item is _NOT_NATIVE:
                    return _NOT_NATIVE
                (<list>out)[i] = item
            elif not (t is str or t is int or t is float or t is bool or item is None):
                return _NOT_NATIVE
        return out
    return _NOT_NATIVE


def copy_data(data) -> dict:
    """A copy of decoded session data sharing only immutable values (dicts, lists, sets copied)."""
    if type(data) is not dict:
        raise TypeError("session data must be a dict")
    return _fresh(data)


def copy_value(value):
    """One session value, copied as copy_data copies the values of a dict."""
    return _fresh(value)


# The docstring opens with the text signature inspect.signature reads from an extension type.
cdef class DecodeMemo:
    """DecodeMemo(budget, entry_limit)
--

    decode_data with a memory: the same bytes seen again decode from a kept dict.

    Bytes are kept decoded from their second sighting: once noted, twice
    kept, within a budget of `budget` encoded bytes (bytes over `entry_limit`
    are never noted); when the budget is spent everything is dropped. Noting
    keeps only the bytes, which the garbage collector never visits. Entries
    are found by fingerprint and match only when the bytes are equal, so a
    collision costs a decode, never a wrong answer. decode() answers with
    the caller's own copy_data of what is kept; decode_shared() with a
    shallow copy, for callers that copy a container only when they hand it
    out. prime() keeps the bytes a session was just written as, when the
    bytes it was loaded from were noted or primed: its next load, which
    usually sends those new bytes, decodes from memory too.
    """

    cdef dict _noted  # fingerprint -> bytes seen once
    cdef dict _kept  # fingerprint -> (bytes, dict, primed)
    cdef Py_ssize_t _size, _budget, _entry_limit

    def __init__(self, Py_ssize_t budget, Py_ssize_t entry_limit):
        self._noted = {}
        self._kept = {}
        self._size = 0
        self._budget = budget
        self._entry_limit = entry_limit

    @property
    def size(self) -> int:
        """The encoded bytes of every entry, noted or kept."""
        return self._size

    def entries(self) -> list:
        """(bytes, None) for every noted entry, (bytes, kept dict) for every kept one."""
        return [(blob, None) for blob in self._noted.values()] + [entry[:2] for entry in self._kept.values()]

    def decode(self, blob) -> dict:
        if type(blob) is not bytes:
            return decode_data(blob)
        fp = _xxh3_64(blob)
        kept = self._kept.get(fp)
        if kept is not None and (<tuple>kept)[0] == blob:
            return _fresh((<tuple>kept)[1])
        return self._missed(blob, fp, kept)

    def decode_shared(self, blob) -> tuple:
        """(data, shared): data is decode(blob)'s answer, but its containers may be shared.

        shared is None when every container in data is the caller's own; else
        it is the kept dict whose containers data's values are: hand out
        data[key] only after copy_value, while it is shared[key] itself.
        """
        if type(blob) is not bytes:
            return decode_data(blob), None
        fp = _xxh3_64(blob)
        kept = self._kept.get(fp)
        if kept is not None and (<tuple>kept)[0] == blob:
            shared = (<tuple>kept)[1]
            return PyDict_Copy(shared), shared
        return self._missed(blob, fp, kept), None

    cdef object _missed(self, bytes blob, object fp, object kept):
        """decode, for bytes not kept under fp (kept: what is kept there instead, or None)."""
        cdef Py_ssize_t n
        data = decode_data(blob)
        n = PyBytes_GET_SIZE(blob)
        if n > self._entry_limit or n > self._budget:
            return data
        noted = self._noted.get(fp)
        if noted is not None and noted == blob:  # the second sighting: keep it
            self._noted.pop(fp, None)  # not del: another thread may have dropped it meanwhile
            if kept is not None:  # a collision: the newer bytes win
                self._size -= PyBytes_GET_SIZE((<tuple>kept)[0])
            self._kept[fp] = (blob, _fresh(data), False)
            return data
        if noted is not None:
            self._size -= PyBytes_GET_SIZE(noted)
        if self._size + n > self._budget:
            self._noted.clear()
            self._kept.clear()
            self._size = 0
        self._noted[fp] = blob
        self._size += n
        return data

    def prime(self, old, new, data) -> bool:
        """Keep new decoded as data (copied), in place of old, the bytes data was loaded from.

        Only when old was noted or primed itself: a session written after a
        load usually comes back with the new bytes, but bytes kept from two
        sightings are being sent again as they are (a client replaying one
        cookie), and stay. Only data made of JSON's own types is kept (what
        decode_data gives for it is then exactly a copy of it). True when
        prime kept new.
        """
        cdef Py_ssize_t n
        if type(old) is not bytes or type(new) is not bytes or type(data) is not dict:
            return False
        n = PyBytes_GET_SIZE(new)
        if n > self._entry_limit or n > self._budget or old == new:
            return False
        fp_old = _xxh3_64(old)
        entry = self._kept.get(fp_old)
        if entry is not None and (<tuple>entry)[0] == old:
            if not (<tuple>entry)[2]:
                return False
            if self._kept.pop(fp_old, None) is not None:
                self._size -= PyBytes_GET_SIZE(old)
        else:
            entry = self._noted.get(fp_old)
            if entry is None or entry != old:
                return False
            if self._noted.pop(fp_old, None) is not None:
                self._size -= PyBytes_GET_SIZE(old)
        copied = _native_copy(data)
        if copied is _NOT_NATIVE:
            return False
        fp = _xxh3_64(new)
        entry = self._kept.pop(fp, None)
        if entry is not None:
            self._size -= PyBytes_GET_SIZE((<tuple>entry)[0])
        entry = self._noted.pop(fp, None)
        if entry is not None:
            self._size -= PyBytes_GET_SIZE(entry)
        if self._size + n > self._budget:
            self._noted.clear()
            self._kept.clear()
            self._size = 0
        self._kept[fp] = (new, copied, True)
        self._size += n
        return True


def fingerprint(data) -> int:
    """64-bit change fingerprint (xxh3_64); never used for security."""
    return _xxh3_64(data)


# ---------------------------------------------------------------- records


cdef inline void _store_be64(uint8_t* p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[7 - i] = <uint8_t>(v & 0xFF)
        v >>= 8


cdef inline uint64_t _load_be64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef double _timestamp(object value, str error="record timestamps must be real numbers") except? -1.0:
    """value as a C double, with TypeError for anything that is not a real number."""
    if type(value) is float:
        return PyFloat_AS_DOUBLE(value)
    try:
        return PyFloat_AsDouble(value)
    except Exception:
        raise TypeError(error) from None


cdef const char* _short_field(str what, object text, Py_ssize_t* size) except NULL:
    cdef const char* raw
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str")
    raw = PyUnicode_AsUTF8AndSize(text, size)
    if size[0] > 255:
        raise ValueError(f"{what} too long")
    return raw


def pack_record(created, last_write, csrf_gen, domain, path, flash, data) -> bytes:
    """A record: header, optional domain and path, optional flash bytes, then the data bytes."""
    cdef int flags = 0
    cdef const char* domain_raw = NULL
    cdef const char* path_raw = NULL
    cdef Py_ssize_t domain_len = 0, path_len = 0, total
    cdef Py_buffer flash_view, data_view
    cdef bint have_flash = False, have_data = False
    cdef double created_c, last_write_c
    cdef uint64_t bits
    cdef uint32_t gen
    cdef uint8_t* p
    if domain is not None:
        domain_raw = _short_field("domain", domain, &domain_len)
        flags |= FLAG_DOMAIN
    if path is not None:
        path_raw = _short_field("path", path, &path_len)
        flags |= FLAG_PATH
    try:
        if flash is not None:
            flags |= FLAG_FLASH
            PyObject_GetBuffer(flash, &flash_view, PyBUF_SIMPLE)
            have_flash = True
            if <uint64_t>flash_view.len > 0xFFFFFFFF:
                raise ValueError("flash too long")
        gen = PyLong_AsUnsignedLongLongMask(csrf_gen & 0xFFFFFFFF)
        created_c = _timestamp(created)
        last_write_c = _timestamp(last_write)
        PyObject_GetBuffer(data, &data_view, PyBUF_SIMPLE)
        have_data = True
        total = C_RECORD_HEADER_SIZE + data_view.len
        if domain_raw != NULL:
            total += 1 + domain_len
        if path_raw != NULL:
            total += 1 + path_len
        if have_flash:
            total += 4 + flash_view.len
        out = PyBytes_FromStringAndSize(NULL, total)
        p = <uint8_t*>PyBytes_AS_STRING(out)
        p[0] = C_FORMAT_VERSION
        p[1] = <uint8_t>flags
        p[2] = <uint8_t>(gen >> 24)
        p[3] = <uint8_t>(gen >> 16)
        p[4] = <uint8_t>(gen >> 8)
        p[5] = <uint8_t>gen
        memcpy(&bits, &created_c, 8)
        _store_be64(p + 6, bits)
        memcpy(&bits, &last_write_c, 8)
        _store_be64(p + 14, bits)
        p += C_RECORD_HEADER_SIZE
        if domain_raw != NULL:
            p[0] = <uint8_t>domain_len
            memcpy(p + 1, domain_raw, domain_len)
            p += 1 + domain_len
        if path_raw != NULL:
            p[0] = <uint8_t>path_len
            memcpy(p + 1, path_raw, path_len)
            p += 1 + path_len
        if have_flash:
            p[0] = <uint8_t>(flash_view.len >> 24)
            p[1] = <uint8_t>(flash_view.len >> 16)
            p[2] = <uint8_t>(flash_view.len >> 8)
            p[3] = <uint8_t>flash_view.len
            memcpy(p + 4, flash_view.buf, flash_view.len)
            p += 4 + flash_view.len
        memcpy(p, data_view.buf, data_view.len)
        return out
    finally:
        if have_flash:
            PyBuffer_Release(&flash_view)
        if have_data:
            PyBuffer_Release(&data_view)


def unpack_record(blob):
    """(created, last_write, csrf_gen, domain, path, flash or None, data); ValueError if malformed."""
    cdef Py_ssize_t size, pos, n
    cdef const uint8_t* p
    cdef uint64_t bits
    cdef double created, last_write
    cdef int version, flags
    cdef uint32_t csrf_gen
    if type(blob) is not bytes:
        raise TypeError("record must be bytes")
    size = PyBytes_GET_SIZE(blob)
    if size < C_RECORD_HEADER_SIZE:
        raise ValueError("record too short")
    p = <const uint8_t*>PyBytes_AS_STRING(blob)
    version = p[0]
    flags = p[1]
    csrf_gen = (<uint32_t>p[2] << 24) | (<uint32_t>p[3] << 16) | (<uint32_t>p[4] << 8) | p[5]
    bits = _load_be64(p + 6)
    memcpy(&created, &bits, 8)
    bits = _load_be64(p + 14)
    memcpy(&last_write, &bits, 8)
    if version != C_FORMAT_VERSION:
        raise ValueError(f"unknown record format {version}")
    if flags & ~C_KNOWN_FLAGS:
        raise ValueError("unknown record flags")
    pos = C_RECORD_HEADER_SIZE
    domain = path = flash = None
    try:
        if flags & FLAG_DOMAIN:
            domain = _short_text(p, size, &pos)
        if flags & FLAG_PATH:
            path = _short_text(p, size, &pos)
        if flags & FLAG_FLASH:
            if pos + 4 > size:
                raise IndexError("flash length is cut off")
            n = (<Py_ssize_t>p[pos] << 24) | (<Py_ssize_t>p[pos + 1] << 16) | (<Py_ssize_t>p[pos + 2] << 8) | p[pos + 3]
            flash = PyBytes_FromStringAndSize(<const char*>p + pos + 4, min(n, size - pos - 4))
            pos += 4 + n
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError("record header is malformed") from exc
    if pos > size:
        raise ValueError("record is truncated")
    return created, last_write, csrf_gen, domain, path, flash, PyBytes_FromStringAndSize(
        <const char*>p + pos, size - pos
    )


cdef str _short_text(const uint8_t* p, Py_ssize_t size, Py_ssize_t* pos):
    """A 1-byte length then UTF-8 text, as far as the blob goes; advances pos past the field."""
    cdef Py_ssize_t at = pos[0], n
    if at >= size:
        raise IndexError("field length is cut off")
    n = p[at]
    pos[0] = at + 1 + n
    return PyUnicode_DecodeUTF8(<char*>p + at + 1, min(n, size - at - 1), NULL)


# ---------------------------------------------------------------- sealed cookies and encrypted records
#
# A cookie-only session travels whole in its cookie, sealed either with
# HMAC-SHA256 and a 256-bit tag (signed mode) or with AES-256-GCM under a key
# per day (encrypted mode). Records at rest on a server-side store use the same
# AEAD with the store key bound. Layouts: docs/FORMATS.md, "Sealed cookie".

MODE_SIGNED = 1
MODE_ENCRYPTED = 2
ENCRYPTED_RECORD_VERSION = 0x80 | FORMAT_VERSION  # a plain record starts with FORMAT_VERSION itself
COOKIE_SESSION_PURPOSE = b"fastsess/v1/cookie-session"
RECORD_PURPOSE = b"fastsess/v1/record"
COOKIE_ENC_LABEL = "fastsess/v1/cookie-enc/"
RECORD_ENC_LABEL = "fastsess/v1/record-enc/"
EPOCH_SECONDS = 86400  # one encryption key per day: epoch = int(unix time // EPOCH_SECONDS)
SEAL_TAG_BYTES = 32
NONCE_BYTES = 12
AEAD_TAG_BYTES = 16

cdef enum:
    C_MODE_SIGNED = 1
    C_MODE_ENCRYPTED = 2
    C_ENCRYPTED_RECORD_VERSION = 0x81
    C_SEAL_TAG_BYTES = 32
    C_NONCE_BYTES = 12
    C_TIMES_SIZE = 24  # >ddd: issued at, last access, expires at
    C_SIGNED_HEAD = 27  # version, mode, key id, the times
    C_SIGNED_MIN = 59  # C_SIGNED_HEAD + C_SEAL_TAG_BYTES
    C_ENCRYPTED_HEAD = 7  # version, mode, key id, epoch
    C_ENCRYPTED_CIPHERTEXT = 19  # head, nonce
    C_ENCRYPTED_MIN = 59  # head, nonce, the times, the 16-byte GCM tag
    C_RECORD_HEAD = 6  # magic, key id, epoch
    C_RECORD_CIPHERTEXT = 18  # head, nonce
    C_RECORD_MIN = 34  # head, nonce, the GCM tag
    C_SEALED_MIN_CHARS = 79  # base64url of 59 bytes, the shortest sealed cookie in either mode
    C_MAX_SEALED_BYTES = 3072  # what C_MAX_COOKIE_CHARS base64url characters decode to

cdef const char* C_SESSION_PURPOSE = b"fastsess/v1/cookie-session"  # COOKIE_SESSION_PURPOSE
cdef Py_ssize_t C_SESSION_PURPOSE_LEN = 26
cdef const char* C_RECORD_PURPOSE = b"fastsess/v1/record"  # RECORD_PURPOSE
cdef Py_ssize_t C_RECORD_PURPOSE_LEN = 18
cdef str _COOKIE_TIMES_ERROR = "cookie timestamps must be real numbers"


cdef const char* _cookie_name(object name, Py_ssize_t* size) except NULL:
    """The UTF-8 cookie name, which every MAC input and associated data binds."""
    cdef const char* raw
    if not isinstance(name, str):
        raise TypeError("cookie name must be str")
    raw = PyUnicode_AsUTF8AndSize(name, size)
    if size[0] > 0xFFFF:
        raise ValueError("cookie name too long")
    return raw


cdef const char* _record_store_key(object store_key, Py_ssize_t* size) except NULL:
    if type(store_key) is not bytes:
        raise TypeError("store key must be bytes")
    size[0] = PyBytes_GET_SIZE(store_key)
    if size[0] > 0xFFFF:
        raise ValueError("store key too long")
    return PyBytes_AS_STRING(store_key)


cdef inline uint8_t* _put_bound(
    uint8_t* p, const char* purpose, Py_ssize_t purpose_len, const char* raw, Py_ssize_t n
) noexcept:
    """Write purpose | 0x00 | len(raw) (2) | raw at p; returns the end."""
    memcpy(p, purpose, purpose_len)
    p += purpose_len
    p[0] = 0
    p[1] = <uint8_t>(n >> 8)
    p[2] = <uint8_t>n
    memcpy(p + 3, raw, n)
    return p + 3 + n


cdef inline void _put_double(uint8_t* p, double value) noexcept nogil:
    cdef uint64_t bits
    memcpy(&bits, &value, 8)
    _store_be64(p, bits)


cdef inline double _get_double(const uint8_t* p) noexcept nogil:
    cdef uint64_t bits = _load_be64(p)
    cdef double value
    memcpy(&value, &bits, 8)
    return value


cdef inline void _put_be32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint32_t _get_be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef bytes _sealed_plain(object issued_at, object last_access, object expires_at, object payload):
    """The three timestamps, then the payload."""
    cdef double issued_c = _timestamp(issued_at, _COOKIE_TIMES_ERROR)
    cdef double last_c = _timestamp(last_access, _COOKIE_TIMES_ERROR)
    cdef double expires_c = _timestamp(expires_at, _COOKIE_TIMES_ERROR)
    if type(payload) is not bytes:
        raise TypeError("payload must be bytes")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, C_TIMES_SIZE + n)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    _put_double(p, issued_c)
    _put_double(p + 8, last_c)
    _put_double(p + 16, expires_c)
    memcpy(p + C_TIMES_SIZE, PyBytes_AS_STRING(payload), n)
    return out


cdef object _epoch_value(object epoch):
    epoch = int(PyNumber_Index(epoch))
    if epoch < 0 or epoch > 0xFFFFFFFF:
        raise ValueError("epoch out of range")
    return epoch


cdef object _opened_plain(const uint8_t* p, Py_ssize_t n, object index):
    """(issued_at, last_access, expires_at, payload, index) from the n sealed bytes at p."""
    return (
        _get_double(p),
        _get_double(p + 8),
        _get_double(p + 16),
        PyBytes_FromStringAndSize(<const char*>p + C_TIMES_SIZE, n - C_TIMES_SIZE),
        index,
    )


cdef Py_ssize_t _decode_sealed(object value, uint8_t* raw) except -2:
    """Decode a sealed-cookie value into raw (C_MAX_SEALED_BYTES); -1 when it cannot be one."""
    cdef Py_ssize_t n
    if type(value) is not str:
        return -1
    __Pyx_PyUnicode_READY(value)
    n = PyUnicode_GET_LENGTH(value)
    if n < C_SEALED_MIN_CHARS or n > C_MAX_COOKIE_CHARS or not PyUnicode_IS_ASCII(value):
        return -1
    return _b64_decode_into(PyUnicode_1BYTE_DATA(value), n, raw)


def seal_signed(name, kid, key, issued_at, last_access, expires_at, payload) -> str:
    """A signed cookie-session value: base64url(version | mode | key id | times | payload | tag).

    tag = HMAC-SHA256(key, purpose | cookie name | everything before the tag), all 256 bits.
    """
    cdef Py_ssize_t name_len
    cdef const char* name_utf8 = _cookie_name(name, &name_len)
    cdef int key_id = _byte_value(kid)
    cdef bytes plain = _sealed_plain(issued_at, last_access, expires_at, payload)
    cdef Py_ssize_t body_len = 3 + PyBytes_GET_SIZE(plain)
    cdef Py_ssize_t prefix_len = C_SESSION_PURPOSE_LEN + 3 + name_len
    cdef bytes msg = PyBytes_FromStringAndSize(NULL, prefix_len + body_len)
    cdef uint8_t* body = _put_bound(
        <uint8_t*>PyBytes_AS_STRING(msg), C_SESSION_PURPOSE, C_SESSION_PURPOSE_LEN, name_utf8, name_len
    )
    body[0] = C_FORMAT_VERSION
    body[1] = C_MODE_SIGNED
    body[2] = <uint8_t>key_id
    memcpy(body + 3, PyBytes_AS_STRING(plain), body_len - 3)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, body_len + C_SEAL_TAG_BYTES)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(p, body, body_len)
    keyed = _direct_key_for(key)
    if keyed is not None:
        fs_hmac_sha256(
            _hmac_key_of(keyed), <const uint8_t*>PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg), p + body_len
        )
    else:
        tag = _mac(key, msg)
        memcpy(p + body_len, PyBytes_AS_STRING(tag), C_SEAL_TAG_BYTES)
    return _b64_encode(p, body_len + C_SEAL_TAG_BYTES)


def open_signed(value, keys, name):
    """Verify a signed cookie-session value against (key id, key) pairs, first key first.

    Returns (issued_at, last_access, expires_at, payload, index of the key that
    verified), or None for anything malformed, oversized or forged. Never raises
    on bad input; a cookie name that is not str is a TypeError.
    """
    cdef uint8_t raw[C_MAX_SEALED_BYTES]
    cdef Py_ssize_t name_len, size, body_len
    cdef const char* name_utf8 = _cookie_name(name, &name_len)
    cdef uint8_t* p
    cdef bint verified
    size = _decode_sealed(value, raw)
    if size < C_SIGNED_MIN or raw[0] != C_FORMAT_VERSION or raw[1] != C_MODE_SIGNED:
        return None
    cdef int kid = raw[2]
    body_len = size - C_SEAL_TAG_BYTES
    msg = None
    for index, (key_kid, key) in enumerate(keys):
        if key_kid != kid:
            continue
        if msg is None:
            msg = PyBytes_FromStringAndSize(NULL, C_SESSION_PURPOSE_LEN + 3 + name_len + body_len)
            p = <uint8_t*>PyBytes_AS_STRING(msg)
            p = _put_bound(p, C_SESSION_PURPOSE, C_SESSION_PURPOSE_LEN, name_utf8, name_len)
            memcpy(p, raw, body_len)
        keyed = _direct_key_for(key)
        if keyed is not None:
            verified = fs_hmac_sha256_verify(
                _hmac_key_of(keyed), <const uint8_t*>PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg),
                raw + body_len, C_SEAL_TAG_BYTES,
            )
        else:
            verified = _compare_digest(
                _mac(key, msg), PyBytes_FromStringAndSize(<char*>raw + body_len, C_SEAL_TAG_BYTES)
            )
        if verified:
            return _opened_plain(raw + 3, body_len - 3, index)
    return None


# (AESGCM, key id) per (label, PRK, epoch): the key derivation and the cipher
# setup happen once a day per key, not per request. Opening caches only after a
# successful decryption, so a forged epoch cannot evict the keys in use.
cdef Py_ssize_t _AEAD_LIMIT = 64
cdef dict _aeads = {}
cdef object _InvalidTag = ()  # cryptography's InvalidTag, once the package has been loaded


cdef tuple _new_aead(str label, object prk, object epoch):
    """(AESGCM under HKDF-Expand(prk, label + epoch), key id of prk); ImportError without cryptography."""
    global _InvalidTag
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise ImportError(
            "encrypted sessions and records need the cryptography package: pip install 'fastsess[crypto]'"
        ) from exc
    _InvalidTag = InvalidTag
    key = hkdf_expand(prk, (label + str(epoch)).encode("ascii"), 32)
    return AESGCM(key), derive_key_id(prk)


cdef tuple _sealing_aead(str label, object prk, object epoch):
    cache_key = (label, prk, epoch)
    entry = _aeads.get(cache_key)
    if entry is None:
        entry = _new_aead(label, prk, epoch)
        if len(_aeads) >= _AEAD_LIMIT:
            _aeads.clear()
        _aeads[cache_key] = entry
    return <tuple>entry


cdef bytes _aead_seal(object aead, const uint8_t* head, Py_ssize_t head_len, bytes aad, bytes plain):
    """head | fresh nonce | AES-256-GCM(plain) with associated data aad."""
    cdef bytes nonce = _random_bytes(C_NONCE_BYTES)
    cdef bytes sealed = aead.encrypt(nonce, plain, aad)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(sealed)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, head_len + C_NONCE_BYTES + n)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(p, head, head_len)
    memcpy(p + head_len, PyBytes_AS_STRING(nonce), C_NONCE_BYTES)
    memcpy(p + head_len + C_NONCE_BYTES, PyBytes_AS_STRING(sealed), n)
    return out


cdef object _aead_open(
    str label, object prks, int kid, object epoch, bytes nonce, bytes ciphertext, bytes aad
):
    """(plaintext, index of the PRK that opened it) or None, trying every PRK with this key id in order."""
    for index, (key_kid, prk) in enumerate(prks):
        if key_kid != kid:
            continue
        cache_key = (label, prk, epoch)
        entry = _aeads.get(cache_key)
        fresh = entry is None
        if fresh:
            entry = _new_aead(label, prk, epoch)
        try:
            plain = entry[0].decrypt(nonce, ciphertext, aad)
        except _InvalidTag:
            continue
        if fresh:
            if len(_aeads) >= _AEAD_LIMIT:
                _aeads.clear()
            _aeads[cache_key] = entry
        return plain, index
    return None


cdef bytes _bound_head(
    const char* purpose,
    Py_ssize_t purpose_len,
    const char* raw,
    Py_ssize_t n,
    const uint8_t* head,
    Py_ssize_t head_len,
):
    """purpose | 0x00 | len(raw) (2) | raw | head: the associated data."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, purpose_len + 3 + n + head_len)
    cdef uint8_t* p = _put_bound(<uint8_t*>PyBytes_AS_STRING(out), purpose, purpose_len, raw, n)
    memcpy(p, head, head_len)
    return out


def seal_encrypted(name, kid, prk, epoch, issued_at, last_access, expires_at, payload) -> str:
    """An encrypted cookie-session value: base64url(version | mode | key id | epoch | nonce | AES-GCM).

    The key is HKDF-Expand(prk, "fastsess/v1/cookie-enc/<epoch>"), the nonce is
    fresh, and the associated data binds the purpose, the cookie name and the header.
    """
    cdef uint8_t head[C_ENCRYPTED_HEAD]
    cdef Py_ssize_t name_len
    cdef const char* name_utf8 = _cookie_name(name, &name_len)
    head[0] = C_FORMAT_VERSION
    head[1] = C_MODE_ENCRYPTED
    head[2] = <uint8_t>_byte_value(kid)
    epoch = _epoch_value(epoch)
    cdef bytes plain = _sealed_plain(issued_at, last_access, expires_at, payload)
    aead = _sealing_aead(COOKIE_ENC_LABEL, prk, epoch)[0]
    _put_be32(head + 3, <uint32_t>PyLong_AsUnsignedLongLongMask(epoch))
    cdef bytes aad = _bound_head(
        C_SESSION_PURPOSE, C_SESSION_PURPOSE_LEN, name_utf8, name_len, head, C_ENCRYPTED_HEAD
    )
    cdef bytes sealed = _aead_seal(aead, head, C_ENCRYPTED_HEAD, aad, plain)
    return _b64_encode(<const uint8_t*>PyBytes_AS_STRING(sealed), PyBytes_GET_SIZE(sealed))


def open_encrypted(value, prks, name):
    """Decrypt an encrypted cookie-session value with (key id, PRK) pairs, first key first.

    Returns (issued_at, last_access, expires_at, payload, index of the PRK that
    opened it), or None for anything malformed, oversized or forged. Never raises
    on bad input; ImportError when it must decrypt and cryptography is missing.
    """
    cdef uint8_t raw[C_MAX_SEALED_BYTES]
    cdef Py_ssize_t name_len, size
    cdef const char* name_utf8 = _cookie_name(name, &name_len)
    size = _decode_sealed(value, raw)
    if size < C_ENCRYPTED_MIN or raw[0] != C_FORMAT_VERSION or raw[1] != C_MODE_ENCRYPTED:
        return None
    opened = _aead_open(
        COOKIE_ENC_LABEL,
        prks,
        raw[2],
        _get_be32(raw + 3),
        PyBytes_FromStringAndSize(<char*>raw + C_ENCRYPTED_HEAD, C_NONCE_BYTES),
        PyBytes_FromStringAndSize(<char*>raw + C_ENCRYPTED_CIPHERTEXT, size - C_ENCRYPTED_CIPHERTEXT),
        _bound_head(C_SESSION_PURPOSE, C_SESSION_PURPOSE_LEN, name_utf8, name_len, raw, C_ENCRYPTED_HEAD),
    )
    if opened is None:
        return None
    cdef bytes plain = (<tuple>opened)[0]
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(plain)
    return _opened_plain(p, PyBytes_GET_SIZE(plain), (<tuple>opened)[1])


def record_encrypt(prk, epoch, store_key, blob) -> bytes:
    """A record encrypted at rest: magic | key id | epoch | nonce | AES-GCM(blob).

    The key is HKDF-Expand(prk, "fastsess/v1/record-enc/<epoch>") and the key id
    derive_key_id(prk); the associated data binds the store key and the header.
    """
    cdef uint8_t head[C_RECORD_HEAD]
    cdef Py_ssize_t key_len
    epoch = _epoch_value(epoch)
    cdef const char* key_raw = _record_store_key(store_key, &key_len)
    if type(blob) is not bytes:
        raise TypeError("record must be bytes")
    aead, kid = _sealing_aead(RECORD_ENC_LABEL, prk, epoch)
    head[0] = C_ENCRYPTED_RECORD_VERSION
    head[1] = <uint8_t>_byte_value(kid)
    _put_be32(head + 2, <uint32_t>PyLong_AsUnsignedLongLongMask(epoch))
    cdef bytes aad = _bound_head(
        C_RECORD_PURPOSE, C_RECORD_PURPOSE_LEN, key_raw, key_len, head, C_RECORD_HEAD
    )
    return _aead_seal(aead, head, C_RECORD_HEAD, aad, <bytes>blob)


def record_decrypt(prks, store_key, sealed):
    """The record that record_encrypt sealed under this store key, or None: wrong key, moved or tampered."""
    cdef Py_ssize_t key_len, size
    cdef const char* key_raw = _record_store_key(store_key, &key_len)
    if type(sealed) is not bytes:
        raise TypeError("record must be bytes")
    size = PyBytes_GET_SIZE(sealed)
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(sealed)
    if size < C_RECORD_MIN or p[0] != C_ENCRYPTED_RECORD_VERSION:
        return None
    opened = _aead_open(
        RECORD_ENC_LABEL,
        prks,
        p[1],
        _get_be32(p + 2),
        PyBytes_FromStringAndSize(<const char*>p + C_RECORD_HEAD, C_NONCE_BYTES),
        PyBytes_FromStringAndSize(<const char*>p + C_RECORD_CIPHERTEXT, size - C_RECORD_CIPHERTEXT),
        _bound_head(C_RECORD_PURPOSE, C_RECORD_PURPOSE_LEN, key_raw, key_len, p, C_RECORD_HEAD),
    )
    return None if opened is None else (<tuple>opened)[0]
