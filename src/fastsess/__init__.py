"""fastsess: fast, safe, Beaker-compatible sessions for WSGI applications."""

from .errors import ConfigError, ConflictError, CorruptRecord, FastsessError, SessionTooLarge, StoreError
from .session import Session
from .wsgi import SessionMiddleware

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConflictError",
    "CorruptRecord",
    "FastsessError",
    "Session",
    "SessionMiddleware",
    "SessionTooLarge",
    "StoreError",
    "__version__",
]
