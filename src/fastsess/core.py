"""Selects the kernel: the C extension unless FASTSESS_NO_EXTENSIONS=1 or it fails to import.

FASTSESS_REQUIRE_EXTENSIONS=1 turns a missing C module into an ImportError;
FASTSESS_NO_EXTENSIONS=1 always wins. IMPLEMENTATION is "c" or "python".
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_NO_EXTENSIONS = os.environ.get("FASTSESS_NO_EXTENSIONS", "") not in ("", "0")
_REQUIRE_EXTENSIONS = os.environ.get("FASTSESS_REQUIRE_EXTENSIONS", "") not in ("", "0")

if _NO_EXTENSIONS:
    from . import _core_py as _kernel
else:
    try:
        from . import _core as _kernel  # type: ignore[no-redef]
    except ImportError:
        if _REQUIRE_EXTENSIONS:
            raise
        from . import _core_py as _kernel  # type: ignore[no-redef]

IMPLEMENTATION = "python" if _kernel.__name__.endswith("_core_py") else "c"
#: FASTSESS_REQUIRE_EXTENSIONS=1: the other compiled modules must import too
REQUIRE_EXTENSIONS = _REQUIRE_EXTENSIONS and not _NO_EXTENSIONS


def build_of(name: str) -> ModuleType:
    """The module to run for a source compiled with the kernel: fastsess.X (compiled) or fastsess.X_py.

    The compiled build exactly when the C kernel was selected, unless it failed
    to build (an ImportError then, with FASTSESS_REQUIRE_EXTENSIONS=1).
    """
    if IMPLEMENTATION == "c":
        try:
            return importlib.import_module(name)
        except ImportError:
            if REQUIRE_EXTENSIONS:
                raise
    return importlib.import_module(name + "_py")

FORMAT_VERSION = _kernel.FORMAT_VERSION
ID_BYTES = _kernel.ID_BYTES
MAX_COOKIE_CHARS = _kernel.MAX_COOKIE_CHARS
MAX_CANDIDATES = _kernel.MAX_CANDIDATES
EPOCH_SECONDS = _kernel.EPOCH_SECONDS
ENCRYPTED_RECORD_VERSION = _kernel.ENCRYPTED_RECORD_VERSION

random_bytes = _kernel.random_bytes
b64url_encode = _kernel.b64url_encode
b64url_decode = _kernel.b64url_decode
new_session_id = _kernel.new_session_id
store_key = _kernel.store_key
hmac_sha256 = _kernel.hmac_sha256
constant_time_equal = _kernel.constant_time_equal
hkdf_extract = _kernel.hkdf_extract
hkdf_expand = _kernel.hkdf_expand
secret_prk = _kernel.secret_prk
derive_subkey = _kernel.derive_subkey
derive_key_id = _kernel.derive_key_id
sign_id = _kernel.sign_id
open_id_cookie = _kernel.open_id_cookie
parse_cookie = _kernel.parse_cookie
http_date = _kernel.http_date
build_set_cookie = _kernel.build_set_cookie
check_value = _kernel.check_value
encode_data = _kernel.encode_data
decode_data = _kernel.decode_data
copy_data = _kernel.copy_data
copy_value = _kernel.copy_value
DecodeMemo = _kernel.DecodeMemo
fingerprint = _kernel.fingerprint
pack_record = _kernel.pack_record
unpack_record = _kernel.unpack_record
seal_signed = _kernel.seal_signed
open_signed = _kernel.open_signed
seal_encrypted = _kernel.seal_encrypted
open_encrypted = _kernel.open_encrypted
record_encrypt = _kernel.record_encrypt
record_decrypt = _kernel.record_decrypt

__all__ = [
    name for name in dir()
    if not name.startswith("_") and name not in ("annotations", "os", "importlib", "ModuleType", "build_of")
]
