"""The pure-Python kernel: ids, keys, id-cookie tags, cookie parsing, the record codec, sealing.

`_core.pyx` implements the same functions with the same signatures and gives
byte-identical output; `core.py` picks one. This one also runs where C cannot
(PyPy) and without orjson and xxhash, falling back to the standard library.
Byte layouts are documented in docs/FORMATS.md.
"""

from __future__ import annotations

import binascii
import datetime as _dt
import hashlib
import hmac
import operator
import os
import re
import struct
import uuid
from decimal import Decimal

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by the no-optional-deps test
    _orjson = None
    import json as _json

try:
    import xxhash as _xxhash
except ImportError:  # pragma: no cover - exercised by the no-optional-deps test
    _xxhash = None

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
_HEX_DIGITS = frozenset(b"0123456789abcdef")

MAX_DEPTH = 64  # nesting limit for session values, below every JSON library's own
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_ALPHABET = frozenset(_B64_CHARS)
_RECORD_HEADER = struct.Struct(">BBIdd")  # version, flags, csrf generation, created, last write
FLAG_DOMAIN = 1
FLAG_PATH = 2
FLAG_FLASH = 4
_KNOWN_FLAGS = FLAG_DOMAIN | FLAG_PATH | FLAG_FLASH

_urandom = os.urandom


def _set_random_source(source) -> None:
    """Replace the CSPRNG with `source(n) -> bytes`; tests only. None restores os.urandom."""
    global _urandom
    _urandom = os.urandom if source is None else source


def random_bytes(n: int) -> bytes:
    """n bytes from the OS CSPRNG (or the injected test source)."""
    data = _urandom(n)
    if type(data) is not bytes or len(data) != n:
        raise ValueError("random source returned the wrong number of bytes")
    return data


# ---------------------------------------------------------------- base64url


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url."""
    text = binascii.b2a_base64(data, newline=False).decode("ascii")
    return text.rstrip("=").replace("+", "-").replace("/", "_")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url: any other character, a bad length or stray bits is ValueError."""
    if type(text) is not str:
        raise TypeError("expected str")
    rem = len(text) % 4
    if rem == 1:
        raise ValueError("invalid base64url")
    if _STRICT_B64:
        # Strict a2b_base64 refuses every character outside the standard alphabet,
        # which leaves the three it has and base64url has not.
        if "+" in text or "/" in text or "=" in text:
            raise ValueError("invalid base64url")
    elif not _B64_ALPHABET.issuperset(text):
        raise ValueError("invalid base64url")
    padded = text.replace("-", "+").replace("_", "/")
    if rem:
        # Canonical text only: the bits of the last character past the data are zero.
        if _B64_CHARS.find(text[-1]) & (15 if rem == 2 else 3):
            raise ValueError("invalid base64url")
        padded += "==" if rem == 2 else "="
    try:
        return binascii.a2b_base64(padded, strict_mode=True) if _STRICT_B64 else binascii.a2b_base64(padded)
    except ValueError as exc:  # binascii.Error, or a non-ASCII character
        raise ValueError("invalid base64url") from exc


try:
    binascii.a2b_base64(b"", strict_mode=True)
    _STRICT_B64 = True
except TypeError:  # Python 3.10 has no strict_mode; the alphabet check above suffices
    _STRICT_B64 = False


def new_session_id() -> str:
    """A fresh 256-bit session id from the CSPRNG, in unpadded base64url (43 characters)."""
    return b64url_encode(random_bytes(ID_BYTES))


def store_key(session_id: str) -> bytes:
    """SHA-256 of the id: what stores see instead of the id itself."""
    if not isinstance(session_id, str):
        raise TypeError("session id must be str")
    return hashlib.sha256(session_id.encode("utf-8")).digest()


# ---------------------------------------------------------------- HMAC and HKDF


# HMAC (RFC 2104) from two SHA-256 states keyed once per key, the inner one
# after key XOR ipad and the outer one after key XOR opad: a tag copies both
# and hashes the message, then the inner digest. Copying two hash states costs
# less than copying OpenSSL's HMAC context, and neither repeats the key setup
# of a one-shot digest.
_KEYED_LIMIT = 64
_keyed: dict = {}  # key -> (inner state, outer state)


def _hmac_states(key: bytes) -> tuple:
    if len(key) > 64:  # SHA-256's block size: longer keys are hashed first
        key = hashlib.sha256(key).digest()
    padded = key.ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in padded)),
        hashlib.sha256(bytes(b ^ 0x5C for b in padded)),
    )


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 on the standard library's SHA-256 (OpenSSL's)."""
    if type(key) is not bytes:
        return hmac.digest(key, msg, "sha256")
    states = _keyed.get(key)
    if states is None:
        if len(_keyed) >= _KEYED_LIMIT:
            _keyed.clear()
        states = _keyed[key] = _hmac_states(key)
    inner = states[0].copy()
    inner.update(msg)
    outer = states[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in time independent of where they differ."""
    return hmac.compare_digest(a, b)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256."""
    return hmac.digest(salt or b"\x00" * 32, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256."""
    if length < 0 or length > 255 * 32:
        raise ValueError("HKDF-Expand length out of range")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


def secret_prk(secret: str) -> bytes:
    """PRK = HKDF-Extract(salt=b"fastsess", UTF-8 secret), computed once per configured secret."""
    return hkdf_extract(HKDF_SALT, secret.encode("utf-8"))


def derive_subkey(prk: bytes, label: str) -> bytes:
    """A 256-bit subkey for one purpose, e.g. label "fastsess/v1/id-tag"."""
    return hkdf_expand(prk, label.encode("ascii"), 32)


def derive_key_id(prk: bytes) -> int:
    """The 1-byte key id: derived from the key itself, never from its position in a list."""
    return hkdf_expand(prk, b"fastsess/v1/key-id", 1)[0]


# ---------------------------------------------------------------- id cookie


def _id_mac_input(version: int, kid: int, name: str, raw_id: bytes) -> bytes:
    if not isinstance(name, str):
        raise TypeError("cookie name must be str")
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > 0xFFFF:
        raise ValueError("cookie name too long")
    return b"".join(
        (ID_COOKIE_PURPOSE, bytes((0, version, kid)), struct.pack(">H", len(name_bytes)), name_bytes, raw_id)
    )


def _is_legacy_id(raw_id: bytes) -> bool:
    """32 lowercase hex digits: the shape of a Beaker 1.14 session id (uuid4().hex)."""
    return len(raw_id) == LEGACY_ID_CHARS and _HEX_DIGITS.issuperset(raw_id)


def sign_id(session_id: str, key: bytes, kid: int, name: str) -> str:
    """The id-cookie value: base64url(version | key id | raw id | 128-bit tag).

    A Beaker id kept through migration (32 lowercase hex characters) travels as
    its ASCII bytes under LEGACY_ID_VERSION, in a value of the same length.
    """
    if type(session_id) is str and len(session_id) == LEGACY_ID_CHARS and session_id.isascii() \
            and _is_legacy_id(session_id.encode("ascii")):
        version, raw_id = LEGACY_ID_VERSION, session_id.encode("ascii")
    else:
        version, raw_id = FORMAT_VERSION, b64url_decode(session_id)
        if len(raw_id) != ID_BYTES:
            raise ValueError("session id must be 32 bytes")
    head = bytes((version, kid))
    tag = hmac_sha256(key, _id_mac_input(version, kid, name, raw_id))[:ID_TAG_BYTES]
    return b64url_encode(head + raw_id + tag)


def open_id_cookie(value: str, keys, name: str):
    """Verify an id-cookie value against (key id, key) pairs, first key first.

    Returns (session_id, index of the key that verified), or None for anything
    malformed, oversized or forged. Never raises on bad input. The session id
    is base64url, or a kept Beaker id under LEGACY_ID_VERSION.
    """
    if type(value) is not str or len(value) > MAX_COOKIE_CHARS or len(value) != 67:
        return None
    try:
        raw = b64url_decode(value)
    except ValueError:
        return None
    if len(raw) != ID_COOKIE_BYTES:
        return None
    version = raw[0]
    kid = raw[1]
    raw_id = raw[2 : 2 + ID_BYTES]
    tag = raw[2 + ID_BYTES :]
    if version != FORMAT_VERSION and (version != LEGACY_ID_VERSION or not _is_legacy_id(raw_id)):
        return None
    msg = None
    for index, (key_kid, key) in enumerate(keys):
        if key_kid != kid:
            continue
        if msg is None:
            msg = _id_mac_input(version, kid, name, raw_id)
        if hmac.compare_digest(hmac_sha256(key, msg)[:ID_TAG_BYTES], tag):
            return (b64url_encode(raw_id) if version == FORMAT_VERSION else raw_id.decode("ascii")), index
    return None


# ---------------------------------------------------------------- Cookie header


_COOKIE_PATTERNS: dict = {}  # cookie name -> what finds its values (names come from configuration)
_BY_PARTS = object()  # a name the pattern cannot match as the rules do: split and compare instead


def _cookie_pattern(name: str):
    """A regular expression whose matches are exactly the parts of a Cookie header that parse_cookie takes.

    A part's name is what precedes its first "=", trimmed of spaces and tabs; for
    a name with no "=" or ";" and nothing to trim, that is: the part starts with
    spaces or tabs, the name, spaces or tabs, "=". Other names are compared part
    by part.
    """
    if "=" in name or ";" in name or name != name.strip(" \t"):
        pattern = _BY_PARTS
    else:
        pattern = re.compile("(?:^|;)[ \t]*" + re.escape(name) + "[ \t]*=([^;]*)")
    if len(_COOKIE_PATTERNS) >= _KEYED_LIMIT:
        _COOKIE_PATTERNS.clear()
    _COOKIE_PATTERNS[name] = pattern
    return pattern


def parse_cookie(header: str, name: str, limit: int = MAX_CANDIDATES) -> list:
    """Values of cookie `name` in a Cookie header, in order, at most `limit`.

    Splits on ";" only, trims spaces and tabs, compares names exactly, strips
    one pair of double quotes. Values are returned unvalidated.
    """
    found = []
    if not header or limit <= 0:
        return found
    if not isinstance(header, str) or not isinstance(name, str):
        raise TypeError("Cookie header and cookie name must be str")
    limit = operator.index(limit)
    pattern = _COOKIE_PATTERNS.get(name) or _cookie_pattern(name)
    # The raw value of every part named `name`: one scan in C, or part by part.
    raw_values = pattern.findall(header) if pattern is not _BY_PARTS else _values_by_parts(header, name)
    for value in raw_values:
        value = value.strip(" \t")
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        found.append(value)
        if len(found) >= limit:
            break
    return found


def _values_by_parts(header: str, name: str):
    """What follows the first "=" of every ";"-separated part whose name, trimmed, is name."""
    for part in header.split(";"):
        eq = part.find("=")
        if eq >= 0 and part[:eq].strip(" \t") == name:
            yield part[eq + 1 :]


# ---------------------------------------------------------------- Set-Cookie

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = (None, "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(timestamp: float) -> str:
    """RFC 1123 date, as http.cookies.Morsel writes an `expires=` attribute."""
    t = _dt.datetime.fromtimestamp(int(timestamp), _dt.timezone.utc)
    return (
        f"{_WEEKDAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"
    )


def _check_attribute(what: str, text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"cookie {what} must be str")
    # Allowed: " " to "~" except ";". For ASCII text, isprintable() is exactly
    # " " to "~"; str methods scan in C, where a loop here costs a step per
    # character of a sealed cookie of several hundred.
    if not (text.isascii() and text.isprintable()) or ";" in text:
        raise ValueError(f"invalid character in cookie {what}")


def build_set_cookie(
    name: str,
    value: str,
    path=None,
    domain=None,
    expires=None,
    max_age=None,
    secure: bool = True,
    httponly: bool = True,
    samesite=None,
    partitioned: bool = False,
) -> str:
    """A Set-Cookie value with attributes spelled and ordered as http.cookies.Morsel does."""
    _check_attribute("name", name)
    _check_attribute("value", value)
    parts = [name + "=" + value]
    if domain:
        _check_attribute("domain", domain)
        parts.append("Domain=" + domain)
    if expires is not None:
        parts.append("expires=" + http_date(expires))
    if httponly:
        parts.append("HttpOnly")
    if max_age is not None:
        parts.append("Max-Age=%d" % max_age)  # noqa: UP031 - %d truncates a float, as Morsel does
    if partitioned:
        parts.append("Partitioned")
    if path:
        _check_attribute("path", path)
        parts.append("Path=" + path)
    if samesite:
        _check_attribute("samesite", samesite)
        parts.append("SameSite=" + samesite)
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


# ---------------------------------------------------------------- the value codec
#
# Session values are exact instances of JSON types plus tagged round-trips.
# A tag is a one-key object whose key starts with "~"; a user dict of that
# shape is escaped as {"~~": dict}. Everything else is refused.

_TAG_TUPLE = "~t"
_TAG_SET = "~s"
_TAG_FROZENSET = "~fs"
_TAG_BYTES = "~b"
_TAG_DATETIME = "~dt"
_TAG_DATE = "~d"
_TAG_TIME = "~tm"
_TAG_DECIMAL = "~dec"
_TAG_UUID = "~u"
_TAG_ESCAPE = "~~"


def _refuse(value, why: str = ""):
    raise TypeError(f"{type(value).__name__} is not a session value{why}")


def _dump_plain(obj) -> bytes:
    """JSON bytes of an already transformed (plain JSON) tree."""
    if _orjson is not None:
        return _orjson.dumps(obj)
    try:
        return _json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TypeError("str is not valid UTF-8") from exc


def _load_plain(blob):
    if _orjson is not None:
        return _orjson.loads(blob)
    # What orjson refuses, json must refuse too (SPEC 1): non-finite numbers, and
    # escapes that decode to a lone surrogate, which no UTF-8 text can hold.
    try:
        tree = _json.loads(bytes(blob).decode("utf-8"), parse_constant=_bad_constant, parse_float=_finite_float)
        if b"\\u" in blob:
            _json.dumps(tree, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, RecursionError) as exc:
        raise ValueError("invalid record data") from exc
    return tree


def _bad_constant(name):
    raise ValueError(f"invalid JSON constant {name}")


def _finite_float(text):
    value = float(text)
    if value in (_INF, -_INF):
        raise ValueError("JSON number out of float range")
    return value


_INF = float("inf")


def _set_items(value, depth: int) -> list:
    items = [_to_plain(v, depth) for v in value]
    items.sort(key=_dump_plain)
    return items


def _to_plain(value, depth: int = 0):
    """The JSON tree for value, refusing anything SPEC 4 does not allow.

    Returns value itself when nothing needs a tag, so plain data is not copied.
    """
    t = type(value)
    if depth > MAX_DEPTH:
        raise TypeError(f"value is nested more than {MAX_DEPTH} levels deep")
    depth += 1
    if t is str or t is bool or value is None:
        return value
    if t is int:
        if value < _INT_MIN or value > _INT_MAX:
            _refuse(value, " (int out of 64-bit range)")
        return value
    if t is float:
        if value != value or value in (float("inf"), float("-inf")):
            _refuse(value, " (NaN and infinities are refused)")
        return value
    # Children at this depth may be checked inline: most session values are
    # flat scalars, and a call per scalar is most of the pure kernel's encode
    # cost. Past MAX_DEPTH the call must still happen, to refuse the nesting.
    inline = depth <= MAX_DEPTH
    if t is dict:
        out = None
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"dict keys must be str, not {type(k).__name__}")
            tv = type(v)
            if inline and (tv is str or tv is bool or v is None or (tv is int and _INT_MIN <= v <= _INT_MAX)):
                continue  # what _to_plain(v) would return as is; out, if copied, already holds it
            pv = _to_plain(v, depth)
            if pv is not v and out is None:
                out = dict(value)
            if out is not None:
                out[k] = pv
        result = value if out is None else out
        if len(value) == 1 and next(iter(value))[:1] == "~":
            return {_TAG_ESCAPE: result}
        return result
    if t is list:
        out = None
        for i, v in enumerate(value):
            tv = type(v)
            if inline and (tv is str or tv is bool or v is None or (tv is int and _INT_MIN <= v <= _INT_MAX)):
                continue  # as in the dict loop above
            pv = _to_plain(v, depth)
            if pv is not v and out is None:
                out = list(value)
            if out is not None:
                out[i] = pv
        return value if out is None else out
    if t is tuple:
        return {_TAG_TUPLE: [_to_plain(v, depth) for v in value]}
    if t is set:
        return {_TAG_SET: _set_items(value, depth)}
    if t is frozenset:
        return {_TAG_FROZENSET: _set_items(value, depth)}
    if t is bytes:
        return {_TAG_BYTES: b64url_encode(value)}
    if t is _dt.datetime:
        return {_TAG_DATETIME: value.isoformat()}
    if t is _dt.date:
        return {_TAG_DATE: value.isoformat()}
    if t is _dt.time:
        return {_TAG_TIME: value.isoformat()}
    if t is Decimal:
        if not value.is_finite():
            _refuse(value, " (NaN and infinities are refused)")
        return {_TAG_DECIMAL: str(value)}
    if t is uuid.UUID:
        return {_TAG_UUID: str(value)}
    _refuse(value)


def _from_tag(tag: str, payload, depth: int):
    if tag == _TAG_ESCAPE:
        if type(payload) is not dict:
            raise ValueError("malformed escaped dict")
        return {k: _from_plain(v, depth) for k, v in payload.items()}
    if tag == _TAG_TUPLE or tag == _TAG_SET or tag == _TAG_FROZENSET:
        if type(payload) is not list:
            raise ValueError("malformed tagged collection")
        items = [_from_plain(v, depth) for v in payload]
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
            return b64url_decode(payload)
        if tag == _TAG_DATETIME:
            return _dt.datetime.fromisoformat(payload)
        if tag == _TAG_DATE:
            return _dt.date.fromisoformat(payload)
        if tag == _TAG_TIME:
            return _dt.time.fromisoformat(payload)
        if tag == _TAG_DECIMAL:
            value = Decimal(payload)
            if not value.is_finite():
                raise ValueError("non-finite Decimal")
            return value
        if tag == _TAG_UUID:
            return uuid.UUID(payload)
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ValueError(f"malformed {tag} value") from exc
    raise ValueError(f"unknown tag {tag!r}")


def _from_plain(value, depth: int = 0):
    """The session value for a JSON tree, mirroring _to_plain's nesting limit."""
    t = type(value)
    if depth > MAX_DEPTH:
        raise ValueError(f"record data is nested more than {MAX_DEPTH} levels deep")
    depth += 1
    if t is dict:
        if len(value) == 1:
            (k, v), = value.items()
            if k[:1] == "~":
                return _from_tag(k, v, depth)
        for k, v in value.items():
            value[k] = _from_plain(v, depth)
        return value
    if t is list:
        for i, v in enumerate(value):
            value[i] = _from_plain(v, depth)
        return value
    return value


def check_value(key: str, value) -> None:
    """Raise TypeError naming `key` unless value is a session value (SPEC 4)."""
    try:
        _dump_plain(_to_plain(value, 1))  # depth 1: where encode_data meets it, inside the data dict
    except TypeError as exc:
        raise TypeError(f"session[{key!r}]: {exc}") from None
    except RecursionError:
        raise TypeError(f"session[{key!r}]: value is nested too deeply") from None


def encode_data(data: dict) -> bytes:
    """Encode a session's data dict; TypeError names the first refused key."""
    if type(data) is not dict:
        raise TypeError("session data must be a dict")
    try:
        return _dump_plain(_to_plain(data))
    except (TypeError, RecursionError):
        pass
    for k, v in data.items():
        if type(k) is not str:
            raise TypeError(f"session keys must be str, not {type(k).__name__}")
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            raise TypeError(f"session key {k!r} is not valid UTF-8") from None
        check_value(k, v)
    raise TypeError("session data cannot be encoded")


def decode_data(blob) -> dict:
    """Decode what encode_data wrote; ValueError for anything malformed."""
    if type(blob) is not bytes:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError("record data must be bytes")
        blob = bytes(blob)  # the tag test below needs bytes: `in` on a memoryview compares items
    try:
        tree = _load_plain(blob)
    except RecursionError as exc:
        raise ValueError("invalid record data") from exc
    if type(tree) is not dict:
        raise ValueError("record data is not an object")
    if b'"~' not in blob:  # no tag can be present: skip the walk
        return tree
    try:
        result = _from_plain(tree, 0)
    except RecursionError as exc:
        raise ValueError("invalid record data") from exc
    if type(result) is not dict:
        raise ValueError("record data is not an object")
    return result


_COPIED = (dict, list, set, tuple)


def _fresh(value: object) -> object:
    t = type(value)
    if t is dict:
        out = value.copy()
        for k, v in value.items():
            if type(v) in _COPIED:
                out[k] = _fresh(v)
        return out
    if t is list:
        out = value.copy()
        for i, v in enumerate(out):
            if type(v) in _COPIED:
                out[i] = _fresh(v)
        return out
    if t is set:
        return set(value)  # the elements are hashable, so immutable (SPEC 4)
    if t is tuple:
        items = [_fresh(v) for v in value]
        return tuple(items) if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def copy_data(data: dict) -> dict:
    """A copy of decoded session data sharing only immutable values (dicts, lists, sets copied)."""
    if type(data) is not dict:
        raise TypeError("session data must be a dict")
    return _fresh(data)


def copy_value(value: object) -> object:
    """One session value, copied as copy_data copies the values of a dict."""
    return _fresh(value)


#: what _native_copy answers for data holding a value JSON does not carry as itself
_NOT_NATIVE = object()
_NATIVE_SCALARS = (str, int, float, bool, type(None))


def _native_copy(value: object) -> object:
    """A copy of value made of JSON's own types (str, int, float, bool, None, list, dict), else _NOT_NATIVE.

    Exactly what decode_data would give for encode_data's bytes of such a value.
    """
    t = type(value)
    if t in _NATIVE_SCALARS:
        return value
    if t is dict or t is list:
        out = value.copy()
        for k, v in value.items() if t is dict else enumerate(value):
            tv = type(v)
            if tv is dict or tv is list:  # scalars are checked here, not by a call each
                item = _native_copy(v)
                if item is _NOT_NATIVE:
                    return _NOT_NATIVE
                out[k] = item
            elif tv not in _NATIVE_SCALARS:
                return _NOT_NATIVE
        return out
    return _NOT_NATIVE


class DecodeMemo:
    """decode_data with a memory: the same bytes seen again decode from a kept dict.

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

    def __init__(self, budget: int, entry_limit: int) -> None:
        self._noted: dict[int, bytes] = {}  # fingerprint -> bytes seen once
        self._kept: dict[int, tuple] = {}  # fingerprint -> (bytes, dict, primed)
        self._size = 0
        self._budget = operator.index(budget)
        self._entry_limit = operator.index(entry_limit)

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
        fp = fingerprint(blob)
        kept = self._kept.get(fp)
        if kept is not None and kept[0] == blob:
            return _fresh(kept[1])
        return self._missed(blob, fp, kept)

    def decode_shared(self, blob) -> tuple:
        """(data, shared): data is decode(blob)'s answer, but its containers may be shared.

        shared is None when every container in data is the caller's own; else
        it is the kept dict whose containers data's values are: hand out
        data[key] only after copy_value, while it is shared[key] itself.
        """
        if type(blob) is not bytes:
            return decode_data(blob), None
        fp = fingerprint(blob)
        kept = self._kept.get(fp)
        if kept is not None and kept[0] == blob:
            return kept[1].copy(), kept[1]
        return self._missed(blob, fp, kept), None

    def _missed(self, blob: bytes, fp: int, kept: tuple | None) -> dict:
        """decode, for bytes not kept under fp (kept: what is kept there instead, or None)."""
        data = decode_data(blob)
        n = len(blob)
        if n > self._entry_limit or n > self._budget:
            return data
        noted = self._noted.get(fp)
        if noted is not None and noted == blob:  # the second sighting: keep it
            self._noted.pop(fp, None)  # not del: another thread may have dropped it meanwhile
            if kept is not None:  # a collision: the newer bytes win
                self._size -= len(kept[0])
            self._kept[fp] = (blob, _fresh(data), False)
            return data
        if noted is not None:
            self._size -= len(noted)
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
        if type(old) is not bytes or type(new) is not bytes or type(data) is not dict:
            return False
        n = len(new)
        if n > self._entry_limit or n > self._budget or old == new:
            return False
        fp_old = fingerprint(old)
        entry = self._kept.get(fp_old)
        if entry is not None and entry[0] == old:
            if not entry[2]:
                return False
            if self._kept.pop(fp_old, None) is not None:
                self._size -= len(old)
        else:
            entry = self._noted.get(fp_old)
            if entry is None or entry != old:
                return False
            if self._noted.pop(fp_old, None) is not None:
                self._size -= len(old)
        if b'"~' not in new:
            # No tag, so data is JSON's own types, and what its bytes decode to is
            # exactly its copy: decoding them in C beats copying it in Python.
            copied = _load_plain(new)
        else:
            copied = _native_copy(data)
            if copied is _NOT_NATIVE:
                return False
        fp = fingerprint(new)
        entry = self._kept.pop(fp, None)
        if entry is not None:
            self._size -= len(entry[0])
        entry = self._noted.pop(fp, None)
        if entry is not None:
            self._size -= len(entry)
        if self._size + n > self._budget:
            self._noted.clear()
            self._kept.clear()
            self._size = 0
        self._kept[fp] = (new, copied, True)
        self._size += n
        return True


def fingerprint(data: bytes) -> int:
    """64-bit change fingerprint (xxh3_64); never used for security."""
    if _xxhash is not None:
        return _xxhash.xxh3_64_intdigest(data)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


# ---------------------------------------------------------------- records


def pack_record(created: float, last_write: float, csrf_gen: int, domain, path, flash, data: bytes) -> bytes:
    """A record: header, optional domain and path, optional flash bytes, then the data bytes."""
    flags = 0
    parts = [b""]
    if domain is not None:
        raw = _short_field("domain", domain)
        flags |= FLAG_DOMAIN
        parts.append(bytes((len(raw),)) + raw)
    if path is not None:
        raw = _short_field("path", path)
        flags |= FLAG_PATH
        parts.append(bytes((len(raw),)) + raw)
    if flash is not None:
        flags |= FLAG_FLASH
        if type(flash) is not bytes:
            flash = memoryview(flash).tobytes()  # its length in bytes, whatever the item size
        if len(flash) > 0xFFFFFFFF:
            raise ValueError("flash too long")
        parts.append(struct.pack(">I", len(flash)) + flash)
    gen = csrf_gen & 0xFFFFFFFF
    try:
        parts[0] = _RECORD_HEADER.pack(FORMAT_VERSION, flags, gen, created, last_write)
    except struct.error as exc:
        raise TypeError("record timestamps must be real numbers") from exc
    parts.append(data)
    return b"".join(parts)


def _short_field(what: str, text) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str")
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"{what} too long")
    return raw


def unpack_record(blob):
    """(created, last_write, csrf_gen, domain, path, flash or None, data); ValueError if malformed."""
    if type(blob) is not bytes:
        raise TypeError("record must be bytes")
    size = len(blob)
    if size < _RECORD_HEADER.size:
        raise ValueError("record too short")
    version, flags, csrf_gen, created, last_write = _RECORD_HEADER.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise ValueError(f"unknown record format {version}")
    if flags & ~_KNOWN_FLAGS:
        raise ValueError("unknown record flags")
    pos = _RECORD_HEADER.size
    domain = path = flash = None
    try:
        if flags & FLAG_DOMAIN:
            n = blob[pos]
            domain = blob[pos + 1 : pos + 1 + n].decode("utf-8")
            pos += 1 + n
        if flags & FLAG_PATH:
            n = blob[pos]
            path = blob[pos + 1 : pos + 1 + n].decode("utf-8")
            pos += 1 + n
        if flags & FLAG_FLASH:
            (n,) = struct.unpack_from(">I", blob, pos)
            flash = blob[pos + 4 : pos + 4 + n]
            pos += 4 + n
    except (IndexError, UnicodeDecodeError, struct.error) as exc:
        raise ValueError("record header is malformed") from exc
    if pos > size:
        raise ValueError("record is truncated")
    return created, last_write, csrf_gen, domain, path, flash, blob[pos:]


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

_SEALED_TIMES = struct.Struct(">ddd")  # issued at, last access, expires at
_EPOCH = struct.Struct(">I")
_SIGNED_HEAD = 3 + 24  # version, mode, key id, the times
_SIGNED_MIN = _SIGNED_HEAD + SEAL_TAG_BYTES
_ENCRYPTED_HEAD = 3 + 4  # version, mode, key id, epoch
_ENCRYPTED_CIPHERTEXT = _ENCRYPTED_HEAD + NONCE_BYTES
_ENCRYPTED_MIN = _ENCRYPTED_CIPHERTEXT + 24 + AEAD_TAG_BYTES
_RECORD_HEAD = 2 + 4  # magic, key id, epoch
_RECORD_CIPHERTEXT = _RECORD_HEAD + NONCE_BYTES
_RECORD_MIN = _RECORD_CIPHERTEXT + AEAD_TAG_BYTES
_SEALED_MIN_CHARS = 79  # base64url of 59 bytes, the shortest sealed cookie in either mode


def _bound(purpose: bytes, what: str, raw: bytes) -> bytes:
    """purpose | 0x00 | len(raw) (2) | raw: how every MAC input and associated data starts."""
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what} too long")
    return b"".join((purpose, b"\x00", struct.pack(">H", len(raw)), raw))


def _cookie_bound(name) -> bytes:
    if not isinstance(name, str):
        raise TypeError("cookie name must be str")
    return _bound(COOKIE_SESSION_PURPOSE, "cookie name", name.encode("utf-8"))


def _record_bound(store_key) -> bytes:
    if type(store_key) is not bytes:
        raise TypeError("store key must be bytes")
    return _bound(RECORD_PURPOSE, "store key", store_key)


def _sealed_plain(issued_at, last_access, expires_at, payload) -> bytes:
    """The three timestamps, then the payload."""
    try:
        times = _SEALED_TIMES.pack(issued_at, last_access, expires_at)
    except struct.error as exc:
        raise TypeError("cookie timestamps must be real numbers") from exc
    if type(payload) is not bytes:
        raise TypeError("payload must be bytes")
    return times + payload


def _epoch_value(epoch) -> int:
    epoch = int(operator.index(epoch))
    if epoch < 0 or epoch > 0xFFFFFFFF:
        raise ValueError("epoch out of range")
    return epoch


def seal_signed(
    name: str, kid: int, key: bytes, issued_at: float, last_access: float, expires_at: float, payload: bytes
) -> str:
    """A signed cookie-session value: base64url(version | mode | key id | times | payload | tag).

    tag = HMAC-SHA256(key, purpose | cookie name | everything before the tag), all 256 bits.
    """
    prefix = _cookie_bound(name)
    head = bytes((FORMAT_VERSION, MODE_SIGNED, kid))
    body = head + _sealed_plain(issued_at, last_access, expires_at, payload)
    return b64url_encode(body + hmac_sha256(key, prefix + body))


def open_signed(value: str, keys, name: str):
    """Verify a signed cookie-session value against (key id, key) pairs, first key first.

    Returns (issued_at, last_access, expires_at, payload, index of the key that
    verified), or None for anything malformed, oversized or forged. Never raises
    on bad input; a cookie name that is not str is a TypeError.
    """
    prefix = _cookie_bound(name)
    if type(value) is not str or not _SEALED_MIN_CHARS <= len(value) <= MAX_COOKIE_CHARS:
        return None
    try:
        raw = b64url_decode(value)
    except ValueError:
        return None
    if len(raw) < _SIGNED_MIN or raw[0] != FORMAT_VERSION or raw[1] != MODE_SIGNED:
        return None
    kid = raw[2]
    body = raw[:-SEAL_TAG_BYTES]
    tag = raw[-SEAL_TAG_BYTES:]
    msg = None
    for index, (key_kid, key) in enumerate(keys):
        if key_kid != kid:
            continue
        if msg is None:
            msg = prefix + body
        if hmac.compare_digest(hmac_sha256(key, msg), tag):
            return (*_SEALED_TIMES.unpack_from(raw, 3), body[_SIGNED_HEAD:], index)
    return None


# (AESGCM, key id) per (label, PRK, epoch): the key derivation and the cipher
# setup happen once a day per key, not per request. Opening caches only after a
# successful decryption, so a forged epoch cannot evict the keys in use.
_AEAD_LIMIT = 64
_aeads: dict = {}
_InvalidTag: tuple | type = ()  # cryptography's InvalidTag, once the package has been loaded


def _new_aead(label: str, prk: bytes, epoch: int) -> tuple:
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


def _sealing_aead(label: str, prk: bytes, epoch: int) -> tuple:
    cache_key = (label, prk, epoch)
    entry = _aeads.get(cache_key)
    if entry is None:
        entry = _new_aead(label, prk, epoch)
        if len(_aeads) >= _AEAD_LIMIT:
            _aeads.clear()
        _aeads[cache_key] = entry
    return entry


def _aead_seal(aead, head: bytes, aad: bytes, plain: bytes) -> bytes:
    """head | fresh nonce | AES-256-GCM(plain) with associated data aad."""
    nonce = random_bytes(NONCE_BYTES)
    return b"".join((head, nonce, aead.encrypt(nonce, plain, aad)))


def _aead_open(label: str, prks, kid: int, epoch: int, nonce: bytes, ciphertext: bytes, aad: bytes):
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


def seal_encrypted(
    name: str,
    kid: int,
    prk: bytes,
    epoch: int,
    issued_at: float,
    last_access: float,
    expires_at: float,
    payload: bytes,
) -> str:
    """An encrypted cookie-session value: base64url(version | mode | key id | epoch | nonce | AES-GCM).

    The key is HKDF-Expand(prk, "fastsess/v1/cookie-enc/<epoch>"), the nonce is
    fresh, and the associated data binds the purpose, the cookie name and the header.
    """
    prefix = _cookie_bound(name)
    head = bytes((FORMAT_VERSION, MODE_ENCRYPTED, kid))
    epoch = _epoch_value(epoch)
    plain = _sealed_plain(issued_at, last_access, expires_at, payload)
    aead = _sealing_aead(COOKIE_ENC_LABEL, prk, epoch)[0]
    head += _EPOCH.pack(epoch)
    return b64url_encode(_aead_seal(aead, head, prefix + head, plain))


def open_encrypted(value: str, prks, name: str):
    """Decrypt an encrypted cookie-session value with (key id, PRK) pairs, first key first.

    Returns (issued_at, last_access, expires_at, payload, index of the PRK that
    opened it), or None for anything malformed, oversized or forged. Never raises
    on bad input; ImportError when it must decrypt and cryptography is missing.
    """
    prefix = _cookie_bound(name)
    if type(value) is not str or not _SEALED_MIN_CHARS <= len(value) <= MAX_COOKIE_CHARS:
        return None
    try:
        raw = b64url_decode(value)
    except ValueError:
        return None
    if len(raw) < _ENCRYPTED_MIN or raw[0] != FORMAT_VERSION or raw[1] != MODE_ENCRYPTED:
        return None
    (epoch,) = _EPOCH.unpack_from(raw, 3)
    nonce = raw[_ENCRYPTED_HEAD:_ENCRYPTED_CIPHERTEXT]
    ciphertext = raw[_ENCRYPTED_CIPHERTEXT:]
    aad = prefix + raw[:_ENCRYPTED_HEAD]
    opened = _aead_open(COOKIE_ENC_LABEL, prks, raw[2], epoch, nonce, ciphertext, aad)
    if opened is None:
        return None
    plain, index = opened
    return (*_SEALED_TIMES.unpack_from(plain), plain[24:], index)


def record_encrypt(prk: bytes, epoch: int, store_key: bytes, blob: bytes) -> bytes:
    """A record encrypted at rest: magic | key id | epoch | nonce | AES-GCM(blob).

    The key is HKDF-Expand(prk, "fastsess/v1/record-enc/<epoch>") and the key id
    derive_key_id(prk); the associated data binds the store key and the header.
    """
    epoch = _epoch_value(epoch)
    prefix = _record_bound(store_key)
    if type(blob) is not bytes:
        raise TypeError("record must be bytes")
    aead, kid = _sealing_aead(RECORD_ENC_LABEL, prk, epoch)
    head = bytes((ENCRYPTED_RECORD_VERSION, kid)) + _EPOCH.pack(epoch)
    return _aead_seal(aead, head, prefix + head, blob)


def record_decrypt(prks, store_key: bytes, sealed: bytes):
    """The record that record_encrypt sealed under this store key, or None: wrong key, moved or tampered."""
    prefix = _record_bound(store_key)
    if type(sealed) is not bytes:
        raise TypeError("record must be bytes")
    if len(sealed) < _RECORD_MIN or sealed[0] != ENCRYPTED_RECORD_VERSION:
        return None
    (epoch,) = _EPOCH.unpack_from(sealed, 2)
    nonce = sealed[_RECORD_HEAD:_RECORD_CIPHERTEXT]
    ciphertext = sealed[_RECORD_CIPHERTEXT:]
    aad = prefix + sealed[:_RECORD_HEAD]
    opened = _aead_open(RECORD_ENC_LABEL, prks, sealed[1], epoch, nonce, ciphertext, aad)
    return None if opened is None else opened[0]
