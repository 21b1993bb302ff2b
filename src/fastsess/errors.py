"""The exceptions fastsess raises: one hierarchy under FastsessError."""

from __future__ import annotations


class FastsessError(Exception):
    """Base class of every error fastsess raises on purpose."""


class ConfigError(FastsessError, ValueError):
    """The configuration is wrong; raised when the middleware is built."""


class StoreError(FastsessError):
    """The session store failed (down, timed out, unwritable)."""


class CorruptRecord(StoreError):
    """A stored record is damaged; the session layer applies invalidate_corrupt to it."""


class SessionTooLarge(FastsessError):
    """A record exceeds max_record_size, or a cookie exceeds 4093 bytes."""


class ConflictError(FastsessError):
    """Two requests changed the same key and on_conflict is "raise"."""
