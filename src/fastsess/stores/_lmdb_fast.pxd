# Declarations for fastsess.stores._lmdb_fast, the compiled build of _lmdb_fast_py.py:
# LmdbFastPath becomes an extension type whose fields are C struct fields.
# LmdbStore (lmdb.py) subclasses it in Python, adding everything else.

from fastsess.stores._record cimport _new_record

cdef class SharedFields:
    cdef public object pid, gate, thread, env, meta, data, reports
    cdef public Py_ssize_t ops

cdef class LmdbFastPath:
    cdef public object clock
    cdef public SharedFields _shared_env

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

cdef inline uint64_t _le(const uint8_t *p, int n):
    """An unsigned little-endian integer of n bytes."""
    cdef uint64_t value = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        value = (value << 8) | p[i]
    return value

cdef inline double _le_double(const uint8_t *p):
    cdef uint64_t bits = _le(p, 8)
    cdef double value
    memcpy(&value, &bits, 8)
    return value

cdef object StoredRecord  # base.StoredRecord, imported by _lmdb_fast_py.py

# _plain_record of _lmdb_fast_py.py, reading the header (_META: "<BBxxIQdd", 32 bytes) as C.
cdef inline object _plain_record(object raw):
    if type(raw) is not bytes or PyBytes_GET_SIZE(raw) <= 32:
        return None
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(raw)
    cdef uint64_t size = _le(p + 4, 4)
    if p[0] != 2 or p[1] != 0 or <uint64_t>PyBytes_GET_SIZE(raw) != 32 + size:  # format 2, kind record
        return None
    return _new_record(StoredRecord, (
        PyBytes_FromStringAndSize(<const char *>p + 32, <Py_ssize_t>size), _le(p + 8, 8),
        _le_double(p + 16), _le_double(p + 24),
    ))
