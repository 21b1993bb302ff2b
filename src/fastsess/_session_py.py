# cython: annotation_typing=False
"""The session object: lazy, dict-like, with change tracking, timeouts and a three-way merge.

`Session` is what applications see in `environ["beaker.session"]`. It loads
nothing until first used (TurboGears tests `if session:`), keeps the loaded
state in `__dict__["_sess"]` (TurboGears resets it to None to undo a load), and
decides at persist what to write: nothing for an untouched or unchanged
session, a touch when only the access time is stale, or a compare-and-set
write that merges with concurrent changes on conflict.
"""

from __future__ import annotations

import operator
import random
import threading
import time
from collections.abc import Iterator, MutableMapping
from types import MappingProxyType
from typing import Any

from . import beaker_compat, core
from .config import TOMBSTONE_SECONDS, Config, cookie_attribute
from .core import encode_data, pack_record, parse_cookie, unpack_record  # per request: no lookup on core
from .errors import ConflictError, CorruptRecord, SessionTooLarge, StoreError
from .events import EventLog
from .keys import KeyRing
from .stores.base import CONFLICT, EXISTS, EXPIRED, GONE, TOMBSTONE, Store, StoredRecord, fork_safe_locks

try:  # compiled, these are type declarations (_session.pxd); in pure Python, no-ops
    import cython
except ImportError:
    from ._pure import cython

_MISSING = object()
#: values that can change in place once handed out (a tuple may hold a list)
_MUTABLE = (dict, list, set, tuple)
#: compare-and-set attempts for stores without a lock (memcached, redis), and the
#: longest pause between two: about 0.2 s of waiting in all, at worst
MAX_CAS_ATTEMPTS = 16
MAX_BACKOFF = 0.02
#: stripes of the per-process locks under which one process's threads take turns merging
MERGE_LOCK_STRIPES = 64
#: automatic cleanup: this much work every CLEANUP_EVERY writes, per process.
CLEANUP_EVERY = 500
CLEANUP_BUDGET = 200
#: id cookies remembered as verified, per process (see SessionService.open_cookie)
VERIFIED_COOKIES_LIMIT = 4096
#: cookie sessions remembered as opened, per process (see SessionService.open_sealed);
#: fewer than id cookies, as each entry holds a whole cookie (up to 4 KB) and its payload
OPENED_SEALED_LIMIT = 1024
#: The opened cookie sessions are found by a value's last characters (its tag's, which
#: no other value shares but by chance) and compared whole: hashing the whole value,
#: several hundred characters, cost a tenth of a cookie-session read. Compiled, the key
#: is the last 8 characters read as an integer (_memo_key in _session.pxd).
MEMO_KEY_CHARS = 22
#: decoded session data remembered, per process (see SessionService.decode): a budget
#: in encoded bytes, and the largest encoding worth keeping
DECODED_BYTES_LIMIT = 1 << 20
DECODED_ENTRY_LIMIT = 16 << 10
#: ten years: the store expiry of a session with neither timeout set.
_FOREVER = 10 * 365 * 24 * 3600.0
_EMPTY_DATA = core.encode_data({})
#: the flash queues of a state that has none: read-only, replaced by a dict on first write
_NO_FLASH: Any = MappingProxyType({})

#: a cookie (name + value) larger than this cannot be set: browsers drop it
MAX_COOKIE_BYTES = 4093
#: a cookie session larger than this logs a warning once
COOKIE_WARN_BYTES = 2048

#: the key index _load reports for an id verified by Beaker's tag (beaker_compat)
_BEAKER_KEY_INDEX = -1

# What persist decided for the response's cookie.
SET_COOKIE = "set"
EXPIRE_COOKIE = "expire"


# ---------------------------------------------------------------- the three-way merge


def _same(a: Any, b: Any) -> bool:
    """Equal as stored: compares encodings, so 1, 1.0 and True differ as they do on disk."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return core.encode_data({"": a}) == core.encode_data({"": b})


def merge(base: dict, ours: dict, theirs: dict, on_conflict: str = "merge") -> tuple[dict, list]:
    """Merge this request's changes (ours) into the stored record (theirs), per top-level key.

    base is the data as this request loaded it. A key changed (set or deleted)
    on one side only keeps that change; a key changed differently on both
    sides takes ours, or raises ConflictError when on_conflict is "raise".
    Returns (merged data, keys changed on both sides).
    """
    merged = dict(theirs)
    clashes = []
    for key in set(base) | set(ours):
        mine = ours.get(key, _MISSING)
        if _same(mine, base.get(key, _MISSING)):
            continue  # unchanged here: theirs stands
        other = theirs.get(key, _MISSING)
        if not _same(other, base.get(key, _MISSING)) and not _same(other, mine):
            clashes.append(key)
        if mine is _MISSING:
            merged.pop(key, None)
        else:
            merged[key] = mine
    if clashes and on_conflict == "raise":
        raise ConflictError(f"{len(clashes)} session key(s) changed by a concurrent request")
    return merged, clashes


def merge_flash(base: dict, ours: dict, theirs: dict) -> dict:
    """Merge flash queues as sets of message ids: nothing lost, nothing shown twice.

    Each queue is a list of [message id, message]. A message this request
    popped is removed; one it added is appended after theirs.
    """
    merged = {}
    for queue in set(base) | set(ours) | set(theirs):
        base_ids = {m[0] for m in base.get(queue, ())}
        our_ids = {m[0] for m in ours.get(queue, ())}
        removed = base_ids - our_ids
        kept = [m for m in theirs.get(queue, ()) if m[0] not in removed]
        seen = {m[0] for m in kept}
        kept.extend(m for m in ours.get(queue, ()) if m[0] not in base_ids and m[0] not in seen)
        if kept:
            merged[queue] = kept
    return merged


def _parse_sealed(payload: bytes) -> tuple | None:
    """A sealed payload's (session id, created, csrf generation, domain, path, flash, data bytes); None if malformed."""
    raw_id = payload[: core.ID_BYTES]
    if len(raw_id) != core.ID_BYTES:
        return None
    try:
        created, _, csrf_gen, domain, path, flash, data_bytes = core.unpack_record(payload[core.ID_BYTES :])
    except (ValueError, TypeError):
        return None
    return core.b64url_encode(raw_id), created, csrf_gen, domain, path, flash, data_bytes


def _copy_flash(flash: Any) -> Any:
    """The flash queues as loaded or written: copied, since their lists change in place."""
    return {q: list(m) for q, m in flash.items()} if flash else _NO_FLASH  # most sessions have none


#: a remembered sealed value whose record nobody has parsed yet (see SessionService.open_sealed_record)
_UNPARSED = object()


# ---------------------------------------------------------------- shared per middleware


class SessionService:
    """What the sessions of one middleware share: config, keys, store, events, clock."""

    def __init__(self, config: Config, store: Store, events: EventLog | None = None, clock=time.time) -> None:
        self.config = config
        self.store = store
        self.keys = KeyRing(config.secrets, config.validate_keys, config.encrypt_keys, config.cookie_mode)
        #: cookie-only sessions: the state travels sealed in the cookie, there is no store
        self.cookie_only = config.store_type == "cookie"
        self._cookie_too_large_warned = False
        self.events = events or EventLog(config.on_event)
        self.events.log_sid = self.keys.log_sid
        if store is not None:
            store.report = self.events.emit  # what the store notices reaches on_event too
            for name, level, message in store.startup_events:
                self.events.emit(name, message=message, level=level, store=store.kind)
            store.startup_events = ()  # told once
        self.clock = clock
        self._writes = 0
        self._verified: dict[str, tuple] = {}
        self._opened_sealed: dict[str, tuple] = {}
        #: data decoded from the same bytes as an earlier request's: a returning client's
        #: session is decoded once per process while it stays unchanged (core.DecodeMemo)
        self._decoded = core.DecodeMemo(DECODED_BYTES_LIMIT, DECODED_ENTRY_LIMIT)
        self.decode = self._decoded.decode
        self.decode_shared = self._decoded.decode_shared
        self.prime_decoded = self._decoded.prime  # a write keeps what it wrote decoded
        # Read on every request: kept as plain attributes.
        self._timeout = config.timeout or 0.0
        self._absolute_timeout = config.absolute_timeout or 0.0
        self.touch_interval = config.touch_interval if config.save_accessed_time else None
        self.persistent_cookie = config.cookie_expires is not True or config.max_age is not None
        self.use_cookies = config.use_cookies
        self.cookie_name = config.cookie_name
        self.beaker_compat = config.beaker_compat
        self.records_encrypted = bool(self.keys.record_enc_prks)
        self._locks = fork_safe_locks(self, MERGE_LOCK_STRIPES)  # see merge_lock

    def merge_lock(self, key: bytes) -> threading.Lock:
        """The lock this process's threads take in turn to merge into the record under key.

        Stores without a lock of their own (memcached, redis) merge by retrying
        compare-and-set. Threads of one process retrying on one hot session would
        mostly lose to each other (gthread, waitress); taking turns leaves them to
        race only other processes. Stores with one (locked_update) are queued for
        it the same way, so a hot session holds one waiting database connection
        per process, not one per thread. A forked child gets fresh locks
        (stores.base fork_safe_locks): one copied while held would never be
        released there.
        """
        return self._locks[key[0] % MERGE_LOCK_STRIPES]

    def expires_at(self, created: float, now: float) -> float:
        """min(idle expiry, absolute expiry): the store TTL."""
        timeout, absolute = self._timeout, self._absolute_timeout  # config's, as plain numbers
        idle = now + timeout if timeout else now + _FOREVER
        if absolute:
            return min(idle, created + absolute)
        return idle

    def is_expired(self, created: float, last_access: float, now: float) -> bool:
        """Idle for more than timeout, or older than absolute_timeout."""
        timeout, absolute = self._timeout, self._absolute_timeout
        return (timeout and now - last_access > timeout) or (absolute and now - created > absolute) or False

    def open_cookie(self, value: str) -> tuple | None:
        """(session id, store key, index of the verifying key) for a valid id cookie, else None.

        Verified values are remembered (per process, bounded): verifying the same
        string again would give the same answer, and skips an HMAC and a SHA-256
        on every request of a returning client. Failures are never remembered.
        """
        hit = self._verified.get(value)
        if hit is not None:
            return hit
        opened = core.open_id_cookie(value, self.keys.id_keys, self.config.cookie_name)
        if opened is None:
            return None
        entry = (opened[0], core.store_key(opened[0]), opened[1])
        if len(self._verified) >= VERIFIED_COOKIES_LIMIT:
            self._verified.clear()
        self._verified[value] = entry
        return entry

    # -------------------------------------------------- records at rest and sealed cookies

    def seal_record(self, key: bytes, blob: bytes) -> bytes:
        """The blob as the store keeps it: AES-GCM bound to the store key when encrypt_key is set."""
        if not self.records_encrypted:
            return blob
        prks = self.keys.record_enc_prks
        return core.record_encrypt(prks[0][1], int(self.clock() // core.EPOCH_SECONDS), key, blob)

    def open_record(self, key: bytes, stored: bytes) -> bytes:
        """The blob a store returned, decrypted; ValueError when it does not open under this key."""
        prks = self.keys.record_enc_prks
        if not prks:
            return stored
        blob = core.record_decrypt(prks, key, stored)
        if blob is None:
            raise ValueError("record does not decrypt under the configured encrypt_key")
        return blob

    def seal_cookie(self, issued_at: float, last_access: float, expires_at: float, payload: bytes) -> str:
        """Seal a cookie session with the first key; the client's next request need not be opened again."""
        name = self.config.cookie_name
        prks = self.keys.cookie_enc_prks
        if prks:
            epoch = int(self.clock() // core.EPOCH_SECONDS)
            kid, prk = prks[0]
            sealed = core.seal_encrypted(name, kid, prk, epoch, issued_at, last_access, expires_at, payload)
        else:
            kid, key = self.keys.cookie_mac_keys[0]
            sealed = core.seal_signed(name, kid, key, issued_at, last_access, expires_at, payload)
        # Exactly what opening it would give: the timestamps travel as float64. The
        # record is parsed by the first request that sends it back, if one does.
        self._remember_sealed(sealed, (float(issued_at), float(last_access), float(expires_at), payload, 0, _UNPARSED))
        return sealed

    def _remember_sealed(self, value: str, opened: tuple) -> None:
        if len(self._opened_sealed) >= OPENED_SEALED_LIMIT:
            self._opened_sealed.clear()
        key = _memo_key(value) if cython.compiled else value[-MEMO_KEY_CHARS:]  # noqa: F821
        self._opened_sealed[key] = (value, opened)  # see MEMO_KEY_CHARS

    def open_sealed(self, value: str) -> tuple | None:
        """(issued_at, last_access, expires_at, payload, key index) of a valid cookie session, else None."""
        opened = self.open_sealed_record(value)
        return None if opened is None else opened[:5]

    def open_sealed_record(self, value: str) -> tuple | None:
        """open_sealed's answer plus the payload's record, parsed: None when the value does not verify.

        The record is (session id, created, csrf generation, domain, path, flash
        bytes, data bytes), or None when a payload that verified is malformed.
        Opened values are remembered (per process, bounded), as open_cookie does:
        the answer depends only on the value and this service's keys, and a
        client sends the same cookie until its session changes. Expiry is
        checked by the caller on every request; failures are never remembered.
        """
        hit = self._opened_sealed.get(_memo_key(value) if cython.compiled else value[-MEMO_KEY_CHARS:])  # noqa: F821
        hit = hit[1] if hit is not None and hit[0] == value else None
        if hit is not None:
            if hit[5] is _UNPARSED:  # sealed by this process: parsed once, on its first return
                hit = (*hit[:5], _parse_sealed(hit[3]))
                self._remember_sealed(value, hit)
            return hit
        if self.keys.cookie_enc_prks:
            opened = core.open_encrypted(value, self.keys.cookie_enc_prks, self.config.cookie_name)
        else:
            opened = core.open_signed(value, self.keys.cookie_mac_keys, self.config.cookie_name)
        if opened is None:
            return None
        hit = (*opened, _parse_sealed(opened[3]))
        self._remember_sealed(value, hit)
        return hit

    def sign(self, session_id: str) -> str:
        kid, key = self.keys.id_keys[0]
        return core.sign_id(session_id, key, kid, self.config.cookie_name)

    def sid(self, session_id: str | None) -> str | None:
        return self.keys.log_sid(session_id)

    def wrote(self) -> None:
        """Count a write; every CLEANUP_EVERY writes, remove a bounded number of expired records."""
        self._writes += 1
        if self._writes % CLEANUP_EVERY:
            return
        try:
            removed = self.store.cleanup_step(self.clock(), CLEANUP_BUDGET)
        except StoreError as exc:
            self.events.emit("store_error", message=f"cleanup failed: {type(exc).__name__}")
            return
        if removed:
            self.events.emit("cleanup", message=f"removed {removed} expired records", removed=removed)


# ---------------------------------------------------------------- loaded state


class _State:
    """The loaded session: data, what was loaded, and what this request asked for.

    Compiled (fastsess._session), this is an extension type whose attributes are
    C struct fields (_session.pxd).
    """

    if not cython.compiled:
        # Compiled, the type's tp_new starts every field at None, False or 0; here
        # the class gives those defaults, and __init__ sets only the others.
        id = None  # generated on first need
        version = None
        last_accessed = None  # the previous access, as the application sees it
        shared = None  # the decode memo's dict whose containers data's values still are (see owned)
        domain = path = loaded_domain = loaded_path = None
        rotate_from = None  # (old store key, old version) after regenerate_id()
        had_cookie = dropped = False
        tombstoned = False  # served for an id rotated away: read-only, and its dropped writes are the client's doing
        sealed = None  # cookie-only sessions: the value to send
        merge_from = None  # (base, ours) as this request first merged them: every retry merges from these
        keyed = None  # (id, store key): the SHA-256 computed last, for that id
        read_only = anonymous = False
        save_requested = modified = flash_modified = False
        mutable_out = False  # a dict, list, set or tuple value was handed out: it may be mutated in place
        dead = False  # delete() was called and nothing was written since
        deleted = False  # delete() was called: expire the cookie unless a new one is written
        invalidated = retag = False
        cookie_action = None

    def __init__(self, now: float, data: dict | None = None, flash: dict | None = None) -> None:
        self.created = now
        self.last_access = now  # the stored access time, for touch decisions
        self.data = {} if data is None else data
        self.loaded_data = _EMPTY_DATA
        self.is_new = True
        self.csrf_gen = self.loaded_csrf_gen = 0
        self.doomed = ()  # store keys to delete at persist
        if flash:  # queue -> [[message id, message], ...]
            self.flash = flash
            self.loaded_flash = {q: list(m) for q, m in flash.items()}
        else:
            self.flash = self.loaded_flash = _NO_FLASH

    def loaded(
        self, session_id: str, data_bytes: bytes, created: float, last_access: float,
        domain: str | None, path: str | None, csrf_gen: int,
    ) -> None:
        """Fill in what a stored or sealed record says about the session it holds."""
        self.id = session_id
        self.is_new = False
        self.loaded_data = data_bytes
        self.created = created
        self.last_accessed = self.last_access = last_access
        if domain is not None:
            self.domain = self.loaded_domain = domain
        if path is not None:
            self.path = self.loaded_path = path
        if csrf_gen:
            self.csrf_gen = self.loaded_csrf_gen = csrf_gen

    def owned(self, key: str, value: Any) -> Any:
        """data[key], a container about to be handed out: copied first while the decode memo shares it."""
        shared = self.shared
        if shared is not None and shared.get(key) is value:
            value = core.copy_value(value)
            self.data[key] = value
        return value

    def own_all(self) -> None:
        """Copy every container data still shares with the decode memo: the whole data is handed out."""
        shared = self.shared
        if shared is not None:
            self.shared = None
            data = self.data
            for key, value in shared.items():
                if type(value) in _MUTABLE and data.get(key) is value:
                    data[key] = core.copy_value(value)

    def forgets_cookie(self) -> bool:
        """delete(), or invalidate() of a session the client sent a cookie for: that cookie must go."""
        return self.deleted or (self.invalidated and self.had_cookie)

    def store_key(self) -> bytes:
        """The store key of the current id, computed once per id (ids change on regenerate)."""
        keyed = self.keyed
        if keyed is not None and keyed[0] == self.id:
            return keyed[1]
        key = core.store_key(self.id)
        self.keyed = (self.id, key)
        return key


class _SessionCore:
    """Everything Session does; compiled, an extension type whose methods call each other as C.

    Its own fields are struct fields there, except `_sess`, the loaded state,
    which lives in the instance `__dict__`: TurboGears sets `__dict__["_sess"]`
    to None to undo a load, and that must reach the code reading it.
    """

    def __init__(
        self,
        service: SessionService,
        cookie_header: str | None = None,
        session_id: str | None = None,
        detached: bool = False,
        read_only: bool = False,
    ) -> None:
        self._service = service
        self._cookie_header = cookie_header
        if not cython.compiled:  # compiled, Session.__dict__ shows _sess as None until it is set
            self._sess = None
        self._requested_id = session_id
        self._detached = detached  # get_by_id / get_session: save() writes at once, no cookies
        self._read_only = read_only
        self._dirty = False
        self._suppressed = False  # a 5xx response: nothing is saved
        self._was_loaded = False  # loaded at some point, even if TurboGears later reset _sess

    # -------------------------------------------------- loading

    def __bool__(self) -> bool:
        return True  # never loads: TurboGears tests `if session:`

    @cython.locals(s=_State)
    def _state(self) -> _State:
        s = _sess_of(self) if cython.compiled else self._sess  # see _session.pxd
        if s is None:
            s = self._load()
        return s

    @cython.locals(s=_State)
    def _fresh(self, now: float, data: dict | None = None, flash: dict | None = None) -> _State:
        s = _State(now, data, flash)
        if self._read_only:
            s.read_only = True
        return s

    @cython.locals(s=_State)
    def _load(self) -> _State:
        s = self._open_state()
        if cython.compiled:
            _set_sess(self, s)  # in the instance dict, as C (_session.pxd)
        else:
            self._sess = s
        return s

    @cython.locals(s=_State, service=SessionService)
    def _open_state(self) -> _State:
        """The state this session loads: from its cookie, its requested id, or a fresh one."""
        self._was_loaded = True  # the response depends on the cookie: see the cache headers
        service: SessionService = self._service
        now = service.clock()
        if service.cookie_only:
            return self._load_sealed(service, now)
        session_id = self._requested_id
        if session_id is not None:  # get_by_id, get_session: no cookie involved
            return self._load_record(service, session_id, core.store_key(session_id), now)
        header = self._cookie_header
        candidates = parse_cookie(header, service.cookie_name) if header and service.use_cookies else ()
        if not candidates:
            return self._fresh(now)
        beaker = service.beaker_compat
        refused = False  # a Beaker value was refused, and its reason logged
        for value in candidates:
            if beaker and beaker_compat.is_beaker_value(value):
                if not beaker_compat.is_beaker_id(value[beaker_compat.TAG_CHARS :]):  # a cookie session
                    s = self._convert_beaker_cookie(service, value, now)
                    if s is not None:
                        s.had_cookie = True
                        return s
                    refused = True
                    continue
                opened = self._open_beaker_id(service, value, now)
                refused |= opened is None
            else:  # service.open_cookie, its remembered answers inline: the common case
                opened = service._verified.get(value) or service.open_cookie(value)
            if opened is not None:
                session_id, key, key_index = opened
                break
        else:
            if not refused:
                service.events.emit("invalid_cookie", message="no candidate cookie verified")
            s = self._fresh(now)
            s.had_cookie = True
            return s
        s = self._load_record(service, session_id, key, now)
        s.had_cookie = True
        if key_index != 0 and not s.is_new:
            s.retag = True
            if key_index == _BEAKER_KEY_INDEX:
                service.events.emit(
                    "beaker_cookie_accepted", session_id=s.id,
                    message="Beaker id cookie verified; re-tagged in fastsess format", beaker_format="id",
                )
            else:
                service.events.emit(
                    "old_key_used", session_id=s.id, message="id cookie tagged with an old secret"
                )
        return s

    @cython.locals(service=SessionService)
    def _open_beaker_id(self, service: SessionService, value: str, now: float) -> tuple | None:
        """(Beaker id, store key, _BEAKER_KEY_INDEX) for a Beaker id cookie whose tag verifies, else None.

        The tag is checked before any store lookup. migrate-beaker wrote the
        session under store_key(Beaker id); the id is kept, and re-tagged in
        fastsess format on this response, until the next regenerate_id().
        """
        try:
            beaker_id = beaker_compat.open_id_cookie(value, service.config, now)
        except beaker_compat.BeakerCookieRefused as exc:
            service.events.emit("invalid_cookie", message=str(exc))
            return None
        return beaker_id, core.store_key(beaker_id), _BEAKER_KEY_INDEX

    @cython.locals(s=_State, service=SessionService)
    def _load_beaker_cookie(self, service: SessionService, value: str, now: float) -> _State | None:
        """A Beaker cookie session, verified and decoded, to be resealed in fastsess format on this response.

        None when it is refused, expired, or too large to travel uncompressed.
        """
        try:
            opened = beaker_compat.open_cookie_session(value, service.config, now)
        except beaker_compat.BeakerCookieRefused as exc:
            service.events.emit("invalid_cookie", message=str(exc))
            return None
        session_id = beaker_compat.cookie_session_id(opened.beaker_id)
        if service.is_expired(opened.created, opened.accessed, now):
            service.events.emit(
                "expired", session_id=session_id, message="Beaker cookie session timed out"
            )
            return None
        record = core.pack_record(opened.created, now, 0, opened.domain, opened.path, None, opened.data_bytes)
        payload = core.b64url_decode(session_id) + record
        sealed = service.seal_cookie(opened.created, now, service.expires_at(opened.created, now), payload)
        if len(service.config.cookie_name) + len(sealed) > MAX_COOKIE_BYTES:
            service.events.emit(
                "invalid_cookie", message="Beaker cookie session too large to reseal uncompressed"
            )
            return None
        s = self._from_beaker(opened, session_id, now)
        s.had_cookie = True
        s.retag = True  # reseal on this response
        service.events.emit(
            "beaker_cookie_accepted", session_id=session_id,
            message="Beaker cookie session verified; resealed in fastsess format", beaker_format="cookie",
        )
        return s

    @cython.locals(s=_State, service=SessionService)
    def _convert_beaker_cookie(self, service: SessionService, value: str, now: float) -> _State | None:
        """A Beaker cookie session, verified and decoded, moved into the server-side store.

        None when it is refused or expired, before any store lookup. The record
        goes under the id derived from Beaker's `_id` (cookie_session_id), not a
        random one, so the old cookie cannot fork the session: parallel requests
        at cutover and later replays all land on one record (`create` never
        overwrites) and see its current data, as a kept Beaker id does. A marker
        under converted_key(`_id`), kept until every Beaker cookie of that `_id`
        has expired, remembers the move: once the session is deleted or its id
        regenerated, the old cookie loads nothing rather than bringing back the
        data it carried. A read-only request sees the data and writes nothing.
        """
        try:
            opened = beaker_compat.open_cookie_session(value, service.config, now)
            if opened.beaker_id is None:  # Beaker always writes one; without it replays could not be told apart
                raise beaker_compat.BeakerCookieRefused("Beaker cookie session has no _id")
        except beaker_compat.BeakerCookieRefused as exc:
            service.events.emit("invalid_cookie", message=str(exc))
            return None
        session_id = beaker_compat.cookie_session_id(opened.beaker_id)
        if service.is_expired(opened.created, opened.accessed, now):
            service.events.emit("expired", session_id=session_id, message="Beaker cookie session timed out")
            return None
        blob = core.pack_record(opened.created, now, 0, opened.domain, opened.path, None, opened.data_bytes)
        if len(blob) > service.config.max_record_size:
            service.events.emit("invalid_cookie", message="Beaker cookie session is larger than max_record_size")
            return None
        key = core.store_key(session_id)
        marker = beaker_compat.converted_key(opened.beaker_id)
        # Every Beaker cookie of this _id was accessed by now at the latest: it expires by this.
        expires_at = service.expires_at(opened.created, now)
        store = service.store
        try:
            try:
                moved = store.load(marker) not in (None, EXPIRED)
            except CorruptRecord:  # an empty bookkeeping record: create() below tells whether it moved
                moved = False
            if not moved and not self._read_only:
                version = store.create(key, service.seal_record(key, blob), expires_at)
                empty = core.pack_record(opened.created, now, 0, None, None, None, _EMPTY_DATA)
                store.create(marker, service.seal_record(marker, empty), expires_at)
                moved = version is EXISTS  # a parallel request moved it first
        except StoreError as exc:
            return self._store_failed(service, exc, now, session_id)
        if moved:
            s = self._load_record(service, session_id, key, now)
            if s.version is None:  # deleted, regenerated away or expired since: the old cookie loads nothing
                return s
        else:
            s = self._from_beaker(opened, session_id, now)
            if not self._read_only:
                service.wrote()
                s.version = version
                s.last_access = now
        s.retag = True  # reissue the cookie in fastsess format on this response
        service.events.emit(
            "beaker_cookie_accepted", session_id=session_id,
            message="Beaker cookie session verified; kept in the server-side store", beaker_format="cookie",
        )
        return s

    @cython.locals(s=_State)
    def _from_beaker(self, opened: beaker_compat.BeakerSession, session_id: str, now: float) -> _State:
        """The loaded state of a verified Beaker session, under the fastsess id it keeps."""
        s = self._fresh(now, opened.data)
        s.loaded(session_id, opened.data_bytes, opened.created, opened.accessed, opened.domain, opened.path, 0)
        return s

    @cython.locals(s=_State, service=SessionService)
    def _load_sealed(self, service: SessionService, now: float) -> _State:
        """A cookie-only session: open the first candidate cookie that verifies."""
        candidates = []
        if self._cookie_header and service.use_cookies:
            candidates = core.parse_cookie(self._cookie_header, service.cookie_name)
        beaker = service.beaker_compat
        refused = False  # a Beaker value was refused, and its reason logged
        for value in candidates:
            if beaker and beaker_compat.is_beaker_value(value):
                s = self._load_beaker_cookie(service, value, now)
                if s is not None:
                    return s
                refused = True
                continue
            # service.open_sealed_record's memory, inline
            opened = service._opened_sealed.get(_memo_key(value) if cython.compiled else value[-MEMO_KEY_CHARS:])  # noqa: F821
            opened = opened[1] if opened is not None and opened[0] == value else None
            if opened is None or opened[5] is _UNPARSED:
                opened = service.open_sealed_record(value)
            if opened is not None:
                break
        else:
            s = self._fresh(now)
            s.had_cookie = bool(candidates)
            if candidates and not refused:
                service.events.emit("invalid_cookie", message="no candidate cookie verified")
            return s
        issued_at, last_access, expires_at, _, key_index, record = opened
        try:
            if record is None:
                raise ValueError("malformed sealed record")
            session_id, created, csrf_gen, domain, path, flash, data_bytes = record
            data, shared = service.decode_shared(data_bytes)
            flash_data = core.decode_data(flash) if flash is not None else None
        except (ValueError, TypeError):
            service.events.emit("invalid_cookie", message="sealed cookie holds a malformed record")
            s = self._fresh(now)
            s.had_cookie = True
            return s
        timeout, absolute = service._timeout, service._absolute_timeout  # service.is_expired, inline
        if now > expires_at or (timeout and now - last_access > timeout) or (absolute and now - issued_at > absolute):
            service.events.emit("expired", session_id=session_id, message="cookie session timed out")
            s = self._fresh(now)
            s.had_cookie = True
            return s
        s = _State(now, data, flash_data)
        s.shared = shared
        if self._read_only:
            s.read_only = True
        s.had_cookie = True
        s.loaded(session_id, data_bytes, issued_at, last_access, domain, path, csrf_gen)
        if key_index > 0:
            s.retag = True
            service.events.emit("old_key_used", session_id=session_id, message="cookie sealed with an old key")
        return s

    @cython.locals(s=_State, service=SessionService)
    def _load_record(self, service: SessionService, session_id: str, key: bytes, now: float) -> _State:
        try:
            record = service.store.load(key)
        except CorruptRecord:  # the store found the bytes damaged: the same policy as an undecodable blob
            return self._corrupt_record(service, session_id, now)
        except StoreError as exc:
            return self._store_failed(service, exc, now, session_id)
        if record is None:
            service.events.emit("unknown_id", session_id=session_id, message="no record for this id")
            return self._fresh(now)
        if record is EXPIRED:
            service.events.emit("expired", session_id=session_id, message="session timed out")
            return self._fresh(now)
        if record is TOMBSTONE:
            service.events.emit("tombstone_hit", session_id=session_id, message="id was rotated away")
            s = self._fresh(now)
            s.read_only = s.tombstoned = True
            s.is_new = False
            return s
        if cython.compiled and _is_record_tuple(record):  # a StoredRecord's fields, read as C (_record.pxd)
            blob = _record_field(record, 0)
            version = _record_field(record, 1)
            last_access = _record_field(record, 3)
        else:
            blob, version, _, last_access = record
        try:
            if service.records_encrypted:
                blob = service.open_record(key, blob)
            created, _, csrf_gen, domain, path, flash, data_bytes = unpack_record(blob)
            data, shared = service.decode_shared(data_bytes)
            flash_data = core.decode_data(flash) if flash is not None else None
        except (ValueError, TypeError):
            return self._corrupt_record(service, session_id, now)
        timeout, absolute = service._timeout, service._absolute_timeout  # service.is_expired, inline
        if (timeout and now - last_access > timeout) or (absolute and now - created > absolute):
            service.events.emit("expired", session_id=session_id, message="session timed out")
            return self._fresh(now)
        s = _State(now, data, flash_data)
        s.shared = shared
        if self._read_only:
            s.read_only = True
        s.loaded(session_id, data_bytes, created, last_access, domain, path, csrf_gen)
        s.keyed = (session_id, key)
        s.version = version
        return s

    @cython.locals(service=SessionService)
    def _corrupt_record(self, service: SessionService, session_id: str, now: float) -> _State:
        """A damaged stored record: missing with invalidate_corrupt (the default), else CorruptRecord."""
        service.events.emit("corrupt_record", session_id=session_id, message="stored record is corrupt")
        if not service.config.invalidate_corrupt:
            raise CorruptRecord("a stored session record is corrupt (invalidate_corrupt is off)") from None
        return self._fresh(now)

    @cython.locals(s=_State, service=SessionService)
    def _store_failed(self, service: SessionService, exc: StoreError, now: float, session_id: str) -> _State:
        service.events.emit("store_error", session_id=session_id, message=f"load failed: {exc}")
        if service.config.on_store_error != "anonymous":
            raise exc
        s = self._fresh(now)
        s.anonymous = True
        return s

    # -------------------------------------------------- Beaker's session protocol

    def accessed(self) -> bool:
        """True once the session was loaded in this request."""
        return (_sess_of(self) if cython.compiled else self._sess) is not None

    def dirty(self) -> bool:
        """True once save() or delete() was called."""
        return self._dirty

    @property
    @cython.locals(s=_State)
    def id(self) -> str:
        s = self._state()
        if s.id is None:
            s.id = core.new_session_id()
        return s.id

    @property
    def is_new(self) -> bool:
        return self._state().is_new

    @property
    def created(self) -> float:
        return self._state().created

    @property
    def last_accessed(self) -> float | None:
        return self._state().last_accessed

    @property
    @cython.locals(s=_State)
    def domain(self) -> str | None:
        s = self._state()
        return s.domain if s.domain is not None else self._service.config.cookie_domain

    @domain.setter
    def domain(self, value: str | None) -> None:
        """Kept with the session and sent on this response's cookie, as Beaker re-emits it."""
        self._rescope("domain", value)

    @property
    @cython.locals(s=_State)
    def path(self) -> str:
        s = self._state()
        return s.path if s.path is not None else self._service.config.cookie_path

    @path.setter
    def path(self, value: str | None) -> None:
        """Kept with the session and sent on this response's cookie, as Beaker re-emits it."""
        self._rescope("path", value)

    @cython.locals(s=_State)
    def _rescope(self, what: str, value: str | None) -> None:
        """Set this session's cookie domain or path (checked as the configured ones are); a change saves."""
        value = cookie_attribute(what, value, self._service.cookie_name)
        s = self._writable()
        if value != getattr(s, what):
            setattr(s, what, value)
            s.save_requested = True

    @cython.locals(s=_State)
    def save(self) -> None:
        """Mark the session for writing at the end of the request (Beaker's semantics)."""
        self._dirty = True
        s = self._state()
        if not s.dead:  # saving a deleted session does not bring it back
            s.save_requested = True
        if self._detached:
            self._persist()

    @cython.locals(s=_State)
    def delete(self) -> None:
        """Remove the record and send an expiring cookie; later writes start a new session."""
        self._dirty = True
        s = self._state()
        self._forget(s)
        s.dead = True
        s.deleted = True
        if self._detached:
            self._persist()

    @cython.locals(s=_State)
    def invalidate(self) -> None:
        """Clear the data, issue a new id and delete the old record."""
        s = self._state()
        self._forget(s)
        s.dead = False
        s.invalidated = True
        s.id = core.new_session_id()
        if self._detached:
            self._persist()

    @cython.locals(s=_State)
    def regenerate_id(self) -> None:
        """Keep the data under a new id; the old id becomes a 60-second tombstone."""
        s = self._writable()
        if not s.is_new and s.id is not None and s.rotate_from is None:  # a tombstoned id's stand-in has none
            s.rotate_from = (s.store_key(), s.version)
        s.id = core.new_session_id()
        s.save_requested = True
        if self._detached:
            self._persist()

    @cython.locals(s=_State)
    def revert(self) -> None:
        """Undo this request's changes to the data."""
        s = self._state()
        s.data = self._service.decode(s.loaded_data)
        s.shared = None
        s.modified = s.mutable_out = False

    @cython.locals(s=_State)
    def read_only(self) -> None:
        """This request neither writes nor touches the session."""
        self._read_only = True
        s = _sess_of(self) if cython.compiled else self._sess  # see _session.pxd
        if s is not None:
            s.read_only = True

    def get_by_id(self, session_id: str) -> Session | None:
        """The session stored under a raw id (trusted server code only), or None."""
        other = Session(self._service, session_id=session_id, detached=True)
        if other.is_new or (_sess_of(other) if cython.compiled else other._sess).read_only:  # is_new loads it
            return None
        return other

    @cython.locals(s=_State)
    def _forget(self, s: _State) -> None:
        """Drop the data and id; the current record (and any rotated one) goes at persist."""
        doomed = list(s.doomed)
        if not s.is_new and s.id is not None:
            doomed.append(s.store_key())
        if s.rotate_from is not None:
            doomed.append(s.rotate_from[0])
            s.rotate_from = None
        s.doomed = doomed
        s.data = {}
        s.shared = None
        s.flash = _NO_FLASH
        s.loaded_data = _EMPTY_DATA
        s.loaded_flash = _NO_FLASH
        s.is_new = True
        s.version = None
        s.id = None
        s.loaded_domain = s.loaded_path = None  # the cookie keeps its scope; a new record stores it
        s.csrf_gen = s.loaded_csrf_gen = 0
        s.created = self._service.clock()
        s.last_accessed = None
        s.modified = s.mutable_out = s.flash_modified = s.save_requested = False

    @cython.locals(s=_State)
    def _writable(self) -> _State:
        """The state, about to be changed: a write after delete() starts a new session."""
        s = self._state()
        if s.dead:
            s.dead = False
            s.id = core.new_session_id()
        return s

    # -------------------------------------------------- the dict API

    @cython.locals(s=_State)
    def __getitem__(self, key: str) -> Any:
        s = _sess_of(self) if cython.compiled else self._sess  # see _session.pxd
        if s is None:  # _state(), inline: the most used call of all
            s = self._load()
        value = s.data[key]
        kind = type(value)
        if kind is dict or kind is list or kind is set or kind is tuple:  # _MUTABLE, as identity tests
            s.mutable_out = True
            if s.shared is not None:
                value = s.owned(key, value)
        return value

    @cython.locals(s=_State)
    def __setitem__(self, key: str, value: Any) -> None:
        if type(key) is not str:
            raise TypeError(f"session keys must be str, not {type(key).__name__}")
        if not key.isascii() and not _is_utf8(key):  # a lone surrogate: refused here, not at persist
            raise TypeError(f"session key {key!r} is not valid UTF-8")
        core.check_value(key, value)
        s = self._writable()
        s.data[key] = value
        s.modified = True

    @cython.locals(s=_State)
    def __delitem__(self, key: str) -> None:
        s = self._writable()
        del s.data[key]
        s.modified = True

    def __contains__(self, key: object) -> bool:
        return key in self._state().data

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._state().data))

    def __len__(self) -> int:
        return len(self._state().data)

    @cython.locals(s=_State)
    def __repr__(self) -> str:
        s = self._sess
        return "<Session (not loaded)>" if s is None else f"<Session with {len(s.data)} keys>"

    @cython.locals(s=_State)
    def get(self, key: str, default: Any = None) -> Any:
        s = _sess_of(self) if cython.compiled else self._sess  # see _session.pxd
        if s is None:  # _state(), inline, as in __getitem__
            s = self._load()
        value = s.data.get(key, default)
        kind = type(value)
        if kind is dict or kind is list or kind is set or kind is tuple:  # _MUTABLE, as identity tests
            s.mutable_out = True
            if s.shared is not None:
                value = s.owned(key, value)
        return value

    @cython.locals(s=_State)
    def setdefault(self, key: str, default: Any = None) -> Any:
        s = self._state()
        if key not in s.data:
            self[key] = default
        return self[key]

    @cython.locals(s=_State)
    def pop(self, key: str, *default: Any) -> Any:
        s = self._state()
        if key in s.data:
            s = self._writable()
            s.modified = True
            s.own_all()
        return s.data.pop(key, *default)

    @cython.locals(s=_State)
    def popitem(self) -> tuple:
        s = self._writable()
        s.own_all()
        item = s.data.popitem()
        s.modified = True
        return item

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def keys(self):
        return self._state().data.keys()

    @cython.locals(s=_State)
    def values(self):
        s = self._state()
        s.mutable_out = True
        s.own_all()
        return s.data.values()

    @cython.locals(s=_State)
    def items(self):
        s = self._state()
        s.mutable_out = True
        s.own_all()
        return s.data.items()

    @cython.locals(s=_State)
    def copy(self) -> dict:
        s = self._state()
        s.mutable_out = True
        s.own_all()
        return dict(s.data)

    def has_key(self, key: str) -> bool:
        return key in self

    @cython.locals(s=_State)
    def clear(self) -> None:
        s = self._state()
        if s.data:
            s = self._writable()
            s.data.clear()
            s.modified = True

    # -------------------------------------------------- flash messages

    @cython.locals(s=_State)
    def flash(self, msg: Any, queue: str = "") -> None:
        """Queue a message for a later request; marks the session for saving."""
        core.check_value("flash", msg)
        if type(queue) is not str or (not queue.isascii() and not _is_utf8(queue)):
            raise TypeError("flash queue must be a str that is valid UTF-8")
        s = self._writable()
        if s.flash is _NO_FLASH:
            s.flash = {}
        s.flash.setdefault(queue, []).append([core.b64url_encode(core.random_bytes(9)), msg])
        s.flash_modified = True
        s.save_requested = True

    @cython.locals(s=_State)
    def pop_flash(self, queue: str = "") -> list:
        """The queued messages, removed from the session."""
        s = self._state()
        messages = s.flash.get(queue)
        if not messages:
            return []
        s = self._writable()
        del s.flash[queue]
        s.flash_modified = True
        s.save_requested = True
        return [m[1] for m in messages]

    def peek_flash(self, queue: str = "") -> list:
        """The queued messages, left in place."""
        return [m[1] for m in self._state().flash.get(queue, ())]

    # -------------------------------------------------- CSRF

    @cython.locals(s=_State)
    def _csrf_token_bytes(self, key: bytes) -> bytes:
        s = self._state()
        msg = b"fastsess/v1/csrf\x00" + self.id.encode("ascii") + s.csrf_gen.to_bytes(4, "big")
        return core.hmac_sha256(key, msg)

    @cython.locals(s=_State)
    def get_csrf_token(self) -> str:
        """A token bound to this session id and generation; issues the session if it is new."""
        s = self._state()
        if s.is_new:
            s = self._writable()
            s.save_requested = True
        return core.b64url_encode(self._csrf_token_bytes(self._service.keys.csrf_keys[0]))

    @cython.locals(s=_State)
    def new_csrf_token(self) -> str:
        """Invalidate earlier tokens and return a new one."""
        s = self._writable()
        s.csrf_gen = (s.csrf_gen + 1) & 0xFFFFFFFF
        s.save_requested = True
        return self.get_csrf_token()

    def csrf_token_for_form(self) -> str:
        """The token masked with fresh random bytes, so it never repeats in compressed pages."""
        token = core.b64url_decode(self.get_csrf_token())
        mask = core.random_bytes(len(token))
        return core.b64url_encode(mask + bytes(a ^ b for a, b in zip(token, mask, strict=True)))

    @cython.locals(s=_State)
    def check_csrf_token(self, value: Any) -> bool:
        """True when value is this session's token, plain or masked; constant-time."""
        if not isinstance(value, str) or len(value) > 128:
            return False
        try:
            raw = core.b64url_decode(value)
        except ValueError:
            return False
        if len(raw) == 64:
            raw = bytes(a ^ b for a, b in zip(raw[32:], raw[:32], strict=True))
        if len(raw) != 32 or self._state().id is None:
            return False
        ok = False
        for key in self._service.keys.csrf_keys:
            ok |= core.constant_time_equal(self._csrf_token_bytes(key), raw)
        return ok

    # -------------------------------------------------- persisting

    def persist(self) -> None:
        """Write now what the end of the request would write (TurboGears calls it)."""
        self._persist()

    @cython.locals(s=_State, service=SessionService)
    def _persist(self) -> None:
        """persist(); compiled, the request cycle and the session's own methods call it as C."""
        s = _sess_of(self) if cython.compiled else self._sess  # see _session.pxd
        if s is None:
            return
        service: SessionService = self._service
        if s.read_only or s.anonymous:
            if s.modified or s.flash_modified or s.save_requested or s.doomed or s.dead:
                if not s.dropped:
                    service.events.emit(
                        "write_dropped", session_id=s.id, message="session is read-only", client=s.tombstoned
                    )
                s.dropped = True
            if s.anonymous and not s.read_only and s.forgets_cookie():
                s.cookie_action = EXPIRE_COOKIE  # the store is down; the client still forgets the old id
            return
        if not (
            s.save_requested or s.modified or s.mutable_out or s.doomed or s.dead or s.deleted
            or s.invalidated or s.retag or s.flash_modified
        ):  # a request that only read: at most a touch (a cookie session's is a reseal)
            interval = service.touch_interval
            if interval is not None and not s.is_new and service.clock() - s.last_access > interval:
                if service.cookie_only:
                    self._persist_sealed(s, service)
                else:
                    self._maybe_touch(s, service)
            return
        if service.cookie_only:
            self._persist_sealed(s, service)
            return
        now = service.clock()
        store = service.store
        try:
            for key in s.doomed:
                store.delete(key)
            s.doomed = ()
            if s.dead:
                s.cookie_action = EXPIRE_COOKIE
                return
            data_bytes = self._to_write(s, service)
            if data_bytes is not None:
                self._write(s, service, now, data_bytes)
            elif s.deleted and s.cookie_action != SET_COOKIE:
                s.cookie_action = EXPIRE_COOKIE
            elif not s.is_new and s.id is not None and s.rotate_from is None and service.touch_interval is not None:
                self._maybe_touch(s, service)
            elif s.invalidated and s.had_cookie and s.cookie_action is None:
                # invalidate() without a later write: the client's old cookie loads nothing
                s.cookie_action = EXPIRE_COOKIE
            if s.retag and s.cookie_action is None and not s.is_new:
                s.cookie_action = SET_COOKIE
            s.retag = False
        except StoreError as exc:
            service.events.emit("store_error", session_id=s.id, message=f"write failed: {exc}")
            if service.config.on_store_error != "anonymous":
                raise
            s.anonymous = True
            if s.forgets_cookie():
                s.cookie_action = EXPIRE_COOKIE  # the record outlives the outage; the client forgets it

    @cython.locals(s=_State, service=SessionService)
    def _persist_sealed(self, s: _State, service: SessionService) -> None:
        """Cookie-only sessions: reseal when the data changed, the key rotated or the expiry must slide.

        There is no record to delete: delete() and invalidate() expire the cookie,
        and the old value stays valid until its own expiry (absolute_timeout).
        """
        s.doomed = ()
        if s.dead:
            s.cookie_action = EXPIRE_COOKIE
            return
        now = service.clock()
        data_bytes = self._to_write(s, service)
        write = data_bytes is not None
        touch_due = (
            not s.is_new and service.touch_interval is not None and now - s.last_access > service.touch_interval
        )
        if not (write or touch_due or (s.retag and not s.is_new)):  # a reseal never issues an unsaved new session
            if s.forgets_cookie() and s.cookie_action != SET_COOKIE:
                s.cookie_action = EXPIRE_COOKIE
            return
        if s.id is None:
            s.id = core.new_session_id()
        if data_bytes is None:  # a touch or a reseal: the data as loaded
            data_bytes = s.loaded_data
        record = self._pack(s, data_bytes, s.flash, now)  # max_record_size holds here too
        payload = core.b64url_decode(s.id) + record
        sealed = service.seal_cookie(s.created, now, service.expires_at(s.created, now), payload)
        size = len(service.config.cookie_name) + len(sealed)  # name plus value, as SPEC 3 counts
        if size > MAX_COOKIE_BYTES:
            raise SessionTooLarge(
                f"cookie session would be {size} bytes (name plus value); browsers drop cookies over "
                f"{MAX_COOKIE_BYTES}"
            )
        if size > COOKIE_WARN_BYTES and not service._cookie_too_large_warned:
            service._cookie_too_large_warned = True
            service.events.emit(
                "cookie_too_large",
                message=f"a cookie session is {size} bytes: servers cap the whole Cookie header (8 KB); "
                "consider a server-side store",
            )
        if s.is_new:
            service.events.emit("created", session_id=s.id)
        s.sealed = sealed
        s.cookie_action = SET_COOKIE
        if data_bytes is not s.loaded_data:  # the client sends this cookie next: no decode then
            service.prime_decoded(s.loaded_data, data_bytes, s.data)
        s.loaded_data = data_bytes
        s.is_new = s.invalidated = s.deleted = s.retag = False
        s.rotate_from = None
        s.loaded_domain, s.loaded_path, s.loaded_csrf_gen = s.domain, s.path, s.csrf_gen
        s.loaded_flash = _copy_flash(s.flash)
        s.modified = s.mutable_out = s.flash_modified = s.save_requested = False
        s.last_access = now

    @cython.locals(s=_State, service=SessionService)
    def persist_late(self) -> None:
        """Best-effort write at the end of a streamed body, when the headers are already out.

        Only an existing record under the same id can still be written; a change
        that would need a new cookie (new session, new id, deletion, a new domain
        or path) is logged and dropped.
        """
        s = _sess_of(self) if cython.compiled else self._sess  # see _session.pxd
        if s is None or self._suppressed:
            return
        service: SessionService = self._service
        pending = s.modified or s.mutable_out or s.flash_modified or s.save_requested or s.doomed or s.dead
        rescoped = s.domain != s.loaded_domain or s.path != s.loaded_path  # the cookie's scope changed
        if service.cookie_only or s.is_new or s.rotate_from is not None or s.dead or s.doomed or s.invalidated or rescoped:
            if pending:
                service.events.emit(
                    "write_dropped", session_id=s.id, message="change after the headers needs a new cookie"
                )
            return
        try:
            self._persist()
        except Exception as exc:  # the response is already out: log, never raise into the server
            service.events.emit("store_error", session_id=s.id, message=f"late write failed: {type(exc).__name__}")

    @cython.locals(s=_State, service=SessionService)
    def _to_write(self, s: _State, service: SessionService) -> bytes | None:
        """The data bytes to write, or None when nothing needs writing.

        The data is encoded at most once per persist, and only when a value was
        set or handed out mutable: the write then stores those same bytes.
        """
        if not (s.save_requested or service.config.auto):
            return None
        data_bytes = encode_data(s.data) if (s.modified or s.mutable_out) else s.loaded_data
        if s.save_requested and (
            s.is_new or s.rotate_from is not None or s.flash_modified
            or s.domain != s.loaded_domain or s.path != s.loaded_path or s.csrf_gen != s.loaded_csrf_gen
        ):
            return data_bytes
        return None if data_bytes == s.loaded_data else data_bytes

    @cython.locals(s=_State)
    def _pack(self, s: _State, data_bytes: bytes, flash: dict, now: float) -> bytes:
        flash_bytes = encode_data(flash) if flash else None
        blob = pack_record(s.created, now, s.csrf_gen, s.domain, s.path, flash_bytes, data_bytes)
        limit = self._service.config.max_record_size
        if len(blob) > limit:
            raise SessionTooLarge(f"session record is {len(blob)} bytes; max_record_size is {limit}")
        return blob

    @cython.locals(s=_State, service=SessionService)
    def _write(self, s: _State, service: SessionService, now: float, data_bytes: bytes) -> None:
        store = service.store
        base = s.loaded_data
        blob = self._pack(s, data_bytes, s.flash, now)
        expires_at = service.expires_at(s.created, now)
        if s.id is None:
            s.id = core.new_session_id()
        cookie_changed = s.is_new or s.rotate_from is not None or (
            s.domain != s.loaded_domain or s.path != s.loaded_path
        )
        if s.is_new:
            key = core.store_key(s.id)
            result = store.create(key, service.seal_record(key, blob), expires_at)
            while result is EXISTS:  # a 256-bit collision: take another id
                s.id = core.new_session_id()
                key = core.store_key(s.id)
                result = store.create(key, service.seal_record(key, blob), expires_at)
            service.events.emit("created", session_id=s.id)
        elif s.rotate_from is not None:
            result = self._rotate(s, service, blob, expires_at, now)
        else:
            key = s.store_key()
            result = store.cas(key, service.seal_record(key, blob), s.version, expires_at)
            if result is CONFLICT:
                result = self._merge_write(s, service, key, expires_at, now)
        s.merge_from = None  # written, or gone: a later save starts from what it loads
        if result is GONE:
            service.events.emit("save_gone", session_id=s.id, message="record vanished; not recreated")
            # A concurrent logout wins: expire the cookie. But when the id was rotated
            # away, the client already holds (or is getting) the new cookie: leave it alone.
            rotated = self._was_rotated(service, s)
            s.cookie_action = None if rotated else EXPIRE_COOKIE
            s.dead = False
            s.save_requested = False
            return
        service.wrote()
        s.version = result
        if s.loaded_data is base:  # no merge replaced it
            s.loaded_data = data_bytes
        if s.loaded_data is not base:  # the next load of this session reads these bytes: no decode then
            service.prime_decoded(base, s.loaded_data, s.data)
        s.is_new = False
        s.invalidated = s.deleted = False
        s.rotate_from = None
        s.loaded_domain, s.loaded_path, s.loaded_csrf_gen = s.domain, s.path, s.csrf_gen
        s.loaded_flash = _copy_flash(s.flash)
        s.modified = s.mutable_out = s.flash_modified = s.save_requested = False
        s.last_access = now
        if cookie_changed or s.retag or service.persistent_cookie:
            s.cookie_action = SET_COOKIE

    @cython.locals(s=_State, service=SessionService)
    def _was_rotated(self, service: SessionService, s: _State) -> bool:
        key = s.rotate_from[0] if s.rotate_from is not None else s.store_key()
        try:
            return service.store.load(key) is TOMBSTONE
        except StoreError:
            return False

    def _rotate(self, s: _State, service: SessionService, blob: bytes, expires_at: float, now: float):
        """regenerate_id(): new record and tombstone in one step, merging if the old one changed."""
        old_key, version = s.rotate_from
        new_key = core.store_key(s.id)
        for attempt in range(MAX_CAS_ATTEMPTS):
            result = service.store.rotate(
                old_key, new_key, service.seal_record(new_key, blob), expires_at, TOMBSTONE_SECONDS, version
            )
            if result is not CONFLICT:
                if result is not GONE:
                    service.events.emit("regenerated", session_id=s.id)
                return result
            if service.store.has_locked_rotate:  # merge and rotate under the store's lock
                result = service.store.locked_rotate(
                    old_key, new_key,
                    lambda current: (service.seal_record(new_key, self._merged_blob(s, service, old_key, current, now)),
                                     expires_at),
                    TOMBSTONE_SECONDS,
                )
                if result is CONFLICT:  # new_key is taken: a 256-bit collision
                    return self._give_up(s, service)
                if result is not GONE:
                    service.events.emit("regenerated", session_id=s.id)
                return result
            current = _reload(service.store, old_key)
            if not isinstance(current, StoredRecord):
                return GONE
            blob = self._merged_blob(s, service, old_key, current, now)
            version = current.version
            _backoff(attempt)
        return self._give_up(s, service)

    def _merge_write(self, s: _State, service: SessionService, key: bytes, expires_at: float, now: float):
        """On CONFLICT: merge with the stored record, under the store's lock if it has one."""
        store = service.store
        with service.merge_lock(key):  # threads of one process take turns, whichever way the store merges
            if store.has_locked_update:
                return store.locked_update(
                    key,
                    lambda current: (
                        service.seal_record(key, self._merged_blob(s, service, key, current, now)), expires_at
                    ),
                )
            for attempt in range(MAX_CAS_ATTEMPTS):
                current = _reload(store, key)
                if not isinstance(current, StoredRecord):
                    return GONE
                blob = self._merged_blob(s, service, key, current, now)
                result = store.cas(key, service.seal_record(key, blob), current.version, expires_at)
                if result is not CONFLICT:
                    return result
                _backoff(attempt)
        return self._give_up(s, service)

    @cython.locals(s=_State, service=SessionService)
    def _give_up(self, s: _State, service: SessionService):
        service.events.emit("conflict_raised", session_id=s.id, message="compare-and-set kept failing")
        raise ConflictError(f"session write lost {MAX_CAS_ATTEMPTS} compare-and-set races")

    @cython.locals(s=_State, service=SessionService)
    def _merged_blob(
        self, s: _State, service: SessionService, key: bytes, current: StoredRecord, now: float
    ) -> bytes:
        """Three-way merge of this request's changes into `current`; updates s to the merged state."""
        try:
            _, _, csrf_gen, domain, path, flash, data_bytes = core.unpack_record(
                service.open_record(key, current.blob)
            )
            theirs = core.decode_data(data_bytes)
            their_flash = core.decode_data(flash) if flash is not None else {}
        except (ValueError, TypeError):
            theirs, their_flash, csrf_gen, domain, path = {}, {}, 0, None, None
        if s.merge_from is None:
            s.merge_from = (
                core.decode_data(s.loaded_data), s.data, s.loaded_flash, s.flash,
                (s.loaded_domain, s.domain), (s.loaded_path, s.path), (s.loaded_csrf_gen, s.csrf_gen),
            )
        base, ours, base_flash, our_flash, domains, paths, csrf_gens = s.merge_from
        try:
            merged, clashes = merge(base, ours, theirs, service.config.on_conflict)
        except ConflictError:
            service.events.emit("conflict_raised", session_id=s.id, message="same key changed concurrently")
            raise
        service.events.emit("conflict_merged", session_id=s.id, clashes=len(clashes))
        s.data = merged
        s.flash = merge_flash(base_flash, our_flash, their_flash)
        s.domain = domains[1] if domains[1] != domains[0] else domain
        s.path = paths[1] if paths[1] != paths[0] else path
        s.csrf_gen = csrf_gens[1] if csrf_gens[1] != csrf_gens[0] else csrf_gen
        s.loaded_data = core.encode_data(merged)
        return self._pack(s, s.loaded_data, s.flash, now)

    @cython.locals(s=_State, service=SessionService)
    def _maybe_touch(self, s: _State, service: SessionService) -> None:
        """Slide the expiry at most once per touch_interval, without rewriting data."""
        now = service.clock()
        if now - s.last_access <= service.touch_interval:
            return
        try:
            touched = service.store.touch(s.store_key(), service.expires_at(s.created, now))
        except StoreError as exc:
            service.events.emit("store_error", session_id=s.id, message=f"touch failed: {exc}")
            if service.config.on_store_error != "anonymous":
                raise
            return
        s.last_access = now
        # A record deleted or rotated away since this request loaded it: re-sending the
        # old cookie could replace the one a concurrent login just set.
        if service.persistent_cookie and touched is not False:
            s.cookie_action = SET_COOKIE


def _reload(store: Store, key: bytes):
    """The record a compare-and-set lost to; a damaged one counts as gone, as a write treats it."""
    try:
        return store.load(key)
    except CorruptRecord:
        return None


def _backoff(attempt: int) -> None:
    """Jittered exponential backoff between compare-and-set retries, each at most MAX_BACKOFF."""
    time.sleep(random.uniform(0, min(0.0002 * (2 ** attempt), MAX_BACKOFF)))


def _is_utf8(text: str) -> bool:
    """False for a str holding a lone surrogate, which no record can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Session(_SessionCore):
    """A lazy, dict-like session: `session["k"] = v`, `session.save()`, as in Beaker."""

    __module__ = "fastsess.session"  # where users import it from (this source is also built as _session)

    #: what a session reads as its state when `__dict__` has none (not loaded yet, or deleted there)
    _sess: _State | None = None

    if cython.compiled:
        # A session's dict is made when its state is first set: an untouched one never needs
        # it. Code that looks in the dict, as Beaker's does, still finds "_sess" there.
        __dict__ = property(lambda self: _dict_holding_sess(self))


MutableMapping.register(Session)
_instance_dict = _SessionCore.__dict__["__dict__"]  # the dict behind Session.__dict__


def _dict_holding_sess(session: Session) -> dict:
    """session.__dict__, with "_sess" in it (None when the session has not loaded)."""
    d = _instance_dict.__get__(session)
    if "_sess" not in d:
        d["_sess"] = None
    return d


@cython.locals(session=_SessionCore)
def request_session(service: SessionService, cookie_header: str | None) -> Session:
    """Session(service, cookie_header), the middleware's one per request; compiled, no arguments are parsed.

    The extension type's tp_new has set every other field as __init__ would: None and False.
    """
    session = _new_instance(Session)
    session._service = service
    session._cookie_header = cookie_header
    return session  # _sess: None, from the class, until it loads


if not cython.compiled:  # compiled, _session.pxd defines these as C; the hot paths here use none of them
    request_session = Session  # noqa: F811 - the same call, without two Python frames more
    #: session._sess: a session's loaded state, or None
    _sess_of = operator.attrgetter("_sess")

    def _set_sess(session: _SessionCore, state: _State | None) -> None:
        session._sess = state

    def _new_instance(cls: type) -> object:
        """cls(), without calling __init__."""
        return cls.__new__(cls)

    _record_field = operator.getitem  # record[i]

    def _is_record_tuple(record: object) -> bool:
        return isinstance(record, tuple) and len(record) == 4
