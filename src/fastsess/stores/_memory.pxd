# Declarations for fastsess.stores._memory, the compiled build of _memory_py.py:
# MemoryTable becomes an extension type with C struct fields, and its helpers are
# called as C. MemoryStore (memory.py) subclasses it in Python, adding Store.

cdef Py_ssize_t _BLOB, _VERSION, _EXPIRES

cdef class MemoryTable:
    cdef public object clock
    cdef public Py_ssize_t max_sessions
    cdef readonly object _entries
    cdef object _lock
    cdef Py_ssize_t _next_version
    cdef _live(self, key, now)
    cdef _version(self)
    cdef _put(self, key, entry)
    cdef _drop_expired(self, key)

from fastsess.stores._record cimport _new_record
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM

cdef object _move_to_end  # OrderedDict.move_to_end, called without looking the method up

# Entries are read as C: a lookup in the entries dict (an OrderedDict, a dict
# subclass; a bytes key cannot fail to hash), and a field of an entry (a StoredRecord,
# a tuple subclass whose four fields are always there).
cdef inline object _lookup(object entries, object key):
    cdef PyObject *entry = PyDict_GetItem(entries, key)
    return None if entry == NULL else <object>entry

cdef inline object _field(object entry, Py_ssize_t i):
    return <object>PyTuple_GET_ITEM(entry, i)

cdef inline bytes _as_bytes(object blob):
    return blob if type(blob) is bytes else bytes(blob)
