"""Reads the cookies Beaker 1.14 left in browsers, so deploying fastsess logs nobody out.

SPEC 3, "Beaker migration".

Beaker signs both of its cookie formats the same way: 40 lowercase hex
characters of HMAC-SHA1 over the rest of the value, then the rest.
- A signed session-id cookie carries the id (uuid4 hex) of a server-side
  session, which `fastsess migrate-beaker` wrote under `core.store_key(id)`.
- A cookie session (`type = cookie`, `data_serializer = json`) carries
  base64(zlib(JSON)) of the whole session.

The tag is verified with `beaker_compat_secrets`, in constant time, before
anything else is looked at; unsigned values are never accepted. A cookie
session Beaker encrypted with `encrypt_key` is decrypted once its tag has
verified (`open_encrypted`, which migrate-beaker uses for stored records too).
Nothing here unpickles: Beaker's pickled cookie sessions are refused.
Beaker's bookkeeping keys (`_creation_time`, `_accessed_time`, `_domain`,
`_path`, `_id`) move out of the user data into fastsess's record header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from . import core
from .config import cookie_attribute

#: Beaker's tag: HMAC-SHA1 as lowercase hex.
TAG_CHARS = 40
_BEAKER_VALUE = re.compile(r"[0-9a-f]{40}.")
_BEAKER_ID = re.compile(r"[0-9a-f]{32}")
#: The keys Beaker keeps in every session next to the application's own.
BEAKER_FIELDS = ("_id", "_creation_time", "_accessed_time", "_domain", "_path")
#: Label of the fastsess id derived from a Beaker cookie session's `_id`.
COOKIE_ID_LABEL = b"fastsess/v1/beaker-cookie-id\x00"
#: Label of the store key that records a Beaker cookie session's move into a server-side store.
CONVERTED_LABEL = b"fastsess/v1/beaker-cookie-converted\x00"
#: Beaker's AES: a 256-bit key; with its cryptography backend, AES-GCM laid
#: out as IV, tag, ciphertext.
AES_KEY_BYTES = 32
GCM_IV_BYTES = 12
GCM_TAG_BYTES = 16
AES_BLOCK_BYTES = 16
#: How a protocol 2 pickle starts, as Beaker's pickle serializer writes them.
PICKLE_PREFIX = b"\x80\x02"

T = TypeVar("T")


class BeakerCookieRefused(ValueError):
    """A Beaker value that must not be used; the message says why and never holds ids or data."""


class BeakerSession(NamedTuple):
    """A Beaker session split into fastsess's record header and the application's data."""

    created: float
    accessed: float
    domain: str | None  # only when it differs from the configured cookie_domain
    path: str | None  # only when it differs from the configured cookie_path
    data: dict
    data_bytes: bytes  # data in fastsess's encoding
    beaker_id: str | None  # `_id`, which Beaker keeps inside cookie sessions


def is_beaker_value(value: str) -> bool:
    """True for a cookie value in Beaker's shape: 40 lowercase hex characters, then more.

    No fastsess value can look like this: they are base64url of bytes that
    start with a version byte, so their first character is an upper-case letter.
    """
    return _BEAKER_VALUE.match(value) is not None


def is_beaker_id(text: str) -> bool:
    """True for an id as Beaker 1.14 makes them (uuid4().hex), the only ids fastsess carries over."""
    return _BEAKER_ID.fullmatch(text) is not None


def check_deadline(config: Any, now: float) -> None:
    """Refuse every Beaker value once beaker_compat_until has passed."""
    deadline = config.beaker_compat_deadline
    if deadline is not None and now >= deadline:
        raise BeakerCookieRefused("Beaker cookie after beaker_compat_until")


def verify(value: str, keys: list[bytes]) -> str:
    """The part after Beaker's tag, when the tag verifies with one of `keys`."""
    return verify_with_key(value, keys)[0]


def verify_with_key(value: str, keys: list[bytes]) -> tuple[str, bytes]:
    """The part after Beaker's tag, and the key among `keys` it verifies with.

    Every key is tried, each with a constant-time comparison. Beaker signs the
    rest of the value exactly as it appears in the cookie; only ASCII values
    are considered, since Beaker's own values always are.
    """
    if len(value) > core.MAX_COOKIE_CHARS or not value.isascii() or not is_beaker_value(value):
        raise BeakerCookieRefused("not a Beaker-signed value")
    tag = value[:TAG_CHARS].encode("ascii")
    body = value[TAG_CHARS:]
    message = body.encode("ascii")
    verifying = None
    for key in keys:
        if hmac.compare_digest(hmac.new(key, message, hashlib.sha1).hexdigest().encode("ascii"), tag):
            verifying = key if verifying is None else verifying
    if verifying is None:
        raise BeakerCookieRefused("Beaker cookie tag does not verify with beaker_compat_secrets")
    return body, verifying


def open_id_cookie(value: str, config: Any, now: float) -> str:
    """The Beaker session id in a signed Beaker id cookie, verified; BeakerCookieRefused otherwise.

    Called before any store lookup: a forged or unsigned value costs one
    HMAC-SHA1 per configured key and nothing more.
    """
    check_deadline(config, now)
    beaker_id = verify(value, config.beaker_keys)
    if not is_beaker_id(beaker_id):
        raise BeakerCookieRefused("Beaker cookie does not hold a Beaker 1.14 session id")
    return beaker_id


def open_cookie_session(value: str, config: Any, now: float) -> BeakerSession:
    """A Beaker cookie session (signed zlib-compressed JSON, encrypted or not), verified and split.

    The tag is verified first. A body that is not plain base64 of zlib-compressed
    JSON is then decrypted, when Beaker encrypt keys are configured, salted with
    the validate_key that verified the tag. BeakerCookieRefused for anything
    else, pickled sessions included.
    """
    check_deadline(config, now)
    body, validate_key = verify_with_key(value, config.beaker_keys)
    limit = config.max_record_size
    try:
        serialized = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        serialized = None
    try:
        if serialized is None:
            raise BeakerCookieRefused("Beaker cookie session is not base64")
        session = load_json_session(serialized, limit)
    except BeakerCookieRefused as refusal:
        if not config.beaker_encrypt_keys:
            if serialized is not None and serialized.startswith(PICKLE_PREFIX):
                raise
            raise BeakerCookieRefused(
                f"{refusal} (to read Beaker's encrypted cookie sessions, set beaker_compat_encrypt_key)"
            ) from None
        try:
            session = open_encrypted(
                body, config.beaker_encrypt_keys, [validate_key], config.encrypt_nonce_bits,
                lambda plain: load_json_session(plain, limit), "Beaker cookie session",
            )
        except BeakerCookieRefused:
            if serialized is not None and serialized.startswith(PICKLE_PREFIX):
                raise refusal from None  # a plain pickled session: say so
            raise
    return split_session(session, config, now)


def load_json_session(serialized: bytes, limit: int) -> Any:
    """What Beaker's json serializer wrote (zlib-compressed JSON); a pickle is refused, never unpickled."""
    if serialized.startswith(PICKLE_PREFIX):
        raise BeakerCookieRefused(
            "Beaker cookie session is pickled (data_serializer = pickle): refused, never unpickled"
        )
    try:
        return inflate_json(serialized, limit)
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError):
        raise BeakerCookieRefused("Beaker cookie session is not zlib-compressed JSON") from None


def nonce_chars(nonce_bits: int) -> int:
    """How many characters of base64 the nonce that starts Beaker's encrypted values takes."""
    return 4 * math.ceil(nonce_bits // 8 / 3)


def aes_key(encrypt_key: bytes, validate_key: bytes, nonce: bytes) -> bytes:
    """Beaker's AES key for one value: one round of PBKDF2-HMAC-SHA1, salted with validate_key and the nonce."""
    return hashlib.pbkdf2_hmac("sha1", encrypt_key, validate_key + nonce, 1, AES_KEY_BYTES)


def open_encrypted(
    text: str,
    encrypt_keys: Sequence[bytes],
    validate_keys: Sequence[bytes],
    nonce_bits: int,
    load: Callable[[bytes], T],
    what: str = "Beaker value",
) -> T:
    """`load` of what Beaker encrypted with encrypt_key: `nonce + base64(AES(serialized))`.

    Each encrypt key is tried with each candidate validate_key. Beaker 1.14
    encrypts with AES-256-GCM when cryptography is installed; its tag is
    checked before anything is decrypted, and once it verifies, `load` decides.
    Beaker's pycryptodome backend (and older Beaker) used AES-256-CTR, which
    has no tag: such a value is accepted only when `load` accepts the
    plaintext, which zlib's checksum makes a reliable test for a wrong key.
    BeakerCookieRefused, with the reason, when no key opens the value.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    size = nonce_chars(nonce_bits)
    if len(text) <= size or not text.isascii():
        raise BeakerCookieRefused(f"{what} is too short to be encrypted")
    nonce = text[:size].encode("ascii")
    try:
        sealed = base64.b64decode(text[size:], validate=True)
    except (binascii.Error, ValueError):
        raise BeakerCookieRefused(
            f"{what} is not base64 after its nonce (is encrypt_nonce_bits what Beaker used?)"
        ) from None
    keys = [aes_key(e, v, nonce) for v in validate_keys for e in encrypt_keys]
    if len(sealed) > GCM_IV_BYTES + GCM_TAG_BYTES:
        iv = sealed[:GCM_IV_BYTES]
        # cryptography takes the tag after the ciphertext; Beaker puts it before.
        ciphertext = sealed[GCM_IV_BYTES + GCM_TAG_BYTES :] + sealed[GCM_IV_BYTES : GCM_IV_BYTES + GCM_TAG_BYTES]
        for key in keys:
            try:
                plain = AESGCM(key).decrypt(iv, ciphertext, None)
            except InvalidTag:
                continue
            return load(plain)
    refusal = BeakerCookieRefused(
        f"{what} does not decrypt with the configured Beaker keys (the AES-GCM tag fails: not "
        "Beaker's encrypt_key, validate_key or encrypt_nonce_bits, or the value is damaged)"
    )
    for key in keys:
        decryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(AES_BLOCK_BYTES))).decryptor()
        plain = decryptor.update(sealed) + decryptor.finalize()
        try:
            return load(plain)
        except ValueError as exc:  # BeakerCookieRefused and migrate's SessionRefused are ValueErrors
            if plain.startswith(PICKLE_PREFIX):
                refusal = BeakerCookieRefused(str(exc))  # decrypted, most likely: why it was refused
    raise refusal


def inflate_json(compressed: bytes, limit: int) -> Any:
    """zlib-compressed UTF-8 JSON as Beaker's json serializer writes it, inflated to at most `limit` bytes."""
    return json.loads(inflate(compressed, limit).decode("utf-8"), parse_constant=_refuse_constant)


def inflate(compressed: bytes, limit: int) -> bytes:
    """zlib data inflated to at most `limit` bytes; ValueError past that or when truncated (zlib.error if corrupt)."""
    inflater = zlib.decompressobj()
    raw = inflater.decompress(compressed, limit + 1)
    if len(raw) > limit or inflater.unconsumed_tail or not inflater.eof:
        raise ValueError("inflates past max_record_size, or is truncated")
    return raw


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a session value")


def _time(value: Any, default: float) -> float:
    if type(value) in (int, float) and math.isfinite(value) and value > 0:
        return float(value)
    return default


def _cookie_scope(what: str, value: Any, config: Any) -> str | None:
    """A per-session domain or path worth keeping: one a session could be given, and not the configured one.

    Beaker kept whatever the application set; one fastsess would refuse
    (config.cookie_attribute) is dropped, and the configured one applies.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        value = cookie_attribute(what, value, config.cookie_name)
    except ValueError:
        return None
    return None if value == (config.cookie_domain if what == "domain" else config.cookie_path) else value


def split_session(session: Any, config: Any, now: float) -> BeakerSession:
    """Move Beaker's bookkeeping keys into header fields and encode the rest as fastsess data.

    Times in the future are clamped to `now`; a value fastsess cannot store
    (SPEC 4) refuses the whole session rather than dropping part of it.
    """
    if type(session) is not dict:
        raise BeakerCookieRefused("Beaker session is not a dict")
    data = dict(session)
    fields = {name: data.pop(name, None) for name in BEAKER_FIELDS}
    accessed = min(_time(fields["_accessed_time"], now), now)
    created = min(_time(fields["_creation_time"], accessed), accessed)
    domain = _cookie_scope("domain", fields["_domain"], config)
    path = _cookie_scope("path", fields["_path"], config)
    try:
        for key, item in data.items():
            if type(key) is not str:
                raise TypeError("session keys must be str")
            core.check_value(key, item)
        data_bytes = core.encode_data(data)
    except (TypeError, ValueError) as exc:
        reason = f"Beaker session holds a value fastsess cannot store: {_kind(exc)}"
        raise BeakerCookieRefused(reason) from None
    beaker_id = fields["_id"] if isinstance(fields["_id"], str) and fields["_id"] else None
    return BeakerSession(created, accessed, domain, path, core.decode_data(data_bytes), data_bytes, beaker_id)


def _kind(exc: Exception) -> str:
    """The type named in a codec refusal, without the value itself."""
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def cookie_session_id(beaker_id: str | None) -> str:
    """The fastsess id for a Beaker cookie session, resealed or moved into a server-side store.

    Derived from Beaker's `_id`, so parallel requests that carry the same
    Beaker cookie during cutover get the same id (and the same CSRF token);
    a fresh random id when the cookie had none.
    """
    if beaker_id is None:
        return core.new_session_id()
    return core.b64url_encode(hashlib.sha256(COOKIE_ID_LABEL + beaker_id.encode("utf-8")).digest())


def converted_key(beaker_id: str) -> bytes:
    """The store key that says the Beaker cookie session with this `_id` was moved into the store.

    A digest of its own label, so it is never the store key of an id that
    fastsess issues or keeps (those are SHA-256 of the id's ASCII text).
    """
    return hashlib.sha256(CONVERTED_LABEL + beaker_id.encode("utf-8")).digest()
