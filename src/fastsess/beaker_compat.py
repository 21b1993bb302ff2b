"""Reads the cookies Beaker 1.14 left in browsers, so deploying fastsess logs nobody out.

SPEC 3, "Beaker migration".

Beaker signs both of its cookie formats the same way: 40 lowercase hex
characters of HMAC-SHA1 over the rest of the value, then the rest.
- A signed session-id cookie carries the id (uuid4 hex) of a server-side
  session, which `fastsess migrate-beaker` wrote under `core.store_key(id)`.
- A cookie session (`type = cookie`, `data_serializer = json`) carries
  base64(zlib(JSON)) of the whole session.

The tag is verified with `beaker_compat_secrets`, in constant time, before
anything else is looked at; unsigned values are never accepted. Nothing here
unpickles: Beaker's pickled cookie sessions and its encrypted ones are refused.
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
from typing import Any, NamedTuple

from . import core

#: Beaker's tag: HMAC-SHA1 as lowercase hex.
TAG_CHARS = 40
_BEAKER_VALUE = re.compile(r"[0-9a-f]{40}.")
_BEAKER_ID = re.compile(r"[0-9a-f]{32}")
#: The keys Beaker keeps in every session next to the application's own.
BEAKER_FIELDS = ("_id", "_creation_time", "_accessed_time", "_domain", "_path")
#: Label of the fastsess id derived from a Beaker cookie session's `_id`.
COOKIE_ID_LABEL = b"fastsess/v1/beaker-cookie-id\x00"


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
    """The part after Beaker's tag, when the tag verifies with one of `keys`.

    Every key is tried, each with a constant-time comparison. Beaker signs the
    rest of the value exactly as it appears in the cookie; only ASCII values
    are considered, since Beaker's own values always are.
    """
    if len(value) > core.MAX_COOKIE_CHARS or not value.isascii() or not is_beaker_value(value):
        raise BeakerCookieRefused("not a Beaker-signed value")
    tag = value[:TAG_CHARS].encode("ascii")
    body = value[TAG_CHARS:]
    message = body.encode("ascii")
    verified = False
    for key in keys:
        verified |= hmac.compare_digest(hmac.new(key, message, hashlib.sha1).hexdigest().encode("ascii"), tag)
    if not verified:
        raise BeakerCookieRefused("Beaker cookie tag does not verify with beaker_compat_secrets")
    return body


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
    """A Beaker cookie session (signed, zlib-compressed JSON), verified and split.

    BeakerCookieRefused for anything else, including pickled and encrypted ones.
    """
    check_deadline(config, now)
    body = verify(value, config.beaker_keys)
    try:
        compressed = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BeakerCookieRefused("Beaker cookie session is not base64") from None
    try:
        session = inflate_json(compressed, config.max_record_size)
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError):
        raise BeakerCookieRefused(
            "Beaker cookie session is not zlib-compressed JSON (pickled or encrypted ones are refused)"
        ) from None
    return split_session(session, config, now)


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


def _cookie_scope(value: Any, configured: str | None) -> str | None:
    """A per-session domain or path worth keeping: set, printable, and not just the configured one."""
    if not isinstance(value, str) or not value or value == configured or len(value.encode("utf-8")) > 255:
        return None
    if any(c == ";" or c < " " or c > "~" for c in value):
        return None
    return value


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
    domain = _cookie_scope(fields["_domain"], config.cookie_domain)
    path = _cookie_scope(fields["_path"], config.cookie_path)
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
    """The fastsess id for a resealed Beaker cookie session.

    Derived from Beaker's `_id`, so parallel requests that carry the same
    Beaker cookie during cutover get the same id (and the same CSRF token);
    a fresh random id when the cookie had none.
    """
    if beaker_id is None:
        return core.new_session_id()
    return core.b64url_encode(hashlib.sha256(COOKIE_ID_LABEL + beaker_id.encode("utf-8")).digest())
