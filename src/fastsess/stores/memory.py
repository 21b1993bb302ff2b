"""In-process store: a dict with an LRU bound and TTLs; one per middleware.

For development and tests. Records live in one process, so workers of a
multi-process server each see their own sessions.

The records live in a MemoryTable (_memory_py.py). With the C kernel that is the
compiled build, fastsess.stores._memory, whose methods a session calls as C;
MemoryStore adds the Store interface on top, so it is a Store like any other.
"""

from __future__ import annotations

from .. import core
from .base import Store

MemoryTable = core.build_of("fastsess.stores._memory").MemoryTable


class MemoryStore(MemoryTable, Store):
    """A thread-safe OrderedDict of records, oldest-used first.

    MemoryTable comes first, so its methods are the store's: with the C kernel
    they are found on the compiled type, and called without a Python frame.
    """

    has_locked_update = True
