"""Derives every subkey from the configured secrets once, at startup (SPEC 5).

Each configured string gives PRK = HKDF-Extract(b"fastsess", secret); each
purpose gets its own HKDF-Expand label, so one derived key never serves two
purposes even when the same string is configured twice. Key ids come from the
key itself, so reordering a list of keys logs nobody out.
"""

from __future__ import annotations

from . import core

LABEL_ID_TAG = "fastsess/v1/id-tag"
LABEL_COOKIE_MAC = "fastsess/v1/cookie-mac"
LABEL_CSRF = "fastsess/v1/csrf"
LABEL_LOG = "fastsess/v1/log"


class KeyRing:
    """Subkeys per purpose; in each list the first key signs and every key verifies."""

    def __init__(
        self, secrets: list[str], validate_keys: list[str] = (), encrypt_keys: list[str] = (),
        cookie_mode: str = "signed",
    ) -> None:
        if not secrets:
            raise ValueError("at least one secret is required")
        secret_prks = [core.secret_prk(s) for s in secrets]
        mac_prks = [core.secret_prk(s) for s in validate_keys] or secret_prks
        #: (key id, subkey) pairs for the id cookie's tag.
        self.id_keys = [(core.derive_key_id(p), core.derive_subkey(p, LABEL_ID_TAG)) for p in secret_prks]
        #: (key id, subkey) pairs for sealing cookie-only sessions.
        self.cookie_mac_keys = [(core.derive_key_id(p), core.derive_subkey(p, LABEL_COOKIE_MAC)) for p in mac_prks]
        self.csrf_keys = [core.derive_subkey(p, LABEL_CSRF) for p in secret_prks]
        # AES-GCM keys are derived per epoch in the kernel from these PRKs: encrypt_key,
        # else (cookie_mode = encrypted) validate_key, else secret.
        enc_prks = [core.secret_prk(s) for s in encrypt_keys]
        if not enc_prks and cookie_mode == "encrypted":
            enc_prks = mac_prks
        #: (key id, PRK) pairs for encrypted cookies; empty when nothing is encrypted.
        self.cookie_enc_prks = [(core.derive_key_id(p), p) for p in enc_prks]
        #: (key id, PRK) pairs for records encrypted at rest: only with encrypt_key.
        self.record_enc_prks = [(core.derive_key_id(core.secret_prk(s)), core.secret_prk(s)) for s in encrypt_keys]
        self.log_key = core.derive_subkey(secret_prks[0], LABEL_LOG)

    def log_sid(self, session_id: str | None) -> str | None:
        """What logs show instead of an id: the first 8 bytes of HMAC(log key, id), in hex."""
        if session_id is None:
            return None
        return core.hmac_sha256(self.log_key, session_id.encode("utf-8"))[:8].hex()
